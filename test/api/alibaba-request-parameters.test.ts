import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { startTestService, type TestService } from '../support/test-service.js';

/**
 * Every parameter of each offered Alibaba operation is honoured or refused with an Alibaba error; a parameter the
 * operation does not take is refused, never ignored.
 */
const P = 'alibabaparams';
let kms: TestService;
let credentials: { accessKeyId: string; secretAccessKey: string };
let keyId: string;

beforeAll(async () => {
  kms = await startTestService();
  credentials = await kms.running.credentials.create(P);
  keyId = (await kms.running.services.keys.create({ projectId: P, alias: '', description: '' })).id;
});
afterAll(async () => {
  await kms.destroy();
});

/** A form POST signed with the SDK's own signer, as @alicloud/kms20160120 sends it. */
async function call(params: Record<string, string>) {
  const body = new URLSearchParams(signedRpcParams(credentials, params)).toString();
  const res = await fetch(`${kms.url}/`, {
    method: 'POST',
    body,
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
  return { status: res.status, body: (await res.json()) as any };
}

async function expectError(params: Record<string, string>, code: string, message: string, status = 400) {
  const res = await call(params);
  expect({ status: res.status, code: res.body.Code, message: res.body.Message }).toEqual({ status, code, message });
}

const notTaken = (name: string) =>
  `The specified parameter "${name}" is not valid: this action does not take it, and this service refuses what it does not understand.`;

describe('parameters an operation does not take', () => {
  it('when Encrypt is given a parameter no operation has, then InvalidParameter names it', async () => {
    await expectError(
      { Action: 'Encrypt', KeyId: keyId, Plaintext: 'x', AdditionalAuthenticatedData: 'a' },
      'InvalidParameter',
      notTaken('AdditionalAuthenticatedData'),
    );
  });

  it("when an operation is given another operation's parameter, then InvalidParameter names it", async () => {
    await expectError(
      { Action: 'Decrypt', CiphertextBlob: 'AAAA', Plaintext: 'x' },
      'InvalidParameter',
      notTaken('Plaintext'),
    );
    await expectError({ Action: 'DescribeRegions', KeyId: keyId }, 'InvalidParameter', notTaken('KeyId'));
    await expectError(
      { Action: 'GetRandomPassword', PasswordLength: '16', NumberOfBytes: '16' },
      'InvalidParameter',
      notTaken('NumberOfBytes'),
    );
  });

  it('when an unknown parameter is empty, then it counts as absent, as the SDKs send unset fields', async () => {
    const res = await call({ Action: 'GetRandomPassword', PasswordLength: '16', Unset: '' });
    expect(res.status).toBe(200);
    expect(res.body.RandomPassword).toHaveLength(16);
  });

  it('when EncryptionContext is flattened into EncryptionContext.<key> entries, then they are its own', async () => {
    const sealed = await call({ Action: 'Encrypt', KeyId: keyId, Plaintext: 'ctx', 'EncryptionContext.k': 'v' });
    expect(sealed.status).toBe(200);
    const opened = await call({
      Action: 'Decrypt',
      CiphertextBlob: sealed.body.CiphertextBlob,
      'EncryptionContext.k': 'v',
    });
    expect(opened.body.Plaintext).toBe('ctx');
  });
});

describe('dotted parameter names', () => {
  it('when a dotted name is not an entry of a map the action takes, then InvalidParameter names it and nothing is made', async () => {
    const keysBefore = (await kms.running.services.keys.list(P, { offset: 0, limit: 1000 })).total;
    for (const [params, name] of [
      [{ Action: 'CreateKey', 'Tags.1.TagKey': 'env', 'Tags.1.TagValue': 'prod' }, 'Tags.1.TagKey'],
      [{ Action: 'CreateKey', 'Policy.Statement': 'x' }, 'Policy.Statement'],
      [{ Action: 'Encrypt', KeyId: keyId, Plaintext: 'x', 'KeyId.bogus': '1' }, 'KeyId.bogus'],
      [{ Action: 'Encrypt', KeyId: keyId, Plaintext: 'x', 'DryRun.x': 'true' }, 'DryRun.x'],
      [{ Action: 'GetRandomPassword', 'EncryptionContext.k': 'v' }, 'EncryptionContext.k'],
    ] as const) {
      await expectError(params, 'InvalidParameter', notTaken(name));
    }
    expect((await kms.running.services.keys.list(P, { offset: 0, limit: 1000 })).total).toBe(keysBefore);
  });
});

describe('documented parameters of features this service does not have', () => {
  it('when DryRun is true, then the crypto operations answer UnsupportedOperation; false runs them', async () => {
    const message = 'This action is not supported: DryRun mode.';
    await expectError(
      { Action: 'Encrypt', KeyId: keyId, Plaintext: 'x', DryRun: 'true' },
      'UnsupportedOperation',
      message,
    );
    await expectError({ Action: 'GenerateDataKey', KeyId: keyId, DryRun: 'true' }, 'UnsupportedOperation', message);
    await expectError({ Action: 'Decrypt', CiphertextBlob: 'AAAA', DryRun: 'true' }, 'UnsupportedOperation', message);
    const sealed = await call({ Action: 'Encrypt', KeyId: keyId, Plaintext: 'x', DryRun: 'false' });
    expect(sealed.status).toBe(200);
  });

  it('when CreateKey is given a policy or tags, then UnsupportedOperation and no key is made', async () => {
    const before = await kms.running.services.keys.count(P);
    await expectError(
      { Action: 'CreateKey', Policy: '{}' },
      'UnsupportedOperation',
      "This action is not supported: key policies: access is by the project's access keys.",
    );
    await expectError(
      { Action: 'CreateKey', Tags: '[{"TagKey":"a","TagValue":"b"}]' },
      'UnsupportedOperation',
      'This action is not supported: tags.',
    );
    expect(await kms.running.services.keys.count(P)).toBe(before);
  });

  it('when a request carries a SecurityToken, then UnsupportedOperation: STS credentials are not offered', async () => {
    await expectError(
      { Action: 'DescribeRegions', SecurityToken: 'sts-token' },
      'UnsupportedOperation',
      'This action is not supported: temporary (STS) credentials: sign with an access key of the project.',
    );
  });

  it("when RegionId is the service's region, then it is accepted; another region is InvalidParameter", async () => {
    expect((await call({ Action: 'DescribeRegions', RegionId: 'local-1' })).status).toBe(200);
    await expectError(
      { Action: 'DescribeRegions', RegionId: 'cn-hangzhou' },
      'InvalidParameter',
      'The specified parameter "RegionId" is not valid: this service serves the region local-1.',
    );
  });
});
