/**
 * How a failed random source behaves through HTTP, on the real service in process (fresh SoftHSM token): the HSM's
 * C_GenerateRandom is made to hand out zeros (test/support/stuck-random.ts), Huawei gen-random is called every 10 ms,
 * the source is made well again after 300 ms, and the script times when gen-random is served again.
 *
 *   node --import tsx bench/random-recovery.bench.ts [--rounds 5]
 *
 * Prints per round: requests refused, C_GenerateRandom calls made while refusing (the re-test aside), and the time
 * from the failure and from the source being well again to the first request served.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { stuckRandom } from '../test/support/stuck-random.js';
import { startTestService } from '../test/support/test-service.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
const P = 'rngrecovery';
const STUCK_MS = 300;

const kms = await startTestService({}, { onLog: () => {} });
const genRandom = async () => (await kms.call(P, 'gen-random', { random_data_length: '8192' })).status;
if ((await genRandom()) !== 200) throw new Error('gen-random failed before any fault');
const stuck = stuckRandom(kms.running.hsm.forTesting().lib);
try {
  for (let round = 1; round <= Number(values.rounds); round++) {
    stuck.stick(0);
    const failedAt = performance.now();
    if ((await genRandom()) === 200) throw new Error('a stuck stream was served');
    const callsAtFailure = stuck.calls;
    let refused = 1;
    while (performance.now() - failedAt < STUCK_MS) {
      if ((await genRandom()) === 200) throw new Error('a stuck stream was served');
      refused++;
      await sleep(10);
    }
    const callsWhileStuck = stuck.calls - callsAtFailure;
    stuck.heal();
    const wellAt = performance.now();
    while ((await genRandom()) !== 200) {
      refused++;
      await sleep(10);
    }
    const servedAt = performance.now();
    console.log(
      `round ${round}: ${refused} requests refused; C_GenerateRandom calls while refusing: ${callsWhileStuck}; ` +
        `served again ${(servedAt - failedAt).toFixed(0)} ms after the failure, ` +
        `${(servedAt - wellAt).toFixed(0)} ms after the source was well`,
    );
  }
} finally {
  stuck.restore();
  await kms.destroy();
}
