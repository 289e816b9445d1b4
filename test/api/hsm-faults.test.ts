import { renameSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AES_KEY_GEN_MECHANISM } from '../../src/hsm/key-templates.js';
import { FAULT_RUN, FaultLoad, summarise } from '../support/fault-load.js';
import { FAULT_CODES, FaultyPkcs11 } from '../support/faulty-pkcs11.js';
import { startTestService, type TestService } from '../support/test-service.js';

/**
 * The short version of bench/hsm-faults.bench.ts (1,000 faults): HSM faults injected under the real adapter while
 * the three dialects are under concurrent load, then cleared; and the real thing, the token's directory taken away
 * under load and put back. docs/reliability-parts/hsm-faults.md has the figures.
 */

const POOL_SIZE = 4;
/** The longest any request may take under faults here (docs/reliability-parts/hsm-faults.md: the bound, loaded). */
const REQUEST_BOUND_MS = 5_000;
/** The bound: the pool heals within 5 s of the fault clearing. */
const HEAL_BOUND_MS = 5_000;

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

/** Runs the load until `healthyMs` after the fault has cleared (or `capMs` in all), then stops it. */
async function loadUntilHealthy(seed: number, healthyMs: number, capMs: number): Promise<void> {
  const started = performance.now();
  await load.run({
    concurrency: 8,
    seed,
    done: () =>
      performance.now() - started > capMs ||
      (faults.clearedAt !== undefined && performance.now() - faults.clearedAt > healthyMs),
  });
}

function expectPoolAtBaseline(): void {
  const stats = service.running.hsm.forTesting().poolStats();
  expect(stats.leased).toBe(0);
  expect(stats.anchor).toBe(true);
  expect(stats.open).toBeLessThanOrEqual(POOL_SIZE);
  // Every pool session ever opened is closed or still held: none leaked on the token.
  expect(stats.sessionsOpened - stats.sessionsClosed - stats.sessionsAbandoned).toBe(stats.open);
}

describe('HSM faults under load', () => {
  it('when 100 faults (every code the issue names) hit the adapter under load in three dialects, then no request hangs, every failure is the retryable error with Retry-After, the pool heals within 5 s, and no key or ciphertext is lost', async () => {
    const before = service.running.hsm.forTesting().poolStats();
    const from = load.outcomes.length;
    faults.arm({ ...FAULT_RUN, seed: 13, probability: 0.05, maxFaults: 100 });

    await loadUntilHealthy(13, 2_000, 40_000);

    const counters = faults.counters;
    expect(counters.faults).toBe(100);
    expect([...counters.faultsByCode.keys()].sort()).toEqual([...FAULT_CODES].sort());
    const summary = summarise(load.outcomes.slice(from), faults.clearedAt as number);
    expect(summary.violations).toEqual([]);
    expect(summary.failed).toBeGreaterThan(0);
    expect(summary.failedRetryable).toBe(summary.failed);
    expect(summary.maxLatencyMs).toBeLessThan(REQUEST_BOUND_MS);
    expect(summary.lastFailureAfterClearMs).toBeLessThan(HEAL_BOUND_MS);
    expect(summary.firstHealthySecond).toBeDefined();
    expect(summary.firstHealthySecond as number).toBeLessThan(HEAL_BOUND_MS / 1000);

    expect(await load.checkAcknowledged()).toEqual([]);
    expectPoolAtBaseline();
    const after = service.running.hsm.forTesting().poolStats();
    expect(after.recoveries).toBeGreaterThan(before.recoveries);
  });

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
  it('when the SoftHSM token directory is moved away under load and back, then requests fail only with the retryable error meanwhile, and succeed again without a restart', async () => {
    const tokens = path.join(path.dirname(service.env.SOFTHSM2_CONF as string), 'tokens');
    const [tokenDir] = readdirSync(tokens);
    const there = path.join(tokens, tokenDir as string);
    const away = `${there}.away`;
    const from = load.outcomes.length;
    let movedAt = 0;
    let restoredAt: number | undefined;
    const started = performance.now();
    const running = load.run({
      concurrency: 8,
      seed: 7,
      done: () =>
        performance.now() - started > 40_000 || (restoredAt !== undefined && performance.now() - restoredAt > 2_000),
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    renameSync(there, away);
    movedAt = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    renameSync(away, there);
    restoredAt = performance.now();
    await running;

    const summary = summarise(load.outcomes.slice(from), restoredAt);
    const during = load.outcomes.slice(from).filter((o) => o.startedAt >= movedAt && o.endedAt <= restoredAt);
    expect(summary.violations).toEqual([]);
    expect(during.length).toBeGreaterThan(0);
    expect(summary.maxLatencyMs).toBeLessThan(REQUEST_BOUND_MS);
    expect(summary.firstHealthySecond).toBeDefined();
    expect(summary.lastFailureAfterClearMs).toBeLessThan(HEAL_BOUND_MS);
    expect(await load.checkAcknowledged()).toEqual([]);
    expectPoolAtBaseline();
  });
});
