import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HUAWEI_ERROR_TABLE } from '../../src/api/huawei/errors.js';
import { STALE_CONNECTING_MS } from '../../src/core/key-store.service.js';
import { type KeyStoreRecord, pinAad } from '../../src/core/key-stores.js';
import { acquireLibrary } from '../../src/hsm/pkcs11-library.js';
import {
  callCount,
  type KeyStoreTestService,
  RESTRICTED_PROJECT,
  startKeyStoreTestService,
  type TenantConnection,
} from '../support/key-stores.js';

const PROJECT = 'tenant-project';
const OTHER_PROJECT = 'other-project';

let t: KeyStoreTestService;
beforeAll(async () => {
  t = await startKeyStoreTestService();
});
afterAll(async () => t?.destroy());

const keyStores = () => t.kms.running.services.keyStores;
const keys = () => t.kms.running.services.keys;

/** A store on the connection, connected and waited for. */
async function connectedStore(connection: TenantConnection, project = PROJECT): Promise<KeyStoreRecord> {
  const store = await keyStores().create({
    projectId: project,
    name: `store-${connection.id}`,
    connectionId: connection.id,
    trustAnchorCertificate: 'tenant CA',
    pin: Buffer.from(connection.pin),
  });
  await keyStores().connect(project, store.id);
  await keyStores().settled();
  const connected = await keyStores().get(project, store.id);
  expect(connected.connectionState, String(connected.connectionErrorCode)).toBe('CONNECTED');
  return connected;
}

/** Labels and CKA_IDs of the secret key objects on a token, read through PKCS#11 in this process. */
function tokenSecretKeys(library: string, initParams: string | undefined, tokenLabel: string) {
  const shared = acquireLibrary(library, initParams);
  try {
    const lib = shared.lib;
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === tokenLabel);
    if (!slot) throw new Error(`no token ${tokenLabel}`);
    // The service is logged in to the token in this process already: so is this session.
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      lib.C_FindObjectsInit(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_TOKEN, value: true },
      ]);
      const handles = lib.C_FindObjects(session, 1000);
      lib.C_FindObjectsFinal(session);
      return handles.map((handle) => {
        const [label, id, sensitive, extractable] = lib.C_GetAttributeValue(session, handle, [
          { type: pkcs11js.CKA_LABEL },
          { type: pkcs11js.CKA_ID },
          { type: pkcs11js.CKA_SENSITIVE },
          { type: pkcs11js.CKA_EXTRACTABLE },
        ]);
        return {
          label: String(label?.value ?? ''),
          id: Buffer.from((id?.value as Buffer | undefined) ?? Buffer.alloc(0)).toString('hex'),
          sensitive: (sensitive?.value as Buffer | undefined)?.[0] === 1,
          extractable: (extractable?.value as Buffer | undefined)?.[0] === 1,
        };
      });
    } finally {
      lib.C_CloseSession(session);
    }
  } finally {
    shared.release();
  }
}

const defaultTokenKeys = () =>
  tokenSecretKeys(t.kms.env.KMS_PKCS11_LIBRARY as string, undefined, t.kms.env.KMS_TOKEN_LABEL as string);
const tenantTokenKeys = (c: TenantConnection) =>
  tokenSecretKeys(c.token.library, c.token.initParams, c.token.tokenLabel);

async function roundTrip(project: string, keyId: string): Promise<number> {
  const made = await t.kms.call(project, 'create-datakey', { key_id: keyId, datakey_length: '256' });
  if (made.status !== 200) return made.status;
  const opened = await t.kms.call(project, 'decrypt-datakey', {
    key_id: keyId,
    cipher_text: made.body.cipher_text,
    datakey_cipher_length: '32',
  });
  expect(opened.body.data_key).toBe(made.body.plain_text);
  return opened.status;
}

