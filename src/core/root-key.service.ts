import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { KmsError } from './errors.js';
import type { Clock, Hsm, MetadataStore } from './ports.js';

/** Root wrapping keys are labelled `hsm-kms-wrap-<n>`, n counting up from 1 with each rotation. */
export const ROOT_KEY_LABEL_PREFIX = 'hsm-kms-wrap-';
/** Versions rewrapped between two turns of the event loop, and listed per store read. */
export const REWRAP_BATCH_SIZE = 100;
/**
 * How long a root key may stay reserved (`creating`) before another process takes the reservation over: making a
 * key on the token takes milliseconds, so a reservation this old was left by a process that died.
 */
export const ROOT_RESERVATION_MS = 60_000;
/** Rewrap passes before a rotation gives up on a retiring root that versions keep reaching. */
const MAX_DRAIN_ROUNDS = 3;
/** How long a starting service waits for a root key that another process (a rotation) is making. */
const FIRST_ROOT_WAIT = { attempts: 50, delayMs: 200 } as const;

/** The label of the active root key: the one new key versions are wrapped under. */
export async function activeRootKey(store: MetadataStore): Promise<string> {
  const [first] = await store.listRootKeys();
  if (first?.state !== 'active') {
    throw new KmsError('HsmUnavailable', 'No active root key yet: the service is still starting.');
  }
  return first.label;
}

export interface RotationReport {
  /** The root key every version is now kept under. */
  readonly rootKeyLabel: string;
  /** Versions moved to it, including those of legacy schemes (migrated). */
  readonly rewrapped: number;
  /** Root keys destroyed on the token (legacy derive-only roots included), in label order. */
  readonly destroyed: readonly string[];
}

/**
 * The root keys of the token. One is active: new versions are wrapped under it. Rotation makes a new active root,
 * rewraps every version under it while the service keeps serving, and then destroys the old roots: from then on
 * copies of old wrapped material (in database backups, say) can never be opened again.
 *
 * Resumable: a rotation cut short leaves its old roots `retiring` (or `destroying`); the next rotation finishes
 * them first. Two rotations at once lose nothing: the older one stops (see #drainRetiring).
 */
export class RootKeyService {
  constructor(
    private readonly hsm: Hsm,
    private readonly store: MetadataStore,
    private readonly clock: Clock,
  ) {}

  /**
   * Makes sure there is an active root key: makes the first one at the first start (or the first start after an
   * upgrade), and otherwise checks that the token holds the one the database names. A recorded root is never made
   * again: a token without it is the wrong token, or lost its keys, and the service must not start on it.
   */
  async ensureActiveRoot(): Promise<string> {
    for (let attempt = 1; ; attempt++) {
      const active = (await this.store.listRootKeys()).find((root) => root.state === 'active');
      if (active !== undefined) {
        await this.hsm.checkRootKey(active.label, active.tokenId);
        return active.label;
      }
      const made = await this.#activateNewRoot();
      if (made !== undefined) return made;
      // A rotation in another process is making the first root: wait for it.
      if (attempt >= FIRST_ROOT_WAIT.attempts) {
        throw new KmsError('HsmUnavailable', 'Another process has been making the first root key for too long.');
      }
      await sleep(FIRST_ROOT_WAIT.delayMs);
    }
  }

  /**
   * Finishes any rotation (or migration) left unfinished, then makes a new root key and moves every version to it.
   * `onProgress` hears of each batch. Safe to run while the service serves; only one rotation may run at a time.
   */
  async rotate(onProgress: (rewrapped: number) => void = () => {}): Promise<RotationReport> {
    const active = (await this.store.listRootKeys()).find((root) => root.state === 'active');
    // Before anything is rewrapped: the token must be the database's own (a legacy version derived on another
    // token's root of the same label would be rewrapped wrong, and lost).
    if (active !== undefined) await this.hsm.checkRootKey(active.label, active.tokenId);
    // A data directory upgraded from the derivation scheme has no active root until the service first starts on it:
    // then there is no earlier rotation to finish, and the new root takes every version at once.
    const earlier = active !== undefined ? await this.#drainRetiring(onProgress) : { rewrapped: 0, destroyed: [] };
    const label = await this.#activateNewRoot();
    if (label === undefined) {
      const making = (await this.store.listRootKeys()).find((root) => root.state === 'creating')?.label;
      throw new KmsError(
        'InternalError',
        `Another root rotation is making root key "${making ?? '?'}": run \`kms root rotate\` again once it has finished.`,
      );
    }
    const now = await this.#drainRetiring((n) => onProgress(earlier.rewrapped + n));
    return {
      rootKeyLabel: label,
      rewrapped: earlier.rewrapped + now.rewrapped,
      destroyed: [...earlier.destroyed, ...now.destroyed],
    };
  }

