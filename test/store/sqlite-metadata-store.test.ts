import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { aliasName } from '../../src/core/keys.js';
import { SqliteMetadataStore } from '../../src/store/sqlite-metadata-store.js';
import { firstVersion, PROJECT_A, pendingKey, TEST_ROOT_KEY, withTestRootKey } from './key-fixtures.js';
import { describeMetadataStoreContract } from './metadata-store-contract.js';

/** The schema as the first release created it (user_version 1), copied here so later edits cannot change it. */
const SCHEMA_V1 = `
  CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    alias TEXT NOT NULL,
    alias_name TEXT NOT NULL,
    description TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('PendingCreation', 'Enabled', 'Disabled', 'PendingDeletion')),
    key_spec TEXT NOT NULL,
    key_usage TEXT NOT NULL,
    origin TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deletion_date INTEGER,
    current_version INTEGER NOT NULL
  ) STRICT;
  CREATE UNIQUE INDEX keys_project_alias_name ON keys (project_id, alias_name);
  CREATE INDEX keys_project_created ON keys (project_id, created_at, id);
  CREATE INDEX keys_state_deletion_date ON keys (state, deletion_date);
  CREATE TABLE key_versions (
    key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    root_key_label TEXT NOT NULL,
    derivation_data BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
  ) STRICT, WITHOUT ROWID;
`;

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'hsm-kms-store-'));
}

