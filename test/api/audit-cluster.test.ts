import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditFiles } from '../../src/audit/file-audit-log.js';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { kmsAuditVerify } from '../support/audit-files.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { rawRequest } from '../support/raw-http.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

const P = 'auditcluster';
let token: TestToken;
let service: ChildService;
let auditDir: string;
let authToken: string;

beforeAll(async () => {
  token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  auditDir = path.join(dataDir, 'audit');
  service = await spawnService(
    {
      KMS_DATA_DIR: dataDir,
      KMS_PIN: token.pin,
      KMS_TOKEN_LABEL: token.tokenLabel,
      KMS_PKCS11_LIBRARY: token.library,
      SOFTHSM2_CONF: token.softhsmConf,
      KMS_PORT: String(await freePort()),
      KMS_WORKERS: '2',
    },
    2,
  );
  authToken = await signProjectToken(loadOrCreateIssuerKeys(dataDir), P, 3600);
}, 60_000);

afterAll(async () => {
  if (service) await stopService(service);
  if (token) removeTestToken(token.dir);
});

/** gen-random on a connection of its own (`Connection: close`), so that the primary spreads them over the workers. */
async function genRandom(): Promise<number> {
  const res = await rawRequest(service.url, {
    path: `/v1.0/${P}/kms/gen-random`,
    headers: { 'x-auth-token': authToken, 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify({ random_data_length: '64' }),
  });
  return res.status;
}

const recordsIn = (slot: number) =>
  auditFiles(auditDir, slot).flatMap((file) =>
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as { seq: number; operation: string }),
  );

const listeningPids = () => [...service.log().matchAll(/"pid":(\d+),"msg":"listening"/g)].map((m) => Number(m[1]));

describe('the audit trail of a cluster', () => {
  it('when two workers serve, then each writes a chain of its own, and a replaced worker continues its slot', async () => {
    for (let i = 0; i < 16; i++) expect(await genRandom()).toBe(200);
    const first = recordsIn(1);
    const second = recordsIn(2);
    expect(first.length + second.length).toBe(16);
    // The primary hands connections round-robin: both workers served, each in its own chain.
    expect(first.length).toBeGreaterThan(0);
    expect(second.length).toBeGreaterThan(0);
    expect(recordsIn(0)).toEqual([]);
    for (const slot of [1, 2]) expect(kmsAuditVerify(auditFiles(auditDir, slot)).status).toBe(0);

    // A worker killed outright: the primary starts another in its slot, which resumes that chain.
    const [victim] = listeningPids();
    process.kill(victim as number, 'SIGKILL');
    await expect.poll(() => listeningPids().length, { timeout: 30_000, interval: 200 }).toBe(3);
    for (let i = 0; i < 16; i++) expect(await genRandom()).toBe(200);
    const total = recordsIn(1).length + recordsIn(2).length;
    expect(total).toBe(32);
    for (const slot of [1, 2]) {
      const run = kmsAuditVerify(auditFiles(auditDir, slot));
      expect(run.stdout).toMatch(/^ok: \d+ records/);
      expect(run.status).toBe(0);
    }
  }, 90_000);
});
