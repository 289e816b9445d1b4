import { randomBytes } from 'node:crypto';
import { DecryptCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { answerLate, wrapAsyncEncrypt } from '../support/slow-hsm.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

/**
 * Bounded waiting for HSM sessions (issue 13 item 4), on the real service with asynchronous PKCS#11 calls: one pool
 * session and a 300 ms wait. A slow HSM is the real SoftHSM whose C_Encrypt answers are held back before they reach
 * the adapter, as a network HSM's round trips would be: the session stays leased meanwhile.
 */
const P = 'boundedwaitproject';
const REGION = 'eu-west-1';
const WAIT_MS = 300;
/** Far longer than the wait: a waiter refused only when a session comes back would be refused after this. */
const HSM_ANSWER_MS = 2_500;
const CONCURRENT = 8;

let kms: TestService;
let keyId: string;

beforeAll(async () => {
  kms = await startTestService(
    {
      KMS_REGION: REGION,
      KMS_HSM_ASYNC_CALLS: 'true',
      KMS_HSM_POOL_SIZE: '1',
      KMS_HSM_SESSION_WAIT_MS: String(WAIT_MS),
    },
    { onLog: () => undefined },
  ); // each refusal is logged as an HSM error: kms.log() has them
  keyId = await createKey(kms, P, 'bounded-waiting');
});

afterAll(async () => {
  await kms?.destroy();
});

/** Runs `body` while every asynchronous C_Encrypt of the service's HSM answers `delayMs` late. */
async function withSlowEncrypt<T>(delayMs: number, body: () => Promise<T>): Promise<T> {
  let delayed = 0;
  const restore = wrapAsyncEncrypt(
    kms.running.hsm.forTesting().lib,
    answerLate(delayMs, () => delayed++),
  );
  try {
    const result = await body();
    expect(delayed).toBeGreaterThan(0);
    return result;
  } finally {
    restore();
  }
}

function expectPoolIdle(): void {
  expect(kms.running.hsm.forTesting().poolState).toEqual({ idle: 1, leased: 0, waiting: 0 });
}

describe('bounded waiting for HSM sessions, with asynchronous calls', () => {
  it('when the service starts with KMS_HSM_ASYNC_CALLS=true, then its adapter makes asynchronous calls', () => {
    expect(kms.running.hsm.forTesting().asyncCalls).toBe(true);
  });

  it('when more Huawei encrypt-data requests arrive than a slow HSM can answer within the wait, then the late ones get 503 KMS.0104 with Retry-After quickly, the others succeed, and the pool ends idle', async () => {
    const plainTexts = Array.from({ length: CONCURRENT }, () => randomBytes(2048).toString('hex'));
    const results = await withSlowEncrypt(HSM_ANSWER_MS, () =>
      Promise.all(
        plainTexts.map(async (plain_text) => {
          const started = performance.now();
          const res = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text });
          return { res, plain_text, ms: performance.now() - started };
        }),
      ),
    );

    const ok = results.filter((r) => r.res.status === 200);
    const busy = results.filter((r) => r.res.status === 503);
    expect(ok.length + busy.length).toBe(CONCURRENT);
    // The first request holds the one session for HSM_ANSWER_MS, far beyond the others' wait.
    expect(ok.length).toBeGreaterThanOrEqual(1);
    expect(busy.length).toBeGreaterThanOrEqual(1);
    for (const { res, ms } of busy) {
      expect(res.body.error_code).toBe('KMS.0104');
      expect(res.headers.get('retry-after')).toBe('1');
      // Refused at the wait's deadline (300 ms), before the HSM answered anyone, and far from the request timeout
      // (10 s): generous for a loaded machine.
      expect(ms).toBeLessThan(HSM_ANSWER_MS - 500);
    }
    expectPoolIdle();

    for (const { res, plain_text } of ok) {
      const opened = await kms.call(P, 'decrypt-data', { cipher_text: res.body.cipher_text });
      expect(opened.status).toBe(200);
      expect(opened.body.plain_text).toBe(plain_text);
    }
  });

  it('when AWS Encrypt requests overrun a slow HSM, then the late ones fail with DependencyTimeoutException, the others succeed, and the pool ends idle', async () => {
    const credentials = await kms.running.credentials.create(P);
    const client = new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
    try {
      const plaintexts = Array.from({ length: CONCURRENT }, () => randomBytes(4096));
      const started = performance.now();
      const outcomes = await withSlowEncrypt(HSM_ANSWER_MS, () =>
        Promise.all(
          plaintexts.map((Plaintext) =>
            client.send(new EncryptCommand({ KeyId: keyId, Plaintext })).then(
              (out) => ({ ok: true as const, blob: out.CiphertextBlob as Uint8Array, Plaintext }),
              (err: Error & { $metadata?: { httpStatusCode?: number } }) => ({
                ok: false as const,
                err,
                ms: performance.now() - started,
              }),
            ),
          ),
        ),
      );

      const ok = outcomes.filter((o) => o.ok);
      const busy = outcomes.flatMap((o) => (o.ok ? [] : [o]));
      expect(ok.length).toBeGreaterThanOrEqual(1);
      expect(busy.length).toBeGreaterThanOrEqual(1);
      expect(ok.length + busy.length).toBe(CONCURRENT);
      for (const { err, ms } of busy) {
        expect(err.name).toBe('DependencyTimeoutException');
        expect(err.$metadata?.httpStatusCode).toBe(500);
        expect(ms).toBeLessThan(HSM_ANSWER_MS - 500);
      }
      expectPoolIdle();

      for (const o of ok) {
        const out = await client.send(new DecryptCommand({ CiphertextBlob: o.blob }));
        expect(Buffer.from(out.Plaintext as Uint8Array).equals(o.Plaintext)).toBe(true);
      }
    } finally {
      client.destroy();
    }
  });

  it('when the HSM answers in time, then many concurrent requests on one session all succeed', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: `message ${i}` })),
    );
    expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
    expectPoolIdle();
  });
});
