/**
 * Pearson's chi-square goodness-of-fit test against a uniform distribution, for checking that random output (e.g.
 * password characters) hits every symbol equally often. Used by unit tests and by HTTP-level tests.
 *
 * Typical use: `chiSquare(characterCounts(passwords, alphabet), total / alphabet.length)` must stay below
 * `chiSquareCritical(alphabet.length - 1, 4.75)`.
 */

/** Σ (observed - expected)² / expected over every cell, each cell expecting `expectedEach`. */
export function chiSquare(counts: readonly number[], expectedEach: number): number {
  if (!(expectedEach > 0)) throw new Error(`expectedEach must be positive, got ${expectedEach}`);
  let statistic = 0;
  for (const observed of counts) statistic += (observed - expectedEach) ** 2 / expectedEach;
  return statistic;
}

/**
 * Upper quantile of the chi-square distribution with `degreesOfFreedom` degrees of freedom at standard-normal
 * deviate `z`, by the Wilson–Hilferty approximation: (X/k)^(1/3) is close to normal with mean 1 - 2/(9k) and
 * variance 2/(9k), so the quantile is k·(1 - 2/(9k) + z·√(2/(9k)))³. At p ≈ 1e-6 it is slightly high against the
 * exact quantile (45.9 vs 44.8 for 9 degrees of freedom, 173.0 vs 172.7 for 93), so it errs towards passing.
 *
 * z = 4.75 is a one-sided p ≈ 1e-6 (1.02e-6): a test using it fails by chance about once in a million runs, yet
 * still catches a real bias when the sample is large enough (e.g. for 93 degrees of freedom the critical value is
 * ≈ 173 against a mean of 93).
 */
export function chiSquareCritical(degreesOfFreedom: number, z: number): number {
  if (!(degreesOfFreedom > 0)) throw new Error(`degreesOfFreedom must be positive, got ${degreesOfFreedom}`);
  const a = 2 / (9 * degreesOfFreedom);
  return degreesOfFreedom * (1 - a + z * Math.sqrt(a)) ** 3;
}

/**
 * How often each character of `alphabet` occurs across `samples`, in alphabet order. Throws on a character outside
 * the alphabet, so the counts can never silently ignore a stray one.
 */
export function characterCounts(samples: Iterable<string>, alphabet: string): number[] {
  const slots = new Map<string, number>();
  for (const character of alphabet) {
    if (slots.has(character)) throw new Error(`alphabet repeats ${JSON.stringify(character)}`);
    slots.set(character, slots.size);
  }
  const counts = new Array<number>(slots.size).fill(0);
  for (const sample of samples) {
    for (const character of sample) {
      const slot = slots.get(character);
      if (slot === undefined) {
        throw new Error(`${JSON.stringify(character)} in ${JSON.stringify(sample)} is not in the alphabet`);
      }
      counts[slot] = (counts[slot] ?? 0) + 1;
    }
  }
  return counts;
}
