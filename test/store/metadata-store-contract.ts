import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CredentialRecord } from '../../src/core/credentials.js';
import { KmsError } from '../../src/core/errors.js';
import type { KeyRecord, KeyState, KeyVersionRecord } from '../../src/core/keys.js';
import type { MetadataStore } from '../../src/core/ports.js';
import { firstVersion, PROJECT_A, PROJECT_B, pendingKey, TEST_ROOT_KEY } from './key-fixtures.js';

export interface StoreUnderTest {
  readonly store: MetadataStore;
  /** Closes the store and removes whatever it created. */
  readonly cleanup: () => Promise<void>;
}

const DAY = 24 * 60 * 60 * 1000;

/**
 * What every MetadataStore must do, whatever holds the data. Each test gets a fresh, empty store from `makeStore`.
 */
export function describeMetadataStoreContract(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`${name} (MetadataStore contract)`, () => {
    let store: MetadataStore;
    let cleanup: () => Promise<void>;

    beforeEach(async () => {
      ({ store, cleanup } = await makeStore());
    });
    afterEach(async () => {
      await cleanup();
    });

    /** Inserts and activates a key, returning it as the store now holds it. */
    async function enabledKey(overrides: Partial<KeyRecord> = {}): Promise<KeyRecord> {
      const key = pendingKey(overrides);
      await store.insertPendingKey(key, firstVersion(key), 100);
      await store.activateKey(key.id);
      return { ...key, state: 'Enabled' };
    }

    async function keyIn(state: KeyState, overrides: Partial<KeyRecord> = {}): Promise<KeyRecord> {
      const key = await enabledKey(overrides);
      if (state === 'Enabled') return key;
      const patch = state === 'PendingDeletion' ? { state, deletionDate: overrides.deletionDate ?? 0 } : { state };
      const updated = await store.updateKey(key.projectId, key.id, 'Enabled', patch);
      if (updated === undefined) throw new Error('fixture: the key could not be moved out of Enabled');
      return updated;
    }

    describe('insertPendingKey and activateKey', () => {
      it('when a key is inserted, then it stays invisible to reads until it is activated', async () => {
        const key = pendingKey({ alias: 'alias/pending' });
        await store.insertPendingKey(key, firstVersion(key), 10);

        expect(await store.findKey(PROJECT_A, key.id)).toBeUndefined();
        expect(await store.findKeyByAlias(PROJECT_A, 'alias/pending')).toBeUndefined();
        expect(await store.listKeys({ projectId: PROJECT_A, offset: 0, limit: 10 })).toEqual({ keys: [], total: 0 });
        expect(await store.countKeys(PROJECT_A)).toBe(0);
      });

      it('when a key is activated, then every field reads back exactly as inserted, in state Enabled', async () => {
        const key = pendingKey({ alias: 'alias/round-trip', description: 'Orders DB key ✓' });
        await store.insertPendingKey(key, firstVersion(key), 10);
        await store.activateKey(key.id);

        const found = await store.findKey(PROJECT_A, key.id);
        expect(found).toEqual({ ...key, state: 'Enabled' });
        expect(typeof found?.createdAt).toBe('number');
        expect(typeof found?.currentVersion).toBe('number');
        expect(found?.deletionDate).toBeNull();
      });

      it('when a key is inserted, then its first version reads back exactly, key material as a Buffer', async () => {
        const key = pendingKey();
        const version = firstVersion(key);
        await store.insertPendingKey(key, version, 10);

        const found = await store.findKeyVersion(key.id, 1);
        expect(found).toEqual(version);
        expect(Buffer.isBuffer(found?.keyMaterial)).toBe(true);
        expect(found?.keyMaterial.equals(version.keyMaterial)).toBe(true);
        expect(typeof found?.version).toBe('number');
      });

      it('when the project already holds its quota of keys, then KeyQuotaExceeded and nothing is inserted', async () => {
        await enabledKey();
        const second = pendingKey();
        await store.insertPendingKey(second, firstVersion(second), 2);
        const third = pendingKey();

        await expect(store.insertPendingKey(third, firstVersion(third), 2)).rejects.toMatchObject({
          code: 'KeyQuotaExceeded',
        });
        expect(await store.listPendingCreation()).toEqual([second]);
        expect(await store.findKeyVersion(third.id, 1)).toBeUndefined();
      });

      it('when one project is at its quota, then another project can still create keys', async () => {
        await enabledKey({ projectId: PROJECT_A });
        const other = pendingKey({ projectId: PROJECT_B });

        await store.insertPendingKey(other, firstVersion(other), 1);

        expect(await store.listPendingCreation()).toEqual([other]);
      });

      it('when the alias is taken in the project, then AliasAlreadyExists and neither key nor version is inserted', async () => {
        await enabledKey({ alias: 'alias/orders' });
        const clash = pendingKey({ alias: 'alias/orders' });

        const error = await store.insertPendingKey(clash, firstVersion(clash), 10).catch((e: unknown) => e);

        expect(error).toBeInstanceOf(KmsError);
        expect(error).toMatchObject({ code: 'AliasAlreadyExists', message: 'Duplicate key aliases.' });
        expect(await store.listPendingCreation()).toEqual([]);
        expect(await store.findKeyVersion(clash.id, 1)).toBeUndefined();
      });

      it('when aliases differ only by the alias/ prefix, then they clash', async () => {
        await enabledKey({ alias: 'alias/orders' });
        const clash = pendingKey({ alias: 'orders' });

        await expect(store.insertPendingKey(clash, firstVersion(clash), 10)).rejects.toMatchObject({
          code: 'AliasAlreadyExists',
        });
      });

      it('when a key still in PendingCreation holds the alias, then a new key cannot take it', async () => {
        const pending = pendingKey({ alias: 'alias/orders' });
        await store.insertPendingKey(pending, firstVersion(pending), 10);
        const clash = pendingKey({ alias: 'alias/orders' });

        await expect(store.insertPendingKey(clash, firstVersion(clash), 10)).rejects.toMatchObject({
          code: 'AliasAlreadyExists',
        });
      });

      it('when two projects use the same alias, then both keys exist', async () => {
        const a = await enabledKey({ projectId: PROJECT_A, alias: 'alias/orders' });
        const b = await enabledKey({ projectId: PROJECT_B, alias: 'alias/orders' });

        expect(await store.findKeyByAlias(PROJECT_A, 'alias/orders')).toEqual(a);
        expect(await store.findKeyByAlias(PROJECT_B, 'alias/orders')).toEqual(b);
      });

      it('when the key is not in PendingCreation, then activateKey throws KeyNotFound', async () => {
        const enabled = await enabledKey();

        await expect(store.activateKey(enabled.id)).rejects.toMatchObject({
          code: 'KeyNotFound',
          message: 'The key does not exist.',
        });
        await expect(store.activateKey('00000000-0000-0000-0000-000000000000')).rejects.toMatchObject({
          code: 'KeyNotFound',
        });
      });
    });

    describe('listPendingCreation and purgePendingCreation', () => {
      it('when keys are left in PendingCreation, then they are listed from every project, oldest first', async () => {
        const a = pendingKey({ projectId: PROJECT_A });
        const b = pendingKey({ projectId: PROJECT_B });
        await store.insertPendingKey(b, firstVersion(b), 10);
        await store.insertPendingKey(a, firstVersion(a), 10);
        await enabledKey();

        expect(await store.listPendingCreation()).toEqual([a, b]);
      });

      it('when a pending key is purged, then true, the key and every version are gone and its alias is free', async () => {
        const key = pendingKey({ alias: 'alias/orders' });
        await store.insertPendingKey(key, firstVersion(key), 10);

        expect(await store.purgePendingCreation(key.id)).toBe(true);

        expect(await store.listPendingCreation()).toEqual([]);
        expect(await store.findKeyVersion(key.id, 1)).toBeUndefined();
        const again = pendingKey({ alias: 'alias/orders' });
        await store.insertPendingKey(again, firstVersion(again), 10);
      });

      it('when the key is no longer in PendingCreation, then purgePendingCreation is false and the key stays', async () => {
        const key = await enabledKey();

        expect(await store.purgePendingCreation(key.id)).toBe(false);

        expect(await store.findKey(PROJECT_A, key.id)).toEqual(key);
        expect(await store.findKeyVersion(key.id, 1)).toBeDefined();
      });

      it('when the key does not exist, then purgePendingCreation is false', async () => {
        expect(await store.purgePendingCreation('00000000-0000-0000-0000-000000000000')).toBe(false);
      });
    });

    describe('findKey, findKeyByAlias and findKeyVersion', () => {
      it("when project B asks for project A's key by id or alias, then it is not found", async () => {
        const key = await enabledKey({ projectId: PROJECT_A, alias: 'alias/secret' });

        expect(await store.findKey(PROJECT_B, key.id)).toBeUndefined();
        expect(await store.findKeyByAlias(PROJECT_B, 'alias/secret')).toBeUndefined();
      });

      it('when the key does not exist, then findKey returns undefined', async () => {
        expect(await store.findKey(PROJECT_A, '00000000-0000-0000-0000-000000000000')).toBeUndefined();
      });

      it('when looked up with or without the alias/ prefix, then the same key is found', async () => {
        const key = await enabledKey({ alias: 'orders' });

        expect(await store.findKeyByAlias(PROJECT_A, 'alias/orders')).toEqual(key);
        expect(await store.findKeyByAlias(PROJECT_A, 'orders')).toEqual(key);
        expect(await store.findKeyByAlias(PROJECT_A, 'alias/other')).toBeUndefined();
      });

      it('when the version does not exist, then findKeyVersion returns undefined', async () => {
        const key = await enabledKey();

        expect(await store.findKeyVersion(key.id, 2)).toBeUndefined();
        expect(await store.findKeyVersion('00000000-0000-0000-0000-000000000000', 1)).toBeUndefined();
      });
    });

    describe('listKeys and countKeys', () => {
      it('when keys are listed, then they come oldest first, ties broken by id, with the total', async () => {
        const createdAt = Date.UTC(2025, 5, 1);
        const later = await enabledKey({ createdAt: createdAt + 1 });
        const tieB = await enabledKey({ createdAt, id: 'bbbbbbbb-0000-0000-0000-000000000000' });
        const tieA = await enabledKey({ createdAt, id: 'aaaaaaaa-0000-0000-0000-000000000000' });

        expect(await store.listKeys({ projectId: PROJECT_A, offset: 0, limit: 10 })).toEqual({
          keys: [tieA, tieB, later],
          total: 3,
        });
      });

      it('when a page is asked for, then offset and limit cut the list and total counts every key', async () => {
        const keys = [await enabledKey(), await enabledKey(), await enabledKey(), await enabledKey()];

        expect(await store.listKeys({ projectId: PROJECT_A, offset: 1, limit: 2 })).toEqual({
          keys: keys.slice(1, 3),
          total: 4,
        });
        expect(await store.listKeys({ projectId: PROJECT_A, offset: 4, limit: 2 })).toEqual({ keys: [], total: 4 });
      });

      it('when a state filter is given, then only keys in that state are listed and counted', async () => {
        await enabledKey();
        const disabled = await keyIn('Disabled');
        const pending = pendingKey();
        await store.insertPendingKey(pending, firstVersion(pending), 10);

        expect(await store.listKeys({ projectId: PROJECT_A, state: 'Disabled', offset: 0, limit: 10 })).toEqual({
          keys: [disabled],
          total: 1,
        });
        expect(await store.listKeys({ projectId: PROJECT_A, state: 'PendingCreation', offset: 0, limit: 10 })).toEqual({
          keys: [],
          total: 0,
        });
      });

      it("when project B lists or counts keys, then project A's keys are not among them", async () => {
        await enabledKey({ projectId: PROJECT_A });
        const own = await enabledKey({ projectId: PROJECT_B });

        expect(await store.listKeys({ projectId: PROJECT_B, offset: 0, limit: 10 })).toEqual({ keys: [own], total: 1 });
        expect(await store.countKeys(PROJECT_B)).toBe(1);
      });

      it('when keys are counted, then every state but PendingCreation counts', async () => {
        await enabledKey();
        await keyIn('Disabled');
        await keyIn('PendingDeletion');
        const pending = pendingKey();
        await store.insertPendingKey(pending, firstVersion(pending), 10);

        expect(await store.countKeys(PROJECT_A)).toBe(3);
      });
    });

    describe('updateKey', () => {
      it('when the key is in the expected state, then the patch is applied and the updated key returned', async () => {
        const key = await enabledKey({ description: 'before' });

        const updated = await store.updateKey(PROJECT_A, key.id, 'Enabled', {
          state: 'Disabled',
          description: 'after',
        });

        expect(updated).toEqual({ ...key, state: 'Disabled', description: 'after' });
        expect(await store.findKey(PROJECT_A, key.id)).toEqual(updated);
      });

      it('when the key is no longer in the expected state, then nothing changes and undefined is returned', async () => {
        const key = await keyIn('Disabled');

        expect(await store.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'Disabled', description: 'x' })).toBe(
          undefined,
        );
        expect(await store.findKey(PROJECT_A, key.id)).toEqual(key);
      });

      it("when project B updates project A's key, then nothing changes and undefined is returned", async () => {
        const key = await enabledKey();

        expect(await store.updateKey(PROJECT_B, key.id, 'Enabled', { state: 'Disabled' })).toBeUndefined();
        expect(await store.findKey(PROJECT_A, key.id)).toEqual(key);
      });

      it('when the key does not exist, then undefined is returned', async () => {
        expect(
          await store.updateKey(PROJECT_A, '00000000-0000-0000-0000-000000000000', 'Enabled', { description: 'x' }),
        ).toBeUndefined();
      });

      it('when the patch is empty, then the key is returned unchanged', async () => {
        const key = await enabledKey();

        expect(await store.updateKey(PROJECT_A, key.id, 'Enabled', {})).toEqual(key);
      });

      it('when deletion is scheduled and cancelled, then the deletion date is set and cleared', async () => {
        const key = await enabledKey();

        const scheduled = await store.updateKey(PROJECT_A, key.id, 'Enabled', {
          state: 'PendingDeletion',
          deletionDate: key.createdAt + 7 * DAY,
        });
        expect(scheduled).toEqual({ ...key, state: 'PendingDeletion', deletionDate: key.createdAt + 7 * DAY });

        const cancelled = await store.updateKey(PROJECT_A, key.id, 'PendingDeletion', {
          state: 'Disabled',
          deletionDate: null,
        });
        expect(cancelled).toEqual({ ...key, state: 'Disabled', deletionDate: null });
      });

      it('when the alias changes, then the key is found by the new alias only and the old one is free', async () => {
        const key = await enabledKey({ alias: 'alias/old' });

        const updated = await store.updateKey(PROJECT_A, key.id, 'Enabled', { alias: 'new' });

        expect(updated).toEqual({ ...key, alias: 'new' });
        expect(await store.findKeyByAlias(PROJECT_A, 'alias/new')).toEqual(updated);
        expect(await store.findKeyByAlias(PROJECT_A, 'alias/old')).toBeUndefined();
        await enabledKey({ alias: 'old' });
      });

      it('when the new alias is taken in the project, then AliasAlreadyExists and the key keeps its alias', async () => {
        await enabledKey({ alias: 'alias/taken' });
        const key = await enabledKey({ alias: 'alias/mine' });

        await expect(store.updateKey(PROJECT_A, key.id, 'Enabled', { alias: 'taken' })).rejects.toMatchObject({
          code: 'AliasAlreadyExists',
          message: 'Duplicate key aliases.',
        });
        expect(await store.findKey(PROJECT_A, key.id)).toEqual(key);
      });

      it('when the new alias is taken only in another project, then the alias changes', async () => {
        await enabledKey({ projectId: PROJECT_B, alias: 'alias/shared' });
        const key = await enabledKey({ projectId: PROJECT_A, alias: 'alias/mine' });

        expect(await store.updateKey(PROJECT_A, key.id, 'Enabled', { alias: 'alias/shared' })).toEqual({
          ...key,
          alias: 'alias/shared',
        });
      });
    });

    describe('insertCredential, findCredential and revokeCredential', () => {
      const credential = (overrides: Partial<CredentialRecord> = {}): CredentialRecord => ({
        accessKeyId: 'AKIAAAAAAAAAAAAAAAAA',
        projectId: PROJECT_A,
        createdAt: Date.UTC(2025, 6, 1),
        revokedAt: null,
        ...overrides,
      });

      it('when an access key is inserted, then it reads back exactly, active', async () => {
        await store.insertCredential(credential());

        const found = await store.findCredential('AKIAAAAAAAAAAAAAAAAA');
        expect(found).toEqual(credential());
        expect(typeof found?.createdAt).toBe('number');
      });

      it('when the access key does not exist, then findCredential returns undefined', async () => {
        await store.insertCredential(credential());

        expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAB')).toBeUndefined();
        expect(await store.findCredential('akiaaaaaaaaaaaaaaaaa')).toBeUndefined();
      });

      it('when the access key id exists already, then insertCredential throws InternalError and keeps the first', async () => {
        await store.insertCredential(credential());

        await expect(store.insertCredential(credential({ projectId: PROJECT_B }))).rejects.toMatchObject({
          name: 'KmsError',
          code: 'InternalError',
        });
        expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAA')).toEqual(credential());
      });

      it('when an active access key is revoked, then true, and it is still found with its revocation time', async () => {
        await store.insertCredential(credential());
        const at = Date.UTC(2025, 6, 2);

        expect(await store.revokeCredential('AKIAAAAAAAAAAAAAAAAA', at)).toBe(true);

        expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAA')).toEqual(credential({ revokedAt: at }));
      });

      it('when the access key is already revoked, then false and the first revocation time stays', async () => {
        await store.insertCredential(credential());
        await store.revokeCredential('AKIAAAAAAAAAAAAAAAAA', 1);

        expect(await store.revokeCredential('AKIAAAAAAAAAAAAAAAAA', 2)).toBe(false);

        expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAA')).toMatchObject({ revokedAt: 1 });
      });

      it('when the access key does not exist, then revokeCredential returns false', async () => {
        expect(await store.revokeCredential('AKIAAAAAAAAAAAAAAAAA', 1)).toBe(false);
      });

      it('when one access key is revoked, then the other access keys of the project stay active', async () => {
        await store.insertCredential(credential());
        await store.insertCredential(credential({ accessKeyId: 'AKIAAAAAAAAAAAAAAAAB' }));

        await store.revokeCredential('AKIAAAAAAAAAAAAAAAAA', 1);

        expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAB')).toMatchObject({ revokedAt: null });
      });
    });

    describe('listKeysDueForDeletion', () => {
      it('when deletion dates are at, before and after now, then only keys due at or before now are listed', async () => {
        const now = Date.UTC(2025, 6, 1);
        const overdue = await keyIn('PendingDeletion', { deletionDate: now - 1 });
        const dueNow = await keyIn('PendingDeletion', { projectId: PROJECT_B, deletionDate: now });
        await keyIn('PendingDeletion', { deletionDate: now + 1 });
        await keyIn('Disabled');

        const due = await store.listKeysDueForDeletion(now, 10);

        expect(due).toEqual([overdue, dueNow]);
      });

      it('when more keys are due than the limit, then the earliest deletion dates come first, limit of them', async () => {
        const now = Date.UTC(2025, 6, 1);
        const second = await keyIn('PendingDeletion', { deletionDate: now - 2 });
        const first = await keyIn('PendingDeletion', { deletionDate: now - 3 });
        await keyIn('PendingDeletion', { deletionDate: now - 1 });

        expect(await store.listKeysDueForDeletion(now, 2)).toEqual([first, second]);
      });

      it('when no key is pending deletion, then nothing is due', async () => {
        await enabledKey();

        expect(await store.listKeysDueForDeletion(Number.MAX_SAFE_INTEGER, 10)).toEqual([]);
      });
    });

    describe('purgeDueKeys', () => {
      const now = Date.UTC(2025, 6, 1);

      it('when due keys are purged, then their ids are returned and the keys and every version are gone', async () => {
        const a = await keyIn('PendingDeletion', { deletionDate: now - 1 });
        const b = await keyIn('PendingDeletion', { projectId: PROJECT_B, deletionDate: now });

        expect(await store.purgeDueKeys([a.id, b.id], now)).toEqual([a.id, b.id]);

        expect(await store.findKey(PROJECT_A, a.id)).toBeUndefined();
        expect(await store.findKey(PROJECT_B, b.id)).toBeUndefined();
        expect(await store.findKeyVersion(a.id, 1)).toBeUndefined();
        expect(await store.findKeyVersion(b.id, 1)).toBeUndefined();
        expect(await store.countKeys(PROJECT_A)).toBe(0);
        expect(await store.listKeysDueForDeletion(now, 10)).toEqual([]);
      });

      it('when a listed key had its deletion cancelled before the purge, then it stays with its version', async () => {
        const cancelled = await keyIn('PendingDeletion', { deletionDate: now - 1 });
        const due = await keyIn('PendingDeletion', { deletionDate: now - 1 });
        const listed = (await store.listKeysDueForDeletion(now, 10)).map((key) => key.id);
        const restored = await store.updateKey(PROJECT_A, cancelled.id, 'PendingDeletion', {
          state: 'Disabled',
          deletionDate: null,
        });

        expect(await store.purgeDueKeys(listed, now)).toEqual([due.id]);

        expect(await store.findKey(PROJECT_A, cancelled.id)).toEqual(restored);
        expect(await store.findKeyVersion(cancelled.id, 1)).toBeDefined();
        expect(await store.findKey(PROJECT_A, due.id)).toBeUndefined();
      });

      it('when a listed key was cancelled and scheduled again for later, then the purge leaves it', async () => {
        const key = await keyIn('PendingDeletion', { deletionDate: now - 1 });
        const listed = (await store.listKeysDueForDeletion(now, 10)).map((k) => k.id);
        await store.updateKey(PROJECT_A, key.id, 'PendingDeletion', { state: 'Disabled', deletionDate: null });
        const later = await store.updateKey(PROJECT_A, key.id, 'Disabled', {
          state: 'PendingDeletion',
          deletionDate: now + 7 * DAY,
        });

        expect(await store.purgeDueKeys(listed, now)).toEqual([]);

        expect(await store.findKey(PROJECT_A, key.id)).toEqual(later);
      });

      it('when a key is not pending deletion, is not yet due or does not exist, then the purge leaves it', async () => {
        const enabled = await enabledKey();
        const notYet = await keyIn('PendingDeletion', { deletionDate: now + 1 });
        const pending = pendingKey();
        await store.insertPendingKey(pending, firstVersion(pending), 10);

        const ids = [enabled.id, notYet.id, pending.id, '00000000-0000-0000-0000-000000000000'];
        expect(await store.purgeDueKeys(ids, now)).toEqual([]);

        expect(await store.findKey(PROJECT_A, enabled.id)).toEqual(enabled);
        expect(await store.findKey(PROJECT_A, notYet.id)).toEqual(notYet);
        expect(await store.listPendingCreation()).toEqual([pending]);
      });

      it('when purged data is erased, then the store says so, with or without anything purged', async () => {
        expect(await store.erasePurged()).toBe(true);
        const key = await keyIn('PendingDeletion', { deletionDate: now });
        await store.purgeDueKeys([key.id], now);

        expect(await store.erasePurged()).toBe(true);
      });
    });

    describe('root keys and rewrapping', () => {
      it('when a new root key is activated, then the one before is retiring and listed after it', async () => {
        await store.activateRootKey('hsm-kms-wrap-2', 5);

        expect(await store.listRootKeys()).toEqual([
          { label: 'hsm-kms-wrap-2', state: 'active', tokenId: null, createdAt: 5 },
          { label: TEST_ROOT_KEY, state: 'retiring', tokenId: null, createdAt: 0 },
        ]);
      });

      it('when a version is kept under a root key that is no longer active, then insertPendingKey is false and inserts nothing', async () => {
        await store.activateRootKey('hsm-kms-wrap-2', 5);
        const key = pendingKey();

        expect(await store.insertPendingKey(key, firstVersion(key), 10)).toBe(false);
        expect(await store.insertPendingKey(key, firstVersion(key, { rootKeyLabel: 'never-made' }), 10)).toBe(false);
        expect(await store.listPendingCreation()).toEqual([]);
        expect(await store.findKeyVersion(key.id, 1)).toBeUndefined();
        expect(await store.insertPendingKey(key, firstVersion(key, { rootKeyLabel: 'hsm-kms-wrap-2' }), 10)).toBe(true);
      });

      it('when versions are listed as not under a root key, then those under any other root come, in every key state', async () => {
        const enabled = await enabledKey();
        const pending = pendingKey();
        await store.insertPendingKey(pending, firstVersion(pending), 10);
        await store.activateRootKey('hsm-kms-wrap-2', 5);
        const moved = pendingKey();
        await store.insertPendingKey(moved, firstVersion(moved, { rootKeyLabel: 'hsm-kms-wrap-2' }), 10);

        const listed = await store.listVersionsNotUnder('hsm-kms-wrap-2', 10);
        expect(listed.map((v) => v.keyId).sort()).toEqual([enabled.id, pending.id].sort());
        expect(await store.listVersionsNotUnder('hsm-kms-wrap-2', 1)).toHaveLength(1);
      });

      it('when a version is replaced as it was read, then it reads back rewrapped; a stale replacement changes nothing', async () => {
        const key = await enabledKey();
        const before = (await store.findKeyVersion(key.id, 1)) as KeyVersionRecord;
        await store.activateRootKey('hsm-kms-wrap-2', 5);
        const next = { scheme: 'kwp-v1' as const, rootKeyLabel: 'hsm-kms-wrap-2', keyMaterial: Buffer.alloc(40, 7) };

        expect(await store.replaceKeptVersion(before, next)).toBe(true);
        expect(await store.findKeyVersion(key.id, 1, true)).toEqual({ ...before, ...next });
        expect(await store.replaceKeptVersion(before, { ...next, keyMaterial: Buffer.alloc(40, 9) })).toBe(false);
        expect(await store.findKeyVersion(key.id, 1, true)).toEqual({ ...before, ...next });
      });

      it('when a retiring root key still keeps a version, then it cannot be marked destroying; once none, it can, and is forgotten', async () => {
        const key = await enabledKey();
        const before = (await store.findKeyVersion(key.id, 1)) as KeyVersionRecord;
        await store.activateRootKey('hsm-kms-wrap-2', 5);

        expect(await store.markRootKeyDestroying(TEST_ROOT_KEY)).toBe(false);
        expect(await store.markRootKeyDestroying('hsm-kms-wrap-2')).toBe(false);
        await store.replaceKeptVersion(before, { ...before, rootKeyLabel: 'hsm-kms-wrap-2' });
        expect(await store.markRootKeyDestroying(TEST_ROOT_KEY)).toBe(true);
        expect(await store.listRootKeys()).toEqual([
          { label: 'hsm-kms-wrap-2', state: 'active', tokenId: null, createdAt: 5 },
          { label: TEST_ROOT_KEY, state: 'destroying', tokenId: null, createdAt: 0 },
        ]);
        await store.forgetRootKey(TEST_ROOT_KEY);
        await store.forgetRootKey('hsm-kms-wrap-2');
        expect(await store.listRootKeys()).toEqual([
          { label: 'hsm-kms-wrap-2', state: 'active', tokenId: null, createdAt: 5 },
        ]);
      });

      it('when a root key label is reserved, then no other reservation is given until it goes stale, and then the same label is taken over', async () => {
        expect(await store.reserveRootKey('hsm-kms-wrap-2', 100, 0)).toBe('hsm-kms-wrap-2');
        expect(await store.reserveRootKey('hsm-kms-wrap-3', 150, 50)).toBeUndefined();
        expect(await store.listRootKeys()).toEqual([
          { label: TEST_ROOT_KEY, state: 'active', tokenId: null, createdAt: 0 },
          { label: 'hsm-kms-wrap-2', state: 'creating', tokenId: null, createdAt: 100 },
        ]);
        // Made before staleBefore: its process died; the next one takes the same label (and the key, if it was made).
        expect(await store.reserveRootKey('hsm-kms-wrap-3', 300, 200)).toBe('hsm-kms-wrap-2');
        const key = pendingKey();
        expect(await store.insertPendingKey(key, firstVersion(key, { rootKeyLabel: 'hsm-kms-wrap-2' }), 10)).toBe(
          false,
        );

        await store.activateRootKey('hsm-kms-wrap-2', 400, Buffer.from('c0ffee', 'hex'));
        expect(await store.listRootKeys()).toEqual([
          { label: 'hsm-kms-wrap-2', state: 'active', tokenId: Buffer.from('c0ffee', 'hex'), createdAt: 300 },
          { label: TEST_ROOT_KEY, state: 'retiring', tokenId: null, createdAt: 0 },
        ]);
        expect(await store.reserveRootKey('hsm-kms-wrap-3', 500, 0)).toBe('hsm-kms-wrap-3');
      });

      it('when there are ten root keys or more, then they are listed in the order of their numbers', async () => {
        for (const n of [2, 10, 9, 11]) await store.activateRootKey(`hsm-kms-wrap-${n}`, n);
        expect((await store.listRootKeys()).map((root) => root.label)).toEqual([
          'hsm-kms-wrap-11',
          TEST_ROOT_KEY,
          'hsm-kms-wrap-2',
          'hsm-kms-wrap-9',
          'hsm-kms-wrap-10',
        ]);
      });

      it('when a version would move to a root key that is not active, then replaceKeptVersion is false and it stays', async () => {
        const key = await enabledKey();
        const before = (await store.findKeyVersion(key.id, 1)) as KeyVersionRecord;
        await store.activateRootKey('hsm-kms-wrap-2', 5);
        await store.activateRootKey('hsm-kms-wrap-3', 6);
        const next = { scheme: 'kwp-v1' as const, rootKeyLabel: 'hsm-kms-wrap-2', keyMaterial: Buffer.alloc(40, 7) };

        expect(await store.replaceKeptVersion(before, next)).toBe(false);
        expect(await store.replaceKeptVersion(before, { ...next, rootKeyLabel: 'never-made' })).toBe(false);
        expect(await store.findKeyVersion(key.id, 1, true)).toEqual(before);
      });
    });

    describe('tags', () => {
      it('when tags are put, then they are listed by name and a repeated name replaces the value', async () => {
        const key = await enabledKey();
        await store.putTags(
          key.id,
          [
            { key: 'team', value: 'a' },
            { key: 'env', value: 'prod' },
          ],
          50,
        );
        await store.putTags(key.id, [{ key: 'team', value: 'b' }], 50);

        expect(await store.listTags(key.id)).toEqual([
          { key: 'env', value: 'prod' },
          { key: 'team', value: 'b' },
        ]);
      });

      it('when a put would exceed the limit, then it fails with TagLimitExceeded and changes nothing', async () => {
        const key = await enabledKey();
        await store.putTags(key.id, [{ key: 'a', value: '1' }], 2);

        await expect(
          store.putTags(
            key.id,
            [
              { key: 'b', value: '2' },
              { key: 'c', value: '3' },
            ],
            2,
          ),
        ).rejects.toMatchObject({ code: 'TagLimitExceeded' });
        expect(await store.listTags(key.id)).toEqual([{ key: 'a', value: '1' }]);
      });

      it('when tags are removed, then unknown names are ignored and the others stay', async () => {
        const key = await enabledKey();
        await store.putTags(
          key.id,
          [
            { key: 'a', value: '1' },
            { key: 'b', value: '2' },
          ],
          50,
        );

        await store.removeTags(key.id, ['a', 'nope']);

        expect(await store.listTags(key.id)).toEqual([{ key: 'b', value: '2' }]);
      });

      it('when a key is purged, then its tags go with it', async () => {
        const key = await keyIn('PendingDeletion', { deletionDate: 0 });
        await store.putTags(key.id, [{ key: 'a', value: '1' }], 50);

        await store.purgeDueKeys([key.id], 0);

        expect(await store.listTags(key.id)).toEqual([]);
      });
    });

    describe('aliases', () => {
      const alias = (keyId: string, name: string, at = 1) => ({
        projectId: PROJECT_A,
        name,
        keyId,
        createdAt: at,
        updatedAt: at,
      });

      it('when a key is created with an alias, then it has that alias row and is found by it', async () => {
        const key = await enabledKey({ alias: 'alias/created' });
        expect(await store.listAliases(PROJECT_A, key.id)).toEqual([
          expect.objectContaining({ name: 'created', keyId: key.id }),
        ]);
        expect((await store.findKeyByAlias(PROJECT_A, 'created'))?.id).toBe(key.id);
      });

      it('when an alias is added to a key without one, then it becomes the key alias; a second one does not', async () => {
        const key = await enabledKey({ alias: '' });
        await store.createAlias(alias(key.id, 'first', 1));
        await store.createAlias(alias(key.id, 'second', 2));
        expect((await store.findKey(PROJECT_A, key.id))?.alias).toBe('first');
        expect((await store.findKeyByAlias(PROJECT_A, 'second'))?.id).toBe(key.id);
        await expect(store.createAlias(alias(key.id, 'first'))).rejects.toMatchObject({ code: 'AliasAlreadyExists' });
      });

      it('when the key alias is deleted or moved away, then the key shows its next alias, or none', async () => {
        const k1 = await enabledKey({ alias: '' });
        const k2 = await enabledKey({ alias: '' });
        await store.createAlias(alias(k1.id, 'a', 1));
        await store.createAlias(alias(k1.id, 'b', 2));

        expect(await store.retargetAlias(PROJECT_A, 'a', k2.id, 3)).toBe(true);
        expect((await store.findKey(PROJECT_A, k1.id))?.alias).toBe('b');
        expect((await store.findKey(PROJECT_A, k2.id))?.alias).toBe('a');
        expect((await store.findKeyByAlias(PROJECT_A, 'a'))?.id).toBe(k2.id);

        expect(await store.deleteAlias(PROJECT_A, 'b')).toBe(true);
        expect((await store.findKey(PROJECT_A, k1.id))?.alias).toBe('');
        expect(await store.deleteAlias(PROJECT_A, 'b')).toBe(false);
        expect(await store.retargetAlias(PROJECT_A, 'nope', k1.id, 4)).toBe(false);
      });

      it('when a key alias is renamed through updateKey, then the alias row follows and the old name is free', async () => {
        const key = await enabledKey({ alias: 'old' });
        await store.updateKey(PROJECT_A, key.id, 'Enabled', { alias: 'new' });
        expect((await store.findKeyByAlias(PROJECT_A, 'new'))?.id).toBe(key.id);
        expect(await store.findKeyByAlias(PROJECT_A, 'old')).toBeUndefined();
        const other = await enabledKey({ alias: 'other' });
        await expect(store.updateKey(PROJECT_A, other.id, 'Enabled', { alias: 'new' })).rejects.toMatchObject({
          code: 'AliasAlreadyExists',
        });
        expect((await store.findKey(PROJECT_A, other.id))?.alias).toBe('other');
      });

      it('when a key is purged, then its aliases are free again', async () => {
        const key = await keyIn('PendingDeletion', { alias: 'gone', deletionDate: 0 });
        await store.purgeDueKeys([key.id], 0);
        expect(await store.listAliases(PROJECT_A)).toEqual([]);
      });
    });
  });
}
