import type { CredentialRecord } from '../core/credentials.js';
import type { ConnectionState, KeyStoreExpectation, KeyStorePatch, KeyStoreRecord } from '../core/key-stores.js';
import type {
  AliasRecord,
  KeptKeyVersion,
  KeyRecord,
  KeyRotationRecord,
  KeyState,
  KeyVersionRecord,
  RootKeyRecord,
  Tag,
} from '../core/keys.js';
import { aliasName } from '../core/keys.js';
import type { KeyPatch, ListKeysQuery, MetadataStore, RotationChange } from '../core/ports.js';

export interface CachingOptions {
  /** How long a cached key record may be served without being read again: the bound on cross-process staleness. */
  readonly maxAgeMs: number;
  /** Entries kept per map; the oldest are dropped first. */
  readonly maxEntries: number;
  /** Called after every write, so that other processes can be told to invalidate (node:cluster IPC). */
  readonly onWrite?: () => void;
  readonly now?: () => number;
}

interface Cached<T> {
  readonly value: T;
  readonly at: number;
}

/**
 * Serves the reads of the data-key hot path from memory: a SQLite read takes 15–50 µs (its WAL lock costs system
 * calls), which is a tenth of a create-datakey request (docs/performance.md).
 *
 * - Key versions change only when a root rotation rewraps them, which keeps their key: a cached version keeps
 *   working until the rotation destroys the old root, and then the core reads it again with `fresh` (and this cache
 *   takes the new record). Cached until their key is purged.
 * - Key records change (state, alias): this process's own writes clear the cache at once; other processes' writes
 *   arrive through `invalidate()` (node:cluster messages from main.ts), and `maxAgeMs` bounds the staleness should a
 *   message be lost. A single-process service is therefore never stale.
 * - Misses are not cached, so a key created elsewhere is visible at once.
 */
export class CachingMetadataStore implements MetadataStore {
  readonly #inner: MetadataStore;
  readonly #options: CachingOptions;
  readonly #now: () => number;
  readonly #keys = new Map<string, Cached<KeyRecord>>();
  readonly #aliases = new Map<string, Cached<KeyRecord>>();
  readonly #versions = new Map<string, KeyVersionRecord>();
  /** Bumped by every invalidation: a read that straddles one does not cache what it read. */
  #generation = 0;

