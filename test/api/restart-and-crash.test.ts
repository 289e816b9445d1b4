import path from 'node:path';
import Database from 'better-sqlite3';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

const P = 'projectrestart';
let token: TestToken;
let env: Record<string, string>;
let authToken: string;

beforeAll(async () => {
  token = createTestToken();
  env = {
    KMS_DATA_DIR: path.join(token.dir, 'data'),
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
    KMS_PORT: String(await freePort()),
  };
  authToken = await signProjectToken(loadOrCreateIssuerKeys(env.KMS_DATA_DIR as string), P, 3600);
});
afterAll(() => removeTestToken(token.dir));

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
async function call(service: ChildService, action: string, body: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${service.url}/v1.0/${P}/kms/${action}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': authToken },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** Token objects on the token, counted through PKCS#11 from this process (the service has its own session). */
function tokenObjectCount(): number {
  const lib = new pkcs11js.PKCS11();
  lib.load(token.library);
  lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === token.tokenLabel);
    if (!slot) throw new Error('test token not found');
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, token.pin);
    lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_TOKEN, value: true }]);
    const found = lib.C_FindObjects(session, 1000);
    lib.C_FindObjectsFinal(session);
    lib.C_CloseSession(session);
    return found.length;
  } finally {
    lib.C_Finalize();
  }
}

describe('restarts and crashes', () => {
  it('when the service restarts, then keys, aliases and every cipher_text made before decrypt after', async () => {
    const first = await spawnService(env);
    const keyId = (await call(first, 'create-key', { key_alias: 'survivor' })).body.key_info.key_id;
    const dataKey = await call(first, 'create-datakey', { key_id: keyId, encryption_context: { c: '1' } });
    const data = await call(first, 'encrypt-data', { key_id: 'alias/survivor', plain_text: 'still here' });
    await stopService(first);

    const second = await spawnService(env);
    try {
      const opened = await call(second, 'decrypt-datakey', {
        key_id: 'alias/survivor',
        cipher_text: dataKey.body.cipher_text,
        datakey_cipher_length: '64',
        encryption_context: { c: '1' },
      });
      expect(opened.body.data_key).toBe(dataKey.body.plain_text);
      expect((await call(second, 'decrypt-data', { cipher_text: data.body.cipher_text })).body.plain_text).toBe(
        'still here',
      );
    } finally {
      await stopService(second);
    }
  });

  it('when the service is killed with SIGKILL during key creation, then after restart every key works and none is half-made', async () => {
    const victim = await spawnService(env);
    const acknowledged: string[] = [];
    let killed = false;
    const creator = async (worker: number) => {
      for (let i = 0; !killed; i++) {
        try {
          const res = await call(victim, 'create-key', { key_alias: `crash-${worker}-${i}` });
          if (res.status === 200) acknowledged.push(res.body.key_info.key_id);
        } catch {
          return; // the connection died with the process
        }
      }
    };
    const creators = Array.from({ length: 8 }, (_, w) => creator(w));
    await new Promise((r) => setTimeout(r, 400 + Math.floor(Math.random() * 400)));
    killed = true;
    await stopService(victim, 'SIGKILL');
    await Promise.all(creators);
    expect(acknowledged.length).toBeGreaterThan(0);

    const restarted = await spawnService(env);
    try {
      const db = new Database(path.join(env.KMS_DATA_DIR as string, 'kms.db'), { readonly: true });
      const pending = db.prepare("SELECT count(*) AS n FROM keys WHERE state = 'PendingCreation'").get() as {
        n: number;
      };
      const versionless = db
        .prepare(
          'SELECT count(*) AS n FROM keys k WHERE NOT EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = k.id)',
        )
        .get() as { n: number };
      db.close();
      expect(pending.n).toBe(0);
      expect(versionless.n).toBe(0);

      const listed = await call(restarted, 'list-keys', {});
      const ids: string[] = listed.body.keys;
      for (const id of acknowledged) expect(ids).toContain(id);
      for (const id of ids) {
        const made = await call(restarted, 'create-datakey', { key_id: id, datakey_length: '256' });
        expect(made.status).toBe(200);
      }
    } finally {
      await stopService(restarted);
    }
    // The token holds only the root key, the credential key and the secret-sealing key: CMK versions of the default
    // HSM are never token objects, so none can be orphaned.
    expect(tokenObjectCount()).toBe(3);
  });
});
