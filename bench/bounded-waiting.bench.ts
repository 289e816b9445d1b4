/**
 * What a slow HSM does to the GrapheneHsm adapter, in process, on a throw-away SoftHSM token whose C_Encrypt answers
 * `--hsm-ms` late (the real call, held back as a network HSM's round trip would hold it):
 * - asynchronous calls (KMS_HSM_ASYNC_CALLS): `--requests` encrypts at once on `--pool` sessions with a
 *   `--wait-ms` session wait: how many succeed, how soon the others are refused, how long the event loop stalls;
 * - synchronous calls, for comparison: each slow call blocks the event loop for its whole duration.
 *
 *   node --import tsx bench/bounded-waiting.bench.ts [--pool 4] [--hsm-ms 50] [--wait-ms 300] [--requests 200]
 */
import { parseArgs } from 'node:util';
import type { CmkVersionRef } from '../src/core/ports.js';
import { GrapheneHsm } from '../src/hsm/graphene-hsm.js';
import { answerLate, type EncryptCall, wrapAsyncEncrypt } from '../test/support/slow-hsm.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { machine } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    pool: { type: 'string', default: '4' },
    'hsm-ms': { type: 'string', default: '50' },
    'wait-ms': { type: 'string', default: '300' },
    requests: { type: 'string', default: '200' },
  },
});
const POOL = Number(opts.pool);
const HSM_MS = Number(opts['hsm-ms']);
const WAIT_MS = Number(opts['wait-ms']);
const REQUESTS = Number(opts.requests);
/** Synchronous calls block: a few are enough to show it. */
const SYNC_REQUESTS = Math.min(REQUESTS, 20);
const ROOT_KEY_LABEL = 'hsm-kms-wrap-1';

const ms = (x: number) => `${x.toFixed(0)} ms`;
const percentile = (xs: number[], p: number) =>
  xs.length === 0
    ? Number.NaN
    : ([...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))] as number);

interface Outcome {
  readonly ok: boolean;
  readonly code: string | undefined;
  readonly ms: number;
}

/** Fires `n` encrypts at once; each outcome with its latency, and the event loop's worst delay meanwhile. */
async function burst(hsm: GrapheneHsm, key: CmkVersionRef, n: number) {
  // The longest the event loop went without running a 5 ms interval: what any other request would have waited.
  let last = performance.now();
  let loopMaxMs = 0;
  const tick = () => {
    const now = performance.now();
    loopMaxMs = Math.max(loopMaxMs, now - last);
    last = now;
  };
  const probe = setInterval(tick, 5);
  const started = performance.now();
  const outcomes: Outcome[] = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      hsm.encrypt(key, Buffer.from(`request ${i}`), Buffer.from('aad')).then(
        () => ({ ok: true, code: undefined, ms: performance.now() - started }),
        (err: { code?: string }) => ({ ok: false, code: err.code, ms: performance.now() - started }),
      ),
    ),
  );
  const wall = performance.now() - started;
  tick();
  clearInterval(probe);
  return { outcomes, wall, loopMaxMs };
}

async function open(token: ReturnType<typeof createTestToken>, asyncCalls: boolean) {
  const hsm = await GrapheneHsm.open({
    library: token.library,
    tokenLabel: token.tokenLabel,
    pin: token.pin,
    poolSize: POOL,
    keyCacheSize: 16,
    createTokenKeysIfMissing: true,
    asyncCalls,
    sessionWaitMs: WAIT_MS,
  });
  await hsm.ensureRootKey(ROOT_KEY_LABEL);
  const keyId = '00000000-0000-0000-0000-000000000001';
  const key = { keyId, version: 0, ...(await hsm.createKeyVersion(keyId, 0, ROOT_KEY_LABEL)) };
  return { hsm, key };
}

function row(mode: string, n: number, result: Awaited<ReturnType<typeof burst>>, poolAfter: string): string {
  const ok = result.outcomes.filter((o) => o.ok);
  const refused = result.outcomes.filter((o) => !o.ok);
  const codes = [...new Set(refused.map((o) => o.code))].join(', ') || '–';
  const refusedMs = refused.map((o) => o.ms);
  return (
    `| ${mode} | ${n} | ${ok.length} | ${refused.length} (${codes}) | ` +
    `${refused.length ? `${ms(percentile(refusedMs, 0.5))} / ${ms(Math.max(...refusedMs))}` : '–'} | ` +
    `${ms(Math.max(...ok.map((o) => o.ms)))} | ${ms(result.loopMaxMs)} | ${ms(result.wall)} | ${poolAfter} |`
  );
}

async function main() {
  const token = createTestToken();
  const rows: string[] = [];
  try {
    {
      const { hsm, key } = await open(token, true);
      const restore = wrapAsyncEncrypt(hsm.forTesting().lib, answerLate(HSM_MS));
      const result = await burst(hsm, key, REQUESTS);
      restore();
      rows.push(row('asynchronous', REQUESTS, result, JSON.stringify(hsm.forTesting().poolState)));
      await hsm.close();
    }
    {
      const { hsm, key } = await open(token, false);
      const { lib } = hsm.forTesting();
      const own = lib.C_Encrypt;
      const real = own.bind(lib) as EncryptCall;
      // The synchronous call itself takes HSM_MS: the thread (the event loop) waits for the module.
      lib.C_Encrypt = ((...args: unknown[]) => {
        const until = performance.now() + HSM_MS;
        while (performance.now() < until) {
          // A module answering late, on this thread.
        }
        return real(...args);
      }) as typeof own;
      const result = await burst(hsm, key, SYNC_REQUESTS);
      lib.C_Encrypt = own;
      rows.push(row('synchronous', SYNC_REQUESTS, result, JSON.stringify(hsm.forTesting().poolState)));
      await hsm.close();
    }
  } finally {
    removeTestToken(token.dir);
  }
  const m = machine();
  process.stdout.write(
    [
      `GrapheneHsm in-process, C_Encrypt answering ${HSM_MS} ms late, ${POOL} sessions, session wait ${WAIT_MS} ms; ` +
        `${m.nproc} cores, Node ${m.node}, SoftHSM ${m.softhsm2}`,
      '',
      '| calls | encrypts at once | succeeded | refused (code) | refused after p50 / max | last success after | longest event-loop stall | wall | pool after |',
      '|---|---:|---:|---|---|---:|---:|---:|---|',
      ...rows,
      '',
    ].join('\n'),
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
