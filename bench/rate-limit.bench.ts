/**
 * Per-project rate limits: what they admit, what they cost.
 *
 *   node --import tsx bench/rate-limit.bench.ts [--workers 1,2] [--rate 1000] [--duration 10] [--warmup 3]
 *                                               [--connections 50] [--tsx]
 *
 * 1. In process: the cost of one `admit` on the hot path (single process, and a cluster worker holding a lease), and
 *    the round trip of a lease request to the cluster primary (what a worker's first request of a project waits).
 * 2. Over HTTP, per worker count: autocannon floods one project with gen-random (far beyond `--rate`) while a second
 *    project sends a quarter of the rate; the figures are the flooded project's admitted rate against the configured
 *    one, and what the quiet project got. The warm-up spends the flooded project's burst, so the measured window
 *    shows the steady rate.
 * 3. Over HTTP: gen-random throughput with the limits off and with a limit no run reaches, for the cost per request.
 */
import cluster from 'node:cluster';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { LeasedRateLimiter, LocalRateLimiter, TokenBuckets } from '../src/core/rate-limiter.js';
import { answerRateLease, leaseOverIpc } from '../src/rate-lease-ipc.js';
import { freePort } from '../test/support/child-service.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, REPO, spawnServer, stopProcess } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
    rate: { type: 'string', default: '1000' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '50' },
    tsx: { type: 'boolean', default: false },
  },
});
const WORKERS = opts.workers.split(',').map(Number);
const RATE = Number(opts.rate);
const DURATION = Number(opts.duration);
const WARMUP = Number(opts.warmup);
const CONNECTIONS = Number(opts.connections);
const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);
const UNLIMITED = { cryptographic: 1e9, management: 1e9 };
const BODY = JSON.stringify({ random_data_length: '256' });

/** Nanoseconds per call of `admit`, over `n` calls spread over 1,000 projects. */
async function admitCost(): Promise<void> {
  const n = 2_000_000;
  const projects = Array.from({ length: 1000 }, (_, i) => `project-${i}`);
  const clock = { now: () => Date.now() };
  const limits = UNLIMITED;
  const local = new LocalRateLimiter(new TokenBuckets(limits, clock));
  const primary = new TokenBuckets(limits, clock);
  const worker = new LeasedRateLimiter(limits, clock, async (p, c, wanted) => primary.take(p, c, wanted));
  // Every project's first request waits for its lease; afterwards, the worker asks ahead.
  for (const p of projects) await worker.admit(p, 'cryptographic');
  for (const [name, limiter] of [
    ['single process', local],
    ['cluster worker', worker],
  ] as const) {
    const started = process.hrtime.bigint();
    for (let i = 0; i < n; i++) {
      const pending = limiter.admit(projects[i % 1000] as string, 'cryptographic');
      if (pending) await pending;
      // Let the asks ahead be answered, as the event loop does between requests.
      if (i % 1000 === 999) await new Promise((resolve) => setImmediate(resolve));
    }
    const ns = Number(process.hrtime.bigint() - started) / n;
    log(`admit, ${name}: ${ns.toFixed(0)} ns per request (1,000 projects, never throttled)`);
  }
  const throttling = new LocalRateLimiter(new TokenBuckets({ cryptographic: 1, management: 1 }, clock));
  let refused = 0;
  const started = process.hrtime.bigint();
  for (let i = 0; i < 200_000; i++) {
    try {
      throttling.admit('p', 'cryptographic');
    } catch {
      refused++;
    }
  }
  const ns = Number(process.hrtime.bigint() - started) / 200_000;
  log(`admit, refused (a KmsError made and thrown): ${ns.toFixed(0)} ns per request (${refused} refused)`);
}

/** A forked worker asks this process (the primary) for leases one after another, as src/main.ts wires them. */
async function leaseRoundTrip(): Promise<void> {
  const buckets = new TokenBuckets(UNLIMITED, { now: () => Date.now() });
  const worker = cluster.fork();
  worker.on('message', (message) => {
    if (!answerRateLease(buckets, worker, message)) log(String(message));
  });
  await new Promise((resolve) => worker.once('exit', resolve));
}

