import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CachingMetadataStore } from '../../src/store/caching-metadata-store.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { firstVersion, PROJECT_A, pendingKey, withTestRootKey } from './key-fixtures.js';
import { describeMetadataStoreContract } from './metadata-store-contract.js';

describeMetadataStoreContract('CachingMetadataStore over SQLite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hsm-kms-cache-'));
  const store = await withTestRootKey(
    new CachingMetadataStore(SqliteMetadataStore.open(join(dir, 'kms.db')), { maxAgeMs: 60_000, maxEntries: 100 }),
  );
  return {
    store,
    cleanup: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('CachingMetadataStore shared by two processes', () => {
  let dir: string;
  let now: number;
  let writes: number;
  let a: CachingMetadataStore;
  let b: CachingMetadataStore;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hsm-kms-cache-'));
    now = 1_000_000;
    writes = 0;
    const open = (onWrite?: () => void) =>
      new CachingMetadataStore(SqliteMetadataStore.open(join(dir, 'kms.db')), {
        maxAgeMs: 1_000,
        maxEntries: 100,
        now: () => now,
        ...(onWrite ? { onWrite } : {}),
      });
    a = await withTestRootKey(open(() => writes++));
    b = open();
  });
  afterEach(async () => {
    await a.close();
    await b.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function enabledKey() {
    const key = pendingKey();
    await a.insertPendingKey(key, firstVersion(key), 100);
    await a.activateKey(key.id);
    return { ...key, state: 'Enabled' as const };
  }

  it('when a process changes a key, then its own next read sees the change and the change is announced', async () => {
    const key = await enabledKey();
    expect(await a.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Enabled' });
    const before = writes;
    await a.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'Disabled' });
    expect(writes).toBe(before + 1);
    expect(await a.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Disabled' });
    expect(await a.findKeyByAlias(PROJECT_A, key.alias)).toMatchObject({ state: 'Disabled' });
  });

  it('when another process changes a key, then the cached record serves until invalidate() or the maximum age', async () => {
    const key = await enabledKey();
    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Enabled' });
    await a.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'Disabled' });

    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Enabled' });
    b.invalidate();
    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Disabled' });

    await a.updateKey(PROJECT_A, key.id, 'Disabled', { state: 'Enabled' });
    now += 999;
    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Disabled' });
    now += 1;
    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Enabled' });
  });

  it('when a key is not found, then the miss is not cached and a key created elsewhere is seen at once', async () => {
    const key = pendingKey();
    expect(await b.findKey(PROJECT_A, key.id)).toBeUndefined();
    await a.insertPendingKey(key, firstVersion(key), 100);
    await a.activateKey(key.id);
    expect(await b.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Enabled' });
  });

  it('when a key is purged, then its cached versions are gone too', async () => {
    const key = await enabledKey();
    expect(await a.findKeyVersion(key.id, 1)).toBeDefined();
    await a.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'PendingDeletion', deletionDate: 0 });
    expect(await a.purgeDueKeys([key.id], 0)).toEqual([key.id]);
    expect(await a.findKeyVersion(key.id, 1)).toBeUndefined();
    expect(await a.findKey(PROJECT_A, key.id)).toBeUndefined();
  });

  it('when a batch of keys is purged, then only their cached versions go and the survivors stay cached', async () => {
    const [gone, kept, cancelled] = [await enabledKey(), await enabledKey(), await enabledKey()];
    for (const key of [gone, kept, cancelled]) {
      expect(await a.findKeyVersion(key.id, 1)).toBeDefined();
      await a.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'PendingDeletion', deletionDate: 0 });
    }
    await b.updateKey(PROJECT_A, cancelled.id, 'PendingDeletion', { state: 'Disabled', deletionDate: null });

    expect(await a.purgeDueKeys([gone.id, cancelled.id], 0)).toEqual([gone.id]);

    expect(await a.findKeyVersion(gone.id, 1)).toBeUndefined();
    expect(await a.findKeyVersion(kept.id, 1)).toBeDefined();
    expect(await a.findKeyVersion(cancelled.id, 1)).toBeDefined();
    expect(await a.findKey(PROJECT_A, cancelled.id)).toMatchObject({ state: 'Disabled' });
  });
});
