/**
 * HTTP benchmark of the signed dialects, AWS KMS JSON 1.1 (SigV4), Alibaba Cloud KMS RPC (HMAC-SHA1, one nonce
 * per request) and Huawei AK/SK (SDK-HMAC-SHA256), against the Huawei dialect with a token and a bare Express 5
 * route, on a throw-away SoftHSM token.
 *
 *   node --import tsx bench/signed-dialects.bench.ts [--workers 1,2] [--duration 10] [--warmup 3]
 *                                        [--connections 50] [--pool 2000] [--json FILE] [--keep]
 *
 * The service runs as a child process (the production build, see bench/lib/processes.ts ensureBuilt), with
 * KMS_REGION=eu-west-1. An access key of project `bench` is made with the CLI (`kms credentials create`), a CMK with
 * a signed CreateKey. Every AWS request is signed by @smithy/signature-v4, the AWS SDK's own signer: as signatures
 * cover the date, a pool of `--pool` requests per endpoint is signed just before each figure (each with its own
 * `amz-sdk-invocation-id`, a signed header the SDK sends too, so no two are alike) and autocannon sends them
 * round-robin. A signature stays valid for 15 minutes, far longer than a figure. Huawei AK/SK requests are pooled
 * the same way, signed as Huawei's Python SDK signs them (test/support/huawei-sdk.ts), each with its own `sequence`. An Alibaba request must not be
 * sent twice (the service records every SignatureNonce), so each is signed as autocannon sends it, with the SDK's
 * own signer (@alicloud/rpc-util): that costs the bench process, on the same cores, about as much as a client pays.
 *
 * Each row also gives the server's CPU per answered request: utime + stime from /proc of the server process and its
 * cluster workers, over the measured seconds (not the warm-up), as bench/cpu-per-request.bench.ts does. autocannon
 * runs in THIS process, on the same cores as the server. Exits 1 at the first measurement with any non-2xx, error or
 * timeout, or when the service logged an error.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import autocannon, { type AutocannonResult } from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { signedRpcParams } from '../test/support/alibaba-sdk.js';
import { freePort } from '../test/support/child-service.js';
import { sdkRequest } from '../test/support/huawei-sdk.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, REPO, type Started, spawnServer, stopProcess } from './lib/processes.js';
import { treeCpuMicros } from './lib/server-cpu.js';

const { values: opts } = parseArgs({
  options: {
    workers: { type: 'string', default: '1' },
    duration: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    connections: { type: 'string', default: '50' },
    pool: { type: 'string', default: '2000' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

const WORKERS = opts.workers.split(',').map((v) => Number(v.trim()));
const DURATION = Number(opts.duration);
const WARMUP = Number(opts.warmup);
const CONNECTIONS = Number(opts.connections);
const POOL = Number(opts.pool);
const PROJECT = 'bench';
const REGION = 'eu-west-1';

const log = (line: string) => process.stderr.write(`[signed-bench] ${line}\n`);

interface Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** One request as autocannon sends it. */
interface Prepared {
  readonly headers: Record<string, string>;
  readonly body: string;
}

interface Row {
  workers: number;
  endpoint: string;
  rps: number;
  p50: number;
  p99: number;
  /** Server CPU (every process of the server) per answered request over the measured seconds, µs. */
  cpuUs: number;
  non2xx: number;
  errors: number;
  timeouts: number;
  total: number;
  /** 1-minute load average just before the measurement (the machine is shared). */
  load: number;
}

const rows: Row[] = [];

/** A SigV4 signer for the access key, as the AWS SDK signs KMS requests. */
function signerFor(credentials: Credentials): SignatureV4 {
  return new SignatureV4({ service: 'kms', region: REGION, sha256: Sha256, credentials });
}

/** Signs one JSON 1.1 request of `operation` for the server at `url`. */
async function sign(signer: SignatureV4, url: string, operation: string, body: string): Promise<Prepared> {
  const target = new URL(url);
  const signed = await signer.sign({
    method: 'POST',
    protocol: 'http:',
    hostname: target.hostname,
    port: Number(target.port),
    path: '/',
    query: {},
    headers: {
      host: target.host,
      'content-type': 'application/x-amz-json-1.1',
      'x-amz-target': `TrentService.${operation}`,
      'amz-sdk-invocation-id': randomUUID(),
      'amz-sdk-request': 'attempt=1; max=1',
    },
    body,
  });
  return { headers: signed.headers as Record<string, string>, body };
}

