import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { startTestService, type TestService } from '../support/test-service.js';

// A file of its own: one SoftHSM token per test process (PKCS#11 is initialised once per process).
let kms: TestService;
let credentials: { accessKeyId: string; secretAccessKey: string };

beforeAll(async () => {
  kms = await startTestService({ KMS_ALIBABA_PATH: '/kms/alibaba' });
  credentials = await kms.running.credentials.create('alibabamount');
});
afterAll(async () => {
  await kms.destroy();
});

/** A GetRandomPassword request signed with the SDK's signer, sent to `path` as a query string or a form body. */
async function getRandomPassword(path: string, via: 'query' | 'form') {
  const params = signedRpcParams(credentials, { Action: 'GetRandomPassword' });
  const encoded = new URLSearchParams(params).toString();
  const res = await fetch(`${kms.url}${path}${via === 'query' ? `?${encoded}` : ''}`, {
    method: 'POST',
    ...(via === 'form' ? { body: encoded, headers: { 'content-type': 'application/x-www-form-urlencoded' } } : {}),
  });
  // biome-ignore lint/suspicious/noExplicitAny: response fields are asserted by name
  return { status: res.status, body: (await res.json()) as any };
}

describe('where the dialect is mounted', () => {
  it('when KMS_ALIBABA_PATH names another path, then Alibaba requests are served there and / is left to the others', async () => {
    const there = await getRandomPassword('/kms/alibaba', 'query');
    expect(there.status).toBe(200);
    expect(there.body.RandomPassword).toHaveLength(32);
    expect((await getRandomPassword('/kms/alibaba', 'form')).status).toBe(200);
    // On / an Action means nothing any more: the Huawei dialect's unknown-URL answer.
    const root = await getRandomPassword('/', 'query');
    expect(root.status).toBe(400);
    expect(root.body.error?.error_code).toBe('KMS.0201');
  });
});
