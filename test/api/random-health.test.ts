import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { signedAwsRequest } from '../support/aws-request.js';
import { type StuckRandom, stuckRandom } from '../support/stuck-random.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const REGION = 'eu-west-1';
const P = 'rnghealthproject';
const HEALTH_MESSAGE = /^The HSM's random number generator failed its repetition count health test/;
const FAILED_LOG = 'the HSM random number generator failed its health test';
const RECOVERED_LOG = 'the HSM random number generator passed its health test again';

let kms: TestService;
let stuck: StuckRandom;
let credentials: { accessKeyId: string; secretAccessKey: string };
let keyId: string;

const aws = (operation: string, body: unknown) =>
  signedAwsRequest(kms.url, credentials, REGION, {
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${operation}` },
    body: JSON.stringify(body),
  });

/** Every request that needs random bytes, in the three dialects: status, error message, Retry-After. */
async function everyRandomRequest() {
  const huawei = async (action: string, body: unknown) => {
    const res = await kms.call(P, action, body);
    return {
      status: res.status,
      message: res.body?.error_msg,
      retryAfter: res.headers.get('retry-after') ?? undefined,
    };
  };
  const signed = async (operation: string, body: unknown) => {
    const res = await aws(operation, body);
    return { status: res.status, message: res.body?.message, retryAfter: res.headers['retry-after'] };
  };
  const alibaba = async (action: string) => {
    const params = new URLSearchParams(signedRpcParams(credentials, { Action: action })).toString();
    const res = await fetch(`${kms.url}/?${params}`, { method: 'POST' });
    const body = (await res.json()) as { Message?: string };
    return { status: res.status, message: body.Message, retryAfter: res.headers.get('retry-after') ?? undefined };
  };
  return {
    'gen-random': await huawei('gen-random', { random_data_length: '512' }),
    'create-datakey': await huawei('create-datakey', { key_id: keyId, datakey_length: '512' }),
    'encrypt-data': await huawei('encrypt-data', { key_id: keyId, plain_text: 'an IV is drawn for this' }),
    GenerateRandom: await signed('GenerateRandom', { NumberOfBytes: 64 }),
    GenerateDataKey: await signed('GenerateDataKey', { KeyId: keyId, NumberOfBytes: 32 }),
    'Alibaba GetRandomPassword': await alibaba('GetRandomPassword'),
  };
}

const occurrences = (text: string, what: string) => text.split(what).length - 1;

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION, KMS_LOG_LEVEL: 'warn' }, { onLog: () => {} });
  credentials = await kms.running.credentials.create(P);
  keyId = await createKey(kms, P, 'rng-health');
  stuck = stuckRandom(kms.running.hsm.forTesting().lib);
});
afterAll(async () => {
  stuck?.restore();
  await kms?.destroy();
});

describe('randomness health through the HTTP API', () => {
  it('when the HSM generator is stuck, then every request needing random bytes gets the retryable error with the health-test message, logged once; when it is well again, they are served after the re-test', async () => {
    const healthy = await everyRandomRequest();
    for (const [action, res] of Object.entries(healthy)) expect(res.status, action).toBe(200);

    stuck.stick(0x00);
    const failing = await everyRandomRequest();
    for (const [action, res] of Object.entries(failing)) {
      // Huawei's KMS.0104 and Alibaba's ServiceUnavailableTemporary are 503s, AWS's DependencyTimeoutException a 500:
      // all retryable, all with Retry-After.
      expect(res.status, action).toBe(action.startsWith('Generate') ? 500 : 503);
      expect(res.message, action).toMatch(HEALTH_MESSAGE);
      expect(res.retryAfter, action).toBe('1');
    }
    // Once failed, the source is left alone until its re-test is due: refusals cost no C_GenerateRandom.
    // A re-test (one call) is due a second after the last failure: a slow machine may reach one or more meanwhile.
    const callsWhileFailed = stuck.calls;
    const refusingSince = performance.now();
    const refused = await everyRandomRequest();
    const retestsDue = 1 + Math.floor((performance.now() - refusingSince) / 1000);
    for (const [action, res] of Object.entries(refused)) expect(res.message, action).toMatch(HEALTH_MESSAGE);
    expect(stuck.calls - callsWhileFailed).toBeLessThanOrEqual(retestsDue);

    expect(occurrences(kms.log(), FAILED_LOG)).toBe(1);
    expect(kms.log()).not.toContain('request failed');

    stuck.heal();
    // The re-test is due 1 s after the failure (or after a failed re-test); bounded generously for a loaded machine.
    const deadline = Date.now() + 15_000;
    let served = await kms.call(P, 'gen-random', { random_data_length: '512' });
    while (served.status !== 200 && Date.now() < deadline) {
      await sleep(100);
      served = await kms.call(P, 'gen-random', { random_data_length: '512' });
    }
    expect(served.status).toBe(200);
    expect(served.body.random_data).toMatch(/^[0-9A-F]{128}$/);
    expect(served.body.random_data).not.toMatch(/^0+$/);

    const recovered = await everyRandomRequest();
    for (const [action, res] of Object.entries(recovered)) expect(res.status, action).toBe(200);
    expect(occurrences(kms.log(), FAILED_LOG)).toBe(1);
    expect(occurrences(kms.log(), RECOVERED_LOG)).toBe(1);
  });
});
