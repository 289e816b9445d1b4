import { createHash, randomBytes } from 'node:crypto';
import { DecryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { $Kms, type AlibabaKmsClient, alibabaClient } from '../support/alibaba-sdk.js';
import {
  createKey,
  type HuaweiResponse,
  huaweiErrorBody,
  startTestService,
  type TestService,
} from '../support/test-service.js';

/**
 * Every field of Huawei's SDK body models (huawei-sdk.md §A.3) is honoured or refused with a clear KMS error, never
 * dropped: additional_authenticated_data is bound into the ciphertext beside encryption_context.
 */
const P = 'huaweisdkfields';
let kms: TestService;
let keyId: string;
let otherKeyId: string;

beforeAll(async () => {
  kms = await startTestService();
  keyId = await createKey(kms, P, 'sdk-fields');
  otherKeyId = await createKey(kms, P, 'sdk-fields-other');
});
afterAll(async () => {
  await kms.destroy();
});

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

function expectError(res: HuaweiResponse, code: string, message: string, status = 400): void {
  expect({ status: res.status, body: res.body }).toEqual({
    status,
    body: huaweiErrorBody(code, message),
  });
}

const INVALID_CIPHER_TEXT = ['KMS.2201', 'Invalid cipher_text.'] as const;

/** A binding as a request body carries it: nothing, a context, additional data, or both. */
type Binding = { encryption_context?: Record<string, string>; additional_authenticated_data?: string };

/**
 * The six actions that bind a ciphertext, each as a "seal" that returns a blob and an "open" that decrypts it with
 * a binding and returns the response.
 */
const SEALERS: Record<string, (binding: Binding) => Promise<{ open: (b: Binding) => Promise<HuaweiResponse> }>> = {
  'create-datakey': async (binding) => {
    const res = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256', ...binding });
    expect(res.status).toBe(200);
    return { open: (b) => openDataKey(res.body.cipher_text, 32, b, res.body.plain_text) };
  },
  'create-datakey-without-plaintext': async (binding) => {
    const res = await kms.call(P, 'create-datakey-without-plaintext', { key_id: keyId, ...binding });
    expect(res.status).toBe(200);
    return { open: (b) => openDataKey(res.body.cipher_text, 64, b) };
  },
  'encrypt-datakey': async (binding) => {
    const dek = randomBytes(32);
    const plain = Buffer.concat([dek, sha256(dek)]).toString('hex');
    const res = await kms.call(P, 'encrypt-datakey', {
      key_id: keyId,
      plain_text: plain,
      datakey_plain_length: '32',
      ...binding,
    });
    expect(res.status).toBe(200);
    return { open: (b) => openDataKey(res.body.cipher_text, 32, b, dek.toString('hex').toUpperCase()) };
  },
  'encrypt-data': async (binding) => {
    const res = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'bound text', ...binding });
    expect(res.status).toBe(200);
    return {
      open: async (b) => {
        const opened = await kms.call(P, 'decrypt-data', { cipher_text: res.body.cipher_text, ...b });
        if (opened.status === 200) expect(opened.body.plain_text).toBe('bound text');
        return opened;
      },
    };
  },
};

/** decrypt-datakey of a blob; checks the key when it opens and `expected` is known. */
async function openDataKey(cipherText: string, length: number, binding: Binding, expected?: string) {
  const res = await kms.call(P, 'decrypt-datakey', {
    key_id: keyId,
    cipher_text: cipherText,
    datakey_cipher_length: String(length),
    ...binding,
  });
  if (res.status === 200 && expected !== undefined) expect(res.body.data_key).toBe(expected);
  return res;
}

