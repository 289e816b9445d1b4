import Database from 'better-sqlite3';
import { KmsError } from '../core/errors.js';
import type { ConnectionState, KeyStoreExpectation, KeyStorePatch, KeyStoreRecord } from '../core/key-stores.js';

/** A key_stores row as selected: the record with its sealed PIN in two columns. */
type KeyStoreRow = Omit<KeyStoreRecord, 'sealedPin'> & { pinIv: Buffer; pinSealed: Buffer };

const KEY_STORE_COLUMNS = `id, project_id AS projectId, name, connection_id AS connectionId, key_scheme AS keyScheme,
  trust_anchor_certificate AS trustAnchorCertificate, pin_iv AS pinIv, pin_sealed AS pinSealed,
  connection_state AS connectionState, connection_error_code AS connectionErrorCode, root_token_id AS rootTokenId,
  connection_epoch AS connectionEpoch, state_changed_at AS stateChangedAt, created_at AS createdAt`;

/** Parameters of the compare-and-set update: a `set*` flag of 1 applies the field, so null can be written too. */
interface UpdateParams {
  projectId: string;
  id: string;
  expectedStates: string;
  expectedEpoch: number | null;
  setName: 0 | 1;
  name: string | null;
  setPin: 0 | 1;
  pinIv: Buffer | null;
  pinSealed: Buffer | null;
  setState: 0 | 1;
  connectionState: ConnectionState | null;
  setErrorCode: 0 | 1;
  connectionErrorCode: string | null;
  setRootTokenId: 0 | 1;
  rootTokenId: Buffer | null;
  setEpoch: 0 | 1;
  connectionEpoch: number | null;
  setStateChangedAt: 0 | 1;
  stateChangedAt: number | null;
}

/** The key_stores table (schema in sqlite-metadata-store.ts), on the metadata store's connection. */
export class SqliteKeyStores {
  readonly #insertTx: Database.Transaction<(store: KeyStoreRecord, quota: number) => void>;
  readonly #find: Database.Statement<[string, string], KeyStoreRow>;
  readonly #findByName: Database.Statement<[string, string], KeyStoreRow>;
  readonly #listTx: Database.Transaction<
    (projectId: string, offset: number, limit: number) => { stores: KeyStoreRecord[]; total: number }
  >;
  readonly #listIn: Database.Statement<[string], KeyStoreRow>;
  readonly #update: Database.Statement<[UpdateParams], KeyStoreRow>;
  readonly #deleteTx: Database.Transaction<
    (projectId: string, id: string, expectedStates: string) => 'deleted' | 'not-found' | 'has-keys' | 'invalid-state'
  >;
  readonly #countKeys: Database.Statement<[string], number>;