describe.each([
  ['a second SoftHSM token', () => t.softhsm],
  ['NSS softokn', () => t.nss],
])('a key store with token-object keys on %s', (_, connection) => {
  it('when a key is created in it, then its key is a persistent, non-extractable object labelled with its ARN on the tenant token, absent from the default token, and it serves crypto', async () => {
    const store = await connectedStore(connection());
    const before = defaultTokenKeys().length;
    const key = await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: store.id });
    const arn = `arn:aws:kms:local-1:${PROJECT}:key/${key.id}`;
    const version = await t.kms.running.store.findKeyVersion(key.id, 0, true);
    expect(version).toMatchObject({ scheme: 'token-object-v1', rootKeyLabel: '' });
    const objects = tenantTokenKeys(connection()).filter((o) => o.label === arn);
    expect(objects).toEqual([
      { label: arn, id: version?.keyMaterial.toString('hex'), sensitive: true, extractable: false },
    ]);
    expect(defaultTokenKeys().filter((o) => o.label === arn)).toEqual([]);
    expect(defaultTokenKeys()).toHaveLength(before);

    const drawn = callCount(t.calls, connection().id, 'generateRandom');
    expect(await roundTrip(PROJECT, key.id)).toBe(200);
    // The data key came from the tenant's HSM.
    expect(callCount(t.calls, connection().id, 'generateRandom')).toBe(drawn + 1);
    const random = await t.kms.running.services.random.generate(64, { projectId: PROJECT, keyStoreId: store.id });
    expect(random).toHaveLength(64);
    expect(callCount(t.calls, connection().id, 'generateRandom')).toBe(drawn + 2);

    await keyStores().disconnect(PROJECT, store.id);
  });
});

describe('a key store with wrapped keys', () => {
  it("when keys are created in it, then the tenant token holds only the store's root, and the versions are wrapped under it", async () => {
    const store = await connectedStore(t.softhsmWrapped);
    const made = [];
    for (let i = 0; i < 3; i++) {
      made.push(await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: store.id }));
    }
    expect(tenantTokenKeys(t.softhsmWrapped).map((o) => o.label)).toEqual(['hsm-kms-store-wrap-1']);
    for (const key of made) {
      expect(await t.kms.running.store.findKeyVersion(key.id, 0, true)).toMatchObject({
        scheme: 'kwp-v1',
        rootKeyLabel: 'hsm-kms-store-wrap-1',
      });
      expect(await roundTrip(PROJECT, key.id)).toBe(200);
    }
    expect(store.rootTokenId?.toString('hex')).toBe(tenantTokenKeys(t.softhsmWrapped)[0]?.id);
    await keyStores().disconnect(PROJECT, store.id);
  });
});

