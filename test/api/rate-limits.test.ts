import { Sha256 } from '@aws-crypto/sha256-js';
import { GenerateRandomCommand, KMSClient, ListKeysCommand } from '@aws-sdk/client-kms';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NewCredential } from '../../src/core/credential.service.js';
import { $Kms, alibabaClient, signedRpcParams } from '../support/alibaba-sdk.js';
import { rawRequest } from '../support/raw-http.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

/**
 * Per-project rate limits, over real HTTP with the dialects' own SDKs where they have one. The limits are low, so
 * that a burst of concurrent requests exceeds them whatever the machine's speed; the assertions count outcomes and
 * bound them by what the elapsed time allows, never by how long anything took.
 */
const CRYPTO_PER_SECOND = 3;
const MANAGEMENT_PER_SECOND = 2;
/** Requests sent at once: many times what a second of either class admits. */
const OFFERED = 20;
const REGION = 'eu-west-1';

let kms: TestService;

beforeAll(async () => {
  kms = await startTestService({
    KMS_REGION: REGION,
    KMS_RATE_LIMIT_CRYPTO_PER_SECOND: String(CRYPTO_PER_SECOND),
    KMS_RATE_LIMIT_MANAGEMENT_PER_SECOND: String(MANAGEMENT_PER_SECOND),
  });
}, 60_000);
afterAll(async () => {
  await kms?.destroy();
});

interface Outcome {
  readonly admitted: boolean;
  readonly status: number;
  readonly code: string;
  readonly retryAfter: string | undefined | null;
}

/**
 * Sends `OFFERED` requests at once and returns their outcomes, checking that the admitted ones are within what the
 * bucket allows: its burst (one second's worth) and the rate over the time the burst took.
 */
async function burst(rate: number, send: () => Promise<Outcome>): Promise<Outcome[]> {
  const started = performance.now();
  const outcomes = await Promise.all(Array.from({ length: OFFERED }, send));
  const seconds = (performance.now() - started) / 1000;
  const admitted = outcomes.filter((o) => o.admitted).length;
  expect(admitted).toBeGreaterThanOrEqual(rate);
  expect(admitted).toBeLessThanOrEqual(rate + Math.ceil(rate * seconds));
  return outcomes.filter((o) => !o.admitted);
}

const huawei = async (projectId: string, action: string, body: unknown, token?: string | null): Promise<Outcome> => {
  const res = await kms.call(projectId, action, body, token === undefined ? {} : { token });
  return {
    admitted: res.status === 200,
    status: res.status,
    code: res.body?.error_code,
    retryAfter: res.headers.get('retry-after'),
  };
};

describe('the Huawei dialect', () => {
  it('when a project sends more cryptographic requests than its limit, then the excess gets 429 APIG.0308 with Retry-After', async () => {
    const refused = await burst(CRYPTO_PER_SECOND, () => huawei('hwbusy', 'gen-random', { random_data_length: '256' }));
    expect(refused.length).toBeGreaterThan(0);
    for (const outcome of refused) {
      expect(outcome).toEqual({ admitted: false, status: 429, code: 'APIG.0308', retryAfter: '1' });
    }
    const res = await kms.call('hwbusy', 'gen-random', { random_data_length: '256' });
    if (res.status === 429) {
      expect(res.body).toEqual(
        huaweiErrorBody('APIG.0308', 'The throttling threshold has been reached: policy user over ratelimit.'),
      );
    }
  });

  it('when one project is throttled, then another project, and the same project’s management requests, are not', async () => {
    await burst(CRYPTO_PER_SECOND, () => huawei('hwnoisy', 'gen-random', { random_data_length: '256' }));
    // At once, before the noisy project's bucket has had time to refill more than a token or two.
    const [quiet, management] = await Promise.all([
      Promise.all(
        Array.from({ length: CRYPTO_PER_SECOND }, () =>
          kms.call('hwquiet', 'gen-random', { random_data_length: '256' }),
        ),
      ),
      kms.call('hwnoisy', 'list-keys', {}),
    ]);
    expect(quiet.map((r) => r.status)).toEqual(Array(CRYPTO_PER_SECOND).fill(200));
    expect(management.status).toBe(200);
  });

  it('when management requests exceed their own, lower limit, then they are throttled too', async () => {
    const refused = await burst(MANAGEMENT_PER_SECOND, () => huawei('hwadmin', 'list-keys', {}));
    expect(refused.map((o) => o.code)).toEqual(Array(refused.length).fill('APIG.0308'));
  });

  it('when requests fail authentication, then they spend nothing of the project’s budget', async () => {
    // A forged token, and a genuine one of another project.
    const otherProject = await kms.tokenFor('hwother');
    const refused = await Promise.all(
      Array.from({ length: OFFERED }, (_, i) =>
        huawei('hwvictim', 'gen-random', { random_data_length: '256' }, i % 2 === 0 ? 'forged' : otherProject),
      ),
    );
    expect(new Set(refused.map((o) => o.status))).toEqual(new Set([403]));
    const genuine = await Promise.all(
      Array.from({ length: CRYPTO_PER_SECOND }, () =>
        kms.call('hwvictim', 'gen-random', { random_data_length: '256' }),
      ),
    );
    expect(genuine.map((r) => r.status)).toEqual(Array(CRYPTO_PER_SECOND).fill(200));
  });
});

