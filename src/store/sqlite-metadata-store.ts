import Database from 'better-sqlite3';
import type { CredentialRecord } from '../core/credentials.js';
import { KmsError } from '../core/errors.js';
import type { ConnectionState, KeyStoreExpectation, KeyStorePatch, KeyStoreRecord } from '../core/key-stores.js';
import {
  type AliasRecord,
  aliasName,
  type KeptKeyVersion,
  type KeyRecord,
  type KeyRotationRecord,
  type KeyState,
  type KeyVersionRecord,
  LEGACY_ROOT_KEY_LABEL,
  type RootKeyRecord,
  type Tag,
} from '../core/keys.js';
import type { KeyPatch, ListKeysQuery, MetadataStore, RotationChange } from '../core/ports.js';
import { openSqliteFile } from './sqlite-file.js';
import { SqliteKeyStores } from './sqlite-key-stores.js';

/**
 * Forward-only schema migrations. Entry i takes the database from `PRAGMA user_version` i to i + 1; never edit an
 * entry once released, append a new one. STRICT tables make SQLite reject a value of the wrong type instead of
 * storing it, so rows always map to KeyRecord / KeyVersionRecord without checks.
 */
const MIGRATIONS: readonly string[] = [
  `
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
  `,
  // Access keys of the signed dialects. The secret is not here: the HSM derives it from access_key_id.
  `
  CREATE TABLE credentials (
    access_key_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
  ) STRICT;
  `,
  // Keys made through the AWS dialect have no alias until CreateAlias: only non-empty aliases are unique.
  `
  DROP INDEX keys_project_alias_name;
  CREATE UNIQUE INDEX keys_project_alias_name ON keys (project_id, alias_name) WHERE alias_name <> '';
  `,
  // Tags of keys (AWS TagResource); they go with their key.
  `
  CREATE TABLE tags (
    key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
  ) STRICT, WITHOUT ROWID;
  `,
  // Aliases as their own rows: AWS lets a key have several (CreateAlias, UpdateAlias, DeleteAlias). keys.alias stays
  // the alias Huawei shows as key_alias: one of the key's aliases, or '' when it has none.
  `
  CREATE TABLE aliases (
    project_id TEXT NOT NULL,
    alias_name TEXT NOT NULL,
    key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (project_id, alias_name)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX aliases_key ON aliases (key_id);
  INSERT INTO aliases (project_id, alias_name, key_id, created_at, updated_at)
    SELECT project_id, alias_name, id, created_at, created_at FROM keys WHERE alias_name <> '';
  DROP INDEX keys_project_alias_name;
  `,
  // Wrapped key versions (issue 9): a version names how it is kept. Versions made before keep the derivation scheme,
  // and the root key they were derived from is retiring: the next root rotation migrates them and destroys it.
  `
  ALTER TABLE key_versions RENAME COLUMN derivation_data TO key_material;
  ALTER TABLE key_versions ADD COLUMN scheme TEXT NOT NULL DEFAULT 'cbc-encrypt-data-v1'
    CHECK (scheme IN ('kwp-v1', 'cbc-encrypt-data-v1'));
  CREATE INDEX key_versions_root_key_label ON key_versions (root_key_label);
  CREATE TABLE root_keys (
    label TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('creating', 'active', 'retiring', 'destroying')),
    token_id BLOB,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE UNIQUE INDEX root_keys_one_active_one_creating ON root_keys (state) WHERE state IN ('active', 'creating');
  INSERT INTO root_keys (label, state, created_at) SELECT DISTINCT root_key_label, 'retiring', 0 FROM key_versions;
  `,
  // Tenants' key stores (issue 10), and token-object versions, which SQLite can only allow by rebuilding the table
  // its CHECK is on. One connection, one store; a store's PIN is kept only sealed under the default HSM.
  `
  CREATE TABLE key_stores (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    connection_id TEXT NOT NULL UNIQUE,
    key_scheme TEXT NOT NULL CHECK (key_scheme IN ('token-object', 'wrapped')),
    trust_anchor_certificate TEXT NOT NULL,
    pin_iv BLOB NOT NULL,
    pin_sealed BLOB NOT NULL,
    connection_state TEXT NOT NULL
      CHECK (connection_state IN ('CONNECTED', 'CONNECTING', 'FAILED', 'DISCONNECTED', 'DISCONNECTING')),
    connection_error_code TEXT,
    root_token_id BLOB,
    connection_epoch INTEGER NOT NULL,
    state_changed_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE UNIQUE INDEX key_stores_project_name ON key_stores (project_id, name);
  CREATE INDEX key_stores_project_created ON key_stores (project_id, created_at, id);
  ALTER TABLE keys ADD COLUMN key_store_id TEXT REFERENCES key_stores (id);
  CREATE INDEX keys_key_store ON keys (key_store_id) WHERE key_store_id IS NOT NULL;
  CREATE TABLE key_versions_new (
    key_id TEXT NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    root_key_label TEXT NOT NULL,
    key_material BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    scheme TEXT NOT NULL CHECK (scheme IN ('kwp-v1', 'cbc-encrypt-data-v1', 'token-object-v1')),
    PRIMARY KEY (key_id, version)
  ) STRICT, WITHOUT ROWID;
  INSERT INTO key_versions_new (key_id, version, root_key_label, key_material, created_at, scheme)
    SELECT key_id, version, root_key_label, key_material, created_at, scheme FROM key_versions;
  DROP TABLE key_versions;
  ALTER TABLE key_versions_new RENAME TO key_versions;
  CREATE INDEX key_versions_root_key_label ON key_versions (root_key_label);
  `,
  // Key rotation (issue 12): the schedule on the key, and why each later version was made.
  `
  ALTER TABLE keys ADD COLUMN rotation_period_days INTEGER;
  ALTER TABLE keys ADD COLUMN next_rotation_at INTEGER;
  ALTER TABLE keys ADD COLUMN last_rotated_at INTEGER;
  ALTER TABLE keys ADD COLUMN rotations INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE keys ADD COLUMN on_demand_rotations INTEGER NOT NULL DEFAULT 0;
  CREATE INDEX keys_next_rotation ON keys (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
  ALTER TABLE key_versions ADD COLUMN rotation_type TEXT CHECK (rotation_type IN ('AUTOMATIC', 'ON_DEMAND'));
  `,
];

