import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import {
  ALPHA_EXPONENT,
  APT_CUTOFF,
  APT_WINDOW,
  adaptiveProportionCutoff,
  CLAIMED_MIN_ENTROPY_BITS,
  ContinuousHealthTests,
  type RandomHealthEvent,
  RandomSourceHealth,
  RCT_CUTOFF,
  repetitionCountCutoff,
  STARTUP_SAMPLES,
} from '../../src/core/random-health.js';

/** P(X ≥ c) · 2^(H·W) for X ~ Binomial(W, 2^-H), exactly: Σ_{j ≥ c} C(W, j) · (2^H − 1)^(W − j). */
function exactUpperTail(window: number, minEntropyBits: number, c: number): bigint {
  const other = 2n ** BigInt(minEntropyBits) - 1n;
  let choose = 1n; // C(W, j)
  let sum = 0n;
  for (let j = 0; j <= window; j++) {
    if (j >= c) sum += choose * other ** BigInt(window - j);
    choose = (choose * BigInt(window - j)) / BigInt(j + 1);
  }
  return sum;
}

/** `count` bytes that never repeat the one before and never equal `avoid`. */
function filler(count: number, avoid: number, start = 0): number[] {
  const out: number[] = [];
  for (let v = start; out.length < count; v = (v + 1) % 256) if (v !== avoid) out.push(v);
  return out;
}

/** A window opening with `value` that holds it `count` times in all, apart from each other (no RCT run). */
function windowWith(value: number, count: number): Buffer {
  const rest = filler(APT_WINDOW - count, value, 1);
  const bytes: number[] = [];
  for (let i = 0; i < APT_WINDOW; i++) bytes.push(i % 2 === 0 && i / 2 < count ? value : (rest.shift() as number));
  return Buffer.from(bytes);
}

/** A source that hands out what `next` returns and counts its draws. */
function source(next: (into: Buffer) => void) {
  const draws: number[] = [];
  return {
    draws,
    draw: (into: Buffer) => {
      draws.push(into.length);
      next(into);
    },
  };
}

function caught(fn: () => void): KmsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof KmsError) return err;
    throw err;
  }
  throw new Error('expected a KmsError');
}

describe('the cutoffs (SP 800-90B §4.4, bytes as samples, α = 2^-20)', () => {
  it('when H = 4 bits per byte, then the repetition count cutoff is 1 + ⌈20 / 4⌉ = 6', () => {
    expect(CLAIMED_MIN_ENTROPY_BITS).toBe(4);
    expect(ALPHA_EXPONENT).toBe(20);
    expect(RCT_CUTOFF).toBe(6);
    // C identical samples in a row have probability 2^(-H(C-1)) ≤ α; one fewer would exceed it.
    expect(CLAIMED_MIN_ENTROPY_BITS * (RCT_CUTOFF - 1)).toBeGreaterThanOrEqual(ALPHA_EXPONENT);
    expect(CLAIMED_MIN_ENTROPY_BITS * (RCT_CUTOFF - 2)).toBeLessThan(ALPHA_EXPONENT);
  });

  it('when H = 4 and W = 512, then the adaptive proportion cutoff is the smallest count reached with probability ≤ α (exact binomial tail)', () => {
    expect(APT_WINDOW).toBe(512);
    expect(APT_CUTOFF).toBe(62);
    // Checked in exact integers, independently of the doubles the service computes with:
    // P(B ≥ C) ≤ 2^-20 < P(B ≥ C - 1), where 2^(H·W) · 2^-20 = 2^(H·W − 20).
    const scale = 2n ** BigInt(CLAIMED_MIN_ENTROPY_BITS * APT_WINDOW - ALPHA_EXPONENT);
    expect(exactUpperTail(APT_WINDOW, CLAIMED_MIN_ENTROPY_BITS, APT_CUTOFF) <= scale).toBe(true);
    expect(exactUpperTail(APT_WINDOW, CLAIMED_MIN_ENTROPY_BITS, APT_CUTOFF - 1) > scale).toBe(true);
  });

  it('when other H are claimed, then the formulas give the cutoffs the exact tail confirms', () => {
    for (const h of [1, 2, 8]) {
      const c = adaptiveProportionCutoff(APT_WINDOW, h, ALPHA_EXPONENT);
      const scale = 2n ** BigInt(h * APT_WINDOW - ALPHA_EXPONENT);
      expect(exactUpperTail(APT_WINDOW, h, c) <= scale).toBe(true);
      expect(exactUpperTail(APT_WINDOW, h, c - 1) > scale).toBe(true);
    }
    expect(repetitionCountCutoff(8, 20)).toBe(4);
    expect(adaptiveProportionCutoff(APT_WINDOW, 8, 20)).toBe(13);
  });

  it('when H = 8 were claimed, then full-entropy bytes would fail every 16 MiB; with H = 4, once in 2^40 bytes', () => {
    // Full-entropy bytes end a run of C equal ones at a given byte with probability 2^(-8(C-1)): with C = 4, once in
    // 2^24 bytes, a false alarm per 16 MiB drawn; with C = 6, once in 2^40.
    const falseAlarmsPerMiB = (cutoff: number) => 2 ** 20 * 2 ** (-8 * (cutoff - 1));
    expect(falseAlarmsPerMiB(repetitionCountCutoff(8, 20))).toBeCloseTo(1 / 16, 10);
    expect(falseAlarmsPerMiB(RCT_CUTOFF)).toBe(2 ** -20);
  });
});