describe('the AWS dialect (AWS SDK, no retries)', () => {
  let busy: KMSClient;
  let quiet: KMSClient;
  beforeAll(async () => {
    const client = (credentials: NewCredential) =>
      new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
    busy = client(await kms.running.credentials.create('awsbusy'));
    quiet = client(await kms.running.credentials.create('awsquiet'));
  });
  afterAll(() => {
    busy.destroy();
    quiet.destroy();
  });

  const send = async (client: KMSClient, command: GenerateRandomCommand | ListKeysCommand): Promise<Outcome> => {
    try {
      // biome-ignore lint/suspicious/noExplicitAny: either command, sent the same way
      await client.send(command as any);
      return { admitted: true, status: 200, code: '', retryAfter: undefined };
    } catch (err) {
      const e = err as Error & {
        $metadata?: { httpStatusCode?: number };
        $response?: { headers?: Record<string, string> };
      };
      return {
        admitted: false,
        status: e.$metadata?.httpStatusCode ?? 0,
        code: e.name,
        retryAfter: e.$response?.headers?.['retry-after'],
      };
    }
  };

  it('when a project exceeds its limit, then the excess gets ThrottlingException (400) with Retry-After, and another project does not', async () => {
    const refused = await burst(CRYPTO_PER_SECOND, () => send(busy, new GenerateRandomCommand({ NumberOfBytes: 16 })));
    expect(refused.length).toBeGreaterThan(0);
    for (const outcome of refused) {
      expect(outcome).toEqual({ admitted: false, status: 400, code: 'ThrottlingException', retryAfter: '1' });
    }
    const others = await Promise.all(
      Array.from({ length: CRYPTO_PER_SECOND }, () => send(quiet, new GenerateRandomCommand({ NumberOfBytes: 16 }))),
    );
    expect(others.every((o) => o.admitted)).toBe(true);
    // Management has its own bucket.
    expect((await send(busy, new ListKeysCommand({}))).admitted).toBe(true);
  });

  it('when a project uses two dialects, then they share its budget', async () => {
    await burst(CRYPTO_PER_SECOND, () => huawei('awsshared', 'gen-random', { random_data_length: '256' }));
    const client = new KMSClient({
      endpoint: kms.url,
      region: REGION,
      credentials: await kms.running.credentials.create('awsshared'),
      maxAttempts: 1,
    });
    const outcomes = await Promise.all(
      Array.from({ length: OFFERED }, () => send(client, new GenerateRandomCommand({ NumberOfBytes: 16 }))),
    );
    client.destroy();
    expect(outcomes.some((o) => o.code === 'ThrottlingException')).toBe(true);
  });
});

