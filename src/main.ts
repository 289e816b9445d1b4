import cluster from 'node:cluster';
import { type Config, loadConfig } from './config.js';
import { TokenBuckets } from './core/rate-limiter.js';
import { createLogger, errorFields } from './logger.js';
import { answerRateLease, leaseOverIpc } from './rate-lease-ipc.js';
import { type RunningService, type StartOptions, startService } from './service.js';

/**
 * Composition root. With KMS_WORKERS > 1 the primary prepares the token and database, then forks HTTP workers and
 * replaces any that die (a worker's start-up is fallible: softhsm-facts.md pitfall 10).
 */
const RESTART_DELAY_MS = 1_000;
/** The message a process sends after writing key metadata, so that the others drop their cached key records. */
const METADATA_CHANGED = 'hsm-kms:metadata-changed';

/** How the primary tells a worker its audit slot (not an operator's setting). */
const AUDIT_SLOT_VARIABLE = 'KMS_AUDIT_SLOT';

const isMetadataChanged = (message: unknown) =>
  typeof message === 'object' && message !== null && (message as { type?: unknown }).type === METADATA_CHANGED;

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    // The message names the variable and says what is wrong; a stack trace would only hide it.
    createLogger('error').error('start-up failed', { message: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  }
  const logger = createLogger(config.logLevel);
  const clustered = config.workers > 1;
  const role = !clustered ? 'single' : cluster.isPrimary ? 'primary' : 'worker';

  // Workers report their writes to the primary, which passes them on to every other worker.
  const onMetadataWrite =
    role === 'worker'
      ? () => process.send?.({ type: METADATA_CHANGED })
      : role === 'primary'
        ? () => broadcast(undefined)
        : undefined;
  const broadcast = (from: number | undefined) => {
    for (const worker of Object.values(cluster.workers ?? {})) {
      if (worker && worker.id !== from && worker.isConnected()) worker.send({ type: METADATA_CHANGED });
    }
  };

  const options: StartOptions = {
    ...(onMetadataWrite ? { onMetadataWrite } : {}),
    ...(role === 'worker' ? { leaseRateTokens: leaseOverIpc() } : {}),
    auditSlot: Number(process.env[AUDIT_SLOT_VARIABLE] ?? 0),
  };
  let running: RunningService;
  try {
    running = await startService(config, logger, role, options);
  } catch (err) {
    logger.error('start-up failed', errorFields(err));
    process.exit(1);
  }

  if (role === 'primary') {
    let stopping = false;
    // The projects' rate limits hold for the whole service: the workers lease their tokens from these buckets.
    const rateBuckets = new TokenBuckets(config.rateLimits, { now: () => Date.now() });
    cluster.on('message', (worker, message) => {
      if (isMetadataChanged(message)) broadcast(worker.id);
      else answerRateLease(rateBuckets, worker, message);
    });
    // Each worker writes the audit chain of its slot; a worker that dies is replaced in its slot, once it has exited,
    // so that one chain never has two writers.
    const slots = new Map<number, number>();
    const fork = (slot: number) => slots.set(cluster.fork({ [AUDIT_SLOT_VARIABLE]: String(slot) }).id, slot);
    for (let slot = 1; slot <= config.workers; slot++) fork(slot);
    cluster.on('exit', (worker, code, signal) => {
      const slot = slots.get(worker.id) as number;
      slots.delete(worker.id);
      if (stopping) return;
      logger.warn('worker exited; starting another', { worker: worker.process.pid, code, signal });
      setTimeout(() => fork(slot), RESTART_DELAY_MS);
    });
    const stop = async () => {
      stopping = true;
      for (const worker of Object.values(cluster.workers ?? {})) worker?.kill('SIGTERM');
      await running.stop();
      process.exit(0);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    logger.info('primary started', { workers: config.workers, port: config.port });
    return;
  }

  if (role === 'worker') {
    process.on('message', (message) => {
      if (isMetadataChanged(message)) running.store.invalidate();
    });
  }
  if (running.url) logger.info('listening', { url: running.url, role });
  const stop = async () => {
    await running.stop();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

void main();