describe('ContinuousHealthTests', () => {
  it('when C - 1 identical bytes come in a row, then the repetition count test passes; when C come, it fails', () => {
    const tests = new ContinuousHealthTests();
    expect(tests.feed(Buffer.from([1, ...Array(RCT_CUTOFF - 1).fill(7), 2]))).toBeUndefined();
    expect(new ContinuousHealthTests().feed(Buffer.from([1, ...Array(RCT_CUTOFF).fill(7), 2]))).toBe(
      'repetition count',
    );
  });

  it('when a run spans two blocks, then it is counted across them', () => {
    const tests = new ContinuousHealthTests();
    expect(tests.feed(Buffer.from([9, 9, 9]))).toBeUndefined();
    expect(tests.feed(Buffer.from([9, 9, 9]))).toBe('repetition count');
  });

  it('when a window holds its first value C - 1 times, then the adaptive proportion test passes; C times, it fails', () => {
    expect(new ContinuousHealthTests().feed(windowWith(0xaa, APT_CUTOFF - 1))).toBeUndefined();
    expect(new ContinuousHealthTests().feed(windowWith(0xaa, APT_CUTOFF))).toBe('adaptive proportion');
  });

  it('when the window spans blocks, then the count does too; a new window starts the count again', () => {
    const tests = new ContinuousHealthTests();
    const almost = windowWith(0xaa, APT_CUTOFF - 1);
    // Two windows in a row with C - 1 each pass: the count is per window.
    for (const block of [almost, almost]) {
      for (let at = 0; at < block.length; at += 100) expect(tests.feed(block.subarray(at, at + 100))).toBeUndefined();
    }
    const over = windowWith(0xaa, APT_CUTOFF);
    expect(tests.feed(over.subarray(0, 100))).toBeUndefined();
    expect(tests.feed(over.subarray(100))).toBe('adaptive proportion');
  });

  it('when the source favours one value (a quarter of its bytes), then a window or two catches it', () => {
    const biased = randomBytes(4 * APT_WINDOW);
    for (let i = 0; i < biased.length; i++) if (i % 4 === 0) biased[i] = 0x5c;
    biased[0] = 0x5c;
    expect(new ContinuousHealthTests().feed(biased)).toBe('adaptive proportion');
  });

  it('when 10 MB of crypto.randomBytes go through in blocks of every size the service draws, then both tests pass', () => {
    const tests = new ContinuousHealthTests();
    const data = randomBytes(10_000_000);
    const sizes = [12, 32, 64, 1024, 4096];
    for (let at = 0, i = 0; at < data.length; i++) {
      const size = sizes[i % sizes.length] as number;
      expect(tests.feed(data.subarray(at, at + size))).toBeUndefined();
      at += size;
    }
  });
});