describe('the Alibaba dialect (Alibaba SDK)', () => {
  it('when a project exceeds its limit, then the excess gets 429 Rejected.Throttling with Retry-After, and another project does not', async () => {
    const credentials = await kms.running.credentials.create('alibusy');
    const client = alibabaClient(kms.url, credentials);
    const refused = await burst(CRYPTO_PER_SECOND, async () => {
      try {
        await client.getRandomPassword(new $Kms.GetRandomPasswordRequest({ passwordLength: '12' }));
        return { admitted: true, status: 200, code: '', retryAfter: undefined };
      } catch (err) {
        const e = err as { message: string; data?: { Code?: string } };
        const status = Number(/code: (\d+)/.exec(e.message)?.[1]);
        return { admitted: false, status, code: e.data?.Code ?? '', retryAfter: undefined };
      }
    });
    expect(refused.length).toBeGreaterThan(0);
    for (const outcome of refused) expect(outcome).toMatchObject({ status: 429, code: 'Rejected.Throttling' });

    // The SDK does not show headers: one request signed as it signs, sent as it sends, for the Retry-After.
    const params = signedRpcParams(credentials, { Action: 'GetRandomPassword', PasswordLength: '12' });
    const res = await rawRequest(kms.url, {
      path: '/',
      headers: { host: new URL(kms.url).host, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(params).toString(),
    });
    if (res.status !== 200) {
      expect({ status: res.status, retryAfter: res.headers['retry-after'] }).toEqual({ status: 429, retryAfter: '1' });
      expect(JSON.parse(res.text)).toMatchObject({ Code: 'Rejected.Throttling', Message: 'QPS Limit Exceeded.' });
    }

    const quiet = alibabaClient(kms.url, await kms.running.credentials.create('aliquiet'));
    const others = await Promise.all(
      Array.from({ length: CRYPTO_PER_SECOND }, () =>
        quiet.getRandomPassword(new $Kms.GetRandomPasswordRequest({ passwordLength: '12' })),
      ),
    );
    expect(others).toHaveLength(CRYPTO_PER_SECOND);
  });
});

describe('the XKS proxy API', () => {
  /** An XKS encrypt request signed as AWS KMS signs it (SigV4, service kms-xks-proxy). */
  async function xksEncrypt(projectId: string, keyId: string, credentials: NewCredential): Promise<Outcome> {
    const url = new URL(kms.url);
    const path = `/xks/${projectId}/kms/xks/v1/keys/${keyId}/encrypt`;
    const body = JSON.stringify({
      requestMetadata: {
        awsPrincipalArn: 'arn:aws:iam::111122223333:role/app',
        kmsOperation: 'Encrypt',
        kmsRequestId: 'r',
      },
      plaintext: Buffer.from('hello').toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    const signer = new SignatureV4({ service: 'kms-xks-proxy', region: REGION, sha256: Sha256, credentials });
    const signed = await signer.sign({
      method: 'POST',
      protocol: 'http:',
      hostname: url.hostname,
      port: Number(url.port),
      path,
      headers: { host: url.host, 'content-type': 'application/json' },
      body,
    });
    const res = await rawRequest(kms.url, { path, headers: signed.headers as Record<string, string>, body });
    const retryAfter = res.headers['retry-after'];
    return {
      admitted: res.status === 200,
      status: res.status,
      code: res.status === 200 ? '' : JSON.parse(res.text).errorName,
      retryAfter: Array.isArray(retryAfter) ? retryAfter.join() : retryAfter,
    };
  }

  it('when a project (a URI path prefix) exceeds its limit, then the excess gets 429 ThrottlingException with Retry-After, and another does not', async () => {
    const busyKey = await createKey(kms, 'xksbusy', 'xks-busy');
    const quietKey = await createKey(kms, 'xksquiet', 'xks-quiet');
    const busy = await kms.running.credentials.create('xksbusy', 'xks');
    const quiet = await kms.running.credentials.create('xksquiet', 'xks');
    const refused = await burst(CRYPTO_PER_SECOND, () => xksEncrypt('xksbusy', busyKey, busy));
    expect(refused.length).toBeGreaterThan(0);
    for (const outcome of refused) {
      expect(outcome).toEqual({ admitted: false, status: 429, code: 'ThrottlingException', retryAfter: '1' });
    }
    const others = await Promise.all(
      Array.from({ length: CRYPTO_PER_SECOND }, () => xksEncrypt('xksquiet', quietKey, quiet)),
    );
    expect(others.map((o) => o.status)).toEqual(Array(CRYPTO_PER_SECOND).fill(200));
  });
});
