/**
 * HTTP benchmark of the AWS XKS proxy API (the external key store AWS KMS calls), next to Huawei create-datakey, on a
 * throw-away SoftHSM token.
 *
 *   node --import tsx bench/xks.bench.ts [--workers 1,2] [--seconds 15] [--rounds 3] [--warmup 2]
 *                                        [--connections 50] [--pool 1000] [--integrity SHA_256|none]
 *                                        [--out-dir DIR] [--json FILE] [--keep]
 *
 * The service runs as a child process (the production build, see bench/lib/processes.ts ensureBuilt; `--out-dir`
 * builds into a directory of one's own, for git worktrees that share node_modules), with KMS_REGION=eu-west-1 and the
 * log at info, so that every XKS request is logged as it is in production. An XKS access key of project `bench` is
 * made with the CLI (`kms credentials create --format xks`), a CMK with Huawei create-key.
 *
 * Three operations are measured in one service process, in alternating slices (`--rounds` slices of
 * `--seconds / --rounds` each, the order rotated every round), so that drift of this shared machine's speed hits all
 * three alike; a warm-up slice of each is thrown away first:
 * - Huawei create-datakey, 256 bits, with a project token (as bench/huawei.bench.ts sends it), the baseline;
 * - XKS Encrypt of 32 bytes with a 64-byte AAD and, as AWS KMS asks for it, the ciphertext data integrity value
 *   (which costs a test decryption in the HSM): what AWS KMS sends for a data key it has already encrypted with its
 *   own key material (double encryption), the AAD carrying its blob header and the encryption context;
 * - XKS Decrypt of ciphertexts made by Encrypt beforehand.
 *
 * Every XKS request is signed by @smithy/signature-v4 for the service `kms-xks-proxy`, with the headers AWS KMS
 * signs (host and x-amz-date), and carries its own kmsRequestId, so no two are alike. SigV4 has no nonce: a verifier
 * accepts the same signed request again as long as its date is within the skew window (5 minutes here, as the spec
 * asks), and verifying a replayed request costs it exactly what a fresh one does. So a pool of `--pool` requests per
 * operation is signed before the slices and autocannon sends them round-robin; the pool is signed again before a
 * slice that would end more than 4 minutes after it was signed.
 *
 * Each row gives rps, p50 and p99 over all its slices (one merged latency histogram), the ratio of its rps to
 * create-datakey's, p99 as a share of AWS KMS's 250 ms per-call budget (measured here on loopback: AWS KMS adds the
 * network, ≤ 35 ms round trip by the spec's advice), and the server's CPU per answered request. autocannon runs in
 * THIS process, on the same cores as the server. Exits 1 at any non-2xx, error or timeout, or when the service logged
 * an error.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import autocannon, { type AutocannonRawResult } from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { freePort } from '../test/support/child-service.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, REPO, type Started, spawnServer, stopProcess } from './lib/processes.js';
import { treeCpuMicros } from './lib/server-cpu.js';

const { values: opts } = parseArgs({
  options: {
    workers: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '15' },
    rounds: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '50' },
    pool: { type: 'string', default: '1000' },
    integrity: { type: 'string', default: 'SHA_256' },
    'out-dir': { type: 'string' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});

const WORKERS = opts.workers.split(',').map((v) => Number(v.trim()));
const ROUNDS = Number(opts.rounds);
/** Measured seconds per operation, split into ROUNDS slices. */
const SLICE = Number(opts.seconds) / ROUNDS;
const WARMUP = Number(opts.warmup);
const CONNECTIONS = Number(opts.connections);
const POOL = Number(opts.pool);
const INTEGRITY = opts.integrity === 'none' ? undefined : opts.integrity;
const PROJECT = 'bench';
const REGION = 'eu-west-1';
/** AWS KMS gives up on an XKS call after this long (custom-key-stores.md §1, operational envelope). */
const KMS_BUDGET_MS = 250;
/** A pool is signed again before a slice that would end later than this after its signing: under the 5-minute skew. */
const SIGNATURES_VALID_MS = 4 * 60_000;
/** Distinct ciphertexts the Decrypt pool cycles through, each from its own Encrypt (its own IV). */
const SEALED = 100;
const PLAINTEXT_BYTES = 32;
const AAD_BYTES = 64;

