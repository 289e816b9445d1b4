import { randomUUID } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { KmsError, needs } from './errors.js';
import type { KeyStoreService } from './key-store.service.js';
import { type KeyStoreRecord, STORE_ROOT_KEY_LABEL } from './key-stores.js';
import {
  type AliasRecord,
  aliasName,
  assertUsableForCrypto,
  type KeyRecord,
  type KeyRef,
  type KeyRotationRecord,
  type KeyVersionRecord,
  MAX_TAGS_PER_KEY,
  type RotationType,
  type Tag,
  TOKEN_OBJECT_ID_BYTES,
  transitions,
} from './keys.js';
import type { Clock, Hsm, KeyPatch, MetadataStore } from './ports.js';
import { activeRootKey } from './root-key.service.js';

/**
 * How old a PendingCreation key in a store must be before a connection of the store cleans it up: a creation under
 * way in another process takes milliseconds, and must never lose its record under it.
 */
const INTERRUPTED_CREATION_AGE_MS = 60_000;

/** The widest range of rotation periods the dialects allow: Alibaba's 7 days to AWS's 2560. */
export const MIN_ROTATION_DAYS = 7;
export const MAX_ROTATION_DAYS = 2560;

/** Attempts at creating a key when root rotations keep replacing the root key under it. */
const MAX_ROOT_RACES = 3;

/** How often a compare-and-set transition is retried when another process changed the key meanwhile. */
const MAX_TRANSITION_ATTEMPTS = 5;

/**
 * Keys deleted per store transaction by the deletion sweep. The store is synchronous (better-sqlite3): a batch holds
 * the event loop for a few milliseconds, and the sweep yields between batches so requests are served meanwhile.
 */
export const PURGE_BATCH_SIZE = 100;

export interface CreateKeyInput {
  readonly projectId: string;
  readonly alias: string;
  readonly description: string;
  /** Create the key in this key store of the project (which must be connected); omitted: the default HSM. */
  readonly keyStoreId?: string;
}

/** The key lifecycle: creation, look-up, state changes, aliases, and the deletion of keys whose window has passed. */
export class KeyService {
  constructor(
    private readonly hsm: Hsm,
    private readonly store: MetadataStore,
    private readonly clock: Clock,
    private readonly cmkQuota: number,
    private readonly keyStores: KeyStoreService,
  ) {}

  /**
   * Crash-consistent creation: the version's key is generated and wrapped in the HSM (session objects only: a crash
   * leaves nothing on the token), then the key is recorded as PendingCreation together with it, then marked
   * Enabled. A crash in between leaves a PendingCreation record that `reconcilePendingCreation` removes at the next
   * start. Should a root rotation replace the root key meanwhile, the version is made again under the new one.
   */
  async create(input: CreateKeyInput): Promise<KeyRecord> {
    const now = this.clock.now();
    const key: KeyRecord = {
      id: randomUUID(),
      projectId: input.projectId,
      alias: input.alias,
      description: input.description,
      state: 'PendingCreation',
      keySpec: 'AES_256',
      keyUsage: 'ENCRYPT_DECRYPT',
      origin: 'kms',
      createdAt: now,
      deletionDate: null,
      currentVersion: 0,
      keyStoreId: input.keyStoreId ?? null,
      rotationPeriodDays: null,
      nextRotationAt: null,
      lastRotatedAt: null,
      rotations: 0,
      onDemandRotations: 0,
    };
    if (input.keyStoreId !== undefined) return this.createInStore(key, input.keyStoreId);
    for (let attempt = 1; ; attempt++) {
      const root = await activeRootKey(this.store);
      let inserted: boolean;
      try {
        const kept = await this.hsm.createKeyVersion(key.id, 0, root);
        const version: KeyVersionRecord = { keyId: key.id, version: 0, ...kept, createdAt: now };
        inserted = await this.store.insertPendingKey(key, version, this.cmkQuota);
      } catch (err) {
        // Refused (quota, alias) or failed: the version's key must not stay in the HSM's cache.
        this.hsm.forget(key.id, 0);
        // A rotation may have destroyed the root between reading and using it: then try under the new one.
        if (attempt < MAX_ROOT_RACES && (await activeRootKey(this.store)) !== root) continue;
        throw err;
      }
      if (inserted) break;
      this.hsm.forget(key.id, 0);
      if (attempt === MAX_ROOT_RACES) {
        throw new KmsError('HsmUnavailable', 'The root key was replaced repeatedly while the key was created.');
      }
    }
    await this.store.activateKey(key.id);
    return { ...key, state: 'Enabled' };
  }

