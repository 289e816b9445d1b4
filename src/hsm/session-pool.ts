import { KmsError } from '../core/errors.js';

type Handle = Buffer;

interface Waiter {
  resolve(session: Handle): void;
  reject(err: unknown): void;
}

/**
 * A fixed number of logged-in PKCS#11 sessions, each holding at most one operation at a time.
 *
 * Today every call made on a session is synchronous, so `tryAcquire()` always succeeds; `acquire()` queues callers
 * for the day an operation spans an await (async pkcs11js calls for large data). A session that saw an error is
 * `discard`ed, never released: it may still hold an active operation. Replacements are opened lazily.
 */
export class SessionPool {
  readonly #size: number;
  readonly #open: () => Handle;
  readonly #close: (session: Handle) => void;
  readonly #idle: Handle[] = [];
  readonly #leased = new Set<Handle>();
  readonly #waiters: Waiter[] = [];
  #closed = false;

  constructor(size: number, open: () => Handle, close: (session: Handle) => void) {
    this.#size = size;
    this.#open = open;
    this.#close = close;
  }

  /** Sessions the pool holds right now, idle or leased. */
  get openCount(): number {
    return this.#idle.length + this.#leased.size;
  }

  get idleSessions(): readonly Handle[] {
    return [...this.#idle];
  }

  /** An idle session, a newly opened one while below size, or undefined when all are leased. */
  tryAcquire(): Handle | undefined {
    if (this.#closed) throw closedError();
    let session = this.#idle.pop();
    if (session === undefined) {
      if (this.openCount >= this.#size) return undefined;
      session = this.#open();
    }
    this.#leased.add(session);
    return session;
  }

  acquire(): Promise<Handle> {
    try {
      const session = this.tryAcquire();
      if (session !== undefined) return Promise.resolve(session);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  release(session: Handle): void {
    if (!this.#leased.has(session)) return; // abandoned meanwhile (library re-initialised)
    if (this.#closed) {
      this.#leased.delete(session);
      this.#close(session);
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) {
      waiter.resolve(session); // stays leased, to the waiter now
      return;
    }
    this.#leased.delete(session);
    this.#idle.push(session);
  }

  /** Closes a leased session for good (quietly) and lets a waiter have a replacement. */
  discard(session: Handle): void {
    if (!this.#leased.delete(session)) return;
    this.#close(session);
    this.#serveWaiter();
  }

  /** Closes every idle session that `isUsable` rejects. */
  purge(isUsable: (session: Handle) => boolean): void {
    for (let i = this.#idle.length - 1; i >= 0; i--) {
      const session = this.#idle[i] as Handle;
      if (!isUsable(session)) {
        this.#idle.splice(i, 1);
        this.#close(session);
      }
    }
    this.#serveWaiter();
  }

  /** Forgets every session without closing it: after C_Initialize again, old handles mean nothing (or someone else). */
  abandonAll(): void {
    this.#idle.length = 0;
    this.#leased.clear();
    this.#serveWaiter();
  }

  closeAll(): void {
    this.#closed = true;
    for (const session of this.#idle.splice(0)) this.#close(session);
    for (const waiter of this.#waiters.splice(0)) waiter.reject(closedError());
  }

  #serveWaiter(): void {
    while (this.#waiters.length > 0 && this.openCount < this.#size) {
      const waiter = this.#waiters.shift() as Waiter;
      try {
        const session = this.#open();
        this.#leased.add(session);
        waiter.resolve(session);
      } catch (err) {
        waiter.reject(err);
      }
    }
  }
}

function closedError(): KmsError {
  return new KmsError('HsmUnavailable', 'The HSM adapter is closed.');
}