const log = (line: string) => process.stderr.write(`[xks-bench] ${line}\n`);

interface Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** One request as autocannon sends it. */
interface Prepared {
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: string;
}

/** Requests of one operation, signed at `signedAt`, and how to sign a fresh set. */
interface Pool {
  requests: Prepared[];
  signedAt: number;
  readonly sign: () => Promise<Prepared[]>;
}

interface Operation {
  readonly name: string;
  readonly pool: Pool;
  readonly slices: AutocannonRawResult[];
  cpuUs: number;
}

interface Row {
  workers: number;
  operation: string;
  rps: number;
  p50: number;
  p99: number;
  /** Server CPU (every process of the server) per answered request over the measured slices, µs. */
  cpuUs: number;
  total: number;
  seconds: number;
  /** 1-minute load average before the first measured slice (the machine is shared). */
  load: number;
}

const rows: Row[] = [];

/**
 * Signs a request as AWS KMS signs it for an external key store: SigV4, service kms-xks-proxy, the full URI path,
 * SignedHeaders host;x-amz-date (the content type is sent unsigned).
 */
async function signXks(signer: SignatureV4, url: string, apiPath: string, body: string): Promise<Prepared> {
  const target = new URL(url);
  const signed = await signer.sign({
    method: 'POST',
    protocol: 'http:',
    hostname: target.hostname,
    port: Number(target.port),
    path: apiPath,
    query: {},
    headers: { host: target.host },
    body,
  });
  return {
    path: apiPath,
    headers: { ...(signed.headers as Record<string, string>), 'content-type': 'application/json' },
    body,
  };
}

