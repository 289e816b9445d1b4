import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));

/**
 * The projects' rate limits turned off: the tests and benchmarks that are not about them send a project's requests
 * as fast as the machine serves them, which on a fast machine is beyond the default limits. Those about the limits
 * set their own.
 */
export const RATE_LIMITS_OFF: Readonly<Record<string, string>> = {
  KMS_RATE_LIMIT_CRYPTO_PER_SECOND: '0',
  KMS_RATE_LIMIT_MANAGEMENT_PER_SECOND: '0',
};

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface ChildService {
  readonly process: ChildProcess;
  readonly url: string;
  /** Everything the child wrote to stderr (its JSON log lines). */
  readonly log: () => string;
}

/**
 * The real service, src/main.ts, as its own process; resolves once `listeners` processes log that they listen.
 * `onSpawn` gets the process at once, for a test that kills it during its start-up.
 */
export function spawnService(
  env: Record<string, string>,
  listeners = 1,
  onSpawn?: (child: ChildProcess) => void,
): Promise<ChildService> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
    env: { ...process.env, ...RATE_LIMITS_OFF, ...env, KMS_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  onSpawn?.(child);
  let stderr = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start:\n${stderr}`)), 30_000);
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      const matches = [...stderr.matchAll(/"msg":"listening","url":"([^"]+)"/g)];
      const match = matches[listeners - 1];
      if (match) {
        clearTimeout(timer);
        resolve({ process: child, url: match[1] as string, log: () => stderr });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`service exited with ${code} before listening:\n${stderr}`));
    });
  });
}

/** Stops a child with the signal and waits for it to exit. */
export function stopService(child: ChildService, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return new Promise((resolve) => {
    if (child.process.exitCode !== null || child.process.signalCode !== null) return resolve();
    child.process.once('exit', () => resolve());
    child.process.kill(signal);
  });
}
