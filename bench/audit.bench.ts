/**
 * The audit trail's cost on the hot path: create-datakey with the audit log off, on, and (with --fsync) on with an
 * fsync per record, in the same run.
 *
 *   node --import tsx bench/audit.bench.ts [--rounds 6] [--slice 4] [--connections 20] [--fsync]
 *
 * One server per setting, side by side on one token and one data directory (so on one key), each a single process
 * of the production build. Slices of each alternate, so that the drift of this shared machine's speed hits all alike
 * (bench/cpu-per-request.bench.ts says why). Per slice: requests per second, and the server's own CPU per request
 * (utime + stime from /proc, the load generator's share left out). Prints the medians and on/off ratios.
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { FileAuditLog } from '../src/audit/file-audit-log.js';
import { loadOrCreateIssuerKeys, signProjectToken } from '../src/auth/local-issuer.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { connectionLimitsFor } from './lib/connection-limits.js';
import { ensureBuilt, machine, type Started, spawnServer, stopProcess } from './lib/processes.js';
import { treeCpuMicros } from './lib/server-cpu.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '6' },
    slice: { type: 'string', default: '4' },
    connections: { type: 'string', default: '20' },
    fsync: { type: 'boolean', default: false },
  },
});
const ROUNDS = Number(values.rounds);
const SLICE = Number(values.slice);
const CONNECTIONS = Number(values.connections);
const PROJECT = 'auditbench';
const log = (line: string) => process.stderr.write(`[audit] ${line}\n`);

interface Setting {
  readonly name: string;
  readonly env: Record<string, string>;
  server?: Started;
  readonly rps: number[];
  readonly cpuUs: number[];
}

async function slice(setting: Setting, apiPath: string, headers: Record<string, string>, body: () => string) {
  const server = setting.server as Started;
  const pid = server.process.pid as number;
  const before = treeCpuMicros(pid);
  const result = await autocannon({
    url: `${server.url}${apiPath}`,
    connections: CONNECTIONS,
    duration: SLICE,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    requests: [{ setupRequest: (req: object) => ({ ...req, body: body() }) }],
  });
  if (result.non2xx > 0 || result.errors > 0) {
    throw new Error(`${setting.name}: ${result.non2xx} non-2xx, ${result.errors} errors`);
  }
  return { rps: result.requests.average, cpuUs: (treeCpuMicros(pid) - before) / result.requests.total };
}

/**
 * The log's own cost, apart from HTTP and the machine's load: µs per `append` of a typical record (a create-datakey's),
 * on a file in the token's directory, as the service writes it.
 */