describe('failures and isolation', () => {
  it('when a store is disconnected, then its keys fail cleanly, never on another HSM, while the default HSM and other stores keep serving', async () => {
    const wrapped = await keyStores().get(
      PROJECT,
      (await keyStores().getByName(PROJECT, 'store-cluster-softhsmwrapped')).id,
    );
    await keyStores().connect(PROJECT, wrapped.id);
    await keyStores().settled();
    const stored = await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: wrapped.id });
    const other = await keyStores().getByName(PROJECT, 'store-cluster-softhsmtenant');
    await keyStores().connect(PROJECT, other.id);
    await keyStores().settled();
    const otherKey = await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: other.id });
    const ownKey = await keys().create({ projectId: PROJECT, alias: 'default-key', description: '' });

    const drawnInStore = callCount(t.calls, t.softhsmWrapped.id, 'generateRandom');
    await keyStores().disconnect(PROJECT, wrapped.id);
    const refused = await t.kms.call(PROJECT, 'create-datakey', { key_id: stored.id, datakey_length: '256' });
    expect(refused.status).toBe(400);
    expect(refused.body.error.error_code).toBe(HUAWEI_ERROR_TABLE.KeyStoreNotConnected.errorCode);
    expect(callCount(t.calls, t.softhsmWrapped.id, 'generateRandom')).toBe(drawnInStore);
    // Closing one store's adapter left the library (shared with the default token and the other store) working.
    expect(await roundTrip(PROJECT, ownKey.id)).toBe(200);
    expect(await roundTrip(PROJECT, otherKey.id)).toBe(200);
    await keyStores().disconnect(PROJECT, other.id);
  });

  it('when the PIN is wrong, then the store fails with INVALID_CREDENTIALS and must be disconnected before it connects again', async () => {
    const store = await keyStores()
      .create({
        projectId: OTHER_PROJECT,
        name: 'wrong-pin',
        connectionId: t.restricted.id,
        trustAnchorCertificate: '',
        pin: Buffer.from('not-the-pin'),
      })
      .catch((err: unknown) => err);
    // The restricted connection is not offered to this project: as if it did not exist.
    expect(store).toMatchObject({ code: 'ConnectionNotFound' });

    const failing = await keyStores().create({
      projectId: RESTRICTED_PROJECT,
      name: 'wrong-pin',
      connectionId: t.restricted.id,
      trustAnchorCertificate: '',
      pin: Buffer.from('not-the-pin'),
    });
    await keyStores().connect(RESTRICTED_PROJECT, failing.id);
    await keyStores().settled();
    expect(await keyStores().get(RESTRICTED_PROJECT, failing.id)).toMatchObject({
      connectionState: 'FAILED',
      connectionErrorCode: 'INVALID_CREDENTIALS',
    });
    await expect(keyStores().connect(RESTRICTED_PROJECT, failing.id)).rejects.toMatchObject({
      code: 'KeyStoreInvalidState',
    });
    await keyStores().disconnect(RESTRICTED_PROJECT, failing.id);
    await keyStores().update(RESTRICTED_PROJECT, failing.id, { pin: Buffer.from(t.restricted.pin) });
    await keyStores().connect(RESTRICTED_PROJECT, failing.id);
    await keyStores().settled();
    expect(await keyStores().get(RESTRICTED_PROJECT, failing.id)).toMatchObject({ connectionState: 'CONNECTED' });
    await keyStores().disconnect(RESTRICTED_PROJECT, failing.id);
  });

  it('when another project names a store or its keys, then it is as if they did not exist', async () => {
    const store = await keyStores().getByName(PROJECT, 'store-cluster-softhsmtenant');
    await keyStores().connect(PROJECT, store.id);
    await keyStores().settled();
    const key = await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: store.id });
    await expect(keyStores().get(OTHER_PROJECT, store.id)).rejects.toMatchObject({ code: 'KeyStoreNotFound' });
    await expect(keyStores().connect(OTHER_PROJECT, store.id)).rejects.toMatchObject({ code: 'KeyStoreNotFound' });
    await expect(
      keys().create({ projectId: OTHER_PROJECT, alias: '', description: '', keyStoreId: store.id }),
    ).rejects.toMatchObject({ code: 'KeyStoreNotFound' });
    await expect(
      t.kms.running.services.random.generate(8, { projectId: OTHER_PROJECT, keyStoreId: store.id }),
    ).rejects.toMatchObject({ code: 'KeyStoreNotFound' });
    expect((await keyStores().list(OTHER_PROJECT, 0, 10)).stores.map((s) => s.id)).not.toContain(store.id);
    const foreign = await t.kms.call(OTHER_PROJECT, 'create-datakey', { key_id: key.id, datakey_length: '256' });
    expect(foreign.status).toBe(404);
    await keyStores().disconnect(PROJECT, store.id);
  });

  it('when PINs are kept, then neither the database files nor the log hold them in plaintext', async () => {
    const files = readdirSync(t.kms.dataDir).filter((f) => f.startsWith('kms.db'));
    expect(files.length).toBeGreaterThan(0);
    for (const connection of [t.softhsm, t.softhsmWrapped, t.nss, t.restricted]) {
      for (const file of files) {
        expect(readFileSync(path.join(t.kms.dataDir, file)).includes(Buffer.from(connection.pin))).toBe(false);
      }
      expect(t.kms.log()).not.toContain(connection.pin);
    }
  });
});