/** Sends one signed request; throws unless it is answered 200. */
async function awsCall(signer: SignatureV4, url: string, operation: string, input: unknown) {
  const req = await sign(signer, url, operation, JSON.stringify(input));
  const res = await fetch(`${url}/`, { method: 'POST', headers: req.headers, body: req.body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${operation} answered ${res.status}: ${text}`);
  // biome-ignore lint/suspicious/noExplicitAny: response fields are read by name
  return JSON.parse(text) as any;
}

/**
 * A fresh, signed Alibaba RPC request (form body) for every call: nonces may be used once only.
 */
function alibabaRequests(credentials: Credentials, params: Record<string, string>): () => Prepared {
  return () => {
    const all = signedRpcParams(credentials, params);
    return {
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(all).toString(),
    };
  };
}

/**
 * One measurement: `warmup` seconds thrown away, then `duration` seconds, the requests taken round-robin from
 * `requests` (or made one by one by it); the server's CPU is read around the measured part only. Throws on any
 * non-2xx, error or timeout.
 */
async function measure(
  server: Started,
  workers: number,
  endpoint: string,
  apiPath: string,
  requests: Prepared[] | (() => Prepared),
) {
  let next = 0;
  const take = typeof requests === 'function' ? requests : () => requests[next++ % requests.length] as Prepared;
  const options = {
    url: `${server.url}${apiPath}`,
    connections: CONNECTIONS,
    method: 'POST',
    requests: [
      {
        setupRequest: (req: object) => {
          const r = take();
          return { ...req, method: 'POST', path: apiPath, headers: r.headers, body: r.body };
        },
      },
    ],
  };
  const load = loadavg()[0] as number;
  const check = (r: AutocannonResult, what: string) => {
    if (r.non2xx > 0 || r.errors > 0 || r.timeouts > 0) {
      throw new Error(
        `${endpoint} (workers ${workers}, ${what}): ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts; ` +
          `status codes ${JSON.stringify(r.statusCodeStats)}`,
      );
    }
  };
  if (WARMUP > 0) check(await autocannon({ ...options, duration: WARMUP }), 'warm-up');
  const pid = server.process.pid as number;
  const cpuBefore = treeCpuMicros(pid);
  const r = await autocannon({ ...options, duration: DURATION });
  const cpuUs = (treeCpuMicros(pid) - cpuBefore) / r.requests.total;
  const row: Row = {
    workers,
    endpoint,
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    cpuUs,
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    total: r.requests.total,
    load,
  };
  rows.push(row);
  log(
    `workers=${workers} ${endpoint}: ${row.rps.toFixed(0)} rps, p50 ${row.p50} ms, p99 ${row.p99} ms, ` +
      `server CPU ${cpuUs.toFixed(0)} µs/request, non-2xx ${row.non2xx}, errors ${row.errors}, ` +
      `timeouts ${row.timeouts}, load before ${load.toFixed(1)}`,
  );
  check(r, 'measured');
}

/** `count` copies of a plain JSON request (the Huawei dialect and the baseline need no per-request signature). */
function plain(count: number, headers: Record<string, string>, body: string): Prepared[] {
  return Array.from({ length: count }, () => ({ headers: { 'content-type': 'application/json', ...headers }, body }));
}

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  log(
    `workers ${WORKERS.join(',')}; ${CONNECTIONS} connections; ${WARMUP} s warm-up + ${DURATION} s per figure; ` +
      `${POOL} signed requests per AWS figure; autocannon in the bench process, on the same cores as the server`,
  );
  const builtMain = ensureBuilt(log);
  const cli = path.join(path.dirname(builtMain), 'cli', 'kms.js');

  const token = createTestToken();
  const env: Record<string, string> = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_HOST: '127.0.0.1',
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    KMS_REGION: REGION,
    SOFTHSM2_CONF: token.softhsmConf,
    ...connectionLimitsFor(CONNECTIONS),
  };
  let failed = false;
  try {
    // The CLI opens the token and the database itself, before any service runs on them.
    const printed = execFileSync(process.execPath, [cli, 'credentials', 'create', '--project', PROJECT], {
      cwd: REPO,
      env: { ...process.env, ...env },
      encoding: 'utf8',
    });
    const accessKeyId = /^AWS_ACCESS_KEY_ID=(\S+)$/m.exec(printed)?.[1];
    const secretAccessKey = /^AWS_SECRET_ACCESS_KEY=(\S+)$/m.exec(printed)?.[1];
    if (!accessKeyId || !secretAccessKey) throw new Error(`kms credentials create printed:\n${printed}`);
    log(`access key ${accessKeyId} of project ${PROJECT}`);
    const signer = signerFor({ accessKeyId, secretAccessKey });
    const alibaba = (params: Record<string, string>) => alibabaRequests({ accessKeyId, secretAccessKey }, params);
    const jwt = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), PROJECT, 6 * 3600);
    let keyId = '';

    for (const workers of WORKERS) {
      // The baseline gets a body shaped like GenerateDataKey's, so that parsing costs the same.
      const sampleBody = JSON.stringify({ KeyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f', KeySpec: 'AES_256' });
      const barePort = await freePort();
      const bare = await spawnServer(
        ['--import', 'tsx', path.join(REPO, 'bench/bare-express.ts')],
        { BARE_PORT: String(barePort), BARE_WORKERS: String(workers) },
        workers,
      );
      try {
        const barePath = `/v1.0/${PROJECT}/kms/bare`;
        await measure(bare, workers, 'bare Express 5', barePath, plain(1, {}, sampleBody));
      } finally {
        await stopProcess(bare.process);
      }

      const kmsPort = await freePort();
      const kms = await spawnServer(
        [builtMain],
        { ...env, KMS_PORT: String(kmsPort), KMS_WORKERS: String(workers), KMS_LOG_LEVEL: 'info' },
        workers,
      );
      let stopping = false;
      kms.process.once('exit', (code, signal) => {
        if (stopping) return;
        failed = true;
        log(
          `FAILED: the service exited (${code ?? signal}) during the run; its log ends with:\n${kms.log().slice(-6000)}`,
        );
      });
      try {
        if (keyId === '') {
          const created = await awsCall(signer, kms.url, 'CreateKey', { Description: 'signed-dialects.bench' });
          keyId = created.KeyMetadata.KeyId as string;
          log(`CMK ${keyId} made by a signed CreateKey`);
        }
        const gdk = JSON.stringify({ KeyId: keyId, KeySpec: 'AES_256' });
        // Every worker derives the access key's secret and the CMK's key once, outside the measurement.
        for (let i = 0; i < 4 * workers; i++) await awsCall(signer, kms.url, 'GenerateDataKey', JSON.parse(gdk));

        const signedPool = async (operation: string, body: string) => {
          const started = performance.now();
          const pool: Prepared[] = [];
          for (let i = 0; i < POOL; i++) pool.push(await sign(signer, kms.url, operation, body));
          log(`signed ${POOL} ${operation} requests in ${(performance.now() - started).toFixed(0)} ms`);
          return pool;
        };
        const random = await signedPool('GenerateRandom', JSON.stringify({ NumberOfBytes: 64 }));
        await measure(kms, workers, 'AWS GenerateRandom (64 B)', '/', random);
        const dataKeys = await signedPool('GenerateDataKey', gdk);
        await measure(kms, workers, 'AWS GenerateDataKey (AES_256)', '/', dataKeys);
        await measure(kms, workers, 'Alibaba GetRandomPassword (32)', '/', alibaba({ Action: 'GetRandomPassword' }));
        const alibabaDataKeys = alibaba({ Action: 'GenerateDataKey', KeyId: keyId, KeySpec: 'AES_256' });
        await measure(kms, workers, 'Alibaba GenerateDataKey (AES_256)', '/', alibabaDataKeys);
        const huaweiPath = `/v1.0/${PROJECT}/kms/create-datakey`;
        const huawei = plain(1, { 'x-auth-token': jwt }, JSON.stringify({ key_id: keyId, datakey_length: '256' }));
        await measure(kms, workers, 'Huawei create-datakey (256 bit), token', huaweiPath, huawei);
        const huaweiSigned = Array.from({ length: POOL }, (): Prepared => {
          const wire = sdkRequest('python', {
            url: `${kms.url}${huaweiPath}`,
            body: { key_id: keyId, datakey_length: '256', sequence: randomUUID() },
            credentials: { accessKeyId, secretAccessKey, projectId: PROJECT },
          });
          return { headers: Object.fromEntries(wire.headers), body: wire.body.toString() };
        });
        await measure(kms, workers, 'Huawei create-datakey (256 bit), AK/SK', huaweiPath, huaweiSigned);

        const errorsLogged = kms.log().match(/"level":"error"/g)?.length ?? 0;
        if (errorsLogged > 0) throw new Error(`the service logged ${errorsLogged} errors:\n${kms.log().slice(-4000)}`);
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
  if (failed) process.exitCode = 1;
}

function report() {
  const bare = new Map(rows.filter((r) => r.endpoint.startsWith('bare')).map((r) => [r.workers, r]));
  const lines = [
    `autocannon: ${CONNECTIONS} connections, ${DURATION} s per row after ${WARMUP} s warm-up, in the bench process on the same ${machine().nproc} cores`,
    '',
    '| workers | endpoint | rps (mean) | p50 ms | p99 ms | × bare Express rps | server CPU µs/request | bare µs / this µs | load before |',
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => {
      const base = bare.get(r.workers);
      const ratio = base ? (r.rps / base.rps).toFixed(2) : 'n/a';
      const cpuRatio = base ? (base.cpuUs / r.cpuUs).toFixed(2) : 'n/a';
      return `| ${r.workers} | ${r.endpoint} | ${r.rps.toFixed(0)} | ${r.p50} | ${r.p99} | ${ratio} | ${r.cpuUs.toFixed(0)} | ${cpuRatio} | ${r.load.toFixed(1)} |`;
    }),
    '',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (opts.json) writeFileSync(opts.json, JSON.stringify({ machine: machine(), opts, rows }, null, 2));
}

main().catch((err: unknown) => {
  log(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});
