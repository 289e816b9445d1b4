import { randomUUID } from 'node:crypto';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { KmsError } from './errors.js';
import {
  type AliasRecord,
  aliasName,
  type KeyRecord,
  type KeyRef,
  type KeyVersionRecord,
  MAX_TAGS_PER_KEY,
  type Tag,
  transitions,
} from './keys.js';
import type { Clock, Hsm, KeyPatch, MetadataStore } from './ports.js';
import { activeRootKey } from './root-key.service.js';

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
}

/** The key lifecycle: creation, look-up, state changes, aliases, and the deletion of keys whose window has passed. */
export class KeyService {
  constructor(
    private readonly hsm: Hsm,
    private readonly store: MetadataStore,
    private readonly clock: Clock,
    private readonly cmkQuota: number,
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
    };
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

  /** Removes keys a crash left in PendingCreation: their creation was never acknowledged to anyone. */
  async reconcilePendingCreation(): Promise<number> {
    let purged = 0;
    for (const key of await this.store.listPendingCreation()) {
      if (await this.store.purgePendingCreation(key.id)) purged++;
    }
    if (purged > 0) await this.store.erasePurged();
    return purged;
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
      const gone = new Set(await this.store.purgeDueKeys(ids, now));
      for (const key of due) {
        if (!gone.has(key.id)) continue;
        for (let v = 0; v <= key.currentVersion; v++) this.hsm.forget(key.id, v);
      }
      purged += gone.size;
      if (due.length < PURGE_BATCH_SIZE) break;
      await nextTurn();
    }
    // Also retried when nothing was purged this time: an earlier erasure may have found the files busy.
    await this.store.erasePurged();
    return purged;
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
