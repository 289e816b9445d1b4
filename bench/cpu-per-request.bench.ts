/**
 * Server CPU per request, the service against bare Express, measured in alternating slices.
 *
 *   node --import tsx bench/cpu-per-request.bench.ts [--rounds 6] [--slice 4] [--endpoint create-datakey]
 *                                                    [--cmks 10000]
 *
 * Requests per second swing by ±30% from one minute to the next on this shared machine, far more than the effects
 * worth measuring. Two things make this benchmark steadier than huawei.bench.ts: it reads each server's own CPU time
 * (utime + stime from /proc, so the load generator's share of the cores does not count) divided by the requests it
 * answered, and it alternates short slices of bare Express and of the service, so that drift of the machine's speed
 * hits both alike. bare µs / service µs is the throughput ratio the two would reach when CPU-bound.
 *
 * With --cmks N (create-datakey only), the project gets N CMKs and a third slice alternates with the other two:
 * create-datakey on a random one of all N CMKs, against the slice on a random one of the first 10, in the same
 * service process — the cost of a large working set of keys, apart from everything else.
 */
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, type Started, spawnServer, stopProcess } from './lib/processes.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '6' },
    slice: { type: 'string', default: '4' },
    connections: { type: 'string', default: '20' },
    endpoint: { type: 'string', default: 'create-datakey' },
    cmks: { type: 'string', default: '1' },
  },
});
const ROUNDS = Number(values.rounds);
const SLICE = Number(values.slice);
const CONNECTIONS = Number(values.connections);
const CMKS = Number(values.cmks);
const log = (line: string) => process.stderr.write(`[cpu] ${line}\n`);

/** utime + stime of a process, in microseconds (/proc/PID/stat fields 14 and 15, in clock ticks of 10 ms). */
function cpuMicros(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}

async function slice(server: Started, apiPath: string, headers: Record<string, string>, body: () => string) {
  const pid = server.process.pid as number;
  const before = cpuMicros(pid);
  const result = await autocannon({
    url: `${server.url}${apiPath}`,
    connections: CONNECTIONS,
    duration: SLICE,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    requests: [{ setupRequest: (req: object) => ({ ...req, body: body() }) }],
  });
  if (result.non2xx > 0 || result.errors > 0)
    throw new Error(`${apiPath}: ${result.non2xx} non-2xx, ${result.errors} errors`);
  return (cpuMicros(pid) - before) / result.requests.total;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main() {
  const token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const main = ensureBuilt(log);
  const bare = await spawnServer(['--import', 'tsx', 'bench/bare-express.ts'], { BARE_PORT: '0' }, 1);
  const kms = await spawnServer(
    [main],
    {
      KMS_DATA_DIR: dataDir,
      KMS_PORT: '0',
      KMS_PIN: token.pin,
      KMS_TOKEN_LABEL: token.tokenLabel,
      KMS_PKCS11_LIBRARY: token.library,
      SOFTHSM2_CONF: token.softhsmConf,
      KMS_LOG_LEVEL: 'info',
      ...connectionLimitsFor(CONNECTIONS),
    },
    1,
  );
  try {
    const auth = { 'x-auth-token': await signProjectToken(loadOrCreateIssuerKeys(dataDir), 'bench', 3600) };
    const post = async (action: string, body: unknown) =>
      (await fetch(`${kms.url}/v1.0/bench/kms/${action}`, {
        method: 'POST',
        headers: auth,
        body: JSON.stringify(body),
      }).then((r) => r.json())) as Record<string, string> & { key_info: { key_id: string } };
    const keyIds: string[] = [];
    const createKeys = async (worker: number) => {
      for (let i = worker; i < Math.max(CMKS, 1); i += 16) {
        keyIds.push((await post('create-key', { key_alias: `cpu-${i}` })).key_info.key_id);
      }
    };
    const started = Date.now();
    await Promise.all(Array.from({ length: 16 }, (_, w) => createKeys(w)));
    if (CMKS > 1) log(`created ${keyIds.length} CMKs in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const keyId = keyIds[0] as string;
    const dataKeyBody = (ids: readonly string[]) => () =>
      JSON.stringify({ key_id: ids[randomInt(ids.length)], datakey_length: '512' });
    const bodies: Record<string, () => string> = {
      'gen-random': () => JSON.stringify({ random_data_length: '512' }),
      'create-datakey': dataKeyBody(keyIds.slice(0, 10)),
    };
    const cipherText = (await post('create-datakey', { key_id: keyId })).cipher_text;
    bodies['decrypt-datakey'] = () =>
      JSON.stringify({ key_id: keyId, cipher_text: cipherText, datakey_cipher_length: '64' });
    const body = bodies[values.endpoint as string];
    if (!body) throw new Error(`--endpoint must be one of ${Object.keys(bodies).join(', ')}`);
    const apiPath = `/v1.0/bench/kms/${values.endpoint}`;
    const manyKeys = CMKS > 10 && values.endpoint === 'create-datakey' ? dataKeyBody(keyIds) : undefined;
    if (manyKeys) {
      // Materialise every CMK in the HSM once, as a long-running service would have.
      for (const id of keyIds) await post('create-datakey', { key_id: id, datakey_length: '8' });
    }

    await slice(bare, apiPath, auth, body); // warm-up, both JIT-compiled before measuring
    await slice(kms, apiPath, auth, body);
    const bareUs: number[] = [];
    const kmsUs: number[] = [];
    const manyUs: number[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      bareUs.push(await slice(bare, apiPath, auth, body));
      kmsUs.push(await slice(kms, apiPath, auth, body));
      if (manyKeys) manyUs.push(await slice(kms, apiPath, auth, manyKeys));
      log(
        `round ${round}: bare ${bareUs.at(-1)?.toFixed(0)} µs/request, service ${kmsUs.at(-1)?.toFixed(0)} µs/request` +
          (manyKeys ? `, service on ${CMKS} CMKs ${manyUs.at(-1)?.toFixed(0)} µs/request` : ''),
      );
    }
    const ratios = bareUs.map((b, i) => b / (kmsUs[i] as number));
    process.stdout.write(
      `${values.endpoint}: server CPU per request, median of ${ROUNDS} alternating ${SLICE} s slices, ` +
        `${CONNECTIONS} connections\n` +
        `  bare Express: ${median(bareUs).toFixed(0)} µs   service: ${median(kmsUs).toFixed(0)} µs   ` +
        `bare/service: ${median(ratios).toFixed(2)} (range ${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})\n`,
    );
    if (manyKeys) {
      const many = kmsUs.map((k, i) => k / (manyUs[i] as number));
      process.stdout.write(
        `  on ${CMKS} CMKs: ${median(manyUs).toFixed(0)} µs; 10 CMKs / ${CMKS} CMKs: ${median(many).toFixed(2)} ` +
          `(range ${Math.min(...many).toFixed(2)}–${Math.max(...many).toFixed(2)})\n`,
      );
    }
  } finally {
    await stopProcess(kms.process);
    await stopProcess(bare.process);
    removeTestToken(token.dir);
  }
}

await main();
