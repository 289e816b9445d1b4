import { KmsError } from './errors.js';
import type { Clock } from './ports.js';

/**
 * Rate limits per project and operation class (issue 13). Each (project, class) pair has a token bucket that holds
 * at most one second's worth of tokens (the burst) and refills at the class's rate; a request takes one token or is
 * refused as Throttled, with the time until the next token as its Retry-After.
 *
 * In a cluster the primary holds the buckets (`TokenBuckets`) and each worker spends tokens leased from them in
 * small batches (`LeasedRateLimiter`), so that the limit is the service's, not each worker's.
 */
export const OPERATION_CLASSES = ['cryptographic', 'management'] as const;

/**
 * `cryptographic`: the operations that use a key or the HSM's generator (Huawei's documented 1,000 requests/s);
 * `management`: everything else.
 */
export type OperationClass = (typeof OPERATION_CLASSES)[number];

/** Requests per second and project, by class; 0 turns the class's limit off. */
export type RateLimits = Readonly<Record<OperationClass, number>>;

export interface RateLimiter {
  /**
   * Admits one request of the project and class, or throws Throttled. Returns nothing in the common case; a promise
   * only while a cluster worker waits for its first tokens of the pair.
   */
  admit(projectId: string, operationClass: OperationClass): undefined | Promise<void>;
}

export const NO_RATE_LIMIT: RateLimiter = { admit: () => undefined };

/**
 * What a grant from the buckets says: the tokens taken, and when fewer than wanted, the milliseconds until the bucket
 * holds as many as were wanted (at most its burst): until then, asking again would get little or nothing.
 */
export interface Grant {
  readonly granted: number;
  readonly retryAfterMs: number;
}

/** How often idle entries are looked for; dropping them is a pass over the map, once per interval at most. */
const SWEEP_INTERVAL_MS = 60_000;

function throttled(retryAfterMs: number): KmsError {
  return new KmsError('Throttled', 'The project sent more requests of this kind than its rate limit allows.', {
    retryAfterSeconds: Math.max(1, Math.ceil(retryAfterMs / 1000)),
  });
}

/**
 * Tokens are counted in thousandths, refilled `rate` thousandths per millisecond: with whole-millisecond clocks and
 * whole rates the arithmetic is exact, and no fraction of a token is lost to rounding over time.
 */
interface Bucket {
  milliTokens: number;
  /** When `tokens` was last brought up to date. */
  at: number;
}

/**
 * The authoritative buckets: the single process's, or the cluster primary's. A bucket left alone long enough to
 * refill is the same as a new one, so the sweep drops it without losing anything: memory follows the projects that
 * were busy in the last minute or so, not every project ever seen.
 */
export class TokenBuckets {
  readonly #limits: RateLimits;
  readonly #clock: Clock;
  readonly #buckets: Record<OperationClass, Map<string, Bucket>> = { cryptographic: new Map(), management: new Map() };
  #sweepAt: number;

  constructor(limits: RateLimits, clock: Clock) {
    this.#limits = limits;
    this.#clock = clock;
    this.#sweepAt = clock.now() + SWEEP_INTERVAL_MS;
  }

  /** Takes up to `wanted` whole tokens from the pair's bucket: as many as it holds. */
  take(projectId: string, operationClass: OperationClass, wanted: number): Grant {
    const rate = this.#limits[operationClass];
    if (rate === 0) return { granted: wanted, retryAfterMs: 0 };
    const now = this.#clock.now();
    if (now >= this.#sweepAt) this.#sweep(now);
    const buckets = this.#buckets[operationClass];
    // One second's worth, and at least one whole token.
    const burst = Math.max(rate, 1) * 1000;
    let bucket = buckets.get(projectId);
    if (bucket === undefined) {
      bucket = { milliTokens: burst, at: now };
      buckets.set(projectId, bucket);
    } else if (now > bucket.at) {
      bucket.milliTokens = Math.min(burst, bucket.milliTokens + (now - bucket.at) * rate);
      bucket.at = now;
    }
    const granted = Math.min(wanted, Math.floor(bucket.milliTokens / 1000));
    bucket.milliTokens -= granted * 1000;
    const short = Math.min(wanted * 1000, burst) - bucket.milliTokens;
    return { granted, retryAfterMs: granted < wanted && short > 0 ? short / rate : 0 };
  }

  /** Buckets held now, for tests of the sweep. */
  get size(): number {
    return this.#buckets.cryptographic.size + this.#buckets.management.size;
  }

  #sweep(now: number): void {
    this.#sweepAt = now + SWEEP_INTERVAL_MS;
    for (const operationClass of OPERATION_CLASSES) {
      const rate = this.#limits[operationClass];
      for (const [projectId, bucket] of this.#buckets[operationClass]) {
        if (bucket.milliTokens + (now - bucket.at) * rate >= Math.max(rate, 1) * 1000) {
          this.#buckets[operationClass].delete(projectId);
        }
      }
    }
  }
}

/** The single process's limiter: one token per request, straight from the buckets. */
export class LocalRateLimiter implements RateLimiter {
  readonly #buckets: TokenBuckets;

  constructor(buckets: TokenBuckets) {
    this.#buckets = buckets;
  }

  admit(projectId: string, operationClass: OperationClass): undefined {
    const { granted, retryAfterMs } = this.#buckets.take(projectId, operationClass, 1);
    if (granted === 0) throw throttled(retryAfterMs);
    return undefined;
  }
}

