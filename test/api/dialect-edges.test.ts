import { randomUUID } from 'node:crypto';
import { CreateKeyCommand, DescribeKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { type AwsRawRequest, signedAwsRequest } from '../support/aws-request.js';
import { rawRequest } from '../support/raw-http.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

/**
 * The edges the three dialects share: names that are also Object.prototype members, headers and parameters given
 * twice, what the signature must cover, and ARNs or URNs that name another region, account or domain.
 */

const REGION = 'eu-west-1';
const P = 'edgeproject';
const JSON_TYPE = { 'content-type': 'application/x-amz-json-1.1' };
/** Names an own-property look-up must not confuse with what every object inherits. */
const PROTOTYPE_NAMES = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf'];
const PLAINTEXT = Buffer.from('tenant secret').toString('base64');
let kms: TestService;
let credentials: { accessKeyId: string; secretAccessKey: string };
let aws: KMSClient;

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION });
  credentials = await kms.running.credentials.create(P);
  aws = new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
});
afterAll(async () => {
  aws.destroy();
  await kms.destroy();
});

/** An AWS operation with a raw JSON body, signed as the SDK signs (the SDK would rebuild the body's objects). */
const awsCall = (operation: string, body: string, more: Partial<AwsRawRequest> = {}) =>
  signedAwsRequest(kms.url, credentials, REGION, {
    headers: { ...JSON_TYPE, 'x-amz-target': `TrentService.${operation}` },
    body,
    ...more,
  });

/** An Alibaba request signed with the SDK's own signer, its parameters in the query string. */
async function alibabaCall(params: Record<string, string>) {
  const query = new URLSearchParams(signedRpcParams(credentials, params)).toString();
  const res = await fetch(`${kms.url}/?${query}`, { method: 'POST' });
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
  return { status: res.status, body: (await res.json()) as any };
}

/** Runs `requests` and checks that none of them made the service log an error (a 500, a stack trace). */
async function withoutErrorLines(requests: () => Promise<void>): Promise<void> {
  const before = kms.log().length;
  await requests();
  expect(kms.log().slice(before)).not.toMatch(/"level":"error"/);
}