  /**
   * A key in a tenant's store, generated in that store's HSM. Token objects are crash-consistent the other way
   * round from wrapped versions: the record (PendingCreation, with the object's CKA_ID) comes first, then the object,
   * so that a crash in between leaves a record naming what to destroy, never an object nobody knows about.
   */
  private async createInStore(key: KeyRecord, keyStoreId: string): Promise<KeyRecord> {
    const { store, hsm } = await this.keyStores.connectedHsm(key.projectId, keyStoreId, 'CreateKey');
    if (store.keyScheme === 'wrapped') {
      const kept = await hsm.createKeyVersion(key.id, 0, STORE_ROOT_KEY_LABEL);
      try {
        await this.insertPendingInStore(key, store, { keyId: key.id, version: 0, ...kept, createdAt: key.createdAt });
        await this.store.activateKey(key.id);
      } catch (err) {
        hsm.forget(key.id, 0);
        throw err;
      }
      return { ...key, state: 'Enabled' };
    }
    const objectId = await hsm.generateRandom(TOKEN_OBJECT_ID_BYTES);
    const version: KeyVersionRecord = {
      keyId: key.id,
      version: 0,
      scheme: 'token-object-v1',
      rootKeyLabel: '',
      keyMaterial: objectId,
      createdAt: key.createdAt,
    };
    await this.insertPendingInStore(key, store, version);
    try {
      await hsm.createTokenKeyVersion(key.id, 0, this.keyStores.tokenObjectLabel(key), objectId);
      await this.store.activateKey(key.id);
    } catch (err) {
      // The record goes only once its object is gone (a reconnection may have cleaned the record up meanwhile, so
      // the object is destroyed whatever the record's fate); otherwise the next clean-up, which the record names the
      // object for, finishes the job.
      const destroyed = await hsm.destroyTokenKeyVersion(objectId).then(
        () => true,
        () => false,
      );
      if (destroyed) await this.store.purgePendingCreation(key.id);
      throw err;
    }
    return { ...key, state: 'Enabled' };
  }

  /** The store checks, in the insert's transaction, that the store is still connected and the project's. */
  private async insertPendingInStore(key: KeyRecord, store: KeyStoreRecord, version: KeyVersionRecord): Promise<void> {
    if (!(await this.store.insertPendingKey(key, version, this.cmkQuota))) {
      throw new KmsError(
        'KeyStoreInvalidState',
        `CreateKey is not valid for custom key store ${store.id}, which is no longer connected.`,
      );
    }
  }

  /**
   * Removes keys a crash left in PendingCreation: their creation was never acknowledged to anyone. A token object
   * of a store's key that may have been made is destroyed first; while its store cannot be reached, the record stays
   * (it names the object) and the store's next connection, or the next start, tries again. Runs at start-up only,
   * when no creation can be under way.
   */
  async reconcilePendingCreation(): Promise<{ purged: number; waiting: number }> {
    let purged = 0;
    let waiting = 0;
    /** The HSMs of the stores whose creations were interrupted, by store id. */
    const interrupted = new Map<string, Hsm>();
    for (const key of await this.store.listPendingCreation()) {
      if (key.keyStoreId !== null) {
        const hsm = await this.hsmFor(key).catch(() => undefined);
        if (!hsm || !(await this.destroyTokenObjects(key, hsm))) {
          waiting++;
          continue;
        }
        interrupted.set(key.keyStoreId, hsm);
      }
      if (await this.store.purgePendingCreation(key.id)) purged++;
    }
    // A creation killed inside C_GenerateKey can leave a stub without the CKA_ID the record names (SoftHSM).
    for (const hsm of interrupted.values()) await hsm.destroyIncompleteTokenKeys().catch(() => 0);
    if (purged > 0) await this.store.erasePurged();
    return { purged, waiting };
  }