  /**
   * Reserves the next label in the store (so that no other process makes a key with it), makes the key on the token,
   * then makes it active. Undefined if another process holds a fresh reservation. A crash leaves a reservation that
   * goes stale and a key on the token: the next attempt takes both over.
   */
  async #activateNewRoot(): Promise<string | undefined> {
    const numbers = (await this.store.listRootKeys())
      .map((root) => root.label)
      .filter((label) => label.startsWith(ROOT_KEY_LABEL_PREFIX))
      .map((label) => Number(label.slice(ROOT_KEY_LABEL_PREFIX.length)));
    const next = `${ROOT_KEY_LABEL_PREFIX}${Math.max(0, ...numbers) + 1}`;
    const now = this.clock.now();
    const label = await this.store.reserveRootKey(next, now, now - ROOT_RESERVATION_MS);
    if (label === undefined) return undefined;
    const tokenId = await this.hsm.ensureRootKey(label);
    await this.store.activateRootKey(label, this.clock.now(), tokenId);
    return label;
  }

  /**
   * Rewraps every version not under the active root, then destroys the retiring roots. Should another rotation make
   * a newer root active meanwhile, this one stops and leaves the rest to it (no version is ever moved to a root that
   * is not active, see MetadataStore.replaceKeptVersion).
   */
  async #drainRetiring(onProgress: (rewrapped: number) => void): Promise<Omit<RotationReport, 'rootKeyLabel'>> {
    const target = await activeRootKey(this.store);
    let rewrapped = 0;
    for (let round = 1; ; round++) {
      for (;;) {
        const batch = await this.store.listVersionsNotUnder(target, REWRAP_BATCH_SIZE);
        if (batch.length === 0) break;
        for (const version of batch) {
          const kept = await this.hsm.rewrapKeyVersion(version, target);
          // False when the key was purged meanwhile (nothing to keep then) or the target is no longer active.
          if (await this.store.replaceKeptVersion(version, kept)) rewrapped++;
        }
        await this.#stillActive(target);
        onProgress(rewrapped);
        await nextTurn();
      }
      // Marked destroying only while no version is under it, after which none can be: destroying it can never lose
      // a key, whatever another rotation or a key creation does meanwhile.
      let stuck: string | undefined;
      for (const root of await this.store.listRootKeys()) {
        if (root.state === 'retiring' && !(await this.store.markRootKeyDestroying(root.label))) stuck = root.label;
      }
      if (stuck === undefined) break;
      await this.#stillActive(target);
      // A version reached a retiring root after the last read (seen once under load with two rotations at once):
      // move it too, and try again.
      if (round === MAX_DRAIN_ROUNDS) {
        throw new KmsError('InternalError', `Root key "${stuck}" still keeps key versions after rewrapping.`);
      }
    }
    const destroyed: string[] = [];
    for (const root of await this.store.listRootKeys()) {
      if (root.state !== 'destroying') continue;
      // Token first: a crash in between leaves a record whose key is already gone, which the next run forgets.
      if (await this.hsm.destroyRootKey(root.label)) destroyed.push(root.label);
      await this.store.forgetRootKey(root.label);
    }
    return { rewrapped, destroyed };
  }

  async #stillActive(target: string): Promise<void> {
    if ((await activeRootKey(this.store)) !== target) {
      throw new KmsError(
        'InternalError',
        `Another root rotation made a newer root key active while this one moved key versions to "${target}": ` +
          'run `kms root rotate` again once it has finished.',
      );
    }
  }
}
