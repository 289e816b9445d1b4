/**
 * HTTP benchmark of the Huawei KMS v1.0 dialect against a bare Express 5 route, on a throw-away SoftHSM token.
 *
 *   node --import tsx bench/huawei.bench.ts [--workers 1,2] [--cmks 10,10000] [--duration 10] [--connections 50]
 *                                           [--warmup 3] [--endpoints gen-random,create-datakey,decrypt-datakey]
 *                                           [--create-concurrency 16] [--tsx] [--cpu-prof DIR] [--json FILE]
 *
 * The service runs as a child process (`node <build>/main.js`: the production build, `tsc -p tsconfig.build.json`, into
 * node_modules/.cache/hsm-kms-bench/dist, redone when src/ is newer; `--tsx` runs src/main.ts instead), so does the baseline (bench/bare-express.ts). autocannon runs in THIS process (one thread), on the same
 * cores as the server: the figures include that contention. Exits 1 when any measured request was not a 2xx.
 */
import { randomInt } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon, { type AutocannonResult } from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { freePort } from '../test/support/child-service.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, REPO, type Started, spawnServer, stopProcess } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    workers: { type: 'string', default: '1' },
    cmks: { type: 'string', default: '10,10000' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '50' },
    endpoints: { type: 'string', default: 'gen-random,create-datakey,decrypt-datakey' },
    'create-concurrency': { type: 'string', default: '16' },
    tsx: { type: 'boolean', default: false },
    'cpu-prof': { type: 'string' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

const list = (s: string) => s.split(',').map((v) => Number(v.trim()));
const WORKERS = list(opts.workers);
const CMKS = list(opts.cmks).sort((a, b) => a - b);
const DURATION = Number(opts.duration);
const WARMUP = Number(opts.warmup);
const CONNECTIONS = Number(opts.connections);
const ENDPOINTS = opts.endpoints.split(',').map((s) => s.trim());
const CREATE_CONCURRENCY = Number(opts['create-concurrency']);
const PROJECT = 'benchproject1';
/** decrypt-datakey picks among at most this many prepared cipher_texts (each under a different CMK). */
const MAX_CIPHER_TEXTS = 1000;

let builtMain = '';
const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);

interface Row {
  workers: number;
  cmks: number | '-';
  endpoint: string;
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  total: number;
  /** 1-minute load average just before the measurement (the machine is shared). */
  load: number;
}

const rows: Row[] = [];
const keyCreation: { workers: number; keys: number; seconds: number; perSecond: number }[] = [];

/** One measurement: `warmup` seconds thrown away, then `duration` seconds, bodies from `body()` per request. */
async function measure(url: string, apiPath: string, headers: Record<string, string>, body: () => string) {
  const options = {
    url: `${url}${apiPath}`,
    connections: CONNECTIONS,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    requests: [{ setupRequest: (req: object) => ({ ...req, body: body() }) }],
  };
  const load = loadavg()[0] as number;
  if (WARMUP > 0) await autocannon({ ...options, duration: WARMUP });
  return { ...(await autocannon({ ...options, duration: DURATION })), load };
}

function record(workers: number, cmks: number | '-', endpoint: string, r: AutocannonResult & { load: number }): Row {
  const row: Row = {
    workers,
    cmks,
    endpoint,
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    total: r.requests.total,
    load: r.load,
  };
  rows.push(row);
  log(
    `workers=${workers} cmks=${cmks} ${endpoint}: ${row.rps.toFixed(0)} rps, p50 ${row.p50} ms, p99 ${row.p99} ms, ` +
      `non-2xx ${row.non2xx}, errors ${row.errors}, timeouts ${row.timeouts}, load before ${row.load.toFixed(1)}`,
  );
  return row;
}

/** Runs `task(i)` for i in [from, to) with `concurrency` in flight. */
async function pool(from: number, to: number, concurrency: number, task: (i: number) => Promise<void>) {
  let next = from;
  const lanes = Array.from({ length: Math.min(concurrency, to - from) }, async () => {
    while (next < to) await task(next++);
  });
  await Promise.all(lanes);
}

async function post(url: string, token: string, action: string, body: unknown) {
  const res = await fetch(`${url}/v1.0/${PROJECT}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': token },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${action} answered ${res.status}: ${text}`);
  // biome-ignore lint/suspicious/noExplicitAny: response fields are read by name
  return JSON.parse(text) as any;
}

