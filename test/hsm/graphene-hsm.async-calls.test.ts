import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CmkVersionRef } from '../../src/core/ports.js';
import type { GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { answerLate, type EncryptCall, wrapAsyncEncrypt } from '../support/slow-hsm.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';
import { newVersion, openHsmWithRoot, rejectionOf } from './hsm-fixtures.js';

/**
 * What the asynchronous path (KMS_HSM_ASYNC_CALLS) keeps of the synchronous one's guarantees when the module fails
 * or answers late while a call is in flight. Faults go through the real library: a session really closed, a real
 * tag failure; only the moment a callback reaches the adapter is moved.
 */
describe('GrapheneHsm with asynchronous calls', () => {
  let token: TestToken;
  let hsm: GrapheneHsm;
  let key: CmkVersionRef;
  const aad = Buffer.from('ctx');

  beforeAll(async () => {
    token = createTestToken();
    hsm = await openHsmWithRoot(token, { asyncCalls: true, poolSize: 1, sessionWaitMs: 5_000 });
    key = await newVersion(hsm, '99999999-9999-9999-9999-999999999999');
  });

  afterAll(async () => {
    await hsm?.close();
    if (token) removeTestToken(token.dir);
  });

  /** Runs `body` with the library's asynchronous C_Encrypt replaced by `wrap(real)`, then restores it. */
  async function withEncrypt<T>(wrap: (real: EncryptCall) => EncryptCall, body: () => Promise<T>): Promise<T> {
    const restore = wrapAsyncEncrypt(hsm.forTesting().lib, wrap);
    try {
      return await body();
    } finally {
      restore();
    }
  }

  it('when the session fails while its C_Encrypt is in flight, then it is discarded and the operation succeeds once retried on a new session', async () => {
    const { lib } = hsm.forTesting();
    const sessions: Buffer[] = [];
    let calls = 0;
    const sealed = await withEncrypt(
      (real) =>
        (...args) => {
          // The first call's session dies under it: the module answers CKR_SESSION_HANDLE_INVALID in the callback.
          sessions.push(args[0] as Buffer);
          if (calls++ === 0) lib.C_CloseSession(args[0] as Buffer);
          return real(...args);
        },
      () => hsm.encrypt(key, Buffer.from('retried once'), aad),
    );
    expect(calls).toBe(2);
    expect((await hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe('retried once');
    const [dead, fresh] = sessions as [Buffer, Buffer];
    expect(dead).toBeDefined();
    expect(hsm.forTesting().idleSessions).toEqual([fresh]);
    expect(hsm.forTesting().poolState).toEqual({ idle: 1, leased: 0, waiting: 0 });
  });

  it('when an asynchronous C_Decrypt fails on the tag, then the answer is InvalidCiphertext and the session is discarded, not reused', async () => {
    const sealed = await hsm.encrypt(key, Buffer.from('tagged'), aad);
    const [session] = hsm.forTesting().idleSessions;
    const err = await rejectionOf(hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, Buffer.from('other')));
    expect(err).toMatchObject({ code: 'InvalidCiphertext', message: 'The ciphertext is invalid.' });
    expect(hsm.forTesting().poolState).toEqual({ idle: 0, leased: 0, waiting: 0 });
    expect((await hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad)).toString()).toBe('tagged');
    expect(hsm.forTesting().idleSessions.map((s) => s.toString('hex'))).not.toContain(session?.toString('hex'));
  });

  it('when a caller finds the one session busy, then it waits for it and both operations succeed in order', async () => {
    const order: string[] = [];
    await withEncrypt(answerLate(50), async () => {
      const first = hsm.encrypt(key, Buffer.from('first'), aad).then(() => order.push('first'));
      const second = hsm.encrypt(key, Buffer.from('second'), aad).then(() => order.push('second'));
      expect(hsm.forTesting().poolState).toEqual({ idle: 0, leased: 1, waiting: 1 });
      await Promise.all([first, second]);
    });
    expect(order).toEqual(['first', 'second']);
    expect(hsm.forTesting().poolState).toEqual({ idle: 1, leased: 0, waiting: 0 });
  });

  it('when the adapter is closed while a call is in flight, then close waits for its answer, the call completes, and waiters are refused', async () => {
    const answerMs = 300;
    let calls = 0;
    await withEncrypt(
      answerLate(answerMs, () => calls++),
      async () => {
        const inFlight = hsm.encrypt(key, Buffer.from('in flight'), aad);
        const waiting = rejectionOf(hsm.encrypt(key, Buffer.from('waiting'), aad));
        const closing = performance.now();
        await hsm.close();
        // The library is finalized only after the module answered: finalizing under a running call is undefined.
        expect(performance.now() - closing).toBeGreaterThanOrEqual(answerMs - 50);
        expect((await inFlight).ciphertextWithTag).toHaveLength(9 + 16);
        expect(await waiting).toMatchObject({ code: 'HsmUnavailable', message: 'The HSM adapter is closed.' });
      },
    );
    expect(calls).toBe(1);
  });
});