describe('additional_authenticated_data', () => {
  describe.each(Object.keys(SEALERS))('%s', (action) => {
    const seal = SEALERS[action] as (typeof SEALERS)[string];

    it('when it is given, then the blob opens with the same value and with nothing else', async () => {
      const sealed = await seal({ additional_authenticated_data: 'tenant-a' });
      expect((await sealed.open({ additional_authenticated_data: 'tenant-a' })).status).toBe(200);
      for (const other of [
        {},
        { additional_authenticated_data: 'tenant-b' },
        { additional_authenticated_data: 'tenant-a ' },
        { encryption_context: { additional_authenticated_data: 'tenant-a' } },
      ]) {
        expectError(await sealed.open(other), ...INVALID_CIPHER_TEXT);
      }
    });

    it('when it is given with an encryption_context, then both are needed to open the blob', async () => {
      const both = { encryption_context: { app: 'x' }, additional_authenticated_data: 'x' };
      const sealed = await seal(both);
      expect((await sealed.open(both)).status).toBe(200);
      expectError(await sealed.open({ encryption_context: { app: 'x' } }), ...INVALID_CIPHER_TEXT);
      expectError(await sealed.open({ additional_authenticated_data: 'x' }), ...INVALID_CIPHER_TEXT);
    });

    it('when the blob is made without it, then it opens without it or with an empty string, and not with a value', async () => {
      const sealed = await seal({});
      expect((await sealed.open({})).status).toBe(200);
      expect((await sealed.open({ additional_authenticated_data: '' })).status).toBe(200);
      expectError(await sealed.open({ additional_authenticated_data: 'x' }), ...INVALID_CIPHER_TEXT);
    });
  });

  it('when a context is bound, then no additional data stands in for it, and the other way round', async () => {
    const byContext = await SEALERS['encrypt-data']?.({ encryption_context: { x: '' } });
    expectError(
      (await byContext?.open({ additional_authenticated_data: 'x' })) as HuaweiResponse,
      ...INVALID_CIPHER_TEXT,
    );
    const byData = await SEALERS['encrypt-data']?.({ additional_authenticated_data: 'x' });
    for (const context of [{ x: '' }, { '': 'x' }, { x: 'x' }, {}] as Record<string, string>[]) {
      expectError((await byData?.open({ encryption_context: context })) as HuaweiResponse, ...INVALID_CIPHER_TEXT);
    }
  });

  it('when it is 128 bytes of UTF-8, then it is bound; at 129 bytes every action answers KMS.0308', async () => {
    const at128 = `é${'y'.repeat(126)}`;
    const sealed = await SEALERS['create-datakey']?.({ additional_authenticated_data: at128 });
    expect((await sealed?.open({ additional_authenticated_data: at128 }))?.status).toBe(200);
    const tooLong = { additional_authenticated_data: `${at128}y` };
    const message = 'Invalid parameter: additional_authenticated_data must be at most 128 bytes of UTF-8.';
    const blob = (await kms.call(P, 'create-datakey', { key_id: keyId })).body.cipher_text;
    const text = (await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 't' })).body.cipher_text;
    const dek = randomBytes(32);
    const bodies: [string, object][] = [
      ['create-datakey', { key_id: keyId }],
      ['create-datakey-without-plaintext', { key_id: keyId }],
      [
        'encrypt-datakey',
        { key_id: keyId, plain_text: Buffer.concat([dek, sha256(dek)]).toString('hex'), datakey_plain_length: '32' },
      ],
      ['decrypt-datakey', { key_id: keyId, cipher_text: blob, datakey_cipher_length: '64' }],
      ['encrypt-data', { key_id: keyId, plain_text: 't' }],
      ['decrypt-data', { cipher_text: text }],
    ];
    for (const [action, body] of bodies)
      expectError(await kms.call(P, action, { ...body, ...tooLong }), 'KMS.0308', message);
  });

  it('when it is not a string, then the action answers KMS.0308 naming the field', async () => {
    const res = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 't', additional_authenticated_data: 1 });
    expectError(res, 'KMS.0308', 'Invalid parameter: additional_authenticated_data.');
  });

  it("when the body is the one Huawei's Python SDK sends, then it round-trips with its additional data", async () => {
    // simplejson.dumps with ensure_ascii, as captured on the wire (huawei-sdk.md §A.3).
    const rawBody = `{"key_id": "${keyId}", "plain_text": "h\\u00e9llo", "additional_authenticated_data": "a"}`;
    const sealed = await kms.call(P, 'encrypt-data', undefined, { rawBody });
    expect(sealed.status).toBe(200);
    const cipherText = sealed.body.cipher_text as string;
    const opened = await kms.call(P, 'decrypt-data', undefined, {
      rawBody: `{"cipher_text": "${cipherText}", "key_id": "${keyId}", "additional_authenticated_data": "a"}`,
    });
    expect(opened.body).toEqual({
      key_id: keyId,
      plain_text: 'héllo',
      plain_text_base64: Buffer.from('héllo').toString('base64'),
    });
    const without = await kms.call(P, 'decrypt-data', undefined, { rawBody: `{"cipher_text": "${cipherText}"}` });
    expectError(without, ...INVALID_CIPHER_TEXT);
  });

  it('when a blob with additional data is decrypted through AWS or Alibaba, then it fails as a wrong context would', async () => {
    const credentials = await kms.running.credentials.create(P);
    const sealed = await kms.call(P, 'encrypt-data', {
      key_id: keyId,
      plain_text: 'only with aad',
      additional_authenticated_data: 'a',
    });
    const aws = new KMSClient({ endpoint: kms.url, region: 'local-1', credentials, maxAttempts: 1 });
    await expect(
      aws.send(new DecryptCommand({ CiphertextBlob: Buffer.from(sealed.body.cipher_text, 'base64') })),
    ).rejects.toMatchObject({ name: 'InvalidCiphertextException' });
    aws.destroy();
    const alibaba: AlibabaKmsClient = alibabaClient(kms.url, credentials);
    await expect(
      alibaba.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.body.cipher_text })),
    ).rejects.toMatchObject({ data: { Code: 'InvalidParameter' } });
  });
});