/** The entry of MIGRATIONS that brought wrapped key versions and root key records (user_version 5 to 6). */
const WRAPPED_SCHEME_MIGRATION = 5;

/** Columns aliased to KeyRecord's property names, in its order, so a row is a KeyRecord as it comes back. */
const KEY_COLUMNS = `id, project_id AS projectId, alias, description, state, key_spec AS keySpec, key_usage AS keyUsage,
  origin, created_at AS createdAt, deletion_date AS deletionDate, current_version AS currentVersion,
  key_store_id AS keyStoreId, rotation_period_days AS rotationPeriodDays, next_rotation_at AS nextRotationAt,
  last_rotated_at AS lastRotatedAt, rotations, on_demand_rotations AS onDemandRotations`;
const VERSION_COLUMNS = `key_id AS keyId, version, scheme, root_key_label AS rootKeyLabel, key_material AS keyMaterial,
  created_at AS createdAt`;
const ROOT_KEY_COLUMNS = 'label, state, token_id AS tokenId, created_at AS createdAt';
const ALIAS_COLUMNS = `project_id AS projectId, alias_name AS name, key_id AS keyId, created_at AS createdAt,
  updated_at AS updatedAt`;
const CREDENTIAL_COLUMNS = `access_key_id AS accessKeyId, project_id AS projectId, created_at AS createdAt,
  revoked_at AS revokedAt`;
const VISIBLE = `state <> 'PendingCreation'`;
/** Milliseconds in a day, for the rotation dates SQL computes. */
const DAY_MS = 86_400_000;
const KEY_ORDER = 'ORDER BY created_at, id';

/** Parameters of a rewrap: the version as it was read (compare-and-set) and how it is kept now. */
interface ReplaceKeptParams extends KeptKeyVersion {
  readonly keyId: string;
  readonly version: number;
  readonly currentRootKeyLabel: string;
  readonly currentKeyMaterial: Buffer;
}

/** Parameters of the compare-and-set update: a `set*` flag of 1 applies the field, so null can be written too. */
interface UpdateParams {
  projectId: string;
  id: string;
  expectedState: KeyState;
  setAlias: 0 | 1;
  alias: string | null;
  aliasName: string | null;
  setDescription: 0 | 1;
  description: string | null;
  setState: 0 | 1;
  state: KeyState | null;
  setDeletionDate: 0 | 1;
  deletionDate: number | null;
}

/** How long a statement waits for another process's write lock before SQLITE_BUSY. */
const BUSY_TIMEOUT_MS = 5000;

/**
 * The metadata store on one SQLite file, shared by every node:cluster worker. WAL lets readers run beside the single
 * writer; a read-then-write runs in a BEGIN IMMEDIATE transaction so it holds the write lock from its first read,
 * and a concurrent writer waits up to busy_timeout instead of failing.
 */