function appendCost(dir: string, fsync: boolean, count: number): number {
  const auditLog = new FileAuditLog({ dir, slot: 0, maxBytes: 64 * 1024 * 1024, fsync });
  const event = {
    time: new Date().toISOString(),
    dialect: 'huawei',
    requestId: '6f1c1b1e-8d55-4a55-9f7e-2a0e1f3b9c11',
    source: '127.0.0.1',
    caller: 'token:local-user@auditbench',
    projectId: PROJECT,
    operation: 'create-datakey',
    keyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f',
    keyVersion: 0,
    outcome: 'ok',
    status: 200,
    errorCode: undefined,
  } as const;
  try {
    for (let i = 0; i < Math.min(count, 1000); i++) auditLog.append(event); // warm-up
    const started = process.hrtime.bigint();
    for (let i = 0; i < count; i++) auditLog.append(event);
    return Number(process.hrtime.bigint() - started) / 1000 / count;
  } finally {
    auditLog.close();
  }
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main() {
  log(`machine: ${JSON.stringify(machine())}`);
  const token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const main = ensureBuilt(log);
  const appendUs = appendCost(path.join(token.dir, 'append'), false, 100_000);
  const appendFsyncUs = values.fsync ? appendCost(path.join(token.dir, 'append-fsync'), true, 2_000) : undefined;
  log(`append alone: ${appendUs.toFixed(1)} µs${appendFsyncUs ? `, with fsync ${appendFsyncUs.toFixed(0)} µs` : ''}`);
  const common = {
    KMS_DATA_DIR: dataDir,
    KMS_PORT: '0',
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
    KMS_LOG_LEVEL: 'info',
    ...connectionLimitsFor(CONNECTIONS),
  };
  const settings: Setting[] = [
    { name: 'audit off', env: { KMS_AUDIT_ENABLED: 'false' }, rps: [], cpuUs: [] },
    { name: 'audit on', env: { KMS_AUDIT_DIR: path.join(dataDir, 'audit-on') }, rps: [], cpuUs: [] },
    ...(values.fsync
      ? [
          {
            name: 'audit on + fsync',
            env: { KMS_AUDIT_DIR: path.join(dataDir, 'audit-fsync'), KMS_AUDIT_FSYNC: 'true' },
            rps: [],
            cpuUs: [],
          },
        ]
      : []),
  ];
  try {
    // One after the other: the first makes the token's root key, the others find it.
    for (const setting of settings) setting.server = await spawnServer([main], { ...common, ...setting.env }, 1);
    const auth = { 'x-auth-token': await signProjectToken(loadOrCreateIssuerKeys(dataDir), PROJECT, 3600) };
    const first = settings[0]?.server as Started;
    const created = (await fetch(`${first.url}/v1.0/${PROJECT}/kms/create-key`, {
      method: 'POST',
      headers: auth,
      body: JSON.stringify({ key_alias: 'audit-bench' }),
    }).then((r) => r.json())) as { key_info: { key_id: string } };
    const keyId = created.key_info.key_id;
    const body = () => JSON.stringify({ key_id: keyId, datakey_length: '512' });
    const apiPath = `/v1.0/${PROJECT}/kms/create-datakey`;
    for (const setting of settings) await slice(setting, apiPath, auth, body); // warm-up: JIT, key cache
    for (let round = 1; round <= ROUNDS; round++) {
      const line: string[] = [];
      for (const setting of round % 2 === 0 ? [...settings].reverse() : settings) {
        const { rps, cpuUs } = await slice(setting, apiPath, auth, body);
        setting.rps.push(rps);
        setting.cpuUs.push(cpuUs);
        line.push(`${setting.name} ${rps.toFixed(0)} rps ${cpuUs.toFixed(0)} µs/request`);
      }
      log(`round ${round}: ${line.join('; ')}`);
    }
    const [off] = settings as [Setting];
    process.stdout.write(
      `FileAuditLog.append alone (one create-datakey record, in process): ${appendUs.toFixed(1)} µs` +
        (appendFsyncUs ? `; with fsync: ${appendFsyncUs.toFixed(0)} µs` : '') +
        '\n',
    );
    process.stdout.write(
      `create-datakey, medians of ${ROUNDS} alternating ${SLICE} s slices, ${CONNECTIONS} connections, one process each\n`,
    );
    for (const setting of settings) {
      const rpsRatios = setting.rps.map((r, i) => r / (off.rps[i] as number));
      const cpuRatios = setting.cpuUs.map((c, i) => c / (off.cpuUs[i] as number));
      process.stdout.write(
        `  ${setting.name.padEnd(17)} ${median(setting.rps).toFixed(0).padStart(6)} rps ` +
          `${median(setting.cpuUs).toFixed(0).padStart(5)} µs CPU/request` +
          (setting === off
            ? '\n'
            : `   rps ×${median(rpsRatios).toFixed(3)} (${Math.min(...rpsRatios).toFixed(2)}–${Math.max(...rpsRatios).toFixed(2)}), ` +
              `CPU ×${median(cpuRatios).toFixed(3)} (${Math.min(...cpuRatios).toFixed(2)}–${Math.max(...cpuRatios).toFixed(2)})\n`),
      );
    }
  } finally {
    for (const setting of settings) if (setting.server) await stopProcess(setting.server.process);
    removeTestToken(token.dir);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