describe('an encryption-context key named __proto__, constructor or toString is an ordinary key', () => {
  /** {"<name>":"<value>"} as JSON text: an object literal would set a prototype rather than hold the key. */
  const context = (name: string, value: string) => `{${JSON.stringify(name)}:${JSON.stringify(value)}}`;
  const NAMES = ['__proto__', 'constructor', 'toString', 'hasOwnProperty'];

  it('when Huawei encrypt-data binds {"<name>":"tenant-a"}, then only that context decrypts it', async () => {
    const keyId = await createKey(kms, P, 'proto-huawei');
    for (const name of NAMES) {
      const sealed = await kms.call(P, 'encrypt-data', undefined, {
        rawBody: `{"key_id":"${keyId}","plain_text":"tenant secret","encryption_context":${context(name, 'tenant-a')}}`,
      });
      expect(sealed.status, name).toBe(200);
      const decrypt = (ctx: string) =>
        kms.call(P, 'decrypt-data', undefined, {
          rawBody: `{"cipher_text":"${sealed.body.cipher_text}"${ctx === '' ? '' : `,"encryption_context":${ctx}`}}`,
        });
      const same = await decrypt(context(name, 'tenant-a'));
      expect([same.status, same.body.plain_text], name).toEqual([200, 'tenant secret']);
      for (const other of [context(name, 'tenant-b'), '', '{}']) {
        const refused = await decrypt(other);
        expect([refused.status, refused.body], `${name} ${other}`).toEqual([
          400,
          huaweiErrorBody('KMS.2201', 'Invalid cipher_text.'),
        ]);
      }
    }
  });

  it('when AWS Encrypt binds {"<name>":"tenant-a"}, then only that context decrypts it', async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    for (const name of NAMES) {
      const sealed = await awsCall(
        'Encrypt',
        `{"KeyId":"${keyId}","Plaintext":"${PLAINTEXT}","EncryptionContext":${context(name, 'tenant-a')}}`,
      );
      expect(sealed.status, name).toBe(200);
      const decrypt = (ctx: string) =>
        awsCall(
          'Decrypt',
          `{"CiphertextBlob":"${sealed.body.CiphertextBlob}"${ctx === '' ? '' : `,"EncryptionContext":${ctx}`}}`,
        );
      const same = await decrypt(context(name, 'tenant-a'));
      expect([same.status, same.body.Plaintext], name).toEqual([200, PLAINTEXT]);
      for (const other of [context(name, 'tenant-b'), '', '{}']) {
        const refused = await decrypt(other);
        expect([refused.status, refused.body], `${name} ${other}`).toEqual([
          400,
          { __type: 'InvalidCiphertextException', message: '' },
        ]);
      }
    }
  });

  it('when Alibaba Encrypt binds {"<name>":"tenant-a"}, then only that context decrypts it', async () => {
    const keyId = (await alibabaCall({ Action: 'CreateKey' })).body.KeyMetadata.KeyId as string;
    for (const name of NAMES) {
      const sealed = await alibabaCall({
        Action: 'Encrypt',
        KeyId: keyId,
        Plaintext: PLAINTEXT,
        EncryptionContext: context(name, 'tenant-a'),
      });
      expect(sealed.status, name).toBe(200);
      const decrypt = (ctx: string) =>
        alibabaCall({
          Action: 'Decrypt',
          CiphertextBlob: sealed.body.CiphertextBlob,
          ...(ctx === '' ? {} : { EncryptionContext: ctx }),
        });
      const same = await decrypt(context(name, 'tenant-a'));
      expect([same.status, same.body.Plaintext], name).toEqual([200, PLAINTEXT]);
      for (const other of [context(name, 'tenant-b'), '', '{}']) {
        const refused = await decrypt(other);
        expect([refused.status, refused.body.Code, refused.body.Message], `${name} ${other}`).toEqual([
          400,
          'InvalidParameter',
          'The specified parameter "CiphertextBlob" is not valid: it is not a ciphertext of this service, it was altered, or the EncryptionContext differs from the one it was made with.',
        ]);
      }
    }
  });

  it('when AWS seals under {"__proto__":"tenant-a"}, then Huawei decrypts it with that context and not without', async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const sealed = await awsCall(
      'Encrypt',
      `{"KeyId":"${keyId}","Plaintext":"${PLAINTEXT}","EncryptionContext":{"__proto__":"tenant-a"}}`,
    );
    const decrypt = (ctx: string) =>
      kms.call(P, 'decrypt-data', undefined, {
        rawBody: `{"cipher_text":"${sealed.body.CiphertextBlob}"${ctx === '' ? '' : `,"encryption_context":${ctx}`}}`,
      });
    const same = await decrypt('{"__proto__":"tenant-a"}');
    expect([same.status, same.body.plain_text]).toEqual([200, 'tenant secret']);
    for (const other of ['{"__proto__":"tenant-b"}', '']) {
      expect((await decrypt(other)).body, other).toEqual(huaweiErrorBody('KMS.2201', 'Invalid cipher_text.'));
    }
    const viaAlibaba = await alibabaCall({
      Action: 'Decrypt',
      CiphertextBlob: sealed.body.CiphertextBlob,
      EncryptionContext: '{"__proto__":"tenant-a"}',
    });
    expect([viaAlibaba.status, viaAlibaba.body.Plaintext]).toEqual([200, PLAINTEXT]);
  });
});

