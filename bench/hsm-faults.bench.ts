/**
 * HSM faults under load (the full run of test/api/hsm-faults.test.ts): the real service in this process, on a fresh
 * SoftHSM token, with its PKCS#11 binding wrapped by the fault injector (test/support/faulty-pkcs11.ts), under
 * concurrent load through HTTP in the three dialects (test/support/fault-load.ts).
 *
 *   bench/run faults [--faults 1000] [--probability 0.05] [--concurrency 16] [--seed 13] [--outage-ms 3000]
 *
 * 1. Faults (every code of FAULT_CODES, 1 call in 100 slowed by 2 ms) until `--faults` have fired, then cleared;
 *    the load runs on for 5 s.
 * 2. The token's directory moved away for `--outage-ms` under load, and back; the load runs on for 5 s.
 * Each phase prints requests total / failed / failed with the retryable error and Retry-After, the latency against
 * the bound, the time from the clearing to the first fully healthy second, the pool counters before and after, and
 * checks that every key and ciphertext the load was answered with still works and no key is half-created. Exits 1 on
 * any violation. The load runs in the service's process: a request's latency includes the client's own work.
 */
import { parseArgs } from 'node:util';
import { ckrName } from '../src/hsm/pkcs11-errors.js';
import {
  FAULT_RUN,
  FaultLoad,
  type FaultRunSummary,
  HEAL_BOUND_MS,
  poolProblems,
  REQUEST_BOUND_MS,
  runFaultPhase,
  runTokenOutagePhase,
} from '../test/support/fault-load.js';
import { FaultyPkcs11 } from '../test/support/faulty-pkcs11.js';
import { startTestService } from '../test/support/test-service.js';
import { machine } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    faults: { type: 'string', default: '1000' },
    probability: { type: 'string', default: '0.05' },
    concurrency: { type: 'string', default: '16' },
    seed: { type: 'string', default: '13' },
    'outage-ms': { type: 'string', default: '3000' },
    'pool-size': { type: 'string', default: '4' },
  },
});
const FAULTS = Number(opts.faults);
const POOL_SIZE = Number(opts['pool-size']);

const violations: string[] = [];
let crashes = 0;
process.on('uncaughtException', (err) => {
  crashes++;
  console.error('uncaught exception', err);
});
process.on('unhandledRejection', (err) => {
  crashes++;
  console.error('unhandled rejection', err);
});

function report(phase: string, summary: FaultRunSummary, clearedWord: string): void {
  console.log(`  requests: ${summary.total} total, ${summary.failed} failed, ${summary.failedRetryable} of them with`);
  console.log("           the dialect's retryable error and Retry-After");
  console.log(
    `  latency: max ${summary.maxLatencyMs.toFixed(0)} ms, p99 ${summary.p99LatencyMs.toFixed(0)} ms ` +
      `(bound ${REQUEST_BOUND_MS} ms)`,
  );
  console.log(
    `  after the ${clearedWord}: last failure answered at +${summary.lastFailureAfterClearMs.toFixed(0)} ms; ` +
      `first fully healthy second: ${summary.firstHealthySecond === undefined ? 'none' : `+${summary.firstHealthySecond} s`}`,
  );
  for (const v of summary.violations.slice(0, 20)) violations.push(`${phase}: ${v}`);
  if (summary.violations.length > 20) violations.push(`${phase}: ${summary.violations.length - 20} more violations`);
  if (summary.failedRetryable !== summary.failed) violations.push(`${phase}: failures not retryable`);
  if (summary.maxLatencyMs >= REQUEST_BOUND_MS) violations.push(`${phase}: a request took past the bound`);
  if (summary.lastFailureAfterClearMs >= HEAL_BOUND_MS || summary.firstHealthySecond === undefined) {
    violations.push(`${phase}: not healed within ${HEAL_BOUND_MS} ms`);
  }
}

function pool(label: string, stats: object): void {
  console.log(`  pool ${label}: ${JSON.stringify(stats)}`);
}

console.log(`machine: ${JSON.stringify(machine())}`);
const faults = new FaultyPkcs11();
const running = await startTestService(
  { KMS_HSM_POOL_SIZE: String(POOL_SIZE) },
  {
    wrapPkcs11: faults.wrap,
    onLog: () => undefined,
  },
);
try {
  const load = await FaultLoad.prepare(running);

  console.log(
    `\n1. ${FAULTS} faults, probability ${opts.probability} per call, ${opts.concurrency} clients, seed ${opts.seed}`,
  );
  const run = await runFaultPhase(running, load, faults, {
    plan: { ...FAULT_RUN, seed: Number(opts.seed), probability: Number(opts.probability), maxFaults: FAULTS },
    concurrency: Number(opts.concurrency),
    healthyMs: 5_000,
    capMs: 600_000,
  });
  const byCode = [...run.faults.faultsByCode].map(([code, n]) => `${ckrName(code)} ${n}`).join(', ');
  console.log(`  faults: ${run.faults.faults} of ${run.faults.eligible} calls that could fail (${byCode})`);
  const byFunction = [...run.faults.faultsByFunction].map(([fn, n]) => `${fn} ${n}`).join(', ');
  console.log(`  by function: ${byFunction}; ${run.faults.delayed} calls delayed`);
  report('faults', run.summary, 'clearing');
  pool('before', run.poolBefore);
  pool('after ', run.poolAfter);
  if (run.faults.faults !== FAULTS) violations.push(`faults: ${run.faults.faults} fired, not ${FAULTS}`);
  for (const p of [...run.lost, ...poolProblems(run.poolAfter, POOL_SIZE)]) violations.push(`faults: ${p}`);
  console.log(
    `  acknowledged: ${load.acknowledged.keys.length} keys, ${load.acknowledged.ciphertexts.length} ciphertexts checked`,
  );

  console.log(`\n2. the token directory moved away for ${opts['outage-ms']} ms under load, and back`);
  const outage = await runTokenOutagePhase(running, load, {
    outageMs: Number(opts['outage-ms']),
    concurrency: Number(opts.concurrency),
    healthyMs: 5_000,
    capMs: 600_000,
    seed: Number(opts.seed) + 1,
  });
  console.log(`  while away: ${outage.during} requests answered, ${outage.failedDuring} failed`);
  report('outage', outage.summary, 'restoring');
  pool('before', outage.poolBefore);
  pool('after ', outage.poolAfter);
  for (const p of [...outage.lost, ...poolProblems(outage.poolAfter, POOL_SIZE)]) violations.push(`outage: ${p}`);
  if (outage.failedDuring === 0) violations.push('outage: no request failed while the token was away');
} finally {
  await running.destroy();
}

if (crashes > 0) violations.push(`${crashes} uncaught exceptions or unhandled rejections`);
console.log(violations.length === 0 ? '\nOK: no violation' : `\nVIOLATIONS:\n${violations.join('\n')}`);
process.exit(violations.length === 0 ? 0 : 1);