  /**
   * Run by the process connecting a store, with its token open: removes the store's keys whose creation was
   * interrupted long enough ago that it cannot be under way (a failure whose clean-up failed too, a crash while the
   * store could not be reached at start-up), so that they neither linger unseen nor block the store's deletion.
   */
  async reconcileStore(store: KeyStoreRecord, hsm: Hsm): Promise<void> {
    const before = this.clock.now() - INTERRUPTED_CREATION_AGE_MS;
    let purged = 0;
    for (const key of await this.store.listPendingCreation()) {
      if (key.keyStoreId !== store.id || key.createdAt > before) continue;
      if (!(await this.destroyTokenObjects(key, hsm))) continue;
      if (await this.store.purgePendingCreation(key.id)) purged++;
    }
    if (purged > 0) await this.store.erasePurged();
  }

  /** Destroys the token objects of a store key's token-object versions; false if one could not be destroyed. */
  private async destroyTokenObjects(key: KeyRecord, hsm: Hsm, objectIds?: readonly Buffer[]): Promise<boolean> {
    try {
      for (const id of objectIds ?? (await this.tokenObjectIds(key))) await hsm.destroyTokenKeyVersion(id);
      return true;
    } catch {
      return false;
    }
  }

  /** The CKA_IDs of the key's token-object versions (none for a key of the default HSM or a wrapped store). */
  private async tokenObjectIds(key: KeyRecord): Promise<Buffer[]> {
    if (key.keyStoreId === null) return [];
    const ids: Buffer[] = [];
    for (let v = 0; v <= key.currentVersion; v++) {
      const found = await this.store.findKeyVersion(key.id, v, true);
      if (found?.scheme === 'token-object-v1') ids.push(found.keyMaterial);
    }
    return ids;
  }

  /**
   * Deletes, for good, the keys whose deletion date has passed: their versions' key material goes with them, and
   * then every copy of it in the store's files. Keys are listed and purged in batches; the store purges a listed key only if it
   * is still due when it deletes it, so a deletion cancelled meanwhile by another process wins. Returns how many
   * keys were deleted.
   */
  async purgeDueDeletions(): Promise<number> {
    const now = this.clock.now();
    let purged = 0;
    for (;;) {
      const due = await this.store.listKeysDueForDeletion(now, PURGE_BATCH_SIZE);
      if (due.length === 0) break;
      const ids = due.map((key) => key.id);
      // Read before the purge erases them, used only for the keys it really purged (a deletion cancelled meanwhile
      // keeps its key, and its objects).
      const objectIds = new Map<string, Buffer[]>();
      for (const key of due) objectIds.set(key.id, await this.tokenObjectIds(key));
      const gone = new Set(await this.store.purgeDueKeys(ids, now));
      for (const key of due) {
        if (!gone.has(key.id)) continue;
        // As on AWS, a best effort for a store's key: the objects of a store that cannot be reached now stay on its
        // token (and its versions in that process's cache until it closes the store).
        const hsm = await this.hsmFor(key).catch(() => undefined);
        if (!hsm) continue;
        for (let v = 0; v <= key.currentVersion; v++) hsm.forget(key.id, v);
        await this.destroyTokenObjects(key, hsm, objectIds.get(key.id));
      }
      purged += gone.size;
      if (due.length < PURGE_BATCH_SIZE) break;
      await nextTurn();
    }
    // Also retried when nothing was purged this time: an earlier erasure may have found the files busy.
    await this.store.erasePurged();
    return purged;
  }