export class SqliteMetadataStore implements MetadataStore {
  readonly #db: Database.Database;
  readonly #keyStores: SqliteKeyStores;
  readonly #countAllKeys: Database.Statement<[string], number>;
  readonly #insertKey: Database.Statement<[KeyRecord & { aliasName: string }]>;
  readonly #insertVersion: Database.Statement<[KeyVersionRecord]>;
  readonly #isActiveRootKey: Database.Statement<[string], number>;
  readonly #isConnectedStoreOf: Database.Statement<[string, string], number>;
  readonly #listRootKeys: Database.Statement<[], RootKeyRecord>;
  readonly #retireActiveRootKey: Database.Statement<[]>;
  readonly #findCreatingRootKey: Database.Statement<[], RootKeyRecord>;
  readonly #insertCreatingRootKey: Database.Statement<[string, number]>;
  readonly #renewRootKeyReservation: Database.Statement<[number, string]>;
  readonly #reserveRootKeyTx: Database.Transaction<
    (label: string, at: number, staleBefore: number) => string | undefined
  >;
  readonly #insertRootKey: Database.Statement<[string, Buffer | null, number]>;
  readonly #activateRootKeyTx: Database.Transaction<(label: string, at: number, tokenId: Buffer | null) => void>;
  readonly #markRootKeyDestroying: Database.Statement<[{ label: string }]>;
  readonly #forgetRootKey: Database.Statement<[string]>;
  readonly #listVersionsNotUnder: Database.Statement<[string, number], KeyVersionRecord>;
  readonly #replaceKeptVersion: Database.Statement<[ReplaceKeptParams]>;
  readonly #activateKey: Database.Statement<[string]>;
  readonly #listPendingCreation: Database.Statement<[], KeyRecord>;
  readonly #purgePendingCreation: Database.Statement<[string]>;
  readonly #purgeDueKey: Database.Statement<[string, number]>;
  readonly #purgeDueKeysTx: Database.Transaction<(keyIds: readonly string[], now: number) => string[]>;
  readonly #findKey: Database.Statement<[string, string], KeyRecord>;
  readonly #findKeyByAlias: Database.Statement<[string, string], KeyRecord>;
  readonly #findKeyVersion: Database.Statement<[string, number], KeyVersionRecord>;
  readonly #listKeys: Database.Statement<[string, number, number], KeyRecord>;
  readonly #listKeysInState: Database.Statement<[string, KeyState, number, number], KeyRecord>;
  readonly #countKeys: Database.Statement<[string], number>;
  readonly #countKeysInState: Database.Statement<[string, KeyState], number>;
  readonly #updateKey: Database.Statement<[UpdateParams], KeyRecord>;
  readonly #listKeysDueForDeletion: Database.Statement<[number, number], KeyRecord>;
  readonly #insertCredential: Database.Statement<[CredentialRecord]>;
  readonly #findCredential: Database.Statement<[string], CredentialRecord>;
  readonly #revokeCredential: Database.Statement<[number, string]>;
  readonly #insertAlias: Database.Statement<[AliasRecord]>;
  readonly #findAlias: Database.Statement<[string, string], AliasRecord>;
  readonly #deleteAlias: Database.Statement<[string, string]>;
  readonly #retargetAlias: Database.Statement<[string, number, string, string]>;
  readonly #listAliases: Database.Statement<[string], AliasRecord>;
  readonly #listKeyAliases: Database.Statement<[string, string], AliasRecord>;
  readonly #firstAliasOfKey: Database.Statement<[string], string>;
  readonly #findAnyKey: Database.Statement<[string], KeyRecord>;
  readonly #setDisplayAlias: Database.Statement<[string, string, string]>;
  readonly #aliasTx: Database.Transaction<(change: () => boolean) => boolean>;
  readonly #putTag: Database.Statement<[string, string, string]>;
  readonly #countTags: Database.Statement<[string], number>;
  readonly #removeTag: Database.Statement<[string, string]>;
  readonly #listTags: Database.Statement<[string], Tag>;
  readonly #putTagsTx: Database.Transaction<(keyId: string, tags: readonly Tag[], maxTags: number) => void>;
  readonly #insertPendingKeyTx: Database.Transaction<
    (key: KeyRecord, version: KeyVersionRecord, quota: number) => boolean
  >;
  readonly #addKeyVersionTx: Database.Transaction<
    (key: KeyRecord, version: KeyVersionRecord, change: RotationChange) => KeyRecord | 'conflict' | 'root-replaced'
  >;
  readonly #listKeyRotations: Database.Statement<[string], KeyRotationRecord>;
  readonly #setRotationPeriod: Database.Statement<
    [{ projectId: string; id: string; expectedState: KeyState; period: number | null; now: number }],
    KeyRecord
  >;
  readonly #listKeysDueForRotation: Database.Statement<[number, number], KeyRecord>;
  readonly #listKeysTx: Database.Transaction<(query: ListKeysQuery) => { keys: KeyRecord[]; total: number }>;
  /**
   * Set when key material deleted may still have copies in the WAL file. It starts set: a process that stopped
   * before its erasure went through left the copies behind, and nothing but a checkpoint remembers them.
   */
  #unerased = true;

  /** Opens (creating if missing, with mode 0600) and migrates the database at `path`. */
  static open(path: string): SqliteMetadataStore {
    try {
      return openSqliteFile(path, (db) => new SqliteMetadataStore(db));
    } catch (error) {
      throw storeError(error);
    }
  }