describe('operations and values are looked up among the tables own entries only', () => {
  it('when X-Amz-Target names an Object.prototype member, then UnknownOperationException, never a 200 or a 500', async () => {
    await withoutErrorLines(async () => {
      for (const name of PROTOTYPE_NAMES) {
        const res = await awsCall(name, '{}');
        expect([res.status, res.type, res.body], name).toEqual([
          400,
          'UnknownOperationException',
          { __type: 'UnknownOperationException', message: '' },
        ]);
      }
    });
  });

  it('when an AWS KeySpec is an Object.prototype member, then a ValidationException names the enum', async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    await withoutErrorLines(async () => {
      for (const name of PROTOTYPE_NAMES) {
        const dataKey = await awsCall('GenerateDataKey', JSON.stringify({ KeyId: keyId, KeySpec: name }));
        expect([dataKey.status, dataKey.body], name).toEqual([
          400,
          {
            __type: 'ValidationException',
            message: `1 validation error detected: Value '${name}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]`,
          },
        ]);
        const key = await awsCall('CreateKey', JSON.stringify({ KeySpec: name }));
        expect([key.status, key.body.__type], name).toEqual([400, 'ValidationException']);
        expect(key.body.message, name).toMatch(
          new RegExp(`^1 validation error detected: Value '${name}' at 'keySpec' failed to satisfy constraint: `),
        );
      }
    });
  });

  it('when a Huawei action is an Object.prototype member, then KMS.0201, never a 500', async () => {
    await withoutErrorLines(async () => {
      for (const name of PROTOTYPE_NAMES) {
        const res = await kms.call(P, name, {});
        expect([res.status, res.body], name).toEqual([400, huaweiErrorBody('KMS.0201', 'Invalid request URL.')]);
      }
    });
  });

  it('when a Huawei key_spec is an Object.prototype member, then KMS.1902, never a 500', async () => {
    const keyId = await createKey(kms, P, 'proto-spec');
    await withoutErrorLines(async () => {
      for (const name of PROTOTYPE_NAMES) {
        for (const action of ['create-datakey', 'create-datakey-without-plaintext']) {
          const res = await kms.call(P, action, { key_id: keyId, key_spec: name });
          expect([res.status, res.body], `${action} ${name}`).toEqual([
            400,
            huaweiErrorBody('KMS.1902', 'key_spec can only be AES_128 or AES_256.'),
          ]);
        }
      }
    });
  });

  it('when an Alibaba Action, KeySpec or filter is an Object.prototype member, then Alibaba refuses it, never a 500', async () => {
    const keyId = (await alibabaCall({ Action: 'CreateKey' })).body.KeyMetadata.KeyId as string;
    await withoutErrorLines(async () => {
      for (const name of PROTOTYPE_NAMES) {
        const action = await alibabaCall({ Action: name });
        expect([action.status, action.body.Code, action.body.Message], name).toEqual([
          404,
          'InvalidAction.NotFound',
          'Specified api is not found, please check your url and method.',
        ]);
        const spec = await alibabaCall({ Action: 'GenerateDataKey', KeyId: keyId, KeySpec: name });
        expect([spec.status, spec.body.Code, spec.body.Message], name).toEqual([
          400,
          'InvalidParameter',
          'The specified parameter "KeySpec" is not valid: use AES_256 or AES_128.',
        ]);
        const filter = await alibabaCall({ Action: 'ListKeys', Filters: JSON.stringify([{ Key: name, Values: [] }]) });
        expect([filter.status, filter.body.Code], name).toEqual([400, 'InvalidParameter']);
        const value = await alibabaCall({
          Action: 'ListKeys',
          Filters: JSON.stringify([{ Key: 'KeyState', Values: [name] }]),
        });
        expect([value.status, value.body.TotalCount], name).toEqual([200, 0]);
      }
    });
  });
});

