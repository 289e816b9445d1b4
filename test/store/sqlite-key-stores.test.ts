import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { KeyStoreRecord } from '../../src/core/key-stores.js';
import type { KeyRecord } from '../../src/core/keys.js';
import type { MetadataStore } from '../../src/core/ports.js';
import { CachingMetadataStore } from '../../src/store/caching-metadata-store.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { firstVersion, PROJECT_A, PROJECT_B, pendingKey, TEST_ROOT_KEY, withTestRootKey } from './key-fixtures.js';

let created = Date.UTC(2026, 0, 1);

function keyStore(overrides: Partial<KeyStoreRecord> = {}): KeyStoreRecord {
  created += 1;
  return {
    id: `cks-${randomBytes(9).toString('hex').slice(0, 17)}`,
    projectId: PROJECT_A,
    name: `store-${created}`,
    connectionId: `cluster-${randomBytes(6)
      .toString('hex')
      .replace(/[^a-z]/g, 'a')}abcdefgh`.slice(0, 24),
    keyScheme: 'token-object',
    trustAnchorCertificate: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----',
    sealedPin: { iv: randomBytes(12), ciphertextWithTag: randomBytes(40) },
    connectionState: 'DISCONNECTED',
    connectionErrorCode: null,
    rootTokenId: null,
    connectionEpoch: 0,
    stateChangedAt: created,
    createdAt: created,
    ...overrides,
  };
}

const stores: readonly [string, (file: string) => MetadataStore][] = [
  ['SqliteMetadataStore', (file) => SqliteMetadataStore.open(file)],
  [
    'CachingMetadataStore over SQLite',
    (file) => new CachingMetadataStore(SqliteMetadataStore.open(file), { maxAgeMs: 60_000, maxEntries: 100 }),
  ],
];