  constructor(inner: MetadataStore, options: CachingOptions) {
    this.#inner = inner;
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Forgets every key record (another process changed one). Versions stay: a rewrap keeps their key. */
  invalidate(): void {
    this.#generation++;
    this.#keys.clear();
    this.#aliases.clear();
  }

  async findKey(projectId: string, keyId: string): Promise<KeyRecord | undefined> {
    return this.#read(this.#keys, `${projectId}/${keyId}`, () => this.#inner.findKey(projectId, keyId));
  }

  async findKeyByAlias(projectId: string, alias: string): Promise<KeyRecord | undefined> {
    const name = aliasName(alias);
    return this.#read(this.#aliases, `${projectId}/${name}`, () => this.#inner.findKeyByAlias(projectId, name));
  }

  async findKeyVersion(keyId: string, version: number, fresh = false): Promise<KeyVersionRecord | undefined> {
    const id = `${keyId}/${version}`;
    const cached = fresh ? undefined : this.#versions.get(id);
    if (cached) return cached;
    const found = await this.#inner.findKeyVersion(keyId, version);
    if (found) remember(this.#versions, id, found, this.#options.maxEntries);
    else this.#versions.delete(id);
    return found;
  }

  async insertPendingKey(key: KeyRecord, version: KeyVersionRecord, quota: number): Promise<boolean> {
    const inserted = await this.#inner.insertPendingKey(key, version, quota);
    if (inserted) this.#written();
    return inserted;
  }

  // Root keys and the versions a rotation moves are read by the rotation alone: never cached.
  listRootKeys(): Promise<RootKeyRecord[]> {
    return this.#inner.listRootKeys();
  }

  reserveRootKey(label: string, at: number, staleBefore: number): Promise<string | undefined> {
    return this.#inner.reserveRootKey(label, at, staleBefore);
  }

  activateRootKey(label: string, at: number, tokenId?: Buffer): Promise<void> {
    return this.#inner.activateRootKey(label, at, tokenId);
  }

  markRootKeyDestroying(label: string): Promise<boolean> {
    return this.#inner.markRootKeyDestroying(label);
  }

  forgetRootKey(label: string): Promise<void> {
    return this.#inner.forgetRootKey(label);
  }

  listVersionsNotUnder(rootKeyLabel: string, limit: number): Promise<KeyVersionRecord[]> {
    return this.#inner.listVersionsNotUnder(rootKeyLabel, limit);
  }

  async replaceKeptVersion(current: KeyVersionRecord, next: KeptKeyVersion): Promise<boolean> {
    const replaced = await this.#inner.replaceKeptVersion(current, next);
    if (replaced) this.#versions.delete(`${current.keyId}/${current.version}`);
    return replaced;
  }

  async activateKey(keyId: string): Promise<void> {
    await this.#inner.activateKey(keyId);
    this.#written();
  }

  async purgePendingCreation(keyId: string): Promise<boolean> {
    const purged = await this.#inner.purgePendingCreation(keyId);
    if (purged) {
      this.#forgetVersions(new Set([keyId]));
      this.#written();
    }
    return purged;
  }

  async purgeDueKeys(keyIds: readonly string[], now: number): Promise<string[]> {
    const purged = await this.#inner.purgeDueKeys(keyIds, now);
    if (purged.length > 0) {
      this.#forgetVersions(new Set(purged));
      this.#written();
    }
    return purged;
  }

  erasePurged(): Promise<boolean> {
    return this.#inner.erasePurged();
  }

  async updateKey(
    projectId: string,
    keyId: string,
    expectedState: KeyState,
    patch: KeyPatch,
  ): Promise<KeyRecord | undefined> {
    const updated = await this.#inner.updateKey(projectId, keyId, expectedState, patch);
    this.#written();
    return updated;
  }

  // Access keys are never cached: a revocation, even by another process (the CLI), takes effect at once.
  insertCredential(credential: CredentialRecord): Promise<void> {
    return this.#inner.insertCredential(credential);
  }

  findCredential(accessKeyId: string): Promise<CredentialRecord | undefined> {
    return this.#inner.findCredential(accessKeyId);
  }

  revokeCredential(accessKeyId: string, at: number): Promise<boolean> {
    return this.#inner.revokeCredential(accessKeyId, at);
  }

  async createAlias(alias: AliasRecord): Promise<void> {
    await this.#inner.createAlias(alias);
    this.#written();
  }

  async retargetAlias(projectId: string, name: string, keyId: string, at: number): Promise<boolean> {
    const changed = await this.#inner.retargetAlias(projectId, name, keyId, at);
    this.#written();
    return changed;
  }

  async deleteAlias(projectId: string, name: string): Promise<boolean> {
    const changed = await this.#inner.deleteAlias(projectId, name);
    this.#written();
    return changed;
  }

  findAlias(projectId: string, name: string): Promise<AliasRecord | undefined> {
    return this.#inner.findAlias(projectId, name);
  }

  listAliases(projectId: string, keyId?: string): Promise<AliasRecord[]> {
    return this.#inner.listAliases(projectId, keyId);
  }

  putTags(keyId: string, tags: readonly Tag[], maxTags: number): Promise<void> {
    return this.#inner.putTags(keyId, tags, maxTags);
  }

  removeTags(keyId: string, tagKeys: readonly string[]): Promise<void> {
    return this.#inner.removeTags(keyId, tagKeys);
  }

  listTags(keyId: string): Promise<Tag[]> {
    return this.#inner.listTags(keyId);
  }

  listPendingCreation(): Promise<KeyRecord[]> {
    return this.#inner.listPendingCreation();
  }

  listKeys(query: ListKeysQuery): Promise<{ keys: KeyRecord[]; total: number }> {
    return this.#inner.listKeys(query);
  }

  countKeys(projectId: string): Promise<number> {
    return this.#inner.countKeys(projectId);
  }

  async addKeyVersion(
    key: KeyRecord,
    version: KeyVersionRecord,
    change: RotationChange,
  ): Promise<KeyRecord | 'conflict' | 'root-replaced'> {
    const added = await this.#inner.addKeyVersion(key, version, change);
    // The key's current version changed: every process must read it again before its next encryption.
    if (typeof added !== 'string') this.#written();
    return added;
  }

  async setRotationPeriod(
    projectId: string,
    keyId: string,
    expectedState: KeyState,
    periodDays: number | null,
    now: number,
  ): Promise<KeyRecord | undefined> {
    const updated = await this.#inner.setRotationPeriod(projectId, keyId, expectedState, periodDays, now);
    this.#written();
    return updated;
  }

  listKeyRotations(keyId: string): Promise<KeyRotationRecord[]> {
    return this.#inner.listKeyRotations(keyId);
  }

  listKeysDueForRotation(now: number, limit: number): Promise<KeyRecord[]> {
    return this.#inner.listKeysDueForRotation(now, limit);
  }

  listKeysDueForDeletion(now: number, limit: number): Promise<KeyRecord[]> {
    return this.#inner.listKeysDueForDeletion(now, limit);
  }

  // Key stores are never cached: a store disconnected by one process must be refused by every other at once.

  countKeysInStore(keyStoreId: string): Promise<number> {
    return this.#inner.countKeysInStore(keyStoreId);
  }

  insertKeyStore(store: KeyStoreRecord, quota: number): Promise<void> {
    return this.#inner.insertKeyStore(store, quota);
  }

  findKeyStore(projectId: string, keyStoreId: string): Promise<KeyStoreRecord | undefined> {
    return this.#inner.findKeyStore(projectId, keyStoreId);
  }

  findKeyStoreByName(projectId: string, name: string): Promise<KeyStoreRecord | undefined> {
    return this.#inner.findKeyStoreByName(projectId, name);
  }

  listKeyStoresIn(states: readonly ConnectionState[]): Promise<KeyStoreRecord[]> {
    return this.#inner.listKeyStoresIn(states);
  }

  listKeyStores(
    projectId: string,
    offset: number,
    limit: number,
  ): Promise<{ stores: KeyStoreRecord[]; total: number }> {
    return this.#inner.listKeyStores(projectId, offset, limit);
  }

  updateKeyStore(
    projectId: string,
    keyStoreId: string,
    expected: KeyStoreExpectation,
    patch: KeyStorePatch,
  ): Promise<KeyStoreRecord | undefined> {
    return this.#inner.updateKeyStore(projectId, keyStoreId, expected, patch);
  }

  deleteKeyStore(
    projectId: string,
    keyStoreId: string,
    expectedStates: readonly ConnectionState[],
  ): Promise<'deleted' | 'not-found' | 'has-keys' | 'invalid-state'> {
    return this.#inner.deleteKeyStore(projectId, keyStoreId, expectedStates);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  async #read(
    cache: Map<string, Cached<KeyRecord>>,
    id: string,
    load: () => Promise<KeyRecord | undefined>,
  ): Promise<KeyRecord | undefined> {
    const now = this.#now();
    const cached = cache.get(id);
    if (cached && now - cached.at < this.#options.maxAgeMs) return cached.value;
    const generation = this.#generation;
    const found = await load();
    if (generation !== this.#generation) return found;
    if (found) remember(cache, id, { value: found, at: now }, this.#options.maxEntries);
    else cache.delete(id);
    return found;
  }

  /** Drops the cached versions of the keys, in one pass over the cache whatever the number of keys. */
  #forgetVersions(keyIds: ReadonlySet<string>): void {
    for (const id of this.#versions.keys()) {
      if (keyIds.has(id.slice(0, id.lastIndexOf('/')))) this.#versions.delete(id);
    }
  }

  #written(): void {
    this.invalidate();
    this.#options.onWrite?.();
  }
}

function remember<T>(cache: Map<string, T>, id: string, value: T, maxEntries: number): void {
  if (cache.size >= maxEntries && !cache.has(id)) {
    const oldest = cache.keys().next().value;
    if (oldest !== undefined) cache.delete(oldest);
  }
  cache.set(id, value);
}