describe('a PIN that stops opening the token', () => {
  it('when a process opens a connected store with a PIN the token refuses, then the store fails with INVALID_CREDENTIALS and no one logs in with it again', async () => {
    const store = await keyStores().getByName(PROJECT, 'store-cluster-nsssoftokntenant');
    await keyStores().connect(PROJECT, store.id);
    await keyStores().settled();
    const key = await keys().create({ projectId: PROJECT, alias: '', description: '', keyStoreId: store.id });
    expect(await roundTrip(PROJECT, key.id)).toBe(200);
    // What this process meets when the tenant changed the PIN on its HSM and the store's connection is opened again
    // (another worker's first use, say): the PIN the store keeps no longer opens the token.
    const connected = await keyStores().get(PROJECT, store.id);
    await t.kms.running.store.updateKeyStore(
      PROJECT,
      store.id,
      { states: ['CONNECTED'] },
      {
        sealedPin: await t.kms.running.hsm.sealSecret(Buffer.from('not-the-pin-any-more'), pinAad(store.id)),
        connectionEpoch: connected.connectionEpoch + 1,
      },
    );
    const opened = callCount(t.calls, t.nss.id, 'close');
    const refused = await t.kms.call(PROJECT, 'create-datakey', { key_id: key.id, datakey_length: '256' });
    expect(refused.status).toBe(503);
    expect(callCount(t.calls, t.nss.id, 'close')).toBe(opened + 1);
    expect(await keyStores().get(PROJECT, store.id)).toMatchObject({
      connectionState: 'FAILED',
      connectionErrorCode: 'INVALID_CREDENTIALS',
    });
    const again = await t.kms.call(PROJECT, 'create-datakey', { key_id: key.id, datakey_length: '256' });
    expect(again.body.error.error_code).toBe(HUAWEI_ERROR_TABLE.KeyStoreNotConnected.errorCode);
  });
});

describe('connections a process abandoned', () => {
  it('when a store has been CONNECTING for longer than a connection takes, then connecting again takes over; a fresh CONNECTING is left alone', async () => {
    // The connection's store from the tests above goes first: a connection serves one store.
    const earlier = await keyStores().getByName(RESTRICTED_PROJECT, 'wrong-pin');
    await keyStores().delete(RESTRICTED_PROJECT, earlier.id);
    const store = await keyStores().create({
      projectId: RESTRICTED_PROJECT,
      name: 'abandoned',
      connectionId: t.restricted.id,
      trustAnchorCertificate: '',
      pin: Buffer.from(t.restricted.pin),
    });
    const { store: metadata } = t.kms.running;
    // What a process that died while connecting leaves: CONNECTING, under an epoch no one will finish.
    const connectingSince = (at: number) =>
      metadata.updateKeyStore(
        RESTRICTED_PROJECT,
        store.id,
        { states: ['DISCONNECTED', 'CONNECTING'] },
        { connectionState: 'CONNECTING', connectionEpoch: 7, stateChangedAt: at },
      );
    await connectingSince(Date.now());
    await keyStores().connect(RESTRICTED_PROJECT, store.id);
    await keyStores().settled();
    expect(await keyStores().get(RESTRICTED_PROJECT, store.id)).toMatchObject({
      connectionState: 'CONNECTING',
      connectionEpoch: 7,
    });
    await connectingSince(Date.now() - STALE_CONNECTING_MS - 1);
    await keyStores().connect(RESTRICTED_PROJECT, store.id);
    await keyStores().settled();
    expect(await keyStores().get(RESTRICTED_PROJECT, store.id)).toMatchObject({
      connectionState: 'CONNECTED',
      connectionEpoch: 8,
    });
    await keyStores().disconnect(RESTRICTED_PROJECT, store.id);
    await keyStores().delete(RESTRICTED_PROJECT, store.id);
  });
});

describe('module paths', () => {
  it('when a tenant names a module path instead of an offered connection, then it is refused and the module is never loaded', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-not-offered-'));
    const module = path.join(dir, 'libtenant-pkcs11.so');
    copyFileSync(t.softhsm.token.library, module);
    try {
      const token = await t.kms.tokenFor(PROJECT);
      for (const hsm_cluster_id of [module, `cluster-${'a'.repeat(11)}`]) {
        const res = await fetch(`${t.kms.url}/v1.0/${PROJECT}/keystores`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-auth-token': token },
          body: JSON.stringify({
            keystore_alias: 'by-path',
            hsm_cluster_id,
            hsm_ca_cert: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----',
            hsm_user_pin: t.softhsm.pin,
          }),
        });
        expect(res.status).toBe(400);
        expect(((await res.json()) as { error: { error_code: string } }).error.error_code).toBe('KMS.0308');
      }
      await expect(
        keyStores().create({
          projectId: PROJECT,
          name: 'by-path',
          connectionId: module,
          trustAnchorCertificate: '',
          pin: Buffer.from(t.softhsm.pin),
        }),
      ).rejects.toMatchObject({ code: 'ConnectionNotFound' });
      expect(readFileSync('/proc/self/maps', 'utf8')).not.toContain(module);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
