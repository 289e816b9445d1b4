import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { RandomHealthEvent } from '../../src/core/random-health.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { addSoftHsmToken, createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';
import { type StuckRandom, stuckRandom } from '../support/stuck-random.js';
import { newVersion, openHsmWithRoot, rejectionOf } from './hsm-fixtures.js';

/** Two tokens of one SoftHSM library, as the default HSM and a tenant's key store may be: one health state each. */
let tokenA: TestToken;
let tokenB: TestToken;
let a: GrapheneHsm;
let b: GrapheneHsm;
let stuck: StuckRandom;
const eventsOfA: RandomHealthEvent[] = [];
const aad = Buffer.from('ctx');

beforeAll(async () => {
  tokenA = createTestToken();
  tokenB = addSoftHsmToken(tokenA);
  a = await openHsmWithRoot(tokenA, { onRandomHealth: (e) => eventsOfA.push(e) });
  b = await openHsmWithRoot(tokenB);
  stuck = stuckRandom(a.forTesting().lib);
});
afterAll(async () => {
  stuck?.restore();
  await a?.close();
  await b?.close();
  if (tokenA) removeTestToken(tokenA.dir);
});

function expectHealthRefusal(err: unknown): void {
  expect(err).toBeInstanceOf(KmsError);
  expect((err as KmsError).code).toBe('HsmUnavailable');
  expect((err as KmsError).reported).toBe(true);
  expect((err as KmsError).message).toMatch(/failed its repetition count health test/);
}

describe('GrapheneHsm: the health of its token random number generator', () => {
  it("when one token's generator is stuck, then that adapter refuses random bytes and host-random GCM, the other token's serves on; after the delay and a passing re-test, both serve", async () => {
    const versionA = await newVersion(a, 'key-a');
    const versionB = await newVersion(b, 'key-b');
    expect(a.profile.ivMode).toBe('host-random');
    const sealedBefore = await a.encrypt(versionA, Buffer.from('sealed before'), aad);

    stuck.stick(0x00, a.forTesting().slot);
    expectHealthRefusal(await rejectionOf(a.generateRandom(64)));
    expectHealthRefusal(await rejectionOf(a.encrypt(versionA, Buffer.from('data key'), aad)));
    expectHealthRefusal(await rejectionOf(a.sealSecret(Buffer.from('a PIN'), aad)));
    // Decryption needs no random bytes: it goes on.
    const opened = await a.decrypt(versionA, sealedBefore.iv, sealedBefore.ciphertextWithTag, aad);
    expect(opened.toString()).toBe('sealed before');
    stuck.heal();
    expect(eventsOfA).toEqual([{ kind: 'failed', test: 'repetition count', retestInMs: 1000 }]);

    expect(await b.generateRandom(64)).toHaveLength(64);
    const sealed = await b.encrypt(versionB, Buffer.from('data key'), aad);
    expect((await b.decrypt(versionB, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe('data key');

    // Well again: once the delay has passed, the first draw re-tests and is served. (That nothing is drawn during the
    // delay is shown with a clock of its own in test/unit/random-health.test.ts.)
    await sleep(1100);
    const bytes = await a.generateRandom(1024);
    expect(bytes.some((x) => x !== 0)).toBe(true);
    const again = await a.encrypt(versionA, Buffer.from('data key'), aad);
    expect((await a.decrypt(versionA, again.iv, again.ciphertextWithTag, aad)).toString()).toBe('data key');
    expect(eventsOfA.map((e) => e.kind)).toEqual(['failed', 'recovered']);
  });
});