  /** The HSM the key lives in: the default one, or its key store's (KeyStoreNotConnected when it is not connected). */
  hsmFor(key: KeyRecord): Promise<Hsm> {
    const { keyStoreId } = key;
    return keyStoreId === null ? Promise.resolve(this.hsm) : this.keyStores.hsmFor({ ...key, keyStoreId });
  }

  /**
   * A new version of the key, made where the key lives, becomes the one new ciphertexts use; every older version
   * keeps decrypting. The version is made in the HSM first (a session object wrapped there: nothing on a token), then
   * recorded together with the key's new current version in one compare-and-set, so a rotation that fails half-way,
   * or races another, leaves the key as it was (a concurrent on-demand rotation is retried on top of the other).
   * `maxOnDemand`: the most on-demand rotations the key may have had (AWS's quota), enforced in the compare-and-set.
   */
  async rotate(projectId: string, ref: KeyRef, type: RotationType, maxOnDemand?: number): Promise<KeyRecord> {
    for (let attempt = 1; ; attempt++) {
      const key = await this.get(projectId, ref);
      if (maxOnDemand !== undefined && key.onDemandRotations >= maxOnDemand) {
        throw new KmsError('RotationLimitExceeded', `Key ${key.id} has been rotated on demand ${maxOnDemand} times.`);
      }
      const added = await this.#addVersion(key, type, maxOnDemand);
      if (typeof added !== 'string') return added;
      if (attempt >= MAX_ROOT_RACES) throw new KmsError('InternalError', 'The key kept changing while it was rotated.');
    }
  }

  /** What the sweep does for one key: rotates it automatically if its rotation is due now; undefined if not. */
  async rotateIfDue(projectId: string, ref: KeyRef): Promise<KeyRecord | undefined> {
    const added = await this.#addVersion(await this.get(projectId, ref), 'AUTOMATIC');
    return typeof added === 'string' ? undefined : added;
  }