describe.each(stores)('key stores in %s', (_, open) => {
  let dir: string;
  let store: MetadataStore;

  beforeEach(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-key-stores-'));
    store = await withTestRootKey(open(path.join(dir, 'kms.db')));
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('when a store is inserted, then every field reads back as inserted, by id and by name, in its project only', async () => {
    const record = keyStore({ rootTokenId: randomBytes(16), connectionState: 'CONNECTED', connectionEpoch: 3 });
    await store.insertKeyStore(record, 10);
    expect(await store.findKeyStore(PROJECT_A, record.id)).toEqual(record);
    expect(await store.findKeyStoreByName(PROJECT_A, record.name)).toEqual(record);
    expect(await store.findKeyStore(PROJECT_B, record.id)).toBeUndefined();
    expect(await store.findKeyStoreByName(PROJECT_B, record.name)).toBeUndefined();
    expect(await store.listKeyStores(PROJECT_B, 0, 10)).toEqual({ stores: [], total: 0 });
  });

  it('when names, connections or the quota clash, then the insert is refused with its own error and nothing is written', async () => {
    const first = keyStore();
    await store.insertKeyStore(first, 2);
    const sameName = store.insertKeyStore(keyStore({ name: first.name }), 2);
    await expect(sameName).rejects.toMatchObject({ code: 'KeyStoreNameInUse' });
    // One token, one store, whichever project asks.
    const sameConnection = store.insertKeyStore(
      keyStore({ projectId: PROJECT_B, connectionId: first.connectionId }),
      2,
    );
    await expect(sameConnection).rejects.toMatchObject({ code: 'ConnectionInUse' });
    // The same name in another project is another store.
    await store.insertKeyStore(keyStore({ projectId: PROJECT_B, name: first.name }), 2);
    await store.insertKeyStore(keyStore(), 2);
    await expect(store.insertKeyStore(keyStore(), 2)).rejects.toMatchObject({ code: 'KeyStoreLimitExceeded' });
    expect((await store.listKeyStores(PROJECT_A, 0, 10)).total).toBe(2);
  });

  it('when stores are listed, then they come in creation order, a page at a time, with the total', async () => {
    const made = [keyStore(), keyStore(), keyStore()];
    for (const record of made) await store.insertKeyStore(record, 10);
    const page = await store.listKeyStores(PROJECT_A, 1, 1);
    expect(page.total).toBe(3);
    expect(page.stores.map((s) => s.id)).toEqual([made[1]?.id]);
    const connecting = keyStore({ connectionState: 'CONNECTING' });
    await store.insertKeyStore(connecting, 10);
    expect((await store.listKeyStoresIn(['CONNECTING', 'DISCONNECTING'])).map((s) => s.id)).toEqual([connecting.id]);
  });

  it('when a store is updated, then only the patched fields change, and only from an expected state', async () => {
    const record = keyStore();
    await store.insertKeyStore(record, 10);
    expect(
      await store.updateKeyStore(PROJECT_A, record.id, { states: ['CONNECTED'] }, { connectionState: 'DISCONNECTING' }),
    ).toBeUndefined();
    const failed = await store.updateKeyStore(
      PROJECT_A,
      record.id,
      { states: ['DISCONNECTED'] },
      {
        connectionState: 'FAILED',
        connectionErrorCode: 'INVALID_CREDENTIALS',
      },
    );
    expect(failed).toEqual({ ...record, connectionState: 'FAILED', connectionErrorCode: 'INVALID_CREDENTIALS' });
    const sealedPin = { iv: randomBytes(12), ciphertextWithTag: randomBytes(30) };
    const renamed = await store.updateKeyStore(
      PROJECT_A,
      record.id,
      { states: ['FAILED'] },
      {
        name: 'renamed',
        sealedPin,
        connectionErrorCode: null,
      },
    );
    expect(renamed).toEqual({ ...failed, name: 'renamed', sealedPin, connectionErrorCode: null });
    expect(await store.updateKeyStore(PROJECT_B, record.id, { states: ['FAILED'] }, { name: 'x' })).toBeUndefined();
    const other = keyStore();
    await store.insertKeyStore(other, 10);
    await expect(
      store.updateKeyStore(PROJECT_A, other.id, { states: ['DISCONNECTED'] }, { name: 'renamed' }),
    ).rejects.toThrow(KmsError);
  });

  it("when a key of a store is recorded, then the store must be connected and the key project's, in the same transaction", async () => {
    const record = keyStore();
    await store.insertKeyStore(record, 10);
    const tokenObject = (key: KeyRecord) => firstVersion(key, { scheme: 'token-object-v1', rootKeyLabel: '' });
    const whileDisconnected = pendingKey({ keyStoreId: record.id });
    expect(await store.insertPendingKey(whileDisconnected, tokenObject(whileDisconnected), 10)).toBe(false);
    await store.updateKeyStore(PROJECT_A, record.id, { states: ['DISCONNECTED'] }, { connectionState: 'CONNECTED' });
    const foreign = pendingKey({ projectId: PROJECT_B, keyStoreId: record.id });
    expect(await store.insertPendingKey(foreign, tokenObject(foreign), 10)).toBe(false);
    // A store's key is never under the default HSM's roots: no active root is needed for it.
    const key = pendingKey({ keyStoreId: record.id });
    expect(await store.insertPendingKey(key, tokenObject(key), 10)).toBe(true);
    expect(await store.countKeysInStore(record.id)).toBe(1);
    expect(await store.listPendingCreation()).toEqual([key]);
  });

  it('when a store is deleted, then it must be in an expected state and hold no key, PendingCreation included', async () => {
    const record = keyStore({ connectionState: 'CONNECTED' });
    await store.insertKeyStore(record, 10);
    const key = pendingKey({ keyStoreId: record.id });
    await store.insertPendingKey(key, firstVersion(key, { scheme: 'token-object-v1', rootKeyLabel: '' }), 10);
    await store.updateKeyStore(PROJECT_A, record.id, { states: ['CONNECTED'] }, { connectionState: 'DISCONNECTED' });
    expect(await store.deleteKeyStore(PROJECT_B, record.id, ['DISCONNECTED'])).toBe('not-found');
    expect(await store.deleteKeyStore(PROJECT_A, record.id, ['CONNECTED'])).toBe('invalid-state');
    expect(await store.deleteKeyStore(PROJECT_A, record.id, ['DISCONNECTED'])).toBe('has-keys');
    expect(await store.purgePendingCreation(key.id)).toBe(true);
    expect(await store.deleteKeyStore(PROJECT_A, record.id, ['DISCONNECTED'])).toBe('deleted');
    expect(await store.findKeyStore(PROJECT_A, record.id)).toBeUndefined();
  });

  it('when an update names an epoch, then it applies only while the store is still in that epoch', async () => {
    const record = keyStore({ connectionState: 'CONNECTING', connectionEpoch: 4 });
    await store.insertKeyStore(record, 10);
    const connected = { connectionState: 'CONNECTED' } as const;
    expect(await store.updateKeyStore(PROJECT_A, record.id, { states: ['CONNECTING'], epoch: 3 }, connected)).toBe(
      undefined,
    );
    expect(
      await store.updateKeyStore(
        PROJECT_A,
        record.id,
        { states: ['CONNECTING'], epoch: 4 },
        { ...connected, connectionEpoch: 5 },
      ),
    ).toMatchObject({ connectionState: 'CONNECTED', connectionEpoch: 5 });
  });

  it("when the default HSM's root rotates, then versions of keys in stores are not among those to rewrap", async () => {
    const record = keyStore({ keyScheme: 'wrapped', connectionState: 'CONNECTED' });
    await store.insertKeyStore(record, 10);
    const inStore = pendingKey({ keyStoreId: record.id });
    await store.insertPendingKey(inStore, firstVersion(inStore, { rootKeyLabel: 'hsm-kms-store-wrap-1' }), 10);
    const ownKey = pendingKey();
    await store.insertPendingKey(ownKey, firstVersion(ownKey), 10);
    await store.activateRootKey('hsm-kms-wrap-2', 1);
    const toRewrap = await store.listVersionsNotUnder('hsm-kms-wrap-2', 100);
    expect(toRewrap.map((v) => [v.keyId, v.rootKeyLabel])).toEqual([[ownKey.id, TEST_ROOT_KEY]]);
    await store.activateKey(inStore.id);
    expect(await store.findKey(PROJECT_A, inStore.id)).toMatchObject({ keyStoreId: record.id, state: 'Enabled' });
  });
});
