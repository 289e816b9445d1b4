type Handle = Buffer;

/**
 * Handles of CMK version keys brought back into the HSM (session objects), least recently used first, by
 * `${keyId}:${version}`. A version's key never changes (a root rotation rewraps the same key), so an entry stays
 * good until its key is purged. Evicting or deleting an entry destroys its object in the HSM;
 * `clear({ destroy: false })` is for objects that are already gone with their session.
 */
export class VersionKeyCache {
  readonly #capacity: number;
  readonly #destroy: (handle: Handle) => void;
  readonly #entries = new Map<string, Handle>();

  constructor(capacity: number, destroy: (handle: Handle) => void) {
    this.#capacity = capacity;
    this.#destroy = destroy;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Handles, least recently used first. */
  handles(): ReadonlyMap<string, Handle> {
    return new Map(this.#entries);
  }

  get(id: string): Handle | undefined {
    const handle = this.#entries.get(id);
    if (handle !== undefined) {
      // Map keeps insertion order: re-inserting makes this the most recently used.
      this.#entries.delete(id);
      this.#entries.set(id, handle);
    }
    return handle;
  }

  set(id: string, handle: Handle): void {
    this.delete(id);
    this.#entries.set(id, handle);
    while (this.#entries.size > this.#capacity) {
      const oldest = this.#entries.keys().next().value as string;
      this.delete(oldest);
    }
  }

  delete(id: string): void {
    const handle = this.#entries.get(id);
    if (handle === undefined) return;
    this.#entries.delete(id);
    this.#destroy(handle);
  }

  clear(options: { destroy: boolean }): void {
    const handles = [...this.#entries.values()];
    this.#entries.clear();
    if (options.destroy) for (const handle of handles) this.#destroy(handle);
  }
}
