/**
 * What the SP 800-90B health tests (src/core/random-health.ts) cost on every block the service draws: the blocks of
 * a data key (32 bytes), an IV (12) and the largest gen-random (1,024), over crypto.randomBytes, in process.
 *
 *   node --import tsx bench/random-health.bench.ts [--mib 64]
 *
 * Prints MiB/s and ns per block (the median of three rounds), and how many blocks failed (0 is expected: a false
 * alarm on full-entropy bytes comes once in 2^40 bytes).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ContinuousHealthTests } from '../src/core/random-health.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '64' } } });
const data = randomBytes(Number(values.mib) * 1024 * 1024);

for (const size of [12, 32, 1024]) {
  const blocks = Array.from({ length: Math.floor(data.length / size) }, (_, i) =>
    data.subarray(i * size, (i + 1) * size),
  );
  const rounds: number[] = [];
  let failures = 0;
  for (let round = 0; round < 3; round++) {
    const tests = new ContinuousHealthTests();
    const start = performance.now();
    for (const block of blocks) {
      if (tests.feed(block) !== undefined) {
        failures++;
        tests.reset();
      }
    }
    rounds.push(performance.now() - start);
  }
  const ms = rounds.sort((a, b) => a - b)[1] as number;
  const mib = (blocks.length * size) / 1024 / 1024;
  console.log(
    `blocks of ${String(size).padStart(4)} bytes: ${(mib / (ms / 1000)).toFixed(0)} MiB/s, ` +
      `${((ms * 1e6) / blocks.length).toFixed(0)} ns per block, ${failures} failed of ${3 * blocks.length}`,
  );
}