  constructor(db: Database.Database) {
    const count = db.prepare<[string], number>('SELECT count(*) FROM key_stores WHERE project_id = ?').pluck();
    const nameTaken = db
      .prepare<[string, string], number>('SELECT count(*) FROM key_stores WHERE project_id = ? AND name = ?')
      .pluck();
    const connectionTaken = db
      .prepare<[string], number>('SELECT count(*) FROM key_stores WHERE connection_id = ?')
      .pluck();
    const insert = db.prepare(`
      INSERT INTO key_stores (id, project_id, name, connection_id, key_scheme, trust_anchor_certificate, pin_iv,
        pin_sealed, connection_state, connection_error_code, root_token_id, connection_epoch, state_changed_at, created_at)
      VALUES (@id, @projectId, @name, @connectionId, @keyScheme, @trustAnchorCertificate, @pinIv, @pinSealed,
        @connectionState, @connectionErrorCode, @rootTokenId, @connectionEpoch, @stateChangedAt, @createdAt)`);
    this.#insertTx = db.transaction((store: KeyStoreRecord, quota: number) => {
      if ((nameTaken.get(store.projectId, store.name) ?? 0) > 0) throw nameInUse(store.name);
      if ((connectionTaken.get(store.connectionId) ?? 0) > 0) {
        throw new KmsError(
          'ConnectionInUse',
          `The connection ${store.connectionId} is already used by a custom key store.`,
        );
      }
      if ((count.get(store.projectId) ?? 0) >= quota) {
        throw new KmsError('KeyStoreLimitExceeded', `A project can have at most ${quota} custom key stores.`);
      }
      const { sealedPin, ...fields } = store;
      insert.run({ ...fields, pinIv: sealedPin.iv, pinSealed: sealedPin.ciphertextWithTag });
    });
    this.#find = db.prepare(`SELECT ${KEY_STORE_COLUMNS} FROM key_stores WHERE project_id = ? AND id = ?`);
    this.#findByName = db.prepare(`SELECT ${KEY_STORE_COLUMNS} FROM key_stores WHERE project_id = ? AND name = ?`);
    const list = db.prepare<[string, number, number], KeyStoreRow>(
      `SELECT ${KEY_STORE_COLUMNS} FROM key_stores WHERE project_id = ? ORDER BY created_at, id LIMIT ? OFFSET ?`,
    );
    this.#listTx = db.transaction((projectId: string, offset: number, limit: number) => ({
      stores: list.all(projectId, limit, offset).map(toRecord),
      total: count.get(projectId) ?? 0,
    }));
    // The states come as one JSON array: a statement has a fixed number of parameters.
    this.#listIn = db.prepare(
      `SELECT ${KEY_STORE_COLUMNS} FROM key_stores WHERE connection_state IN (SELECT value FROM json_each(?))
        ORDER BY created_at, id`,
    );
    this.#update = db.prepare(`
      UPDATE key_stores SET
        name = CASE WHEN @setName THEN @name ELSE name END,
        pin_iv = CASE WHEN @setPin THEN @pinIv ELSE pin_iv END,
        pin_sealed = CASE WHEN @setPin THEN @pinSealed ELSE pin_sealed END,
        connection_state = CASE WHEN @setState THEN @connectionState ELSE connection_state END,
        connection_error_code = CASE WHEN @setErrorCode THEN @connectionErrorCode ELSE connection_error_code END,
        root_token_id = CASE WHEN @setRootTokenId THEN @rootTokenId ELSE root_token_id END,
        connection_epoch = CASE WHEN @setEpoch THEN @connectionEpoch ELSE connection_epoch END,
        state_changed_at = CASE WHEN @setStateChangedAt THEN @stateChangedAt ELSE state_changed_at END
      WHERE project_id = @projectId AND id = @id
        AND connection_state IN (SELECT value FROM json_each(@expectedStates))
        AND (@expectedEpoch IS NULL OR connection_epoch = @expectedEpoch)
      RETURNING ${KEY_STORE_COLUMNS}`);
    this.#countKeys = db.prepare<[string], number>('SELECT count(*) FROM keys WHERE key_store_id = ?').pluck();
    const stateOf = db
      .prepare<[string, string], string>('SELECT connection_state FROM key_stores WHERE project_id = ? AND id = ?')
      .pluck();
    const remove = db.prepare('DELETE FROM key_stores WHERE id = ?');
    this.#deleteTx = db.transaction((projectId: string, id: string, expectedStates: string) => {
      const state = stateOf.get(projectId, id);
      if (state === undefined) return 'not-found';
      if (!(JSON.parse(expectedStates) as string[]).includes(state)) return 'invalid-state';
      if ((this.#countKeys.get(id) ?? 0) > 0) return 'has-keys';
      remove.run(id);
      return 'deleted';
    });
  }

  insert(store: KeyStoreRecord, quota: number): void {
    this.#insertTx.immediate(store, quota);
  }

  find(projectId: string, id: string): KeyStoreRecord | undefined {
    const row = this.#find.get(projectId, id);
    return row && toRecord(row);
  }

  findByName(projectId: string, name: string): KeyStoreRecord | undefined {
    const row = this.#findByName.get(projectId, name);
    return row && toRecord(row);
  }

  list(projectId: string, offset: number, limit: number): { stores: KeyStoreRecord[]; total: number } {
    return this.#listTx(projectId, offset, limit);
  }

  listIn(states: readonly ConnectionState[]): KeyStoreRecord[] {
    return this.#listIn.all(JSON.stringify(states)).map(toRecord);
  }

  update(
    projectId: string,
    id: string,
    expected: KeyStoreExpectation,
    patch: KeyStorePatch,
  ): KeyStoreRecord | undefined {
    try {
      const row = this.#update.get({
        projectId,
        id,
        expectedStates: JSON.stringify(expected.states),
        expectedEpoch: expected.epoch ?? null,
        setName: patch.name === undefined ? 0 : 1,
        name: patch.name ?? null,
        setPin: patch.sealedPin === undefined ? 0 : 1,
        pinIv: patch.sealedPin?.iv ?? null,
        pinSealed: patch.sealedPin?.ciphertextWithTag ?? null,
        setState: patch.connectionState === undefined ? 0 : 1,
        connectionState: patch.connectionState ?? null,
        setErrorCode: patch.connectionErrorCode === undefined ? 0 : 1,
        connectionErrorCode: patch.connectionErrorCode ?? null,
        setRootTokenId: patch.rootTokenId === undefined ? 0 : 1,
        rootTokenId: patch.rootTokenId ?? null,
        setEpoch: patch.connectionEpoch === undefined ? 0 : 1,
        connectionEpoch: patch.connectionEpoch ?? null,
        setStateChangedAt: patch.stateChangedAt === undefined ? 0 : 1,
        stateChangedAt: patch.stateChangedAt ?? null,
      });
      return row && toRecord(row);
    } catch (error) {
      if (error instanceof Database.SqliteError && error.code === 'SQLITE_CONSTRAINT_UNIQUE' && patch.name) {
        throw nameInUse(patch.name);
      }
      throw error;
    }
  }

  delete(
    projectId: string,
    id: string,
    expectedStates: readonly ConnectionState[],
  ): 'deleted' | 'not-found' | 'has-keys' | 'invalid-state' {
    return this.#deleteTx.immediate(projectId, id, JSON.stringify(expectedStates));
  }

  countKeys(keyStoreId: string): number {
    return this.#countKeys.get(keyStoreId) ?? 0;
  }
}

function toRecord({ pinIv, pinSealed, ...fields }: KeyStoreRow): KeyStoreRecord {
  return { ...fields, sealedPin: { iv: pinIv, ciphertextWithTag: pinSealed } };
}

function nameInUse(name: string): KmsError {
  return new KmsError('KeyStoreNameInUse', `A custom key store named '${name}' already exists.`);
}
