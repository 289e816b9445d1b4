import { KmsError } from '../core/errors.js';

type Handle = Buffer;

interface Waiter {
  /** performance.now() after which the waiter is refused. */
  readonly deadline: number;
  resolve(session: Handle): void;
  reject(err: unknown): void;
}

/** How long a caller waits for a session by default: well below the request timeout (KMS_REQUEST_TIMEOUT_MS, 10 s). */
export const DEFAULT_SESSION_WAIT_MS = 2_000;

/** What a refused waiter's client is told to wait: one round of a busy pool is far below a second. */
const BUSY_RETRY_AFTER_SECONDS = 1;

/** Counts for tests and diagnostics: sessions idle, sessions leased, callers waiting. */
export interface SessionPoolState {
  readonly idle: number;
  readonly leased: number;
  readonly waiting: number;
}

/**
 * A fixed number of logged-in PKCS#11 sessions, each holding at most one operation at a time.
 *
 * With synchronous calls `tryAcquire()` always succeeds: a session goes back before the event loop turns. With
 * asynchronous calls (a network HSM) a session stays leased until the module answers, and `acquire()` queues callers,
 * first come first served, for at most `waitMs`: then it refuses with HsmUnavailable, which every dialect renders as
 * its retryable error with Retry-After, so that a slow HSM answers "busy" instead of piling requests up until the
 * request timeout. One timer serves the whole queue (all waiters wait equally long, so the first to come is the first
 * to expire); the fast path never sets one.
 *
 * A session that saw an error is `discard`ed, never released: it may still hold an active operation. Replacements
 * are opened lazily.
 */
export class SessionPool {
  readonly #size: number;
  readonly #waitMs: number;
  readonly #open: () => Handle;
  readonly #close: (session: Handle) => void;
  readonly #idle: Handle[] = [];
  readonly #leased = new Set<Handle>();
  readonly #waiters: Waiter[] = [];
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Callers of drained(), told when the last leased session comes back after closeAll. */
  readonly #drainWaiters: (() => void)[] = [];

  constructor(size: number, waitMs: number, open: () => Handle, close: (session: Handle) => void) {
    this.#size = size;
    this.#waitMs = waitMs;
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

  get state(): SessionPoolState {
    return { idle: this.#idle.length, leased: this.#leased.size, waiting: this.#waiters.length };
  }

  /** An idle session, a newly opened one while below size, or undefined when all are leased or callers wait. */
  tryAcquire(): Handle | undefined {
    if (this.#closed) throw closedError();
    // Callers already waiting come first: a newcomer must not overtake them when a session is about to be handed on.
    if (this.#waiters.length > 0) return undefined;
    let session = this.#idle.pop();
    if (session === undefined) {
      if (this.openCount >= this.#size) return undefined;
      session = this.#open();
    }
    this.#leased.add(session);
    return session;
  }

  /** A session as tryAcquire gives it, or the first one released to this caller within `waitMs`. */
  acquire(): Promise<Handle> {
    try {
      const session = this.tryAcquire();
      if (session !== undefined) return Promise.resolve(session);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.#waiters.push({ deadline: performance.now() + this.#waitMs, resolve, reject });
      if (this.#timer === undefined) this.#armTimer();
    });
  }

  release(session: Handle): void {
    if (!this.#leased.has(session)) return; // abandoned meanwhile (library re-initialised)
    if (this.#closed) {
      this.#leased.delete(session);
      this.#close(session);
      this.#tellIfDrained();
      return;
    }
    const waiter = this.#nextWaiter();
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
    this.#tellIfDrained();
    this.#serveWaiters();
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
    this.#serveWaiters();
  }

  /** Forgets every session without closing it: after C_Initialize again, old handles mean nothing (or someone else). */
  abandonAll(): void {
    this.#idle.length = 0;
    this.#leased.clear();
    this.#tellIfDrained();
    this.#serveWaiters();
  }

  closeAll(): void {
    this.#closed = true;
    this.#stopTimer();
    for (const session of this.#idle.splice(0)) this.#close(session);
    for (const waiter of this.#waiters.splice(0)) waiter.reject(closedError());
  }

  /**
   * After closeAll: settles when no session is leased any more. An asynchronous call still running holds pointers
   * into the library, so the library must not be finalized before it returns.
   */
  drained(): Promise<void> {
    return new Promise((resolve) => {
      this.#drainWaiters.push(resolve);
      this.#tellIfDrained();
    });
  }

  #tellIfDrained(): void {
    if (!this.#closed || this.#leased.size > 0) return;
    for (const resolve of this.#drainWaiters.splice(0)) resolve();
  }

  /** The first waiter still in time; the queue empties with it. Expired ones are refused on the way. */
  #nextWaiter(): Waiter | undefined {
    this.#refuseExpired(performance.now());
    const waiter = this.#waiters.shift();
    if (this.#waiters.length === 0) this.#stopTimer();
    return waiter;
  }

  /** Hands new sessions to waiters while the pool is below size (after a discard, purge or abandonAll). */
  #serveWaiters(): void {
    while (!this.#closed && this.openCount < this.#size) {
      const waiter = this.#nextWaiter();
      if (waiter === undefined) return;
      try {
        const session = this.#open();
        this.#leased.add(session);
        waiter.resolve(session);
      } catch (err) {
        waiter.reject(err);
      }
    }
  }

  #refuseExpired(now: number): void {
    while (this.#waiters.length > 0 && (this.#waiters[0] as Waiter).deadline <= now) {
      (this.#waiters.shift() as Waiter).reject(this.#busyError());
    }
  }

  /** One timer for the whole queue, set for the first waiter's deadline (the earliest: every waiter waits waitMs). */
  #armTimer(): void {
    const first = this.#waiters[0];
    if (first === undefined) return;
    // Unref'd: a waiter keeps nothing alive by itself; its request's socket does.
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#refuseExpired(performance.now());
        this.#armTimer();
      },
      // Rounded up: Node counts whole milliseconds from the loop's cached clock, so a timer may fire a little early
      // and is then set again for what is left.
      Math.max(1, Math.ceil(first.deadline - performance.now())),
    ).unref();
  }

  #stopTimer(): void {
    if (this.#timer === undefined) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #busyError(): KmsError {
    return new KmsError(
      'HsmUnavailable',
      `All ${this.#size} HSM sessions stayed busy for ${this.#waitMs} ms: the HSM is slower than the load; retry later.`,
      { retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS },
    );
  }
}

function closedError(): KmsError {
  return new KmsError('HsmUnavailable', 'The HSM adapter is closed.');
}