async function benchBare(workers: number, createDatakeyBody: () => string) {
  const port = await freePort();
  const bare = await spawnServer(
    ['--import', 'tsx', path.join(REPO, 'bench/bare-express.ts')],
    { BARE_PORT: String(port), BARE_WORKERS: String(workers) },
    workers,
  );
  try {
    record(workers, '-', 'bare Express 5', await measure(bare.url, `/v1.0/${PROJECT}/kms/bare`, {}, createDatakeyBody));
  } finally {
    await stopProcess(bare.process);
  }
}

async function startKms(workers: number, env: Record<string, string>): Promise<Started> {
  const port = await freePort();
  const profile = opts['cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(opts['cpu-prof'])] : [];
  const entry = opts.tsx ? ['--import', 'tsx', path.join(REPO, 'src/main.ts')] : [builtMain];
  return spawnServer(
    [...profile, ...entry],
    { ...env, KMS_PORT: String(port), KMS_WORKERS: String(workers), KMS_LOG_LEVEL: 'info' },
    workers,
  );
}

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  log(
    `workers ${WORKERS.join(',')}; CMKs ${CMKS.join(',')}; ${CONNECTIONS} connections; ${WARMUP} s warm-up + ` +
      `${DURATION} s per figure; autocannon in the bench process, on the same cores as the server`,
  );
  if (!opts.tsx) builtMain = ensureBuilt(log);

  const token = createTestToken();
  const env: Record<string, string> = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_HOST: '127.0.0.1',
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    KMS_CMK_QUOTA: String(Math.max(100_000, ...CMKS)),
    KMS_KEY_CACHE_SIZE: String(Math.max(10_000, ...CMKS)),
    SOFTHSM2_CONF: token.softhsmConf,
    ...connectionLimitsFor(CONNECTIONS + CREATE_CONCURRENCY),
  };
  /** CMK ids in creation order; they survive service restarts (same token and data directory). */
  const keyIds: string[] = [];
  let failed = false;

  try {
    for (const workers of WORKERS) {
      // The baseline sends a body shaped like create-datakey's, so parsing costs the same.
      const sampleId = '0d0466b0-e727-4d9c-b35d-f84bb474a37f';
      await benchBare(workers, () => JSON.stringify({ key_id: sampleId, datakey_length: '512', n: randomInt(1e9) }));

      const kms = await startKms(workers, env);
      let stopping = false;
      kms.process.once('exit', (code, signal) => {
        if (stopping) return;
        failed = true;
        log(
          `FAILED: the service exited (${code ?? signal}) during the run; its log ends with:\n${kms.log().slice(-6000)}`,
        );
      });
      try {
        const jwt = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), PROJECT, 6 * 3600);
        const headers = { 'x-auth-token': jwt };
        for (const cmks of CMKS) {
          if (keyIds.length < cmks) {
            const from = keyIds.length;
            const started = performance.now();
            const created: string[] = [];
            await pool(from, cmks, CREATE_CONCURRENCY, async (i) => {
              const res = await post(kms.url, jwt, 'create-key', { key_alias: `bench-${i}` });
              created[i - from] = res.key_info.key_id as string;
            });
            const seconds = (performance.now() - started) / 1000;
            keyIds.push(...created);
            const perSecond = (cmks - from) / seconds;
            keyCreation.push({ workers, keys: cmks - from, seconds, perSecond });
            log(
              `created ${cmks - from} CMKs in ${seconds.toFixed(1)} s (${perSecond.toFixed(0)}/s, ${CREATE_CONCURRENCY} in flight)`,
            );
          }
          const ids = keyIds.slice(0, cmks);
          // Touch every CMK so its derived key is cached, and keep cipher_texts to decrypt. Derived-key caches are
          // per process and cluster workers get connections (not requests) round-robin, so with N > 1 workers every
          // CMK is touched 2N times: a worker then misses a given CMK with a probability of about 1/2^(2N).
          const passes = workers === 1 ? 1 : 2 * workers;
          const cipherTexts: { key_id: string; cipher_text: string }[] = [];
          const touchStarted = performance.now();
          await pool(0, ids.length * passes, CREATE_CONCURRENCY, async (i) => {
            const keyId = ids[i % ids.length] as string;
            const res = await post(kms.url, jwt, 'create-datakey', { key_id: keyId, datakey_length: '512' });
            if (i < MAX_CIPHER_TEXTS) cipherTexts.push({ key_id: keyId, cipher_text: res.cipher_text as string });
          });
          log(`touched ${ids.length} CMKs x${passes} in ${((performance.now() - touchStarted) / 1000).toFixed(1)} s`);

          for (const endpoint of ENDPOINTS) {
            const apiPath = `/v1.0/${PROJECT}/kms/${endpoint}`;
            let body: () => string;
            if (endpoint === 'gen-random') body = () => '{"random_data_length":"512"}';
            else if (endpoint === 'create-datakey' || endpoint === 'create-datakey-without-plaintext') {
              body = () => JSON.stringify({ key_id: ids[randomInt(ids.length)], datakey_length: '512' });
            } else if (endpoint === 'decrypt-datakey') {
              body = () => {
                const c = cipherTexts[randomInt(cipherTexts.length)] as (typeof cipherTexts)[number];
                return JSON.stringify({ ...c, datakey_cipher_length: '64' });
              };
            } else throw new Error(`no request body defined for ${endpoint}`);
            record(workers, cmks, endpoint, await measure(kms.url, apiPath, headers, body));
          }
        }
        const errorsLogged = kms.log().match(/"level":"error"/g)?.length ?? 0;
        if (errorsLogged > 0) {
          failed = true;
          log(`the service logged ${errorsLogged} errors:\n${kms.log().slice(-4000)}`);
        }
      } finally {
        stopping = true;
        await stopProcess(kms.process);
      }
    }
  } finally {
    if (!opts.keep) removeTestToken(token.dir);
    else log(`token and data kept in ${token.dir}`);
  }

  report();
  const bad = rows.filter((r) => r.non2xx > 0 || r.errors > 0 || r.timeouts > 0);
  if (bad.length > 0 || failed) {
    for (const r of bad) {
      log(
        `FAILED: ${r.endpoint} (workers ${r.workers}, CMKs ${r.cmks}): ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts`,
      );
    }
    process.exitCode = 1;
  }
}

