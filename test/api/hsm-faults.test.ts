import { performance } from 'node:perf_hooks';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AES_KEY_GEN_MECHANISM } from '../../src/hsm/key-templates.js';
import { RECOVER_INTERVAL_MS } from '../../src/hsm/pkcs11-library.js';
import {
  FAULT_RUN,
  FaultLoad,
  type FaultRunSummary,
  HEAL_BOUND_MS,
  poolProblems,
  REQUEST_BOUND_MS,
  runFaultPhase,
  runTokenOutagePhase,
} from '../support/fault-load.js';
import { FAULT_CODES, FaultyPkcs11 } from '../support/faulty-pkcs11.js';
import { startTestService, type TestService } from '../support/test-service.js';

/**
 * The short version of bench/hsm-faults.bench.ts (1,000 faults): HSM faults injected under the real adapter while
 * the three dialects are under concurrent load, then cleared; and the real thing, the token's directory taken away
 * under load and put back. docs/reliability-parts/hsm-faults.md has the figures.
 */

const POOL_SIZE = 4;
const OUTAGE_MS = 1_500;
/** The load stops after 20 s at most (capMs); the checks afterwards take a few seconds more. */
const LOAD_TEST_TIMEOUT_MS = 45_000;

let service: TestService;
const faults = new FaultyPkcs11();
let load: FaultLoad;

beforeAll(async () => {
  service = await startTestService(
    { KMS_HSM_POOL_SIZE: String(POOL_SIZE) },
    // Each injected fault is logged as an unexpected HSM error: kept, not printed.
    { wrapPkcs11: faults.wrap, onLog: () => undefined },
  );
  load = await FaultLoad.prepare(service);
});
afterAll(async () => service?.destroy());

/** Every failure was the dialect's retryable error with Retry-After, no request took long, and the pool healed. */
function expectWithinBounds(summary: FaultRunSummary): void {
  expect(summary.violations).toEqual([]);
  expect(summary.failedRetryable).toBe(summary.failed);
  expect(summary.maxLatencyMs).toBeLessThan(REQUEST_BOUND_MS);
  expect(summary.lastFailureAfterClearMs).toBeLessThan(HEAL_BOUND_MS);
  expect(summary.firstHealthySecond).toBeDefined();
  expect(summary.firstHealthySecond as number).toBeLessThan(HEAL_BOUND_MS / 1000);
}

describe('HSM faults under load', () => {
  it(
    'when 100 faults (every code the issue names) hit the adapter under load in three dialects, then no request hangs, every failure is the retryable error with Retry-After, the pool heals within 5 s, and no key or ciphertext is lost',
    async () => {
      const run = await runFaultPhase(service, load, faults, {
        plan: { ...FAULT_RUN, seed: 13, probability: 0.1, maxFaults: 100 },
        concurrency: 8,
        healthyMs: 2_000,
        capMs: 20_000,
      });

      expect(run.faults.faults).toBe(100);
      expect([...run.faults.faultsByCode.keys()].sort()).toEqual([...FAULT_CODES].sort());
      expectWithinBounds(run.summary);
      expect(run.summary.failed).toBeGreaterThan(0);
      expect(run.lost).toEqual([]);
      expect(poolProblems(run.poolAfter, POOL_SIZE)).toEqual([]);
      expect(run.poolAfter.recoveries).toBeGreaterThan(run.poolBefore.recoveries);
    },
    LOAD_TEST_TIMEOUT_MS,
  );

  it('when the n-th call of one function fails, then that one call fails with the code, and a call given a callback fails or is delayed through its callback', async () => {
    const { lib, anchorSession } = service.running.hsm.forTesting();
    const session = anchorSession as Buffer;
    faults.arm({ seed: 1, nth: 2, functions: ['C_GenerateRandom'], codes: [pkcs11js.CKR_DEVICE_REMOVED] });
    lib.C_GenerateRandom(session, Buffer.alloc(8));
    expect(() => lib.C_GenerateRandom(session, Buffer.alloc(8))).toThrow(
      expect.objectContaining({ code: pkcs11js.CKR_DEVICE_REMOVED }),
    );
    lib.C_GenerateRandom(session, Buffer.alloc(8));
    expect(faults.counters.faults).toBe(1);

    const template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
      { type: pkcs11js.CKA_TOKEN, value: false },
    ];
    const generate = () =>
      new Promise<Buffer>((resolve, reject) =>
        lib.C_GenerateKey(session, AES_KEY_GEN_MECHANISM, template, (err, handle) =>
          err ? reject(err) : resolve(handle),
        ),
      );
    faults.arm({ seed: 2, nth: 1, functions: ['C_GenerateKey'], codes: [pkcs11js.CKR_DEVICE_ERROR] });
    await expect(generate()).rejects.toMatchObject({ code: pkcs11js.CKR_DEVICE_ERROR });
    faults.arm({ seed: 3, latencyMs: 200 });
    const started = performance.now();
    const handle = await generate();
    expect(performance.now() - started).toBeGreaterThanOrEqual(190);
    faults.clear();
    lib.C_DestroyObject(session, handle);
  });
});

describe('the token directory taken away under load', () => {
  it(
    'when the SoftHSM token directory is moved away under load and back, then requests fail only with the retryable error meanwhile, and succeed again without a restart',
    async () => {
      const run = await runTokenOutagePhase(service, load, {
        outageMs: OUTAGE_MS,
        concurrency: 8,
        healthyMs: 2_000,
        capMs: 20_000,
        seed: 7,
      });

      expect(run.failedDuring).toBeGreaterThan(0);
      expectWithinBounds(run.summary);
      expect(run.lost).toEqual([]);
      expect(poolProblems(run.poolAfter, POOL_SIZE)).toEqual([]);
      // SoftHSM shows the token again only after C_Initialize: the library was started again, the service was not; and
      // not once per request meanwhile (each start costs every adapter on the library its sessions).
      const restarts = run.poolAfter.libraryRestarts - run.poolBefore.libraryRestarts;
      expect(restarts).toBeGreaterThan(0);
      expect(restarts).toBeLessThanOrEqual(Math.ceil(OUTAGE_MS / RECOVER_INTERVAL_MS) + 2);
    },
    LOAD_TEST_TIMEOUT_MS,
  );
});