  private constructor(db: Database.Database) {
    this.#db = db;
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    // Deleted rows (a purged key's wrapped material) are overwritten with zeros in the pages SQLite writes, and freed
    // pages are zeroed, instead of lingering in free space; erasePurged() then removes the WAL's older page images.
    db.pragma('secure_delete = ON');
    migrate(db);
    this.#keyStores = new SqliteKeyStores(db);

    this.#countAllKeys = db.prepare<[string], number>('SELECT count(*) FROM keys WHERE project_id = ?').pluck();
    this.#insertKey = db.prepare(`
      INSERT INTO keys (id, project_id, alias, alias_name, description, state, key_spec, key_usage, origin,
        created_at, deletion_date, current_version, key_store_id)
      VALUES (@id, @projectId, @alias, @aliasName, @description, 'PendingCreation', @keySpec, @keyUsage, @origin,
        @createdAt, @deletionDate, @currentVersion, @keyStoreId)`);
    this.#insertVersion = db.prepare(`
      INSERT INTO key_versions (key_id, version, scheme, root_key_label, key_material, created_at)
      VALUES (@keyId, @version, @scheme, @rootKeyLabel, @keyMaterial, @createdAt)`);
    this.#isActiveRootKey = db
      .prepare<[string], number>(`SELECT count(*) FROM root_keys WHERE label = ? AND state = 'active'`)
      .pluck();
    this.#isConnectedStoreOf = db
      .prepare<[string, string], number>(
        `SELECT count(*) FROM key_stores WHERE id = ? AND project_id = ? AND connection_state = 'CONNECTED'`,
      )
      .pluck();
    this.#listRootKeys = db.prepare(
      `SELECT ${ROOT_KEY_COLUMNS} FROM root_keys ORDER BY state = 'active' DESC, length(label), label`,
    );
    this.#findCreatingRootKey = db.prepare(`SELECT ${ROOT_KEY_COLUMNS} FROM root_keys WHERE state = 'creating'`);
    this.#insertCreatingRootKey = db.prepare(
      `INSERT INTO root_keys (label, state, created_at) VALUES (?, 'creating', ?)`,
    );
    this.#renewRootKeyReservation = db.prepare(`UPDATE root_keys SET created_at = ? WHERE label = ?`);
    this.#reserveRootKeyTx = db.transaction((label: string, at: number, staleBefore: number) => {
      const reserved = this.#findCreatingRootKey.get();
      if (reserved === undefined) {
        this.#insertCreatingRootKey.run(label, at);
        return label;
      }
      if (reserved.createdAt > staleBefore) return undefined;
      this.#renewRootKeyReservation.run(at, reserved.label);
      return reserved.label;
    });
    this.#retireActiveRootKey = db.prepare(`UPDATE root_keys SET state = 'retiring' WHERE state = 'active'`);
    this.#insertRootKey = db.prepare(
      `INSERT INTO root_keys (label, state, token_id, created_at) VALUES (?, 'active', ?, ?)
        ON CONFLICT (label) DO UPDATE SET state = 'active', token_id = excluded.token_id`,
    );
    this.#activateRootKeyTx = db.transaction((label: string, at: number, tokenId: Buffer | null) => {
      this.#retireActiveRootKey.run();
      this.#insertRootKey.run(label, tokenId, at);
    });
    this.#markRootKeyDestroying = db.prepare(
      `UPDATE root_keys SET state = 'destroying' WHERE label = @label AND state = 'retiring'
        AND NOT EXISTS (SELECT 1 FROM key_versions WHERE root_key_label = @label)`,
    );
    this.#forgetRootKey = db.prepare(`DELETE FROM root_keys WHERE label = ? AND state = 'destroying'`);
    // Through the root_keys table, so that the index on root_key_label serves it: a rotation's later batches do not
    // scan again the rows its earlier ones moved.
    this.#listVersionsNotUnder = db.prepare(
      `SELECT ${VERSION_COLUMNS} FROM key_versions
        WHERE root_key_label IN (SELECT label FROM root_keys WHERE label <> ?) LIMIT ?`,
    );
    this.#replaceKeptVersion = db.prepare(`
      UPDATE key_versions SET scheme = @scheme, root_key_label = @rootKeyLabel, key_material = @keyMaterial
      WHERE key_id = @keyId AND version = @version AND root_key_label = @currentRootKeyLabel
        AND key_material = @currentKeyMaterial
        AND EXISTS (SELECT 1 FROM root_keys WHERE label = @rootKeyLabel AND state = 'active')`);
    this.#activateKey = db.prepare(`UPDATE keys SET state = 'Enabled' WHERE id = ? AND state = 'PendingCreation'`);
    this.#listPendingCreation = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE state = 'PendingCreation' ${KEY_ORDER}`,
    );
    // Versions, aliases and tags go with the key (ON DELETE CASCADE). The state is checked by the DELETE itself, so
    // a key another process changed after it was listed is never deleted.
    this.#purgePendingCreation = db.prepare(`DELETE FROM keys WHERE id = ? AND state = 'PendingCreation'`);
    this.#purgeDueKey = db.prepare(
      `DELETE FROM keys WHERE id = ? AND state = 'PendingDeletion' AND deletion_date <= ?`,
    );
    this.#purgeDueKeysTx = db.transaction((keyIds: readonly string[], now: number) =>
      keyIds.filter((id) => this.#purgeDueKey.run(id, now).changes > 0),
    );
    this.#findKey = db.prepare(`SELECT ${KEY_COLUMNS} FROM keys WHERE id = ? AND project_id = ? AND ${VISIBLE}`);
    this.#findKeyByAlias = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE id = (SELECT key_id FROM aliases WHERE project_id = ? AND alias_name = ?)
        AND ${VISIBLE}`,
    );
    this.#findKeyVersion = db.prepare(`SELECT ${VERSION_COLUMNS} FROM key_versions WHERE key_id = ? AND version = ?`);
    this.#listKeys = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE project_id = ? AND ${VISIBLE} ${KEY_ORDER} LIMIT ? OFFSET ?`,
    );
    this.#listKeysInState = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE project_id = ? AND state = ? AND ${VISIBLE} ${KEY_ORDER} LIMIT ? OFFSET ?`,
    );
    this.#countKeys = db
      .prepare<[string], number>(`SELECT count(*) FROM keys WHERE project_id = ? AND ${VISIBLE}`)
      .pluck();
    this.#countKeysInState = db
      .prepare<[string, KeyState], number>(
        `SELECT count(*) FROM keys WHERE project_id = ? AND state = ? AND ${VISIBLE}`,
      )
      .pluck();
    // One statement whatever the patch holds: the CASE flags pick which columns change, and RETURNING hands back
    // the row the compare-and-set wrote, so no second read can see another process's later write.
    this.#updateKey = db.prepare(`
      UPDATE keys SET
        alias = CASE WHEN @setAlias THEN @alias ELSE alias END,
        alias_name = CASE WHEN @setAlias THEN @aliasName ELSE alias_name END,
        description = CASE WHEN @setDescription THEN @description ELSE description END,
        state = CASE WHEN @setState THEN @state ELSE state END,
        deletion_date = CASE WHEN @setDeletionDate THEN @deletionDate ELSE deletion_date END
      WHERE project_id = @projectId AND id = @id AND state = @expectedState
      RETURNING ${KEY_COLUMNS}`);
    this.#listKeysDueForDeletion = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE state = 'PendingDeletion' AND deletion_date <= ?
        ORDER BY deletion_date, id LIMIT ?`,
    );
    this.#insertCredential = db.prepare(`
      INSERT INTO credentials (access_key_id, project_id, created_at, revoked_at)
      VALUES (@accessKeyId, @projectId, @createdAt, @revokedAt)`);
    this.#findCredential = db.prepare(`SELECT ${CREDENTIAL_COLUMNS} FROM credentials WHERE access_key_id = ?`);
    this.#revokeCredential = db.prepare(
      'UPDATE credentials SET revoked_at = ? WHERE access_key_id = ? AND revoked_at IS NULL',
    );

    this.#insertAlias = db.prepare(`
      INSERT INTO aliases (project_id, alias_name, key_id, created_at, updated_at)
      VALUES (@projectId, @name, @keyId, @createdAt, @updatedAt)`);
    this.#findAlias = db.prepare(`SELECT ${ALIAS_COLUMNS} FROM aliases WHERE project_id = ? AND alias_name = ?`);
    this.#deleteAlias = db.prepare('DELETE FROM aliases WHERE project_id = ? AND alias_name = ?');
    this.#retargetAlias = db.prepare(
      'UPDATE aliases SET key_id = ?, updated_at = ? WHERE project_id = ? AND alias_name = ?',
    );
    this.#listAliases = db.prepare(`SELECT ${ALIAS_COLUMNS} FROM aliases WHERE project_id = ? ORDER BY alias_name`);
    this.#listKeyAliases = db.prepare(
      `SELECT ${ALIAS_COLUMNS} FROM aliases WHERE project_id = ? AND key_id = ? ORDER BY alias_name`,
    );
    this.#firstAliasOfKey = db
      .prepare('SELECT alias_name FROM aliases WHERE key_id = ? ORDER BY created_at, alias_name LIMIT 1')
      .pluck() as Database.Statement<[string], string>;
    this.#findAnyKey = db.prepare(`SELECT ${KEY_COLUMNS} FROM keys WHERE id = ?`);
    this.#setDisplayAlias = db.prepare('UPDATE keys SET alias = ?, alias_name = ? WHERE id = ?');
    this.#aliasTx = db.transaction((change: () => boolean) => change());
    this.#putTag = db.prepare(
      'INSERT INTO tags (key_id, tag_key, tag_value) VALUES (?, ?, ?) ON CONFLICT (key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value',
    );
    this.#countTags = db.prepare('SELECT count(*) FROM tags WHERE key_id = ?').pluck() as Database.Statement<
      [string],
      number
    >;
    this.#removeTag = db.prepare('DELETE FROM tags WHERE key_id = ? AND tag_key = ?');
    this.#listTags = db.prepare(
      'SELECT tag_key AS key, tag_value AS value FROM tags WHERE key_id = ? ORDER BY tag_key',
    );
    this.#putTagsTx = db.transaction((keyId: string, tags: readonly Tag[], maxTags: number) => {
      for (const tag of tags) this.#putTag.run(keyId, tag.key, tag.value);
      if ((this.#countTags.get(keyId) ?? 0) > maxTags) {
        throw new KmsError('TagLimitExceeded', `A key can have at most ${maxTags} tags.`);
      }
    });

    this.#insertPendingKeyTx = db.transaction((key: KeyRecord, version: KeyVersionRecord, quota: number) => {
      if (key.keyStoreId === null) {
        // A rotation that began meanwhile would never see a version wrapped under the root it is retiring.
        if (this.#isActiveRootKey.get(version.rootKeyLabel) === 0) return false;
      } else if (this.#isConnectedStoreOf.get(key.keyStoreId, key.projectId) === 0) {
        // A tenant's store must still be connected, and the project's, when its key is recorded: a disconnection
        // (or a deletion) since the caller looked wins.
        return false;
      }
      // Keys still in PendingCreation count too, or two concurrent creations could both pass the check.
      if ((this.#countAllKeys.get(key.projectId) ?? 0) >= quota) {
        throw new KmsError('KeyQuotaExceeded', 'The number of keys has reached the quota.');
      }
      this.#insertKey.run({ ...key, aliasName: aliasName(key.alias) });
      this.#insertVersion.run(version);
      if (key.alias !== '') {
        const name = aliasName(key.alias);
        this.#insertAlias.run({
          projectId: key.projectId,
          name,
          keyId: key.id,
          createdAt: key.createdAt,
          updatedAt: key.createdAt,
        });
      }
      return true;
    });
    const insertRotatedVersion = db.prepare(`
      INSERT INTO key_versions (key_id, version, scheme, root_key_label, key_material, created_at, rotation_type)
      VALUES (@keyId, @version, @scheme, @rootKeyLabel, @keyMaterial, @createdAt, @rotationType)`);
    // The compare-and-set: still Enabled, still at the version before; an automatic rotation still due (the schedule
    // read by the caller may have been turned off or moved since), an on-demand one still within its quota. The next
    // automatic date is computed here, from the period the key has now.
    const advanceVersion = db.prepare(`
      UPDATE keys SET current_version = @version, last_rotated_at = @at, rotations = rotations + 1,
        on_demand_rotations = on_demand_rotations + (1 - @automatic),
        next_rotation_at = CASE WHEN @automatic THEN @at + rotation_period_days * ${DAY_MS} ELSE next_rotation_at END
      WHERE id = @keyId AND state = 'Enabled' AND current_version = @version - 1
        AND (@automatic = 0 OR (rotation_period_days IS NOT NULL AND next_rotation_at <= @at))
        AND (@maxOnDemand IS NULL OR on_demand_rotations < @maxOnDemand)
      RETURNING ${KEY_COLUMNS}`);
    this.#setRotationPeriod = db.prepare(`
      UPDATE keys SET
        next_rotation_at = CASE
          WHEN @period IS NULL THEN NULL
          WHEN rotation_period_days IS NOT NULL THEN next_rotation_at + (@period - rotation_period_days) * ${DAY_MS}
          ELSE @now + @period * ${DAY_MS} END,
        rotation_period_days = @period
      WHERE project_id = @projectId AND id = @id AND state = @expectedState
      RETURNING ${KEY_COLUMNS}`);
    this.#addKeyVersionTx = db.transaction((key: KeyRecord, version: KeyVersionRecord, change: RotationChange) => {
      if (key.keyStoreId === null && this.#isActiveRootKey.get(version.rootKeyLabel) === 0) return 'root-replaced';
      const advanced = advanceVersion.get({
        keyId: key.id,
        version: version.version,
        at: change.at,
        automatic: change.type === 'AUTOMATIC' ? 1 : 0,
        maxOnDemand: change.maxOnDemand ?? null,
      }) as KeyRecord | undefined;
      if (!advanced) return 'conflict';
      insertRotatedVersion.run({ ...version, rotationType: change.type });
      return advanced;
    });
    this.#listKeyRotations = db.prepare(
      `SELECT version, created_at AS createdAt, rotation_type AS rotationType FROM key_versions WHERE key_id = ?
        ORDER BY version`,
    );
    this.#listKeysDueForRotation = db.prepare(
      `SELECT ${KEY_COLUMNS} FROM keys WHERE next_rotation_at <= ? AND rotation_period_days IS NOT NULL
        AND state = 'Enabled' ORDER BY next_rotation_at, id LIMIT ?`,
    );
    // A read transaction, so the page and the total come from the same snapshot.
    this.#listKeysTx = db.transaction(({ projectId, state, offset, limit }: ListKeysQuery) =>
      state === undefined
        ? { keys: this.#listKeys.all(projectId, limit, offset), total: this.#countKeys.get(projectId) ?? 0 }
        : {
            keys: this.#listKeysInState.all(projectId, state, limit, offset),
            total: this.#countKeysInState.get(projectId, state) ?? 0,
          },
    );
  }

  async insertPendingKey(key: KeyRecord, version: KeyVersionRecord, quota: number): Promise<boolean> {
    try {
      return this.#insertPendingKeyTx.immediate(key, version, quota);
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Throws KmsError('KeyNotFound') if no key `keyId` is in PendingCreation (e.g. a reconciler purged it). */
  async activateKey(keyId: string): Promise<void> {
    let changes: number;
    try {
      changes = this.#activateKey.run(keyId).changes;
    } catch (error) {
      throw storeError(error);
    }
    if (changes === 0) throw new KmsError('KeyNotFound', 'The key does not exist.');
  }

  async listPendingCreation(): Promise<KeyRecord[]> {
    try {
      return this.#listPendingCreation.all();
    } catch (error) {
      throw storeError(error);
    }
  }

  async purgePendingCreation(keyId: string): Promise<boolean> {
    try {
      const purged = this.#purgePendingCreation.run(keyId).changes > 0;
      if (purged) this.#unerased = true;
      return purged;
    } catch (error) {
      throw storeError(error);
    }
  }

  async purgeDueKeys(keyIds: readonly string[], now: number): Promise<string[]> {
    try {
      const purged = this.#purgeDueKeysTx.immediate(keyIds, now);
      if (purged.length > 0) this.#unerased = true;
      return purged;
    } catch (error) {
      throw storeError(error);
    }
  }

  /**
   * secure_delete zeroed the deleted rows in the pages the purge wrote, but the WAL still holds older images of those
   * pages and kms.db the pre-purge pages until a checkpoint. A TRUNCATE checkpoint copies the zeroed pages into the
   * database and empties the WAL file. It does not wait for other processes' readers or writer: the synchronous wait
   * of busy_timeout would hold this process's event loop (in a cluster, the primary's, which hands every connection
   * to a worker) for seconds while, say, a backup tool holds a read transaction. SQLite then answers busy, and the
   * next call tries again.
   */
  async erasePurged(): Promise<boolean> {
    if (!this.#unerased) return true;
    this.#db.pragma('busy_timeout = 0');
    try {
      const [result] = this.#db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
      if (result?.busy !== 0) return false;
      this.#unerased = false;
      return true;
    } catch (error) {
      throw storeError(error);
    } finally {
      this.#db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    }
  }

  async findKey(projectId: string, keyId: string): Promise<KeyRecord | undefined> {
    try {
      return this.#findKey.get(keyId, projectId);
    } catch (error) {
      throw storeError(error);
    }
  }

  async findKeyByAlias(projectId: string, alias: string): Promise<KeyRecord | undefined> {
    try {
      return this.#findKeyByAlias.get(projectId, aliasName(alias));
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Always fresh: nothing here is cached. */
  async findKeyVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    try {
      return this.#findKeyVersion.get(keyId, version);
    } catch (error) {
      throw storeError(error);
    }
  }

  async listRootKeys(): Promise<RootKeyRecord[]> {
    try {
      return this.#listRootKeys.all();
    } catch (error) {
      throw storeError(error);
    }
  }

  async reserveRootKey(label: string, at: number, staleBefore: number): Promise<string | undefined> {
    try {
      return this.#reserveRootKeyTx.immediate(label, at, staleBefore);
    } catch (error) {
      throw storeError(error);
    }
  }

  async activateRootKey(label: string, at: number, tokenId?: Buffer): Promise<void> {
    try {
      this.#activateRootKeyTx.immediate(label, at, tokenId ?? null);
    } catch (error) {
      throw storeError(error);
    }
  }

  async markRootKeyDestroying(label: string): Promise<boolean> {
    try {
      return this.#markRootKeyDestroying.run({ label }).changes > 0;
    } catch (error) {
      throw storeError(error);
    }
  }

  async forgetRootKey(label: string): Promise<void> {
    try {
      this.#forgetRootKey.run(label);
    } catch (error) {
      throw storeError(error);
    }
  }

  async listVersionsNotUnder(rootKeyLabel: string, limit: number): Promise<KeyVersionRecord[]> {
    try {
      return this.#listVersionsNotUnder.all(rootKeyLabel, limit);
    } catch (error) {
      throw storeError(error);
    }
  }

  async replaceKeptVersion(current: KeyVersionRecord, next: KeptKeyVersion): Promise<boolean> {
    try {
      const replaced = this.#replaceKeptVersion.run({
        keyId: current.keyId,
        version: current.version,
        scheme: next.scheme,
        rootKeyLabel: next.rootKeyLabel,
        keyMaterial: next.keyMaterial,
        currentRootKeyLabel: current.rootKeyLabel,
        currentKeyMaterial: current.keyMaterial,
      });
      // The old material is overwritten in place (secure_delete), though the WAL may keep its page until a
      // checkpoint: harmless once its root key is destroyed, which is what rotation is for.
      return replaced.changes > 0;
    } catch (error) {
      throw storeError(error);
    }
  }

  async listKeys(query: ListKeysQuery): Promise<{ keys: KeyRecord[]; total: number }> {
    try {
      return this.#listKeysTx(query);
    } catch (error) {
      throw storeError(error);
    }
  }

  async countKeys(projectId: string): Promise<number> {
    try {
      return this.#countKeys.get(projectId) ?? 0;
    } catch (error) {
      throw storeError(error);
    }
  }

  async updateKey(
    projectId: string,
    keyId: string,
    expectedState: KeyState,
    patch: KeyPatch,
  ): Promise<KeyRecord | undefined> {
    const { alias, description, state, deletionDate } = patch;
    const params: UpdateParams = {
      projectId,
      id: keyId,
      expectedState,
      setAlias: alias === undefined ? 0 : 1,
      alias: alias ?? null,
      aliasName: alias === undefined ? null : aliasName(alias),
      setDescription: description === undefined ? 0 : 1,
      description: description ?? null,
      setState: state === undefined ? 0 : 1,
      state: state ?? null,
      setDeletionDate: deletionDate === undefined ? 0 : 1,
      deletionDate: deletionDate ?? null,
    };
    try {
      if (alias === undefined) return this.#updateKey.get(params);
      // Renaming the key's (Huawei) alias renames its alias row too, in one transaction.
      let updated: KeyRecord | undefined;
      this.#aliasTx.immediate(() => {
        const before = this.#findAnyKey.get(keyId);
        updated = this.#updateKey.get(params);
        if (!updated || !before) return false;
        if (before.alias !== '') this.#deleteAlias.run(projectId, aliasName(before.alias));
        const name = aliasName(alias);
        if (name !== '') {
          const now = Date.now();
          this.#insertAlias.run({ projectId, name, keyId, createdAt: now, updatedAt: now });
        }
        return true;
      });
      return updated;
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Adds an alias of the key; it becomes the key's Huawei key_alias if the key had none. */
  async createAlias(record: AliasRecord): Promise<void> {
    try {
      this.#aliasTx.immediate(() => {
        this.#insertAlias.run(record);
        this.#showFirstAlias(record.keyId);
        return true;
      });
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Points an existing alias at another key; false if the project has no such alias. */
  async retargetAlias(projectId: string, name: string, keyId: string, at: number): Promise<boolean> {
    try {
      return this.#aliasTx.immediate(() => {
        const alias = this.#findAlias.get(projectId, name);
        if (!alias) return false;
        this.#retargetAlias.run(keyId, at, projectId, name);
        this.#showFirstAlias(alias.keyId);
        this.#showFirstAlias(keyId);
        return true;
      });
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Deletes an alias; false if the project has no such alias. */
  async deleteAlias(projectId: string, name: string): Promise<boolean> {
    try {
      return this.#aliasTx.immediate(() => {
        const alias = this.#findAlias.get(projectId, name);
        if (!alias) return false;
        this.#deleteAlias.run(projectId, name);
        this.#showFirstAlias(alias.keyId);
        return true;
      });
    } catch (error) {
      throw storeError(error);
    }
  }

  async findAlias(projectId: string, name: string): Promise<AliasRecord | undefined> {
    try {
      return this.#findAlias.get(projectId, name);
    } catch (error) {
      throw storeError(error);
    }
  }

  async listAliases(projectId: string, keyId?: string): Promise<AliasRecord[]> {
    try {
      return keyId === undefined ? this.#listAliases.all(projectId) : this.#listKeyAliases.all(projectId, keyId);
    } catch (error) {
      throw storeError(error);
    }
  }

  /** Keeps keys.alias (Huawei's key_alias) one of the key's aliases: the current one if it still is, else the oldest. */
  #showFirstAlias(keyId: string): void {
    const key = this.#findAnyKey.get(keyId);
    if (!key) return;
    const current = aliasName(key.alias);
    const holds = current !== '' && this.#findAlias.get(key.projectId, current)?.keyId === keyId;
    if (holds) return;
    const first = this.#firstAliasOfKey.get(keyId) ?? '';
    this.#setDisplayAlias.run(first, first, keyId);
  }

  /** Throws KmsError('InternalError') if the access key id exists already (80 random bits: never in practice). */
  async insertCredential(credential: CredentialRecord): Promise<void> {
    try {
      this.#insertCredential.run(credential);
    } catch (error) {
      if (error instanceof Database.SqliteError && error.code.startsWith('SQLITE_CONSTRAINT')) {
        throw new KmsError('InternalError', 'Duplicate access key id.', { cause: error });
      }
      throw storeError(error);
    }
  }

  async findCredential(accessKeyId: string): Promise<CredentialRecord | undefined> {
    try {
      return this.#findCredential.get(accessKeyId);
    } catch (error) {
      throw storeError(error);
    }
  }

  async revokeCredential(accessKeyId: string, at: number): Promise<boolean> {
    try {
      return this.#revokeCredential.run(at, accessKeyId).changes > 0;
    } catch (error) {
      throw storeError(error);
    }
  }

  async putTags(keyId: string, tags: readonly Tag[], maxTags: number): Promise<void> {
    try {
      this.#putTagsTx.immediate(keyId, tags, maxTags);
    } catch (error) {
      if (error instanceof KmsError) throw error;
      throw storeError(error);
    }
  }

  async removeTags(keyId: string, tagKeys: readonly string[]): Promise<void> {
    try {
      this.#db.transaction(() => {
        for (const tagKey of tagKeys) this.#removeTag.run(keyId, tagKey);
      })();
    } catch (error) {
      throw storeError(error);
    }
  }

  async listTags(keyId: string): Promise<Tag[]> {
    try {
      return this.#listTags.all(keyId);
    } catch (error) {
      throw storeError(error);
    }
  }

  async listKeysDueForDeletion(now: number, limit: number): Promise<KeyRecord[]> {
    try {
      return this.#listKeysDueForDeletion.all(now, limit);
    } catch (error) {
      throw storeError(error);
    }
  }

  async addKeyVersion(
    key: KeyRecord,
    version: KeyVersionRecord,
    change: RotationChange,
  ): Promise<KeyRecord | 'conflict' | 'root-replaced'> {
    try {
      return this.#addKeyVersionTx.immediate(key, version, change);
    } catch (error) {
      throw storeError(error);
    }
  }

  async setRotationPeriod(
    projectId: string,
    keyId: string,
    expectedState: KeyState,
    periodDays: number | null,
    now: number,
  ): Promise<KeyRecord | undefined> {
    try {
      return this.#setRotationPeriod.get({ projectId, id: keyId, expectedState, period: periodDays, now });
    } catch (error) {
      throw storeError(error);
    }
  }

  async listKeyRotations(keyId: string): Promise<KeyRotationRecord[]> {
    try {
      return this.#listKeyRotations.all(keyId);
    } catch (error) {
      throw storeError(error);
    }
  }

  async listKeysDueForRotation(now: number, limit: number): Promise<KeyRecord[]> {
    try {
      return this.#listKeysDueForRotation.all(now, limit);
    } catch (error) {
      throw storeError(error);
    }
  }

  async countKeysInStore(keyStoreId: string): Promise<number> {
    return this.#keyStoreCall(() => this.#keyStores.countKeys(keyStoreId));
  }

  async insertKeyStore(store: KeyStoreRecord, quota: number): Promise<void> {
    this.#keyStoreCall(() => this.#keyStores.insert(store, quota));
  }

  async findKeyStore(projectId: string, keyStoreId: string): Promise<KeyStoreRecord | undefined> {
    return this.#keyStoreCall(() => this.#keyStores.find(projectId, keyStoreId));
  }

  async findKeyStoreByName(projectId: string, name: string): Promise<KeyStoreRecord | undefined> {
    return this.#keyStoreCall(() => this.#keyStores.findByName(projectId, name));
  }

  async listKeyStoresIn(states: readonly ConnectionState[]): Promise<KeyStoreRecord[]> {
    return this.#keyStoreCall(() => this.#keyStores.listIn(states));
  }

  async listKeyStores(
    projectId: string,
    offset: number,
    limit: number,
  ): Promise<{ stores: KeyStoreRecord[]; total: number }> {
    return this.#keyStoreCall(() => this.#keyStores.list(projectId, offset, limit));
  }

  async updateKeyStore(
    projectId: string,
    keyStoreId: string,
    expected: KeyStoreExpectation,
    patch: KeyStorePatch,
  ): Promise<KeyStoreRecord | undefined> {
    return this.#keyStoreCall(() => this.#keyStores.update(projectId, keyStoreId, expected, patch));
  }

  async deleteKeyStore(
    projectId: string,
    keyStoreId: string,
    expectedStates: readonly ConnectionState[],
  ): Promise<'deleted' | 'not-found' | 'has-keys' | 'invalid-state'> {
    return this.#keyStoreCall(() => this.#keyStores.delete(projectId, keyStoreId, expectedStates));
  }

  /** Key store calls raise their own KmsErrors; anything else the driver throws is the store failing. */
  #keyStoreCall<T>(call: () => T): T {
    try {
      return call();
    } catch (error) {
      if (error instanceof KmsError) throw error;
      throw new KmsError('InternalError', 'The metadata store failed.', { cause: error });
    }
  }

  async close(): Promise<void> {
    this.#db.close();
  }
}

/**
 * Brings the schema up to date inside one BEGIN IMMEDIATE transaction: when several workers open a fresh file at
 * once, the first migrates and the others wait for its lock, then find nothing left to do.
 */
function migrate(db: Database.Database): void {
  db.transaction(() => {
    const current = db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new KmsError(
        'InternalError',
        `The metadata database has schema version ${current}, newer than this build knows (${MIGRATIONS.length}).`,
      );
    }
    for (let version = current; version < MIGRATIONS.length; version++) {
      db.exec(MIGRATIONS[version] as string);
      // A database of the derivation scheme had the legacy root on its token even when no version is left (every key
      // purged): record it retiring all the same, so that the next rotation destroys it and old backups of derivation
      // data can no longer be opened. A fresh database (user_version 0) never had one.
      if (version === WRAPPED_SCHEME_MIGRATION && current > 0) {
        db.prepare("INSERT OR IGNORE INTO root_keys (label, state, created_at) VALUES (?, 'retiring', 0)").run(
          LEGACY_ROOT_KEY_LABEL,
        );
      }
    }
    // PRAGMA takes no bound parameters; the value is our own integer.
    if (current !== MIGRATIONS.length) db.pragma(`user_version = ${MIGRATIONS.length}`);
  }).immediate();
}

/**
 * Turns whatever the driver threw into a KmsError. The only key that callers can make clash is an alias's
 * (project_id, alias_name) — ids are random UUIDs — so a UNIQUE or PRIMARY KEY violation is an alias clash
 * (insertCredential handles its own). Driver messages name columns, never
 * values, so the cause is safe to log.
 */
function storeError(error: unknown): KmsError {
  if (error instanceof KmsError) return error;
  if (
    error instanceof Database.SqliteError &&
    (error.code === 'SQLITE_CONSTRAINT_UNIQUE' || error.code === 'SQLITE_CONSTRAINT_PRIMARYKEY')
  ) {
    return new KmsError('AliasAlreadyExists', 'Duplicate key aliases.', { cause: error });
  }
  return new KmsError('InternalError', 'The metadata store failed.', { cause: error });
}