/** The forked worker's side: 500 leases to warm up, then 5,000 timed, over 100 projects. */
async function leaseRoundTripWorker(): Promise<void> {
  const lease = leaseOverIpc();
  for (let i = 0; i < 500; i++) await lease('warm-up', 'cryptographic', 20);
  const samples: number[] = [];
  for (let i = 0; i < 5000; i++) {
    const started = performance.now();
    await lease(`project-${i % 100}`, 'cryptographic', 20);
    samples.push((performance.now() - started) * 1000);
  }
  samples.sort((a, b) => a - b);
  const at = (q: number) => (samples[Math.floor(samples.length * q)] as number).toFixed(0);
  process.send?.(`lease round trip to the primary: median ${at(0.5)} µs, p99 ${at(0.99)} µs`, () => process.exit(0));
}

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  await admitCost();
  await leaseRoundTrip();
  const builtMain = opts.tsx ? '' : ensureBuilt(log);
  const token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const env: Record<string, string> = {
    KMS_DATA_DIR: dataDir,
    KMS_HOST: '127.0.0.1',
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
    KMS_LOG_LEVEL: 'info',
    ...connectionLimitsFor(CONNECTIONS + 2),
  };
  const start = async (workers: number, crypto: number) => {
    const entry = opts.tsx ? ['--import', 'tsx', path.join(REPO, 'src/main.ts')] : [builtMain];
    return spawnServer(
      entry,
      {
        ...env,
        KMS_PORT: String(await freePort()),
        KMS_WORKERS: String(workers),
        KMS_RATE_LIMIT_CRYPTO_PER_SECOND: String(crypto),
      },
      workers,
    );
  };
  const request = (url: string, projectId: string, authToken: string, connections: number) => ({
    url: `${url}/v1.0/${projectId}/kms/gen-random`,
    connections,
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': authToken },
    body: BODY,
  });
  try {
    const issuer = loadOrCreateIssuerKeys(dataDir);
    const tokens = {
      busy: await signProjectToken(issuer, 'busy', 3600),
      quiet: await signProjectToken(issuer, 'quiet', 3600),
    };
    for (const workers of WORKERS) {
      const kms = await start(workers, RATE);
      try {
        await autocannon({ ...request(kms.url, 'busy', tokens.busy, CONNECTIONS), duration: WARMUP });
        const [busy, quiet] = await Promise.all([
          autocannon({ ...request(kms.url, 'busy', tokens.busy, CONNECTIONS), duration: DURATION }),
          autocannon({
            ...request(kms.url, 'quiet', tokens.quiet, 2),
            duration: DURATION,
            overallRate: Math.floor(RATE / 4),
          }),
        ]);
        const ok = busy.statusCodeStats['200']?.count ?? 0;
        const throttled = busy.statusCodeStats['429']?.count ?? 0;
        const quietOk = quiet.statusCodeStats['200']?.count ?? 0;
        log(
          `workers=${workers} limit ${RATE}/s: flooded project offered ${((ok + throttled) / busy.duration).toFixed(0)}/s, ` +
            `admitted ${(ok / busy.duration).toFixed(0)}/s (${((ok / busy.duration / RATE) * 100).toFixed(1)}% of the ` +
            `limit), throttled ${(throttled / busy.duration).toFixed(0)}/s, other ${busy.non2xx - throttled}; quiet ` +
            `project at ${Math.floor(RATE / 4)}/s: ${quietOk} of ${quiet.requests.total} served, p99 ${quiet.latency.p99} ms`,
        );
      } finally {
        await stopProcess(kms.process);
      }
    }
    for (const workers of WORKERS) {
      for (const [label, limit] of [
        ['limits off', 0],
        ['limit 10,000,000/s (never reached)', 10_000_000],
      ] as const) {
        const kms = await start(workers, limit);
        try {
          await autocannon({ ...request(kms.url, 'busy', tokens.busy, CONNECTIONS), duration: WARMUP });
          const r = await autocannon({ ...request(kms.url, 'busy', tokens.busy, CONNECTIONS), duration: DURATION });
          log(
            `workers=${workers} gen-random, ${label}: ${r.requests.average.toFixed(0)} rps, p50 ${r.latency.p50} ms, ` +
              `p99 ${r.latency.p99} ms, non-2xx ${r.non2xx}`,
          );
        } finally {
          await stopProcess(kms.process);
        }
      }
    }
  } finally {
    removeTestToken(token.dir);
  }
}

if (cluster.isWorker) void leaseRoundTripWorker();
else void main();