/** Sends one prepared request; throws unless it is answered 200. */
async function send(url: string, req: Prepared) {
  const res = await fetch(`${url}${req.path}`, { method: 'POST', headers: req.headers, body: req.body });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${req.path} answered ${res.status}: ${text}`);
  // biome-ignore lint/suspicious/noExplicitAny: response fields are read by name
  return JSON.parse(text) as any;
}

/** The requestMetadata AWS KMS sends: each request has its own kmsRequestId. */
function requestMetadata(kmsOperation: string) {
  return {
    awsPrincipalArn: 'arn:aws:iam::111122223333:role/bench',
    kmsOperation,
    kmsRequestId: randomUUID(),
    kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  };
}

async function makePool(sign: () => Promise<Prepared[]>): Promise<Pool> {
  return { requests: await sign(), signedAt: Date.now(), sign };
}

/** A pool of `count` requests, each made and signed by `one(i)`. */
function signed(what: string, count: number, one: (i: number) => Promise<Prepared>) {
  return async () => {
    const started = performance.now();
    const requests: Prepared[] = [];
    for (let i = 0; i < count; i++) requests.push(await one(i));
    log(`signed ${count} ${what} requests in ${(performance.now() - started).toFixed(0)} ms`);
    return requests;
  };
}

/** Runs one slice of `seconds` of `pool`'s requests, round-robin; throws at any non-2xx, error or timeout. */
async function slice(server: Started, name: string, pool: Pool, seconds: number): Promise<AutocannonRawResult> {
  if (Date.now() - pool.signedAt + (seconds + 5) * 1000 > SIGNATURES_VALID_MS) {
    pool.requests = await pool.sign();
    pool.signedAt = Date.now();
  }
  const requests = pool.requests;
  let next = 0;
  const r = await autocannon({
    url: server.url,
    connections: CONNECTIONS,
    duration: seconds,
    method: 'POST',
    skipAggregateResult: true,
    requests: [
      {
        setupRequest: (req: object) => {
          const p = requests[next++ % requests.length] as Prepared;
          return { ...req, method: 'POST', path: p.path, headers: p.headers, body: p.body };
        },
      },
    ],
  });
  if (r.non2xx > 0 || r.errors > 0 || r.timeouts > 0) {
    throw new Error(
      `${name}: ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts; ` +
        `status codes ${JSON.stringify(r.statusCodeStats)}`,
    );
  }
  return r;
}

async function measureAll(server: Started, workers: number, operations: Operation[]) {
  for (const op of operations) await slice(server, `${op.name} (warm-up)`, op.pool, WARMUP);
  const load = loadavg()[0] as number;
  const pid = server.process.pid as number;
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < operations.length; i++) {
      const op = operations[(round + i) % operations.length] as Operation;
      const cpuBefore = treeCpuMicros(pid);
      const r = await slice(server, op.name, op.pool, SLICE);
      op.cpuUs += treeCpuMicros(pid) - cpuBefore;
      op.slices.push(r);
      log(
        `workers=${workers} round ${round + 1}/${ROUNDS} ${op.name}: ` +
          `${(r.totalCompletedRequests / r.duration).toFixed(0)} rps`,
      );
    }
  }
  for (const op of operations) {
    const merged = autocannon.aggregateResult(op.slices, { url: server.url, connections: CONNECTIONS });
    const total = op.slices.reduce((sum, r) => sum + r.totalCompletedRequests, 0);
    const seconds = op.slices.reduce((sum, r) => sum + r.duration, 0);
    const row: Row = {
      workers,
      operation: op.name,
      rps: total / seconds,
      p50: merged.latency.p50,
      p99: merged.latency.p99,
      cpuUs: op.cpuUs / total,
      total,
      seconds,
      load,
    };
    rows.push(row);
    log(
      `workers=${workers} ${row.operation}: ${row.rps.toFixed(0)} rps, p50 ${row.p50} ms, p99 ${row.p99} ms, ` +
        `server CPU ${row.cpuUs.toFixed(0)} µs/request, ${total} requests in ${seconds.toFixed(1)} s`,
    );
  }
}

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  log(
    `workers ${WORKERS.join(',')}; ${CONNECTIONS} connections; per operation ${WARMUP} s warm-up + ${ROUNDS} ` +
      `alternating slices of ${SLICE.toFixed(1)} s; ${POOL} signed requests per XKS operation; integrity value ` +
      `${INTEGRITY ?? 'not asked'}; autocannon in the bench process, on the same cores as the server`,
  );
  const builtMain = ensureBuilt(log, opts['out-dir'] ? path.resolve(opts['out-dir']) : undefined);
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
    const printed = execFileSync(
      process.execPath,
      [cli, 'credentials', 'create', '--project', PROJECT, '--format', 'xks'],
      { cwd: REPO, env: { ...process.env, ...env }, encoding: 'utf8' },
    );
    const accessKeyId = /^XKS_ACCESS_KEY_ID=(\S+)$/m.exec(printed)?.[1];
    const secretAccessKey = /^XKS_SECRET_ACCESS_KEY=(\S+)$/m.exec(printed)?.[1];
    if (!accessKeyId || !secretAccessKey) throw new Error('kms credentials create --format xks printed no XKS key');
    log(`XKS access key ${accessKeyId} of project ${PROJECT}`);
    const credentials: Credentials = { accessKeyId, secretAccessKey };
    const signer = new SignatureV4({ service: 'kms-xks-proxy', region: REGION, sha256: Sha256, credentials });
    const jwt = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), PROJECT, 6 * 3600);
    let keyId = '';

    for (const workers of WORKERS) {
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
        const huaweiHeaders = { 'content-type': 'application/json', 'x-auth-token': jwt };
        if (keyId === '') {
          const created = await send(kms.url, {
            path: `/v1.0/${PROJECT}/kms/create-key`,
            headers: huaweiHeaders,
            body: JSON.stringify({ key_alias: 'xks-bench' }),
          });
          keyId = created.key_info.key_id as string;
          log(`CMK ${keyId} made by Huawei create-key`);
        }
        const createDatakey: Prepared = {
          path: `/v1.0/${PROJECT}/kms/create-datakey`,
          headers: huaweiHeaders,
          body: JSON.stringify({ key_id: keyId, datakey_length: '256' }),
        };
        const keyPath = (operation: string) => `/xks/${PROJECT}/kms/xks/v1/keys/${keyId}/${operation}`;
        const aad = randomBytes(AAD_BYTES).toString('base64');
        const encryptRequest = () => {
          const plaintext = randomBytes(PLAINTEXT_BYTES);
          const body = JSON.stringify({
            requestMetadata: requestMetadata('GenerateDataKey'),
            plaintext: plaintext.toString('base64'),
            encryptionAlgorithm: 'AES_GCM',
            additionalAuthenticatedData: aad,
            ...(INTEGRITY ? { ciphertextDataIntegrityValueAlgorithm: INTEGRITY } : {}),
          });
          plaintext.fill(0);
          return signXks(signer, kms.url, keyPath('encrypt'), body);
        };

        // The ciphertexts to decrypt, made beforehand; this also lets every worker resolve the XKS key's secret and
        // the CMK before anything is measured. One round trip is checked end to end.
        const sealed: Record<string, string>[] = [];
        for (let i = 0; i < Math.max(SEALED, 4 * workers); i++) {
          const req = await encryptRequest();
          const answer = await send(kms.url, req);
          const { ciphertext, initializationVector, authenticationTag, ciphertextMetadata } = answer;
          if (i === 0) {
            const decrypted = await send(
              kms.url,
              await signXks(
                signer,
                kms.url,
                keyPath('decrypt'),
                JSON.stringify({
                  requestMetadata: requestMetadata('Decrypt'),
                  ciphertext,
                  initializationVector,
                  authenticationTag,
                  ...(ciphertextMetadata ? { ciphertextMetadata } : {}),
                  encryptionAlgorithm: 'AES_GCM',
                  additionalAuthenticatedData: aad,
                }),
              ),
            );
            if (decrypted.plaintext !== JSON.parse(req.body).plaintext) throw new Error('XKS Decrypt gave other bytes');
          }
          sealed.push({
            ciphertext,
            initializationVector,
            authenticationTag,
            ...(ciphertextMetadata ? { ciphertextMetadata } : {}),
          });
        }
        for (let i = 0; i < 4 * workers; i++) await send(kms.url, createDatakey);

        const operations: Operation[] = [
          {
            name: 'Huawei create-datakey (256 bit), token',
            // A token is a bearer credential: the same request every time is what a client sends.
            pool: await makePool(async () => [createDatakey]),
            slices: [],
            cpuUs: 0,
          },
          {
            name: `XKS Encrypt (${PLAINTEXT_BYTES} B, ${AAD_BYTES} B AAD${INTEGRITY ? `, ${INTEGRITY} integrity` : ''})`,
            pool: await makePool(signed('XKS Encrypt', POOL, () => encryptRequest())),
            slices: [],
            cpuUs: 0,
          },
          {
            name: `XKS Decrypt (${PLAINTEXT_BYTES} B, ${AAD_BYTES} B AAD)`,
            pool: await makePool(
              signed('XKS Decrypt', POOL, (i) =>
                signXks(
                  signer,
                  kms.url,
                  keyPath('decrypt'),
                  JSON.stringify({
                    requestMetadata: requestMetadata('Decrypt'),
                    ...sealed[i % sealed.length],
                    encryptionAlgorithm: 'AES_GCM',
                    additionalAuthenticatedData: aad,
                  }),
                ),
              ),
            ),
            slices: [],
            cpuUs: 0,
          },
        ];
        await measureAll(kms, workers, operations);

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
  const baseline = new Map(rows.filter((r) => r.operation.startsWith('Huawei')).map((r) => [r.workers, r]));
  const lines = [
    `autocannon: ${CONNECTIONS} connections, per operation ${ROUNDS} alternating slices of ${SLICE.toFixed(1)} s ` +
      `after ${WARMUP} s warm-up, in the bench process on the same ${machine().nproc} cores; ` +
      `AWS KMS's budget per XKS call: ${KMS_BUDGET_MS} ms`,
    '',
    `| workers | operation | rps | p50 ms | p99 ms | p99 / ${KMS_BUDGET_MS} ms | × create-datakey rps | server CPU µs/request | load before |`,
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => {
      const base = baseline.get(r.workers);
      const ratio = base ? (r.rps / base.rps).toFixed(2) : 'n/a';
      const budget = `${((100 * r.p99) / KMS_BUDGET_MS).toFixed(1)}%`;
      return `| ${r.workers} | ${r.operation} | ${r.rps.toFixed(0)} | ${r.p50} | ${r.p99} | ${budget} | ${ratio} | ${r.cpuUs.toFixed(0)} | ${r.load.toFixed(1)} |`;
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
