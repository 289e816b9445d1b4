/**
 * create-datakey and decrypt-datakey with N CMKs in the project, on keys whose HSM object is cached (warm) and on
 * keys a freshly started service process has not used yet (cold), through the Huawei dialect's HTTP API only, so that
 * the same script measures any way the service materialises a CMK version in the HSM.
 *
 *   node --import tsx bench/cmk-count.bench.ts [--cmks 10,10000] [--workers 1] [--duration 10] [--warmup 3]
 *       [--connections 20] [--create-concurrency 16] [--cold-keys 500] [--cold-restarts 10]
 *       [--miss-cache-size 1000] [--datakey-bits 256] [--json FILE]
 *
 * For each N, on a fresh SoftHSM token and data directory, with the service built into this checkout's dist/
 * (`tsc -p tsconfig.build.json`, as `npm run build`; redone when src/ is newer):
 * 1. creates N CMKs through create-key, `--create-concurrency` in flight (timed: create-key throughput);
 * 2. warm: uses every CMK once (create-datakey, keeping each key's cipher_text), then runs create-datakey and
 *    decrypt-datakey with autocannon, each request on a uniformly random one of the N CMKs;
 * 3. cold: restarts the service (its HSM key cache and key-record cache start empty), warms the process up on a CMK
 *    of another project, then sends two requests to each of `--cold-keys` CMKs in turn (concurrency 1): the first
 *    use of the key, and right after it the second. Separately for each operation, each after its own restart; with
 *    fewer than `--cold-keys` CMKs, over several restarts (at most `--cold-restarts`);
 * 4. when N > `--miss-cache-size`: restarts with KMS_KEY_CACHE_SIZE at that size and runs step 2's load, so that most
 *    requests miss the cache.
 * Prints a markdown table on stdout (progress on stderr). Exits 1 when any request failed or the service logged an
 * error or died.
 */
import { randomInt } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon, { type AutocannonResult } from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { createTestToken, removeTestToken, type TestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, REPO, type Started, spawnServer, stopProcess } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    cmks: { type: 'string', default: '10,10000' },
    workers: { type: 'string', default: '1' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '20' },
    'create-concurrency': { type: 'string', default: '16' },
    'cold-keys': { type: 'string', default: '500' },
    'cold-restarts': { type: 'string', default: '10' },
    'miss-cache-size': { type: 'string', default: '1000' },
    'datakey-bits': { type: 'string', default: '256' },
    json: { type: 'string' },
  },
});

const list = (s: string) => s.split(',').map((v) => Number(v.trim()));
const CMKS = list(opts.cmks).sort((a, b) => a - b);
const WORKERS = list(opts.workers);
const DURATION = Number(opts.duration);
const WARMUP = Number(opts.warmup);
const CONNECTIONS = Number(opts.connections);
const CREATE_CONCURRENCY = Number(opts['create-concurrency']);
const COLD_KEYS = Number(opts['cold-keys']);
const COLD_RESTARTS = Number(opts['cold-restarts']);
const MISS_CACHE_SIZE = Number(opts['miss-cache-size']);
const DATAKEY_BITS = Number(opts['datakey-bits']);
const PROJECT = 'benchproject1';
/** The project of the CMK that warms a restarted process up, so that no measured CMK is used before its turn. */
const WARM_UP_PROJECT = 'benchwarmup1';
/**
 * Requests (4 in flight) on the warm-up CMK after each restart, before the measured first uses: the JIT, connections
 * and the token cache warm up, the root key's handle is looked up, and no measured CMK is touched.
 */
const WARM_UP_REQUESTS = 2000;

const log = (line: string) => process.stderr.write(`[cmks] ${line}\n`);

type Operation = 'create-datakey' | 'decrypt-datakey';
const OPERATIONS: readonly Operation[] = ['create-datakey', 'decrypt-datakey'];

interface Row {
  workers: number;
  cmks: number;
  operation: Operation;
  mode: string;
  rps: number;
  p50: number;
  p99: number;
  requests: number;
  failed: number;
  /** 1-minute load average just before the measurement (the machine is shared). */
  load: number;
  /** Timed one request at a time with performance.now(); autocannon's latencies are whole milliseconds. */
  sequential: boolean;
}

interface ColdComparison {
  workers: number;
  cmks: number;
  operation: Operation;
  /** First uses measured, over `restarts` restarts. */
  keys: number;
  restarts: number;
  cold: { p50: number; p99: number };
  second: { p50: number; p99: number };
  /** Median over the keys of (first use − second use) of the same key. */
  pairedMedian: number;
}

