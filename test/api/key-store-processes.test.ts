import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import path from 'node:path';
import Database from 'better-sqlite3';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { addSoftHsmToken, createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

/**
 * Key stores served by real service processes: killed during key creation in a store, and in a cluster of two
 * workers. The tenant's store is made and used through the Huawei dialect, over HTTP.
 */
const P = 'projectkeystores';
const CONNECTION_ID = 'cluster-tenantcrashtest';
/** Kept and returned, never used to connect: its content does not matter here. */
const TENANT_CA = '-----BEGIN CERTIFICATE-----\nMIIBtenantCA\n-----END CERTIFICATE-----\n';
let token: TestToken;
let tenant: TestToken;
let env: Record<string, string>;
let authToken: string;

beforeAll(async () => {
  token = createTestToken();
  // Before any process opens the library: SoftHSM lists the tokens of its directory at C_Initialize.
  tenant = addSoftHsmToken(token);
  const connections = path.join(token.dir, 'connections.json');
  writeFileSync(
    connections,
    JSON.stringify([
      { id: CONNECTION_ID, library: tenant.library, tokenLabel: tenant.tokenLabel, keyScheme: 'token-object' },
    ]),
  );
  env = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
    KMS_KEY_STORE_CONNECTIONS_FILE: connections,
  };
  authToken = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), P, 3600);
});
afterAll(() => removeTestToken(token.dir));

/** One request on a fresh connection (in a cluster, the primary hands successive connections to different workers). */
// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
function call(service: ChildService, pathname: string, body?: unknown): Promise<{ status: number; body: any }> {
  const url = new URL(`/v1.0/${P}/${pathname}`, service.url);
  const payload = body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', 'x-auth-token': authToken, connection: 'close' },
      },
      (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => {
          text += chunk.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

async function enabledKeystore(service: ChildService, alias: string): Promise<string> {
  const made = await call(service, 'keystores', {
    keystore_alias: alias,
    hsm_cluster_id: CONNECTION_ID,
    hsm_ca_cert: TENANT_CA,
    hsm_user_pin: tenant.pin,
  });
  expect(made.status, JSON.stringify(made.body)).toBe(200);
  const id = made.body.keystore.keystore_id as string;
  const enabled = await call(service, `keystores/${id}/enable`);
  expect(enabled.body, JSON.stringify(enabled.body)).toEqual({
    keystore: { keystore_id: id, keystore_state: 'ENABLED' },
  });
  return id;
}

/** Labels of the secret keys on the tenant's token, read through PKCS#11 by this process. */
function tenantKeyLabels(): string[] {
  process.env.SOFTHSM2_CONF = token.softhsmConf;
  const lib = new pkcs11js.PKCS11();
  lib.load(tenant.library);
  lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === tenant.tokenLabel);
    if (!slot) throw new Error('tenant token not found');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, tenant.pin);
    lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }]);
    const found = lib.C_FindObjects(session, 10_000);
    lib.C_FindObjectsFinal(session);
    const labels = found.map((handle) =>
      String(lib.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value ?? ''),
    );
    lib.C_CloseSession(session);
    return labels.sort();
  } finally {
    lib.C_Finalize();
  }
}

function keysInDatabase(): { id: string; state: string; keyStoreId: string | null }[] {
  const db = new Database(path.join(env.KMS_DATA_DIR as string, 'kms.db'), { readonly: true });
  try {
    return db.prepare('SELECT id, state, key_store_id AS keyStoreId FROM keys').all() as {
      id: string;
      state: string;
      keyStoreId: string | null;
    }[];
  } finally {
    db.close();
  }
}

/** The store the first test makes, which the second enables again (a connection serves one store). */
let keystoreId: string;

const arn = (keyId: string) => `arn:aws:kms:local-1:${P}:key/${keyId}`;

describe('key stores under real service processes', () => {
  it('when the service is killed with SIGKILL during key creation in a store, then after restart every acknowledged key works and the tenant token holds exactly one object per key', async () => {
    const victim = await spawnService({ ...env, KMS_PORT: String(await freePort()) });
    keystoreId = await enabledKeystore(victim, 'crash-store');
    const acknowledged: string[] = [];
    let killed = false;
    const creator = async (worker: number) => {
      for (let i = 0; !killed; i++) {
        try {
          const res = await call(victim, 'kms/create-key', {
            key_alias: `crash-${worker}-${i}`,
            keystore_id: keystoreId,
          });
          if (res.status === 200) acknowledged.push(res.body.key_info.key_id);
        } catch {
          return; // the connection died with the process
        }
      }
    };
    const creators = Array.from({ length: 6 }, (_, w) => creator(w));
    await new Promise((r) => setTimeout(r, 500 + Math.floor(Math.random() * 500)));
    killed = true;
    await stopService(victim, 'SIGKILL');
    await Promise.all(creators);
    expect(acknowledged.length).toBeGreaterThan(0);

    const restarted = await spawnService({ ...env, KMS_PORT: String(await freePort()) });
    try {
      const keys = keysInDatabase();
      expect(keys.filter((k) => k.state === 'PendingCreation')).toEqual([]);
      const inStore = keys.filter((k) => k.keyStoreId === keystoreId).map((k) => k.id);
      for (const id of acknowledged) expect(inStore).toContain(id);
      // No object that no key knows of, and no key without its object.
      expect(tenantKeyLabels()).toEqual(inStore.map(arn).sort());
      for (const id of inStore) {
        const made = await call(restarted, 'kms/create-datakey', { key_id: id, datakey_length: '256' });
        expect(made.status, JSON.stringify(made.body)).toBe(200);
      }
      // Clean-up for the next test: the store is left disabled.
      expect((await call(restarted, `keystores/${keystoreId}/disable`)).status).toBe(200);
    } finally {
      await stopService(restarted);
    }
  }, 60_000);

  it('when two workers serve a store, then a key made through one is used through both, and a disable through one is honoured by both', async () => {
    const cluster = await spawnService({ ...env, KMS_PORT: String(await freePort()), KMS_WORKERS: '2' }, 2);
    try {
      const enabled = await call(cluster, `keystores/${keystoreId}/enable`);
      expect(enabled.body.keystore, JSON.stringify(enabled.body)).toMatchObject({ keystore_state: 'ENABLED' });
      const made = await call(cluster, 'kms/create-key', { key_alias: 'cluster-key', keystore_id: keystoreId });
      expect(made.status, JSON.stringify(made.body)).toBe(200);
      const keyId = made.body.key_info.key_id as string;
      // Fresh connections alternate between the workers: each opens the tenant's token on its first use.
      for (let i = 0; i < 6; i++) {
        const used = await call(cluster, 'kms/create-datakey', { key_id: keyId, datakey_length: '256' });
        expect(used.status, JSON.stringify(used.body)).toBe(200);
      }
      expect((await call(cluster, `keystores/${keystoreId}/disable`)).status).toBe(200);
      for (let i = 0; i < 6; i++) {
        const refused = await call(cluster, 'kms/create-datakey', { key_id: keyId, datakey_length: '256' });
        expect([refused.status, refused.body.error?.error_code]).toEqual([400, 'KMS.0340']);
      }
    } finally {
      await stopService(cluster);
    }
  }, 60_000);
});