describe('what a SigV4 signature must cover', () => {
  it('when X-Amz-Target is left out of SignedHeaders, then InvalidSignatureException, and nothing is done', async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    // Signed as a DescribeKey whose target was not signed, then replayed as ScheduleKeyDeletion.
    const replayed = await awsCall('DescribeKey', JSON.stringify({ KeyId: keyId }), {
      unsigned: ['x-amz-target'],
      alter: (headers) => {
        headers['x-amz-target'] = 'TrentService.ScheduleKeyDeletion';
      },
    });
    expect([replayed.status, replayed.body]).toEqual([
      400,
      {
        __type: 'InvalidSignatureException',
        message: "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
      },
    ]);
    expect((await aws.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.KeyState).toBe('Enabled');
  });

  it('when a signed X-Amz-Target is changed, then the signature no longer matches', async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const changed = await awsCall('DescribeKey', JSON.stringify({ KeyId: keyId }), {
      alter: (headers) => {
        headers['x-amz-target'] = 'TrentService.ScheduleKeyDeletion';
      },
    });
    expect([changed.status, changed.type]).toEqual([400, 'InvalidSignatureException']);
    expect((await aws.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.KeyState).toBe('Enabled');
  });
});

describe('headers and parameters given twice', () => {
  it('when an AWS request repeats Authorization, X-Amz-Date or X-Amz-Target, then IncompleteSignatureException', async () => {
    const forged = `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/20200101/${REGION}/kms/aws4_request, SignedHeaders=host, Signature=00`;
    const authorization = await awsCall('GenerateRandom', '{"NumberOfBytes":8}', {
      alter: (headers) => {
        headers.authorization = [headers.authorization as string, forged];
      },
    });
    const date = await awsCall('GenerateRandom', '{"NumberOfBytes":8}', {
      alter: (headers) => {
        headers['x-amz-date'] = [headers['x-amz-date'] as string, headers['x-amz-date'] as string];
      },
    });
    // Signed over both values as AWS canonicalises repeated headers (joined with ','), then sent as two lines.
    const target = await awsCall('DescribeKey', '{"KeyId":"alias/none"}', {
      headers: { ...JSON_TYPE, 'x-amz-target': 'TrentService.DescribeKey,TrentService.ScheduleKeyDeletion' },
      alter: (headers) => {
        headers['x-amz-target'] = ['TrentService.DescribeKey', 'TrentService.ScheduleKeyDeletion'];
      },
    });
    for (const [res, name] of [
      [authorization, 'Authorization'],
      [date, 'X-Amz-Date'],
      [target, 'X-Amz-Target'],
    ] as const) {
      expect([res.status, res.type, res.body], name).toEqual([
        400,
        'IncompleteSignatureException',
        {
          __type: 'IncompleteSignatureException',
          message: `The '${name}' header must be given once, not repeated.`,
        },
      ]);
    }
  });

  it('when a Huawei request repeats X-Auth-Token, then 403 KMS.0302 says so, even if both are valid', async () => {
    const token = await kms.tokenFor(P);
    const res = await rawRequest(kms.url, {
      path: `/v1.0/${P}/kms/gen-random`,
      headers: { 'content-type': 'application/json', 'x-auth-token': [token, token] },
      body: '{}',
    });
    expect([res.status, JSON.parse(res.text)]).toEqual([
      403,
      huaweiErrorBody('KMS.0302', 'Invalid X-Auth-Token: the header is given more than once.'),
    ]);
    const once = await rawRequest(kms.url, {
      path: `/v1.0/${P}/kms/gen-random`,
      headers: { 'content-type': 'application/json', 'x-auth-token': token },
      body: '{}',
    });
    expect(once.status).toBe(200);
  });

  it('when an Alibaba request repeats a signing parameter, then InvalidParameter names it', async () => {
    const signed = signedRpcParams(credentials, { Action: 'GetRandomPassword' });
    const query = new URLSearchParams(signed).toString();
    for (const name of ['Signature', 'SignatureNonce', 'AccessKeyId', 'Timestamp', 'SignatureMethod']) {
      const again = new URLSearchParams({ [name]: signed[name] as string }).toString();
      for (const [url, init] of [
        [`${kms.url}/?${query}&${again}`, { method: 'POST' }],
        [
          `${kms.url}/?${query}`,
          { method: 'POST', body: again, headers: { 'content-type': 'application/x-www-form-urlencoded' } },
        ],
      ] as const) {
        const res = await fetch(url, init);
        const body = (await res.json()) as { Code: string; Message: string };
        expect([res.status, body.Code, body.Message], name).toEqual([
          400,
          'InvalidParameter',
          `The specified parameter "${name}" is not valid: it is given more than once.`,
        ]);
      }
    }
  });
});