const rows: Row[] = [];
const coldComparisons: ColdComparison[] = [];
const keyCreation: { workers: number; keys: number; seconds: number; perSecond: number }[] = [];
let failed = false;

/** Runs `task(i)` for i in [0, count) with `concurrency` in flight. */
async function pool(count: number, concurrency: number, task: (i: number) => Promise<void>) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) await task(next++);
  });
  await Promise.all(lanes);
}

/** The value below which a fraction `q` of the (sorted) samples lie. */
function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = randomInt(i + 1);
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

/** The service as a child process; `restart` keeps the token and data directory, and so every key. */
class Service {
  #started: Started | undefined;
  #stopping = false;

  constructor(
    private readonly entry: string,
    private readonly env: Record<string, string>,
    private readonly workers: number,
  ) {}

  get url(): string {
    return (this.#started as Started).url;
  }

  async start(extraEnv: Record<string, string> = {}): Promise<void> {
    const started = await spawnServer(
      [this.entry],
      { ...this.env, ...extraEnv, KMS_PORT: '0', KMS_WORKERS: String(this.workers), KMS_LOG_LEVEL: 'info' },
      this.workers,
    );
    this.#stopping = false;
    started.process.once('exit', (code, signal) => {
      if (this.#stopping) return;
      failed = true;
      log(
        `FAILED: the service exited (${code ?? signal}) during the run; its log ends with:\n${started.log().slice(-6000)}`,
      );
    });
    this.#started = started;
  }

  async stop(): Promise<void> {
    const started = this.#started;
    if (started === undefined) return;
    this.#stopping = true;
    const errorsLogged = started.log().match(/"level":"error"/g)?.length ?? 0;
    if (errorsLogged > 0) {
      failed = true;
      log(`the service logged ${errorsLogged} errors:\n${started.log().slice(-4000)}`);
    }
    await stopProcess(started.process);
    this.#started = undefined;
  }

  async restart(extraEnv: Record<string, string> = {}): Promise<void> {
    await this.stop();
    await this.start(extraEnv);
  }
}

async function post(url: string, project: string, jwt: string, action: string, body: unknown) {
  const res = await fetch(`${url}/v1.0/${project}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': jwt },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${action} answered ${res.status}: ${text}`);
  // biome-ignore lint/suspicious/noExplicitAny: response fields are read by name
  return JSON.parse(text) as any;
}

/** A CMK and the cipher_text of one data key under it, for decrypt-datakey. */
interface Cmk {
  keyId: string;
  cipherText: string;
}

function requestBody(operation: Operation, cmk: Cmk): string {
  return operation === 'create-datakey'
    ? JSON.stringify({ key_id: cmk.keyId, datakey_length: String(DATAKEY_BITS) })
    : JSON.stringify({
        key_id: cmk.keyId,
        cipher_text: cmk.cipherText,
        datakey_cipher_length: String(DATAKEY_BITS / 8),
      });
}

/** `warmup` seconds thrown away, then `duration` seconds of `operation`, each request on a random one of `cmks`. */
async function load(url: string, jwt: string, operation: Operation, cmks: readonly Cmk[]) {
  const options = {
    url: `${url}/v1.0/${PROJECT}/kms/${operation}`,
    connections: CONNECTIONS,
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': jwt },
    requests: [
      {
        setupRequest: (req: object) => ({ ...req, body: requestBody(operation, cmks[randomInt(cmks.length)] as Cmk) }),
      },
    ],
  };
  const loadBefore = loadavg()[0] as number;
  if (WARMUP > 0) await autocannon({ ...options, duration: WARMUP });
  return { result: await autocannon({ ...options, duration: DURATION }), loadBefore };
}

function recordLoad(
  at: { workers: number; cmks: number; operation: Operation; mode: string },
  { result, loadBefore }: { result: AutocannonResult; loadBefore: number },
) {
  const row: Row = {
    ...at,
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    requests: result.requests.total,
    failed: result.non2xx + result.errors + result.timeouts,
    load: loadBefore,
    sequential: false,
  };
  pushRow(row);
}

function pushRow(row: Row) {
  rows.push(row);
  if (row.failed > 0) failed = true;
  log(
    `workers=${row.workers} cmks=${row.cmks} ${row.operation} ${row.mode}: ${row.rps.toFixed(0)} req/s, ` +
      `p50 ${row.p50.toFixed(2)} ms, p99 ${row.p99.toFixed(2)} ms, failed ${row.failed}, load before ${row.load.toFixed(1)}`,
  );
}

/**
 * Each CMK in turn, one request at a time: its first use, then at once its second use. Pairs close in time, so that a
 * burst of load from elsewhere on this shared machine hits both uses of a key alike. Latencies in ms, as the client
 * sees them.
 */
async function firstAndSecondUses(url: string, jwt: string, operation: Operation, cmks: readonly Cmk[]) {
  const timed = async (cmk: Cmk) => {
    const started = performance.now();
    await post(url, PROJECT, jwt, operation, JSON.parse(requestBody(operation, cmk)));
    return performance.now() - started;
  };
  const first: number[] = [];
  const second: number[] = [];
  for (const cmk of cmks) {
    first.push(await timed(cmk));
    second.push(await timed(cmk));
  }
  return { first, second };
}

function sequentialRow(
  at: { workers: number; cmks: number; operation: Operation; mode: string },
  latencies: readonly number[],
  loadBefore: number,
): Row {
  const sorted = [...latencies].sort((a, b) => a - b);
  const total = latencies.reduce((sum, ms) => sum + ms, 0);
  const row: Row = {
    ...at,
    rps: (latencies.length * 1000) / total,
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    requests: latencies.length,
    failed: 0,
    load: loadBefore,
    sequential: true,
  };
  pushRow(row);
  return row;
}

async function benchCmkCount(main: string, workers: number, cmkCount: number) {
  const token: TestToken = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const env: Record<string, string> = {
    KMS_DATA_DIR: dataDir,
    KMS_HOST: '127.0.0.1',
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
    KMS_CMK_QUOTA: String(Math.max(100_000, cmkCount + 1)),
    KMS_KEY_CACHE_SIZE: String(Math.max(10_000, cmkCount + 1)),
    ...connectionLimitsFor(CONNECTIONS + CREATE_CONCURRENCY),
  };
  const service = new Service(main, env, workers);
  try {
    await service.start();
    const issuer = loadOrCreateIssuerKeys(dataDir);
    const jwt = await signProjectToken(issuer, PROJECT, 6 * 3600);
    const warmUpJwt = await signProjectToken(issuer, WARM_UP_PROJECT, 6 * 3600);

    const createStarted = performance.now();
    const keyIds: string[] = [];
    await pool(cmkCount, CREATE_CONCURRENCY, async (i) => {
      keyIds[i] = (await post(service.url, PROJECT, jwt, 'create-key', { key_alias: `bench-${i}` })).key_info.key_id;
    });
    const seconds = (performance.now() - createStarted) / 1000;
    keyCreation.push({ workers, keys: cmkCount, seconds, perSecond: cmkCount / seconds });
    log(`created ${cmkCount} CMKs in ${seconds.toFixed(1)} s (${(cmkCount / seconds).toFixed(0)}/s)`);
    const warmUpKeyId = (await post(service.url, WARM_UP_PROJECT, warmUpJwt, 'create-key', { key_alias: 'warm-up' }))
      .key_info.key_id as string;

    // One call per CMK (2N with N > 1 workers: cluster workers get connections, not requests, round-robin, and each
    // has its own cache), keeping a cipher_text under every CMK for decrypt-datakey.
    const cmks: Cmk[] = [];
    const passes = workers === 1 ? 1 : 2 * workers;
    await pool(cmkCount * passes, CREATE_CONCURRENCY, async (i) => {
      const keyId = keyIds[i % cmkCount] as string;
      const res = await post(service.url, PROJECT, jwt, 'create-datakey', {
        key_id: keyId,
        datakey_length: String(DATAKEY_BITS),
      });
      cmks[i % cmkCount] = { keyId, cipherText: res.cipher_text as string };
    });
    const warmUpRes = await post(service.url, WARM_UP_PROJECT, warmUpJwt, 'create-datakey', {
      key_id: warmUpKeyId,
      datakey_length: String(DATAKEY_BITS),
    });
    const warmUpCmk: Cmk = { keyId: warmUpKeyId, cipherText: warmUpRes.cipher_text as string };

    for (const operation of OPERATIONS) {
      recordLoad({ workers, cmks: cmkCount, operation, mode: 'warm' }, await load(service.url, jwt, operation, cmks));
    }

    // With fewer CMKs than --cold-keys, each restart yields only N first uses: restart up to --cold-restarts times.
    const keysPerRound = Math.min(COLD_KEYS, cmkCount);
    const rounds = Math.max(1, Math.min(COLD_RESTARTS, Math.ceil(COLD_KEYS / cmkCount)));
    for (const operation of OPERATIONS) {
      const cold: number[] = [];
      const second: number[] = [];
      let loadBefore = 0;
      for (let round = 0; round < rounds; round++) {
        const sample = shuffled(cmks).slice(0, keysPerRound);
        await service.restart();
        await pool(WARM_UP_REQUESTS, 4, async () => {
          await post(service.url, WARM_UP_PROJECT, warmUpJwt, operation, JSON.parse(requestBody(operation, warmUpCmk)));
        });
        loadBefore = Math.max(loadBefore, loadavg()[0] as number);
        const uses = await firstAndSecondUses(service.url, jwt, operation, sample);
        cold.push(...uses.first);
        second.push(...uses.second);
      }
      const at = { workers, cmks: cmkCount, operation };
      const coldRow = sequentialRow({ ...at, mode: 'cold: 1st use after a restart' }, cold, loadBefore);
      const secondRow = sequentialRow({ ...at, mode: 'same key, 2nd use right after' }, second, loadBefore);
      const paired = cold.map((ms, i) => ms - (second[i] as number)).sort((a, b) => a - b);
      coldComparisons.push({
        ...at,
        keys: cold.length,
        restarts: rounds,
        cold: { p50: coldRow.p50, p99: coldRow.p99 },
        second: { p50: secondRow.p50, p99: secondRow.p99 },
        pairedMedian: quantile(paired, 0.5),
      });
    }

    if (cmkCount > MISS_CACHE_SIZE) {
      await service.restart({ KMS_KEY_CACHE_SIZE: String(MISS_CACHE_SIZE) });
      const mode = `key cache ${MISS_CACHE_SIZE} < N (~${Math.round(100 * (1 - MISS_CACHE_SIZE / cmkCount))}% misses)`;
      for (const operation of OPERATIONS) {
        recordLoad({ workers, cmks: cmkCount, operation, mode }, await load(service.url, jwt, operation, cmks));
      }
    }
  } finally {
    await service.stop();
    removeTestToken(token.dir);
  }
}

function report() {
  const ms = (v: number) => v.toFixed(2);
  const lines = [
    `warm and key-cache rows: autocannon, ${CONNECTIONS} connections, ${DURATION} s after ${WARMUP} s warm-up, a random CMK per request; ` +
      `cold rows: one request at a time, ${COLD_KEYS} first uses (at most ${COLD_RESTARTS} restarts); data keys of ${DATAKEY_BITS} bits; ` +
      `client on the same ${machine().nproc} cores`,
    '',
    '| workers | CMKs | operation | mode | req/s | p50 ms | p99 ms | requests | failed | load before |',
    '|---:|---:|---|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.workers} | ${r.cmks} | ${r.operation} | ${r.mode} | ${r.rps.toFixed(0)} | ` +
        `${r.sequential ? ms(r.p50) : r.p50} | ${r.sequential ? ms(r.p99) : r.p99} | ` +
        `${r.requests} | ${r.failed} | ${r.load.toFixed(1)} |`,
    ),
    '',
    '| workers | CMKs | operation | first uses (restarts) | cold p50 / p99 ms | 2nd use p50 / p99 ms | cold − 2nd: p50 / p99 ms | per-key median Δ ms |',
    '|---:|---:|---|---:|---:|---:|---:|---:|',
    ...coldComparisons.map(
      (c) =>
        `| ${c.workers} | ${c.cmks} | ${c.operation} | ${c.keys} (${c.restarts}) | ${ms(c.cold.p50)} / ${ms(c.cold.p99)} | ` +
        `${ms(c.second.p50)} / ${ms(c.second.p99)} | ${ms(c.cold.p50 - c.second.p50)} / ${ms(c.cold.p99 - c.second.p99)} | ` +
        `${ms(c.pairedMedian)} |`,
    ),
    '',
    ...keyCreation.map(
      (k) =>
        `create-key: ${k.keys} CMKs in ${k.seconds.toFixed(1)} s = ${k.perSecond.toFixed(0)} keys/s ` +
        `(${CREATE_CONCURRENCY} in flight, ${k.workers} worker(s))`,
    ),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify({ machine: machine(), opts, rows, coldComparisons, keyCreation }, null, 2));
  }
}

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  const builtMain = ensureBuilt(log, path.join(REPO, 'dist'));
  const started = performance.now();
  for (const workers of WORKERS) {
    for (const cmkCount of CMKS) await benchCmkCount(builtMain, workers, cmkCount);
  }
  log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  report();
  if (failed) {
    log('FAILED: some requests failed, or the service logged an error or died (see above)');
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  log(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