describe('RandomSourceHealth', () => {
  it('when the first block is drawn, then 1,024 bytes are drawn, tested and discarded before it', () => {
    const s = source((into) => randomBytes(into.length).copy(into));
    const health = new RandomSourceHealth();
    const out = Buffer.alloc(32);
    health.fill(out, s.draw);
    expect(s.draws).toEqual([STARTUP_SAMPLES, 32]);
    health.fill(out, s.draw);
    expect(s.draws).toEqual([STARTUP_SAMPLES, 32, 32]);
    expect(health.healthy).toBe(true);
  });

  it('when a block fails, then it is zeroed, the failure told once, and every draw refused until the re-test is due', () => {
    let stuck = false;
    const s = source((into) => (stuck ? into.fill(0x42) : randomBytes(into.length).copy(into)));
    let now = 1_000_000;
    const events: RandomHealthEvent[] = [];
    const health = new RandomSourceHealth({ now: () => now, onEvent: (e) => events.push(e), retestDelayMs: 1500 });
    health.fill(Buffer.alloc(16), s.draw);

    stuck = true;
    const out = Buffer.alloc(32);
    const err = caught(() => health.fill(out, s.draw));
    expect(err.code).toBe('HsmUnavailable');
    expect(err.reported).toBe(true);
    expect(err.retryAfterSeconds).toBe(2);
    expect(err.message).toMatch(/random number generator failed its repetition count health test/);
    expect(out.every((b) => b === 0)).toBe(true);
    expect(events).toEqual([{ kind: 'failed', test: 'repetition count', retestInMs: 1500 }]);

    // Within the delay, nothing is drawn at all.
    const drawn = s.draws.length;
    now += 1000;
    expect(caught(() => health.fill(Buffer.alloc(8), s.draw)).retryAfterSeconds).toBe(1);
    expect(() => health.assertServing()).toThrow(KmsError);
    expect(s.draws.length).toBe(drawn);

    // Due, but still stuck: the re-test fails, quietly, and the delay starts again.
    now += 600;
    expect(() => health.fill(Buffer.alloc(8), s.draw)).toThrow(/health test/);
    expect(s.draws.slice(drawn)).toEqual([STARTUP_SAMPLES]);
    expect(events).toHaveLength(1);

    // Healthy again: the re-test passes and the draw is served, the recovery told once.
    stuck = false;
    now += 1500;
    const served = Buffer.alloc(32);
    health.fill(served, s.draw);
    expect(served.some((b) => b !== 0)).toBe(true);
    expect(events).toEqual([
      { kind: 'failed', test: 'repetition count', retestInMs: 1500 },
      { kind: 'recovered', failedForMs: 3100 },
    ]);
    expect(health.healthy).toBe(true);
  });

  it('when the source is stuck from the start, then the start-up test fails and nothing is handed out', () => {
    const s = source((into) => into.fill(0));
    const events: RandomHealthEvent[] = [];
    const health = new RandomSourceHealth({ onEvent: (e) => events.push(e) });
    expect(() => health.fill(Buffer.alloc(32), s.draw)).toThrow(/health test/);
    expect(s.draws).toEqual([STARTUP_SAMPLES]);
    expect(events).toEqual([{ kind: 'failed', test: 'repetition count', retestInMs: 1000 }]);
  });

  it('when the draw itself throws, then the error passes through and the health is unchanged', () => {
    const health = new RandomSourceHealth();
    health.fill(Buffer.alloc(4), (into) => randomBytes(into.length).copy(into));
    expect(() =>
      health.fill(Buffer.alloc(4), () => {
        throw new Error('CKR_DEVICE_ERROR');
      }),
    ).toThrow('CKR_DEVICE_ERROR');
    expect(health.healthy).toBe(true);
  });
});