describe('ARNs and URNs of another region, account or domain', () => {
  it("when an AWS ARN names another region or account, then NotFoundException, worded as for a random key's", async () => {
    const keyId = (await aws.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    await awsCall('CreateAlias', JSON.stringify({ AliasName: 'alias/edge-arn', TargetKeyId: keyId }));
    for (const own of [`arn:aws:kms:${REGION}:${P}:key/${keyId}`, `arn:aws:kms:${REGION}:${P}:alias/edge-arn`]) {
      expect((await aws.send(new DescribeKeyCommand({ KeyId: own }))).KeyMetadata?.KeyId, own).toBe(keyId);
    }
    const random = randomUUID();
    const notFound = [
      [random, `Key 'arn:aws:kms:${REGION}:${P}:key/${random}' does not exist`],
      [`arn:aws:kms:${REGION}:${P}:key/${random}`, `Key 'arn:aws:kms:${REGION}:${P}:key/${random}' does not exist`],
      [`arn:aws:kms:us-east-1:${P}:key/${keyId}`, `Key 'arn:aws:kms:us-east-1:${P}:key/${keyId}' does not exist`],
      [
        `arn:aws:kms:${REGION}:otherproject:key/${keyId}`,
        `Key 'arn:aws:kms:${REGION}:otherproject:key/${keyId}' does not exist`,
      ],
      [`arn:aws:kms:us-east-1:${P}:alias/edge-arn`, `Alias arn:aws:kms:us-east-1:${P}:alias/edge-arn is not found.`],
      [`arn:aws:kms:${REGION}:other:alias/edge-arn`, `Alias arn:aws:kms:${REGION}:other:alias/edge-arn is not found.`],
    ];
    for (const [id, message] of notFound) {
      for (const [operation, body] of [
        ['DescribeKey', { KeyId: id }],
        ['Encrypt', { KeyId: id, Plaintext: PLAINTEXT }],
      ] as const) {
        const res = await awsCall(operation, JSON.stringify(body));
        expect([res.status, res.body], `${operation} ${id}`).toEqual([400, { __type: 'NotFoundException', message }]);
      }
    }
  });

  it('when a Huawei alias URN names another region or domain, then KMS.0207, exactly as for a random key', async () => {
    const keyId = await createKey(kms, P, 'edge-urn');
    const own = `kms:${REGION}:${P}:alias:edge-urn`;
    expect((await kms.call(P, 'describe-key', { key_id: own })).body.key_info.key_id).toBe(keyId);
    expect((await kms.call(P, 'describe-key', { key_id: keyId })).body.key_info.domain_id).toBe(P);
    const missing = huaweiErrorBody('KMS.0207', 'The key does not exist.');
    for (const id of [
      randomUUID(),
      `kms:us-east-1:${P}:alias:edge-urn`,
      `kms:${REGION}:otherdomain:alias:edge-urn`,
      `kms::${P}:alias:edge-urn`,
      `kms:${REGION}::alias:edge-urn`,
    ]) {
      for (const [action, body] of [
        ['describe-key', { key_id: id }],
        ['encrypt-data', { key_id: id, plain_text: 'x' }],
        ['create-datakey', { key_id: id }],
      ] as const) {
        const res = await kms.call(P, action, body);
        expect([res.status, res.body], `${action} ${id}`).toEqual([404, missing]);
      }
    }
  });
});