  /**
   * One rotation attempt of `key` as the caller read it. The store's compare-and-set decides: the key must still be
   * Enabled and at this version, and an automatic rotation still due (so a schedule turned off or moved meanwhile
   * wins); the next automatic date is computed there from the period the key has then.
   */
  async #addVersion(
    key: KeyRecord,
    type: RotationType,
    maxOnDemand?: number,
  ): Promise<KeyRecord | 'conflict' | 'root-replaced'> {
    assertUsableForCrypto(key);
    const root = await this.#rotationRoot(key);
    const hsm = await this.hsmFor(key);
    const version = key.currentVersion + 1;
    const kept = await hsm.createKeyVersion(key.id, version, root);
    const now = this.clock.now();
    try {
      const added = await this.store.addKeyVersion(
        key,
        { keyId: key.id, version, ...kept, createdAt: now },
        { type, at: now, ...(maxOnDemand === undefined ? {} : { maxOnDemand }) },
      );
      if (typeof added === 'string') hsm.forget(key.id, version);
      return added;
    } catch (err) {
      hsm.forget(key.id, version);
      throw err;
    }
  }

  /**
   * Turns automatic rotation on (or changes its period): the first one comes a period from now, or, when only the
   * period changes, a period after the last automatic one (AWS's rule). Computed by the store from the schedule the
   * key has when the change is written, so a rotation landing meanwhile is counted.
   */
  async enableRotation(projectId: string, ref: KeyRef, periodDays: number): Promise<KeyRecord> {
    needs(
      Number.isInteger(periodDays) && periodDays >= MIN_ROTATION_DAYS && periodDays <= MAX_ROTATION_DAYS,
      `The rotation period must be ${MIN_ROTATION_DAYS} to ${MAX_ROTATION_DAYS} days.`,
    );
    const key = await this.get(projectId, ref);
    await this.#assertRotatable(key);
    return this.#setSchedule(projectId, ref, periodDays, (current) => assertUsableForCrypto(current));
  }

  disableRotation(projectId: string, ref: KeyRef): Promise<KeyRecord> {
    return this.#setSchedule(projectId, ref, null, (current) => transitions.edit(current, {}));
  }

  async #setSchedule(
    projectId: string,
    ref: KeyRef,
    periodDays: number | null,
    allowed: (key: KeyRecord) => void,
  ): Promise<KeyRecord> {
    for (let attempt = 0; attempt < MAX_TRANSITION_ATTEMPTS; attempt++) {
      const key = await this.get(projectId, ref);
      allowed(key);
      const updated = await this.store.setRotationPeriod(projectId, key.id, key.state, periodDays, this.clock.now());
      if (updated) return updated;
    }
    throw new KmsError('InternalError', 'The key kept changing while its rotation was changed.');
  }

  /** The key's versions, oldest first. */
  async rotations(projectId: string, ref: KeyRef): Promise<KeyRotationRecord[]> {
    return this.store.listKeyRotations((await this.get(projectId, ref)).id);
  }

  /**
   * Rotates every key whose automatic rotation is due, once each, also after the service was down past the date (the
   * next one then comes a period after this one, not after the missed date). Runs in one process (the primary); the
   * store's compare-and-set keeps it to one rotation per due date even if two ran. A key that cannot be rotated now
   * (its store is not connected, say) is passed over and tried again at the next sweep. Returns the keys rotated and
   * the failures, for the caller to log.
   */
  async rotateDueKeys(): Promise<{ rotated: number; failed: { keyId: string; error: unknown }[] }> {
    let rotated = 0;
    const failed: { keyId: string; error: unknown }[] = [];
    const passedOver = new Set<string>();
    for (;;) {
      const due = (
        await this.store.listKeysDueForRotation(this.clock.now(), PURGE_BATCH_SIZE + passedOver.size)
      ).filter((key) => !passedOver.has(key.id));
      if (due.length === 0) return { rotated, failed };
      for (const key of due) {
        // The key as the store listed it, not a cached record: the compare-and-set needs its current version.
        const added = await this.#addVersion(key, 'AUTOMATIC').catch((error: unknown) => {
          failed.push({ keyId: key.id, error });
          return 'failed' as const;
        });
        if (typeof added === 'string') passedOver.add(key.id);
        else rotated++;
      }
      await nextTurn();
    }
  }

  /** The root a new version of the key is wrapped under: the active one, or its store's own. */
  async #rotationRoot(key: KeyRecord): Promise<string> {
    await this.#assertRotatable(key);
    return key.keyStoreId === null ? activeRootKey(this.store) : STORE_ROOT_KEY_LABEL;
  }

  /**
   * A key kept as token objects (a `token-object` store) does not rotate: a version per object would grow the
   * tenant's token for ever, and AWS and Alibaba do not rotate such keys either. Wrapped stores' keys do.
   */
  async #assertRotatable(key: KeyRecord): Promise<void> {
    if (key.keyStoreId === null) return;
    const store = await this.keyStores.get(key.projectId, key.keyStoreId);
    if (store.keyScheme === 'token-object') {
      throw new KmsError(
        'RotationNotSupported',
        `Key ${key.id} is kept as a token object in custom key store ${store.id}: it cannot be rotated.`,
      );
    }
  }

  /** A key of the project; a foreign or unknown key is KeyNotFound, indistinguishably. */
  async get(projectId: string, ref: KeyRef): Promise<KeyRecord> {
    const key =
      ref.kind === 'id'
        ? await this.store.findKey(projectId, ref.id)
        : await this.store.findKeyByAlias(projectId, aliasName(ref.alias));
    if (!key) throw new KmsError('KeyNotFound', 'The key does not exist.', { subject: ref });
    return key;
  }

  list(projectId: string, query: { state?: KeyRecord['state']; offset: number; limit: number }) {
    return this.store.listKeys({ projectId, ...query });
  }

  count(projectId: string): Promise<number> {
    return this.store.countKeys(projectId);
  }

  enable(projectId: string, ref: KeyRef): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.enable(key));
  }

  disable(projectId: string, ref: KeyRef): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.disable(key));
  }

  scheduleDeletion(projectId: string, ref: KeyRef, pendingDays: number): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.scheduleDeletion(key, pendingDays, this.clock.now()));
  }

  /** `restoreTo`: Huawei and AWS return the key disabled, Alibaba enabled. */
  cancelDeletion(projectId: string, ref: KeyRef, restoreTo: 'Disabled' | 'Enabled' = 'Disabled'): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.cancelDeletion(key, restoreTo));
  }

  updateAlias(projectId: string, ref: KeyRef, alias: string): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.edit(key, { alias }));
  }

  updateDescription(projectId: string, ref: KeyRef, description: string): Promise<KeyRecord> {
    return this.transition(projectId, ref, (key) => transitions.edit(key, { description }));
  }

  /** Adds an alias (`alias/<name>` or `<name>`) of a key of the project. */
  async createAlias(projectId: string, alias: string, target: KeyRef): Promise<void> {
    const key = await this.get(projectId, target);
    transitions.edit(key, {});
    const now = this.clock.now();
    await this.store.createAlias({ projectId, name: aliasName(alias), keyId: key.id, createdAt: now, updatedAt: now });
  }

  /** Points an existing alias at another key of the project (AWS UpdateAlias). */
  async retargetAlias(projectId: string, alias: string, target: KeyRef): Promise<void> {
    const key = await this.get(projectId, target);
    transitions.edit(key, {});
    if (!(await this.store.retargetAlias(projectId, aliasName(alias), key.id, this.clock.now()))) {
      throw new KmsError('KeyNotFound', `Alias '${alias}' does not exist.`, { subject: { kind: 'alias', alias } });
    }
  }

  async deleteAlias(projectId: string, alias: string): Promise<void> {
    if (!(await this.store.deleteAlias(projectId, aliasName(alias)))) {
      throw new KmsError('KeyNotFound', `Alias '${alias}' does not exist.`, { subject: { kind: 'alias', alias } });
    }
  }

  /** The project's aliases, or those of one key. */
  async aliases(projectId: string, of?: KeyRef): Promise<AliasRecord[]> {
    const keyId = of === undefined ? undefined : (await this.get(projectId, of)).id;
    return this.store.listAliases(projectId, keyId);
  }

  /** Adds or replaces tags; a key pending deletion cannot be tagged, as on AWS. */
  async tag(projectId: string, ref: KeyRef, tags: readonly Tag[]): Promise<void> {
    const key = await this.get(projectId, ref);
    transitions.edit(key, {});
    await this.store.putTags(key.id, tags, MAX_TAGS_PER_KEY);
  }

  async untag(projectId: string, ref: KeyRef, tagKeys: readonly string[]): Promise<void> {
    const key = await this.get(projectId, ref);
    transitions.edit(key, {});
    await this.store.removeTags(key.id, tagKeys);
  }

  async tags(projectId: string, ref: KeyRef): Promise<Tag[]> {
    return this.store.listTags((await this.get(projectId, ref)).id);
  }

  /** Reads the key, computes the change from its current state, and applies it only if no one changed it meanwhile. */
  private async transition(projectId: string, ref: KeyRef, change: (key: KeyRecord) => KeyPatch): Promise<KeyRecord> {
    for (let attempt = 0; attempt < MAX_TRANSITION_ATTEMPTS; attempt++) {
      const key = await this.get(projectId, ref);
      const updated = await this.store.updateKey(projectId, key.id, key.state, change(key));
      if (updated) return updated;
    }
    throw new KmsError('InternalError', 'The key kept changing while being updated.');
  }
}
