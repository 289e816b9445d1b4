import { KmsError } from './errors.js';

/**
 * Continuous health tests of a random source, as NIST SP 800-90B §4.4 describes them for a noise source: the
 * Repetition Count Test (§4.4.1) and the Adaptive Proportion Test (§4.4.2), on bytes as samples, with the state kept
 * across draws (a run or a window may span several). They catch a source that is stuck, or that has fallen into a
 * strong bias, before its bytes become data keys, passwords or IVs; subtler defects are for offline tests
 * (scripts/rng-check: rngtest and ent).
 *
 * The cutoffs follow from the min-entropy H claimed per sample and the false-positive probability α = 2^-20:
 * - RCT: C = 1 + ⌈-log2(α) / H⌉: C identical samples in a row have probability 2^(-H(C-1)) ≤ α.
 * - APT: W = 512 (non-binary samples), C = 1 + CRITBINOM(W, 2^-H, 1 - α): the smallest count that W samples of a
 *   source meeting H reach with probability at most α (CRITBINOM as in Excel, computed below).
 *
 * H is 4 bits per byte, half of what the HSM's output (a DRBG's, full entropy) has. With H = 8, C would be 4, and
 * four equal bytes in a row come once in 2^24 positions of perfectly random bytes: a false alarm every 16 MiB
 * drawn, that is every few minutes for a busy service (test/unit/random-health.test.ts computes it). With H = 4,
 * C = 6 and the false alarm rate of full-entropy bytes is 2^-40 per byte (the strict end of 90B's range for α),
 * while a stuck source is still caught within 6 bytes and a byte value taking more than an eighth of the output
 * within a window or two.
 */
export const CLAIMED_MIN_ENTROPY_BITS = 4;
/** α = 2^-ALPHA_EXPONENT: the false-positive probability 90B §4.4 asks each test to be designed for. */
export const ALPHA_EXPONENT = 20;
/** §4.4.2: the window for non-binary samples. */
export const APT_WINDOW = 512;
/**
 * §4.3: start-up tests run the continuous tests over at least 1,024 consecutive samples before any output is used.
 * The same is drawn and discarded before a failed source serves again.
 */
export const STARTUP_SAMPLES = 1024;
/** How long a failed source is left alone before it is tested again. */
export const RETEST_DELAY_MS = 1000;

/** §4.4.1: C = 1 + ⌈-log2(α) / H⌉. */
export function repetitionCountCutoff(minEntropyBits: number, alphaExponent: number): number {
  return 1 + Math.ceil(alphaExponent / minEntropyBits);
}

/**
 * §4.4.2: C = 1 + CRITBINOM(W, 2^-H, 1 - α), where CRITBINOM(n, p, 1 - α) is the smallest k with P(X ≤ k) ≥ 1 - α
 * for X ~ Binomial(n, p), that is P(X > k) ≤ α. The upper tail is summed directly (1 - α is too close to 1 for a
 * cumulative sum from below to be exact in doubles).
 */
export function adaptiveProportionCutoff(window: number, minEntropyBits: number, alphaExponent: number): number {
  const p = 2 ** -minEntropyBits;
  const alpha = 2 ** -alphaExponent;
  const pmf = [(1 - p) ** window];
  for (let k = 0; k < window; k++) pmf.push(((pmf[k] as number) * (window - k) * p) / ((k + 1) * (1 - p)));
  let above = 0; // P(X > k), built from k = window down
  for (let k = window; k >= 0; k--) {
    // P(X > k - 1) = P(X > k) + P(X = k): once that exceeds α, k is the smallest count whose tail stays within it.
    if (above + (pmf[k] as number) > alpha) return 1 + k;
    above += pmf[k] as number;
  }
  return 1;
}

export const RCT_CUTOFF = repetitionCountCutoff(CLAIMED_MIN_ENTROPY_BITS, ALPHA_EXPONENT);
export const APT_CUTOFF = adaptiveProportionCutoff(APT_WINDOW, CLAIMED_MIN_ENTROPY_BITS, ALPHA_EXPONENT);

export type HealthTest = 'repetition count' | 'adaptive proportion';

/** The two tests' state over a stream of bytes. */
export class ContinuousHealthTests {
  #last = -1;
  #run = 0;
  #windowValue = -1;
  #windowCount = 0;
  /** Samples of the current window seen so far; 0: the next sample opens a window. */
  #windowAt = 0;

  constructor(
    private readonly rctCutoff = RCT_CUTOFF,
    private readonly aptCutoff = APT_CUTOFF,
    private readonly window = APT_WINDOW,
  ) {}

  /** Feeds `bytes` in order; returns the test that failed first, or undefined when both pass. */
  feed(bytes: Uint8Array): HealthTest | undefined {
    // The state lives in locals inside the loop (written back once): this runs on every byte the service hands out.
    let last = this.#last;
    let run = this.#run;
    let windowValue = this.#windowValue;
    let windowCount = this.#windowCount;
    let windowAt = this.#windowAt;
    let failed: HealthTest | undefined;
    for (let i = 0; i < bytes.length && failed === undefined; i++) {
      const x = bytes[i] as number;
      if (x === last) {
        if (++run >= this.rctCutoff) failed = 'repetition count';
      } else {
        last = x;
        run = 1;
      }
      if (windowAt === 0) {
        windowValue = x;
        windowCount = 1;
      } else if (x === windowValue && ++windowCount >= this.aptCutoff) {
        failed ??= 'adaptive proportion';
      }
      if (++windowAt === this.window) windowAt = 0;
    }
    this.#last = last;
    this.#run = run;
    this.#windowValue = windowValue;
    this.#windowCount = windowCount;
    this.#windowAt = windowAt;
    return failed;
  }