/** Asks the authoritative buckets (the cluster primary's) for up to `wanted` tokens of the pair. */
export type LeaseTokens = (projectId: string, operationClass: OperationClass, wanted: number) => Promise<Grant>;

/**
 * A batch is 20 ms of the class's rate (20 tokens at 1,000/s): at full rate a worker asks the primary about 50 times
 * a second per busy pair, and holds at most one and a half batches the primary can no longer hand to another worker.
 */
const BATCH_SECONDS = 0.02;
/** What a worker waits before asking again after the primary could not be asked (it is gone or restarting). */
const UNREACHABLE_RETRY_MS = 1_000;

interface Lease {
  tokens: number;
  /** Requests waiting for the answer under way: the next request asks for enough for all of them. */
  waiting: number;
  /** The request for more under way, if any: one at a time per pair. */
  pending: Promise<void> | undefined;
  /** Until then the primary's bucket is known to be empty: requests are refused without asking it. */
  deniedUntil: number;
  usedAt: number;
}

/**
 * A cluster worker's limiter. It spends tokens leased from the primary's buckets and asks for the next batch when
 * half a batch is left, so that a busy pair never waits on IPC. The first request of a pair (or one that finds the
 * lease spent) waits for one round trip to the primary. When the primary has none left, the worker refuses the pair's
 * requests until the primary's bucket will have a token again, without asking it meanwhile.
 *
 * Tokens are never given back: those a worker holds when it dies, or when its lease of an idle pair is dropped, are
 * lost. So the requests admitted across workers never exceed the primary's rate × time + burst, plus what the
 * workers held at the start of the window (at most 1.5 batches per worker and pair).
 */
export class LeasedRateLimiter implements RateLimiter {
  readonly #limits: RateLimits;
  readonly #clock: Clock;
  readonly #lease: LeaseTokens;
  readonly #leases: Record<OperationClass, Map<string, Lease>> = { cryptographic: new Map(), management: new Map() };
  readonly #batch: Record<OperationClass, number>;
  #sweepAt: number;

  constructor(limits: RateLimits, clock: Clock, lease: LeaseTokens) {
    this.#limits = limits;
    this.#clock = clock;
    this.#lease = lease;
    this.#batch = {
      cryptographic: Math.max(1, Math.ceil(limits.cryptographic * BATCH_SECONDS)),
      management: Math.max(1, Math.ceil(limits.management * BATCH_SECONDS)),
    };
    this.#sweepAt = clock.now() + SWEEP_INTERVAL_MS;
  }

  admit(projectId: string, operationClass: OperationClass): undefined | Promise<void> {
    if (this.#limits[operationClass] === 0) return undefined;
    const now = this.#clock.now();
    if (now >= this.#sweepAt) this.#sweep(now);
    const leases = this.#leases[operationClass];
    let lease = leases.get(projectId);
    if (lease === undefined) {
      lease = { tokens: 0, waiting: 0, pending: undefined, deniedUntil: 0, usedAt: now };
      leases.set(projectId, lease);
    }
    lease.usedAt = now;
    if (lease.tokens > 0) {
      lease.tokens--;
      if (lease.tokens * 2 < this.#batch[operationClass] && lease.pending === undefined && now >= lease.deniedUntil) {
        this.#askAhead(projectId, operationClass, lease);
      }
      return undefined;
    }
    if (now < lease.deniedUntil) throw throttled(lease.deniedUntil - now);
    return this.#waitForTokens(projectId, operationClass, lease);
  }

  async #waitForTokens(projectId: string, operationClass: OperationClass, lease: Lease): Promise<void> {
    // Several requests may wait on one answer: those it does not cover ask again, until the primary says it is short.
    lease.waiting++;
    try {
      for (;;) {
        await (lease.pending ?? this.#askAhead(projectId, operationClass, lease));
        if (lease.tokens > 0) {
          lease.tokens--;
          return;
        }
        const now = this.#clock.now();
        if (now < lease.deniedUntil) throw throttled(lease.deniedUntil - now);
      }
    } finally {
      lease.waiting--;
    }
  }

  #askAhead(projectId: string, operationClass: OperationClass, lease: Lease): Promise<void> {
    const wanted = Math.max(this.#batch[operationClass], lease.waiting);
    const asked = this.#lease(projectId, operationClass, wanted).then(
      ({ granted, retryAfterMs }) => {
        lease.tokens += granted;
        // Short of what it wanted: the primary's bucket is dry. The worker spends what it got, then refuses the pair
        // until the bucket has refilled, without asking meanwhile.
        if (retryAfterMs > 0) lease.deniedUntil = this.#clock.now() + retryAfterMs;
      },
      () => {
        lease.deniedUntil = this.#clock.now() + UNREACHABLE_RETRY_MS;
      },
    );
    lease.pending = asked.finally(() => {
      lease.pending = undefined;
    });
    return lease.pending;
  }

  /** Leases held now, for tests of the sweep. */
  get size(): number {
    return this.#leases.cryptographic.size + this.#leases.management.size;
  }

  /** Drops the leases of pairs unused for a sweep interval: their tokens are lost, which only errs on the safe side. */
  #sweep(now: number): void {
    this.#sweepAt = now + SWEEP_INTERVAL_MS;
    for (const leases of Object.values(this.#leases)) {
      for (const [projectId, lease] of leases) {
        if (lease.pending === undefined && now - lease.usedAt >= SWEEP_INTERVAL_MS) leases.delete(projectId);
      }
    }
  }
}