function report() {
  const bare = new Map(rows.filter((r) => r.cmks === '-').map((r) => [r.workers, r.rps]));
  const lines = [
    `autocannon: ${CONNECTIONS} connections, ${DURATION} s per row after ${WARMUP} s warm-up, in the bench process on the same ${machine().nproc} cores`,
    '',
    '| workers | CMKs | endpoint | rps (mean) | p50 ms | p99 ms | non-2xx | × bare Express | load before |',
    '|---:|---:|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => {
      const base = bare.get(r.workers);
      const ratio = base ? (r.rps / base).toFixed(2) : 'n/a';
      return `| ${r.workers} | ${r.cmks} | ${r.endpoint} | ${r.rps.toFixed(0)} | ${r.p50} | ${r.p99} | ${r.non2xx + r.errors + r.timeouts} | ${ratio} | ${r.load.toFixed(1)} |`;
    }),
    '',
  ];
  for (const workers of WORKERS) {
    const at = (cmks: number) =>
      rows.find((r) => r.workers === workers && r.cmks === cmks && r.endpoint === 'create-datakey');
    const small = at(CMKS[0] as number);
    const large = at(CMKS[CMKS.length - 1] as number);
    if (small && large && small !== large) {
      lines.push(
        `create-datakey, ${workers} worker(s): ${large.cmks} CMKs / ${small.cmks} CMKs = ${(large.rps / small.rps).toFixed(3)} (target ≥ 0.90)`,
      );
    }
  }
  for (const k of keyCreation) {
    lines.push(
      `create-key: ${k.keys} CMKs in ${k.seconds.toFixed(1)} s = ${k.perSecond.toFixed(0)} keys/s (${CREATE_CONCURRENCY} in flight, ${k.workers} worker(s))`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  if (opts.json) {
    writeFileSync(opts.json, JSON.stringify({ machine: machine(), opts, rows, keyCreation }, null, 2));
  }
}

main().catch((err: unknown) => {
  log(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