describeMetadataStoreContract('SqliteMetadataStore', async () => {
  const dir = tempDir();
  const store = await withTestRootKey(SqliteMetadataStore.open(join(dir, 'kms.db')));
  return {
    store,
    cleanup: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('SqliteMetadataStore on a file', () => {
  let dir: string;
  let path: string;
  const open: SqliteMetadataStore[] = [];

  /** Opens the file; with `root`, also makes the fixtures' root key active, so that keys can be inserted. */
  function openStore(root = true): SqliteMetadataStore {
    const store = SqliteMetadataStore.open(path);
    open.push(store);
    // SQLite works synchronously: the root key is recorded before this returns.
    if (root) void store.activateRootKey(TEST_ROOT_KEY, 0);
    return store;
  }

  beforeEach(() => {
    dir = tempDir();
    path = join(dir, 'nested', 'dir', 'kms.db');
  });
  afterEach(async () => {
    for (const store of open.splice(0)) await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('when the file is missing, then its parent directories and the file are created, readable by the owner only', () => {
    openStore();

    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('when the store is closed and reopened, then the data is still there', async () => {
    const first = openStore();
    const key = pendingKey();
    const version = firstVersion(key);
    await first.insertPendingKey(key, version, 10);
    await first.activateKey(key.id);
    await first.close();

    const reopened = openStore();

    expect(await reopened.findKey(PROJECT_A, key.id)).toEqual({ ...key, state: 'Enabled' });
    expect(await reopened.findKeyVersion(key.id, 1)).toEqual(version);
  });

  it('when the schema is created, then user_version records it, WAL is on and reopening migrates nothing', async () => {
    await openStore().close();
    openStore();

    const db = new Database(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(8);
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
  });

  it('when the file has a newer schema than this build knows, then opening it fails with InternalError', async () => {
    await openStore().close();
    const db = new Database(path);
    db.pragma('user_version = 99');
    db.close();

    expect(() => SqliteMetadataStore.open(path)).toThrow(
      expect.objectContaining({ code: 'InternalError', name: 'KmsError' }),
    );
  });

  it('when a database made by the first release (schema 1) is opened, then it gains the credentials table and keeps its keys', async () => {
    mkdirSync(dirname(path), { recursive: true });
    const v1 = new Database(path);
    v1.exec(SCHEMA_V1);
    v1.pragma('user_version = 1');
    const key = { ...pendingKey(), state: 'Enabled' as const };
    const version = firstVersion(key, {
      scheme: 'cbc-encrypt-data-v1',
      rootKeyLabel: 'hsm-kms-root-1',
      keyMaterial: randomBytes(32),
    });
    v1.prepare(
      `INSERT INTO keys (id, project_id, alias, alias_name, description, state, key_spec, key_usage, origin, created_at,
        deletion_date, current_version)
       VALUES (@id, @projectId, @alias, @aliasName, @description, @state, @keySpec, @keyUsage, @origin, @createdAt,
        @deletionDate, @currentVersion)`,
    ).run({ ...key, aliasName: aliasName(key.alias) });
    v1.prepare(
      `INSERT INTO key_versions (key_id, version, root_key_label, derivation_data, created_at)
       VALUES (@keyId, @version, @rootKeyLabel, @keyMaterial, @createdAt)`,
    ).run(version);
    v1.close();

    const store = openStore(false);

    expect(await store.findKey(PROJECT_A, key.id)).toEqual(key);
    // The version keeps the legacy scheme, and its root key is retiring: the next rotation migrates it.
    expect(await store.findKeyVersion(key.id, 1)).toEqual(version);
    expect(await store.listRootKeys()).toEqual([
      { label: 'hsm-kms-root-1', state: 'retiring', tokenId: null, createdAt: 0 },
    ]);
    expect(await store.findKeyByAlias(PROJECT_A, key.alias)).toEqual(key);
    expect(await store.listAliases(PROJECT_A)).toEqual([
      {
        projectId: PROJECT_A,
        name: aliasName(key.alias),
        keyId: key.id,
        createdAt: key.createdAt,
        updatedAt: key.createdAt,
      },
    ]);
    await store.insertCredential({
      accessKeyId: 'AKIAAAAAAAAAAAAAAAAA',
      projectId: PROJECT_A,
      createdAt: 1,
      revokedAt: null,
    });
    expect(await store.findCredential('AKIAAAAAAAAAAAAAAAAA')).toMatchObject({ projectId: PROJECT_A });
    const db = new Database(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(8);
      expect(db.prepare(`SELECT sql FROM sqlite_schema WHERE name = 'credentials'`).pluck().get()).toMatch(/STRICT$/);
    } finally {
      db.close();
    }
  });

  it('when two keys of a project have no alias (AWS CreateKey), then both are stored; named aliases stay unique', async () => {
    const store = openStore();
    for (const key of [pendingKey({ alias: '' }), pendingKey({ alias: '' })]) {
      await store.insertPendingKey(key, firstVersion(key), 10);
    }
    const named = pendingKey({ alias: 'named' });
    await store.insertPendingKey(named, firstVersion(named), 10);
    const clash = pendingKey({ alias: 'alias/named' });
    await expect(store.insertPendingKey(clash, firstVersion(clash), 10)).rejects.toMatchObject({
      code: 'AliasAlreadyExists',
    });
  });

  describe('when two workers open the same file', () => {
    it('then each sees the keys the other writes', async () => {
      const worker1 = openStore();
      const worker2 = openStore();
      const key = pendingKey({ alias: 'alias/shared' });

      await worker1.insertPendingKey(key, firstVersion(key), 10);
      expect(await worker2.listPendingCreation()).toEqual([key]);
      await worker2.activateKey(key.id);

      expect(await worker1.findKeyByAlias(PROJECT_A, 'shared')).toEqual({ ...key, state: 'Enabled' });
    });

    it('then of two racing transitions from the same state, only one wins', async () => {
      const worker1 = openStore();
      const worker2 = openStore();
      const key = pendingKey();
      await worker1.insertPendingKey(key, firstVersion(key), 10);
      await worker1.activateKey(key.id);

      const results = await Promise.all([
        worker1.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'Disabled' }),
        worker2.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'PendingDeletion', deletionDate: 1 }),
      ]);

      expect(results.filter((result) => result !== undefined)).toHaveLength(1);
      expect(await worker2.findKey(PROJECT_A, key.id)).toEqual(results[0] ?? results[1]);
    });

    it('then the quota holds across both', async () => {
      const worker1 = openStore();
      const worker2 = openStore();
      const first = pendingKey();
      const second = pendingKey();
      await worker1.insertPendingKey(first, firstVersion(first), 1);

      await expect(worker2.insertPendingKey(second, firstVersion(second), 1)).rejects.toMatchObject({
        code: 'KeyQuotaExceeded',
      });
    });

    it('then an alias taken through one is refused through the other', async () => {
      const worker1 = openStore();
      const worker2 = openStore();
      const first = pendingKey({ alias: 'alias/orders' });
      const second = pendingKey({ alias: 'orders' });
      await worker1.insertPendingKey(first, firstVersion(first), 10);

      await expect(worker2.insertPendingKey(second, firstVersion(second), 10)).rejects.toMatchObject({
        code: 'AliasAlreadyExists',
      });
    });

    it('then a deletion cancelled through one after the sweep on the other listed the key is not purged', async () => {
      const sweeper = openStore();
      const worker = openStore();
      const key = pendingKey();
      await sweeper.insertPendingKey(key, firstVersion(key), 10);
      await sweeper.activateKey(key.id);
      await sweeper.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'PendingDeletion', deletionDate: 5 });
      const listed = (await sweeper.listKeysDueForDeletion(10, 100)).map((due) => due.id);

      await worker.updateKey(PROJECT_A, key.id, 'PendingDeletion', { state: 'Disabled', deletionDate: null });

      expect(await sweeper.purgeDueKeys(listed, 10)).toEqual([]);
      expect(await worker.findKey(PROJECT_A, key.id)).toMatchObject({ state: 'Disabled', deletionDate: null });
      expect(await worker.findKeyVersion(key.id, 1)).toBeDefined();
    });
  });

  describe('erasePurged', () => {
    const fileBytes = () =>
      ['', '-wal', '-shm'].map((suffix) => (existsSync(`${path}${suffix}`) ? readFileSync(`${path}${suffix}`) : null));

    /** A key purged while another connection holds a read transaction open on the WAL. */
    async function purgedUnderReader() {
      const store = openStore();
      const key = pendingKey();
      const version = firstVersion(key);
      await store.insertPendingKey(key, version, 10);
      await store.activateKey(key.id);
      await store.updateKey(PROJECT_A, key.id, 'Enabled', { state: 'PendingDeletion', deletionDate: 0 });
      const reader = new Database(path);
      reader.exec('BEGIN');
      reader.prepare('SELECT count(*) FROM keys').get();
      expect(await store.purgeDueKeys([key.id], 0)).toEqual([key.id]);
      return { store, version, reader };
    }

    it('when another process holds a read transaction on the WAL, then erasePurged answers false, and true once it ends', async () => {
      const { store, version, reader } = await purgedUnderReader();
      const started = performance.now();
      expect(await store.erasePurged()).toBe(false);
      // It does not wait out the busy timeout: that wait would stall the sweeping process's event loop.
      expect(performance.now() - started).toBeLessThan(1000);
      expect(fileBytes().some((bytes) => bytes?.includes(version.keyMaterial))).toBe(true);

      reader.exec('COMMIT');
      reader.close();
      expect(await store.erasePurged()).toBe(true);
      expect(fileBytes().some((bytes) => bytes?.includes(version.keyMaterial))).toBe(false);
    }, 20_000);

    it('when the process stops before its erasure went through, then the next process to sweep erases', async () => {
      const { store, version, reader } = await purgedUnderReader();
      expect(await store.erasePurged()).toBe(false);
      await store.close();
      reader.exec('COMMIT');

      const restarted = openStore();
      expect(fileBytes().some((bytes) => bytes?.includes(version.keyMaterial))).toBe(true);
      expect(await restarted.erasePurged()).toBe(true);
      reader.close();
      expect(fileBytes().some((bytes) => bytes?.includes(version.keyMaterial))).toBe(false);
    });
  });
});
