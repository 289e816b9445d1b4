import { readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantConnection } from '../support/key-stores.js';
import { type KeyStoreTestService, startKeyStoreTestService } from '../support/key-stores.js';

const PROJECT = 'failing-tenant';
let t: KeyStoreTestService;
beforeAll(async () => {
  t = await startKeyStoreTestService();
});
afterAll(async () => t?.destroy());

async function keyInNewStore(connection: TenantConnection): Promise<string> {
  const { keyStores, keys } = t.kms.running.services;
  const store = await keyStores.create({
    projectId: PROJECT,
    name: connection.id,
    connectionId: connection.id,
    trustAnchorCertificate: '',
    pin: Buffer.from(connection.pin),
  });
  await keyStores.connect(PROJECT, store.id);
  await keyStores.settled();
  return (await keys.create({ projectId: PROJECT, alias: '', description: '', keyStoreId: store.id })).id;
}

const dataKeyStatus = async (keyId: string) =>
  (await t.kms.call(PROJECT, 'create-datakey', { key_id: keyId, datakey_length: '256' })).status;

describe('a tenant token that goes away', () => {
  it("when a store's SoftHSM token is deleted under the running service, then only its keys fail, with a retryable error, and the default token (same library) and another store keep serving", async () => {
    const own = await t.kms.running.services.keys.create({ projectId: PROJECT, alias: '', description: '' });
    const failing = await keyInNewStore(t.softhsm);
    const other = await keyInNewStore(t.nss);
    for (const id of [own.id, failing, other]) expect(await dataKeyStatus(id)).toBe(200);

    // The tenant's token directory, found by its label, among the tokens of the SoftHSM directory it shares with the
    // default token.
    const tokens = path.join(t.softhsm.token.dir, 'tokens');
    const tenantDirs = readdirSync(tokens).filter((dir) =>
      readFileSync(path.join(tokens, dir, 'token.object')).includes(Buffer.from(t.softhsm.token.tokenLabel)),
    );
    expect(tenantDirs).toHaveLength(1);
    rmSync(path.join(tokens, tenantDirs[0] as string), { recursive: true, force: true });

    for (let round = 0; round < 3; round++) {
      expect(await dataKeyStatus(own.id)).toBe(200);
      const gone = await t.kms.call(PROJECT, 'create-datakey', { key_id: failing, datakey_length: '256' });
      expect([gone.status, gone.body.error?.error_code]).toEqual([503, 'KMS.0104']);
      expect(await dataKeyStatus(other)).toBe(200);
    }
  });
});