  reset(): void {
    this.#last = -1;
    this.#run = 0;
    this.#windowValue = -1;
    this.#windowCount = 0;
    this.#windowAt = 0;
  }
}

export type RandomHealthEvent =
  | { readonly kind: 'failed'; readonly test: HealthTest; readonly retestInMs: number }
  | { readonly kind: 'recovered'; readonly failedForMs: number };

export interface RandomHealthOptions {
  /** Told once when the source fails (not on every refused draw, nor on every failed re-test) and once when it recovers. */
  readonly onEvent?: (event: RandomHealthEvent) => void;
  readonly now?: () => number;
  readonly retestDelayMs?: number;
}

/**
 * The health of one random source (one HSM token), checked on every block drawn from it.
 *
 * - Before the first output, and again before a failed source serves again, STARTUP_SAMPLES fresh bytes are drawn,
 *   must pass both tests from a fresh state, and are discarded.
 * - Each block is tested as drawn. A block in which a test fails is zeroed and never handed out; the source is then
 *   failed: every draw is refused with HsmUnavailable (retryable, with Retry-After) until RETEST_DELAY_MS have passed
 *   and a re-test passes. "Healthy again" thus means: a re-test after the delay passed; recovery takes the delay
 *   plus one 1,024-byte draw after the source is well again.
 * - The bytes before the failing block passed both tests when they were handed out; a run that fails RCT at its
 *   sixth byte may have begun in the block before (at most five bytes of it).
 */
export class RandomSourceHealth {
  readonly #tests = new ContinuousHealthTests();
  readonly #onEvent: (event: RandomHealthEvent) => void;
  readonly #now: () => number;
  readonly #retestDelayMs: number;
  #state: { readonly kind: 'untested' } | { readonly kind: 'healthy' } | FailedState = { kind: 'untested' };

  constructor(options: RandomHealthOptions = {}) {
    this.#onEvent = options.onEvent ?? (() => {});
    this.#now = options.now ?? Date.now;
    this.#retestDelayMs = options.retestDelayMs ?? RETEST_DELAY_MS;
  }

  get healthy(): boolean {
    return this.#state.kind === 'healthy';
  }

  /** Refuses at once, before any HSM work, while the source is failed and not yet due for a re-test. */
  assertServing(): void {
    const state = this.#state;
    if (state.kind !== 'failed') return;
    const wait = state.retestAt - this.#now();
    if (wait > 0) throw unhealthy(state.test, wait);
  }

  /**
   * Fills `out` with `draw`, tested; runs the start-up or re-test first when due. When a test fails, `out` is zeroed
   * and HsmUnavailable thrown. Errors of `draw` itself pass through (the bytes of a failed draw are never used).
   */
  fill(out: Buffer, draw: (into: Buffer) => void): void {
    this.assertServing();
    if (this.#state.kind !== 'healthy') this.#retest(draw);
    draw(out);
    const failed = this.#tests.feed(out);
    if (failed !== undefined) {
      out.fill(0);
      this.#fail(failed, true);
    }
  }

  #retest(draw: (into: Buffer) => void): void {
    const previous = this.#state;
    const sample = Buffer.alloc(STARTUP_SAMPLES);
    this.#tests.reset();
    let failed: HealthTest | undefined;
    try {
      draw(sample);
      failed = this.#tests.feed(sample);
    } finally {
      sample.fill(0);
    }
    if (failed !== undefined) this.#fail(failed, previous.kind !== 'failed');
    this.#state = { kind: 'healthy' };
    if (previous.kind === 'failed') this.#onEvent({ kind: 'recovered', failedForMs: this.#now() - previous.since });
  }

  #fail(test: HealthTest, firstFailure: boolean): never {
    const now = this.#now();
    const since = this.#state.kind === 'failed' ? this.#state.since : now;
    this.#state = { kind: 'failed', test, since, retestAt: now + this.#retestDelayMs };
    this.#tests.reset();
    if (firstFailure) this.#onEvent({ kind: 'failed', test, retestInMs: this.#retestDelayMs });
    throw unhealthy(test, this.#retestDelayMs);
  }
}

interface FailedState {
  readonly kind: 'failed';
  readonly test: HealthTest;
  /** When the source first failed (re-tests that fail keep it). */
  readonly since: number;
  readonly retestAt: number;
}

function unhealthy(test: HealthTest, waitMs: number): KmsError {
  return new KmsError(
    'HsmUnavailable',
    `The HSM's random number generator failed its ${test} health test (NIST SP 800-90B): random bytes, data keys, ` +
      'passwords and anything else needing randomness are refused until it passes again. Retry later.',
    { retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)), reported: true },
  );
}
