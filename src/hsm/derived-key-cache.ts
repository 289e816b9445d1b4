type Handle = Buffer;

export interface DerivedKey {
  readonly handle: Handle;
  readonly rootKeyLabel: string;
  /** A copy: the caller owns (and may zero) the buffer it passed in. */
  readonly derivationData: Buffer;
}

/**
 * Handles of derived CMK version keys (session objects), least recently used first. Evicting or deleting an entry
 * destroys its object in the HSM; `clear({ destroy: false })` is for objects that are already gone with their session.
 */
export class DerivedKeyCache {
  readonly #capacity: number;
  readonly #destroy: (handle: Handle) => void;
  readonly #entries = new Map<string, DerivedKey>();

  constructor(capacity: number, destroy: (handle: Handle) => void) {
    this.#capacity = capacity;
    this.#destroy = destroy;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Handles by `${keyId}:${version}`, least recently used first. */
  handles(): ReadonlyMap<string, Handle> {
    return new Map([...this.#entries].map(([id, entry]) => [id, entry.handle]));
  }

  get(id: string): DerivedKey | undefined {
    const entry = this.#entries.get(id);
    if (entry !== undefined) {
      // Map keeps insertion order: re-inserting makes this the most recently used.
      this.#entries.delete(id);
      this.#entries.set(id, entry);
    }
    return entry;
  }

  set(id: string, entry: DerivedKey): void {
    this.delete(id);
    this.#entries.set(id, entry);
    while (this.#entries.size > this.#capacity) {
      const oldest = this.#entries.keys().next().value as string;
      this.delete(oldest);
    }
  }

  delete(id: string): void {
    const entry = this.#entries.get(id);
    if (entry === undefined) return;
    this.#entries.delete(id);
    this.#destroy(entry.handle);
  }

  clear(options: { destroy: boolean }): void {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    if (options.destroy) for (const entry of entries) this.#destroy(entry.handle);
  }
}
