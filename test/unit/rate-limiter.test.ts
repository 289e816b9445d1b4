import { describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import {
  type Grant,
  LeasedRateLimiter,
  type LeaseTokens,
  LocalRateLimiter,
  type RateLimits,
  TokenBuckets,
} from '../../src/core/rate-limiter.js';

/** A clock the test moves by hand. */
function fakeClock(start = 1_000_000) {
  let now = start;
  return {
    now: () => now,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

const LIMITS: RateLimits = { cryptographic: 10, management: 2 };

/** The error a call throws (the test fails if it returns). */
function thrown(call: () => unknown): KmsError {
  try {
    call();
  } catch (err) {
    if (err instanceof KmsError) return err;
    throw err;
  }
  throw new Error('expected the call to throw');
}

/** Admits requests one by one until one is refused; returns how many were admitted. */
function admitUntilRefused(limiter: LocalRateLimiter, projectId: string, kind: 'cryptographic' | 'management') {
  for (let n = 0; ; n++) {
    try {
      limiter.admit(projectId, kind);
    } catch {
      return n;
    }
  }
}

describe('TokenBuckets', () => {
  it('when a project is new, then it may burst one second of its rate at once, and no more', () => {
    const clock = fakeClock();
    const buckets = new TokenBuckets(LIMITS, clock);
    expect(buckets.take('p', 'cryptographic', 8)).toEqual({ granted: 8, retryAfterMs: 0 });
    // Short of what was wanted: the answer says when the bucket will hold that many (at most its burst) again.
    expect(buckets.take('p', 'cryptographic', 25)).toEqual({ granted: 2, retryAfterMs: 1000 });
    expect(buckets.take('p', 'cryptographic', 1)).toEqual({ granted: 0, retryAfterMs: 100 });
  });

  it('when time passes, then the bucket refills at the rate, up to the burst', () => {
    const clock = fakeClock();
    const buckets = new TokenBuckets(LIMITS, clock);
    buckets.take('p', 'cryptographic', 10);
    clock.advance(250);
    expect(buckets.take('p', 'cryptographic', 10).granted).toBe(2);
    // Half a token is left: the next is 50 ms away.
    expect(buckets.take('p', 'cryptographic', 1)).toEqual({ granted: 0, retryAfterMs: 50 });
    clock.advance(5_000);
    expect(buckets.take('p', 'cryptographic', 100).granted).toBe(10);
  });

  it('when one project or class has spent its tokens, then the others still have theirs', () => {
    const buckets = new TokenBuckets(LIMITS, fakeClock());
    buckets.take('busy', 'cryptographic', 10);
    expect(buckets.take('busy', 'cryptographic', 1).granted).toBe(0);
    expect(buckets.take('busy', 'management', 5).granted).toBe(2);
    expect(buckets.take('quiet', 'cryptographic', 5).granted).toBe(5);
  });

  it('when a class limit is 0, then it is off', () => {
    const buckets = new TokenBuckets({ cryptographic: 0, management: 1 }, fakeClock());
    for (let i = 0; i < 1000; i++) expect(buckets.take('p', 'cryptographic', 1).granted).toBe(1);
    expect(buckets.size).toBe(0);
  });

  it('when projects go idle long enough to refill, then their buckets are dropped, and busy ones kept', () => {
    const clock = fakeClock();
    const buckets = new TokenBuckets(LIMITS, clock);
    for (let i = 0; i < 100; i++) buckets.take(`idle-${i}`, 'cryptographic', 3);
    expect(buckets.size).toBe(100);
    clock.advance(59_900);
    buckets.take('busy', 'management', 2);
    clock.advance(200);
    // The sweep runs on the first take after a minute: the busy bucket is still refilling, the idle ones are full.
    buckets.take('other', 'cryptographic', 1);
    expect(buckets.size).toBe(2);
    expect(buckets.take('busy', 'management', 1)).toEqual({ granted: 0, retryAfterMs: 300 });
  });
});

describe('LocalRateLimiter', () => {
  it('when a project exceeds its rate, then it is Throttled with the whole seconds until its next token', () => {
    const clock = fakeClock();
    const limiter = new LocalRateLimiter(new TokenBuckets({ cryptographic: 10, management: 1 }, clock));
    expect(admitUntilRefused(limiter, 'p', 'cryptographic')).toBe(10);
    const err = thrown(() => limiter.admit('p', 'cryptographic'));
    expect(err.code).toBe('Throttled');
    // 100 ms to the next token: a client is told at least one second.
    expect(err.retryAfterSeconds).toBe(1);
    limiter.admit('p', 'management');
    clock.advance(1);
    // 999 ms to the next token: one second, rounded up.
    expect(thrown(() => limiter.admit('p', 'management')).retryAfterSeconds).toBe(1);
    clock.advance(999);
    expect(() => limiter.admit('p', 'management')).not.toThrow();
  });

  it('when time passes, then the project is admitted again at its rate', () => {
    const clock = fakeClock();
    const limiter = new LocalRateLimiter(new TokenBuckets(LIMITS, clock));
    admitUntilRefused(limiter, 'p', 'cryptographic');
    let admitted = 0;
    for (let ms = 0; ms < 10_000; ms += 10) {
      clock.advance(10);
      admitted += admitUntilRefused(limiter, 'p', 'cryptographic');
    }
    expect(admitted).toBe(100);
  });
});

/**
 * Workers leasing from one set of buckets as a cluster's workers do from the primary's, the IPC replaced by a
 * promise that settles on the next turn of the event loop. `calls` counts the lease requests.
 */
function cluster(limits: RateLimits, clock: ReturnType<typeof fakeClock>, workers: number) {
  const buckets = new TokenBuckets(limits, clock);
  const calls = { count: 0 };
  const lease: LeaseTokens = (projectId, kind, wanted) => {
    calls.count++;
    return new Promise<Grant>((resolve) => setImmediate(() => resolve(buckets.take(projectId, kind, wanted))));
  };
  return { calls, workers: Array.from({ length: workers }, () => new LeasedRateLimiter(limits, clock, lease)) };
}

/** Admits one request; true if admitted, false if Throttled. */
async function admitted(limiter: LeasedRateLimiter, projectId: string, kind: 'cryptographic' | 'management') {
  try {
    await limiter.admit(projectId, kind);
    return true;
  } catch (err) {
    expect((err as KmsError).code).toBe('Throttled');
    expect((err as KmsError).retryAfterSeconds).toBeGreaterThanOrEqual(1);
    return false;
  }
}

describe('LeasedRateLimiter', () => {
  it("when a project's first request comes, then it waits for a lease, and the next ones are admitted at once", async () => {
    const clock = fakeClock();
    const {
      calls,
      workers: [worker],
    } = cluster({ cryptographic: 1000, management: 100 }, clock, 1);
    const w = worker as LeasedRateLimiter;
    expect(w.admit('p', 'cryptographic')).toBeInstanceOf(Promise);
    await w.admit('p', 'cryptographic');
    expect(calls.count).toBe(1);
    // A batch is 20 tokens at 1,000/s; the worker asks ahead when half is left, without making a request wait.
    for (let i = 0; i < 9; i++) expect(w.admit('p', 'cryptographic')).toBeUndefined();
    expect(calls.count).toBe(2);
    await new Promise((resolve) => setImmediate(resolve));
    for (let i = 0; i < 20; i++) expect(w.admit('p', 'cryptographic')).toBeUndefined();
  });

  it('when two workers serve one project at full speed, then together they admit no more than the rate allows', async () => {
    const clock = fakeClock();
    const limits = { cryptographic: 1000, management: 100 };
    const { workers, calls } = cluster(limits, clock, 2);
    let total = 0;
    // Five simulated seconds; each millisecond, each worker sees 3 requests (6,000/s offered in all).
    for (let ms = 0; ms < 5000; ms++) {
      const round = await Promise.all(workers.flatMap((w) => [0, 1, 2].map(() => admitted(w, 'p', 'cryptographic'))));
      total += round.filter(Boolean).length;
      clock.advance(1);
    }
    // rate × time + burst, and the batches the workers may hold at the start (none here: they start empty).
    expect(total).toBeLessThanOrEqual(1000 * 5 + 1000);
    // And the limit is the service's, not each worker's: near it, not at half or twice it.
    expect(total).toBeGreaterThanOrEqual(1000 * 5 * 0.9);
    // The primary is asked about once per batch, not once per request.
    expect(calls.count).toBeLessThan(total / 5);
  });

  it("when the primary's bucket is empty, then requests are refused without asking again until it has a token", async () => {
    const clock = fakeClock();
    const {
      workers: [worker],
      calls,
    } = cluster({ cryptographic: 2, management: 2 }, clock, 1);
    const w = worker as LeasedRateLimiter;
    expect(await admitted(w, 'p', 'management')).toBe(true);
    expect(await admitted(w, 'p', 'management')).toBe(true);
    expect(await admitted(w, 'p', 'management')).toBe(false);
    const asked = calls.count;
    for (let i = 0; i < 50; i++) expect(() => w.admit('p', 'management')).toThrow(KmsError);
    expect(calls.count).toBe(asked);
    clock.advance(500);
    expect(await admitted(w, 'p', 'management')).toBe(true);
  });

  it('when many requests of a new project wait on one lease, then those it does not cover ask again', async () => {
    const clock = fakeClock();
    const {
      workers: [worker],
    } = cluster({ cryptographic: 100, management: 100 }, clock, 1);
    // A batch is 2 tokens at 100/s; 50 waiting requests are all admitted from the 100-token burst.
    const results = await Promise.all(
      Array.from({ length: 50 }, () => admitted(worker as LeasedRateLimiter, 'p', 'cryptographic')),
    );
    expect(results.filter(Boolean)).toHaveLength(50);
    const more = await Promise.all(
      Array.from({ length: 80 }, () => admitted(worker as LeasedRateLimiter, 'p', 'cryptographic')),
    );
    expect(more.filter(Boolean)).toHaveLength(50);
  });

  it('when the primary cannot be asked, then the pair is Throttled for a second, and asked again after', async () => {
    const clock = fakeClock();
    let reachable = false;
    const worker = new LeasedRateLimiter(LIMITS, clock, async () => {
      if (!reachable) throw new Error('the cluster primary is gone');
      return { granted: 1, retryAfterMs: 0 };
    });
    expect(await admitted(worker, 'p', 'cryptographic')).toBe(false);
    reachable = true;
    expect(() => worker.admit('p', 'cryptographic')).toThrow(KmsError);
    clock.advance(1000);
    expect(await admitted(worker, 'p', 'cryptographic')).toBe(true);
  });

  it('when a project goes idle, then its lease is dropped', async () => {
    const clock = fakeClock();
    const {
      workers: [worker],
    } = cluster(LIMITS, clock, 1);
    const w = worker as LeasedRateLimiter;
    await w.admit('idle', 'cryptographic');
    expect(w.size).toBe(1);
    clock.advance(61_000);
    await w.admit('busy', 'cryptographic');
    expect(w.size).toBe(1);
  });

  it('when a class limit is 0, then it is off and no lease is asked for', () => {
    const calls: string[] = [];
    const worker = new LeasedRateLimiter({ cryptographic: 0, management: 1 }, fakeClock(), (p) => {
      calls.push(p);
      return Promise.resolve({ granted: 1, retryAfterMs: 0 });
    });
    for (let i = 0; i < 100; i++) expect(worker.admit('p', 'cryptographic')).toBeUndefined();
    expect(calls).toEqual([]);
  });
});