describe('the other fields of the SDK body models', () => {
  const PIN_REFUSED = 'Invalid parameter: pin and pin_type are not supported: no key of this service has a PIN.';

  it.each([
    ['create-datakey', () => ({ key_id: keyId })],
    ['create-datakey-without-plaintext', () => ({ key_id: keyId })],
    [
      'encrypt-datakey',
      () => {
        const dek = randomBytes(16);
        return {
          key_id: keyId,
          plain_text: Buffer.concat([dek, sha256(dek)]).toString('hex'),
          datakey_plain_length: '16',
        };
      },
    ],
  ])('when %s is given pin or pin_type, then it answers KMS.0308 and seals nothing', async (action, body) => {
    for (const pin of [{ pin: '123456' }, { pin_type: 'PlainText' }, { pin: 'x', pin_type: 'CipherText' }]) {
      const res = await kms.call(P, action, { ...body(), ...pin });
      expectError(res, 'KMS.0308', PIN_REFUSED);
      expect(JSON.stringify(res.body)).not.toContain('123456');
    }
  });

  it('when encrypt-datakey is given key_spec, then it answers KMS.0308: SM2 and RSA are asymmetric keys', async () => {
    const dek = randomBytes(16);
    const res = await kms.call(P, 'encrypt-datakey', {
      key_id: keyId,
      plain_text: Buffer.concat([dek, sha256(dek)]).toString('hex'),
      datakey_plain_length: '16',
      key_spec: 'RSA',
    });
    expectError(
      res,
      'KMS.0308',
      'Invalid parameter: key_spec (SM2, RSA) applies to asymmetric keys; every key of this service is AES_256.',
    );
  });

  it('when encrypt-data or decrypt-data names SYMMETRIC_DEFAULT, then it works; any other algorithm is KMS.0308', async () => {
    const sealed = await kms.call(P, 'encrypt-data', {
      key_id: keyId,
      plain_text: 'alg',
      encryption_algorithm: 'SYMMETRIC_DEFAULT',
    });
    expect(sealed.status).toBe(200);
    const cipherText = sealed.body.cipher_text;
    const opened = await kms.call(P, 'decrypt-data', {
      cipher_text: cipherText,
      encryption_algorithm: 'SYMMETRIC_DEFAULT',
    });
    expect(opened.body.plain_text).toBe('alg');
    const message =
      'Invalid parameter: encryption_algorithm must be SYMMETRIC_DEFAULT, the only algorithm of AES_256 keys.';
    for (const algorithm of ['RSAES_OAEP_SHA_256', 'SM2_ENCRYPT', '']) {
      expectError(
        await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'alg', encryption_algorithm: algorithm }),
        'KMS.0308',
        message,
      );
      expectError(
        await kms.call(P, 'decrypt-data', { cipher_text: cipherText, encryption_algorithm: algorithm }),
        'KMS.0308',
        message,
      );
    }
  });

  it('when decrypt-data names the key of the blob, then it opens; another key is refused with KMS.2201', async () => {
    const cipherText = (await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'mine' })).body.cipher_text;
    expect((await kms.call(P, 'decrypt-data', { cipher_text: cipherText, key_id: keyId })).body.plain_text).toBe(
      'mine',
    );
    expectError(
      await kms.call(P, 'decrypt-data', { cipher_text: cipherText, key_id: otherKeyId }),
      'KMS.2201',
      'The cipher_text was not made with the key given in key_id.',
    );
    expectError(
      await kms.call(P, 'decrypt-data', { cipher_text: cipherText, key_id: 'nope' }),
      'KMS.0205',
      'Invalid key ID.',
    );
  });

  it('when create-key is given enterprise_project_id, keystore_id or vm_id, then only the defaults are accepted', async () => {
    const ok = await kms.call(P, 'create-key', { key_alias: 'defaults', enterprise_project_id: '0', keystore_id: '0' });
    expect(ok.status).toBe(200);
    const refused: [object, string][] = [
      [
        { enterprise_project_id: '4a5b6c7d-0000-4000-8000-000000000001' },
        'Invalid parameter: enterprise_project_id must be 0, the default enterprise project (the only one this service has).',
      ],
      [
        { keystore_id: '1' },
        'Invalid parameter: keystore_id 1 names a CDMS cluster, which is not offered; use 0 (the default key store) or the keystore_id of a dedicated keystore.',
      ],
      [{ vm_id: 'vm-1' }, 'Invalid parameter: vm_id is not supported: HSM-cluster VMs are not offered.'],
    ];
    for (const [field, message] of refused) {
      expectError(await kms.call(P, 'create-key', { key_alias: 'refused', ...field }), 'KMS.0308', message);
    }
    const described = await kms.call(P, 'describe-key', { key_id: ok.body.key_info.key_id });
    expect(described.body.key_info).toMatchObject({ keystore_id: '0', sys_enterprise_project_id: '0' });
    expect((await kms.call(P, 'describe-key', { key_id: 'alias/refused' })).status).toBe(404);
  });

  it('when list-keys filters by key_spec, then AES_256 and ALL list the keys, other specs none, unknown ones KMS.0308', async () => {
    const all = (await kms.call(P, 'list-keys', {})).body;
    expect(all.total).toBeGreaterThanOrEqual(2);
    for (const spec of ['AES_256', 'ALL']) {
      expect((await kms.call(P, 'list-keys', { key_spec: spec })).body).toMatchObject({
        keys: all.keys,
        total: all.total,
      });
    }
    for (const spec of ['RSA_2048', 'SM4', 'EC_P256']) {
      expect((await kms.call(P, 'list-keys', { key_spec: spec })).body).toMatchObject({ keys: [], total: 0 });
    }
    expectError(
      await kms.call(P, 'list-keys', { key_spec: 'AES_128' }),
      'KMS.0308',
      'Invalid parameter: key_spec must be one of AES_256, ALL, SM4, RSA_2048, RSA_3072, RSA_4096, EC_P256, EC_P384, SM2.',
    );
  });

  it('when list-keys filters by enterprise_project_id, then all and 0 list the keys, another project none', async () => {
    const all = (await kms.call(P, 'list-keys', {})).body;
    for (const id of ['all', '0']) {
      expect((await kms.call(P, 'list-keys', { enterprise_project_id: id })).body.total).toBe(all.total);
    }
    const other = await kms.call(P, 'list-keys', { enterprise_project_id: '4a5b6c7d-0000-4000-8000-000000000001' });
    expect(other.body).toMatchObject({ keys: [], total: 0 });
    expectError(
      await kms.call(P, 'list-keys', { enterprise_project_id: 'default' }),
      'KMS.0308',
      'Invalid parameter: enterprise_project_id must be all, 0 or an enterprise project id.',
    );
  });

  it.each([
    ['gen-random', () => ({})],
    ['describe-key', () => ({ key_id: keyId })],
    ['list-keys', () => ({})],
    ['enable-key', () => ({ key_id: keyId })],
    ['schedule-key-deletion', () => ({ key_id: keyId, pending_days: '7' })],
    ['create-datakey', () => ({ key_id: keyId })],
    ['decrypt-data', () => ({ cipher_text: 'AAAA' })],
  ])('when %s is given a field no model has, then it answers KMS.0308 naming it', async (action, body) => {
    expectError(
      await kms.call(P, action, { ...body(), context: { a: 'b' } }),
      'KMS.0308',
      "Invalid parameter: unknown field 'context'.",
    );
  });
});
