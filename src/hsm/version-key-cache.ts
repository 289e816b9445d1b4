type Handle = Buffer;

/**
 * What a cached handle points at. A session object was brought back into the HSM for the cache and is destroyed when
 * it leaves it; a token object (scheme token-object-v1) is the version's only copy and is never destroyed here.
 */
export type CachedKeyKind = 'session-object' | 'token-object';

interface Entry {
  readonly handle: Handle;
  readonly kind: CachedKeyKind;
  /** How the version was kept when its handle was made (wrapped key or object id). */
  readonly material: Buffer;
}

/**
 * Handles of CMK version keys, least recently used first, by `${keyId}:${version}`, each with the kept material it was
 * made from. A handle is only ever handed out for that material: a version number can name another key for a moment
 * (two rotations raced, and the loser made its version before learning it lost), and a ciphertext sealed with the
 * loser's key could never be opened. A root rotation rewraps the same key: its new material costs one miss.
 * Evicting or deleting an entry destroys its object in the HSM if it is a session object; `clear({ destroy: false })`
 * is for objects that are already gone with their session (or handles that no longer mean anything).
 */
export class VersionKeyCache {
  readonly #capacity: number;
  readonly #destroy: (handle: Handle) => void;
  readonly #entries = new Map<string, Entry>();

  constructor(capacity: number, destroy: (handle: Handle) => void) {
    this.#capacity = capacity;
    this.#destroy = destroy;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Handles, least recently used first. */
  handles(): ReadonlyMap<string, Handle> {
    return new Map([...this.#entries].map(([id, entry]) => [id, entry.handle]));
  }

  /** The handle made from `material`; undefined (and the entry dropped) if the entry was made from other material. */
  get(id: string, material: Buffer): Handle | undefined {
    const entry = this.#entries.get(id);
    if (entry === undefined) return undefined;
    if (!entry.material.equals(material)) {
      this.delete(id);
      return undefined;
    }
    // Map keeps insertion order: re-inserting makes this the most recently used.
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    return entry.handle;
  }

  set(id: string, handle: Handle, kind: CachedKeyKind, material: Buffer): void {
    this.delete(id);
    this.#entries.set(id, { handle, kind, material: Buffer.from(material) });
    while (this.#entries.size > this.#capacity) {
      const oldest = this.#entries.keys().next().value as string;
      this.delete(oldest);
    }
  }

  delete(id: string): void {
    const entry = this.#entries.get(id);
    if (entry === undefined) return;
    this.#entries.delete(id);
    this.#release(entry);
  }

  /** Drops every entry holding `handle`, destroying nothing: the object was destroyed by other means. */
  forgetHandle(handle: Handle): void {
    for (const [id, entry] of this.#entries) if (entry.handle.equals(handle)) this.#entries.delete(id);
  }

  clear(options: { destroy: boolean }): void {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    if (options.destroy) for (const entry of entries) this.#release(entry);
  }

  #release(entry: Entry): void {
    if (entry.kind === 'session-object') this.#destroy(entry.handle);
  }
}
