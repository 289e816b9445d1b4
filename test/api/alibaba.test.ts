import { randomUUID } from 'node:crypto';
import { CreateAliasCommand, DecryptCommand, EncryptCommand, KMSClient, ReEncryptCommand } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PASSWORD_CHARACTER_TYPES } from '../../src/core/password.service.js';
import { $Kms, type AlibabaKmsClient, alibabaClient, signedRpcParams } from '../support/alibaba-sdk.js';
import { characterCounts, chiSquare, chiSquareCritical } from '../support/chi-square.js';
import { startTestService, type TestService } from '../support/test-service.js';

const A = 'alibabaprojecta';
const B = 'alibabaprojectb';
const ALL_CHARACTERS = Object.values(PASSWORD_CHARACTER_TYPES).join('');
let kms: TestService;
let a: AlibabaKmsClient;
let b: AlibabaKmsClient;
let credentialsA: { accessKeyId: string; secretAccessKey: string };

const client = (credentials: { accessKeyId: string; secretAccessKey: string }) => alibabaClient(kms.url, credentials);

interface SdkFailure {
  readonly code: string;
  readonly status: number;
  // biome-ignore lint/suspicious/noExplicitAny: the error body is asserted field by field
  readonly data: any;
}

/** The error a call fails with, as the SDK surfaces it (the test fails if the call succeeds). */
async function failure(promise: Promise<unknown>): Promise<SdkFailure> {
  try {
    await promise;
  } catch (err) {
    const e = err as { code: string; message: string; data: unknown };
    return { code: e.code, status: Number(/code: (\d+)/.exec(e.message)?.[1]), data: e.data };
  }
  throw new Error('expected the call to fail');
}

async function expectError(promise: Promise<unknown>, code: string, status: number): Promise<SdkFailure> {
  const err = await failure(promise);
  expect({ code: err.data?.Code, status: err.status }).toEqual({ code, status });
  expect(err.code).toBe(`${code}Error`);
  return err;
}

async function newKey(c: AlibabaKmsClient = a, description = ''): Promise<string> {
  const created = await c.createKey(new $Kms.CreateKeyRequest({ description }));
  return created.keyMetadata.keyId;
}

const password = async (c: AlibabaKmsClient, options: Record<string, string> = {}) =>
  (await c.getRandomPassword(new $Kms.GetRandomPasswordRequest(options))).randomPassword;

/**
 * A raw request signed with the SDK's own signer (@alicloud/rpc-util), for what the SDK never sends: replays, stale
 * timestamps, GET, form bodies, broken parameters.
 */
// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = any;

async function raw(
  params: Record<string, string>,
  options: {
    method?: 'GET' | 'POST';
    via?: 'query' | 'form';
    secret?: string;
    path?: string;
    credentials?: { accessKeyId: string; secretAccessKey: string };
  } = {},
) {
  const method = options.method ?? 'POST';
  const all = signedRpcParams(options.credentials ?? credentialsA, params, {
    method,
    ...(options.secret ? { secret: options.secret } : {}),
  });
  const encoded = new URLSearchParams(all).toString();
  const form = options.via === 'form';
  const res = await fetch(`${kms.url}${options.path ?? '/'}${form ? '' : `?${encoded}`}`, {
    method,
    ...(form ? { body: encoded, headers: { 'content-type': 'application/x-www-form-urlencoded' } } : {}),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Body, signed: all };
}

beforeAll(async () => {
  kms = await startTestService();
  credentialsA = await kms.running.credentials.create(A);
  a = client(credentialsA);
  b = client(await kms.running.credentials.create(B));
});
afterAll(async () => {
  await kms.destroy();
});

describe('GetRandomPassword', () => {
  it('when called with no parameters, then the password is 32 characters of every type', async () => {
    const p = await password(a);
    expect(p).toHaveLength(32);
    for (const chars of Object.values(PASSWORD_CHARACTER_TYPES)) {
      expect([...p].some((c) => chars.includes(c))).toBe(true);
    }
    expect([...p].every((c) => ALL_CHARACTERS.includes(c))).toBe(true);
  });

  it('when PasswordLength is given, then the password has exactly that length', async () => {
    for (const length of [8, 9, 64, 127, 128]) {
      expect(await password(a, { passwordLength: String(length) })).toHaveLength(length);
    }
  });

  it('when character types are excluded, then the alphabet is exactly the remaining types', async () => {
    const flags = {
      lowercase: 'excludeLowercase',
      uppercase: 'excludeUppercase',
      numbers: 'excludeNumbers',
      punctuation: 'excludePunctuation',
    } as const;
    const types = Object.keys(flags) as (keyof typeof flags)[];
    for (let mask = 1; mask < 15; mask++) {
      const excluded = types.filter((_, i) => mask & (1 << i));
      const options = Object.fromEntries(excluded.map((t) => [flags[t], 'true']));
      const allowed = types
        .filter((t) => !excluded.includes(t))
        .map((t) => PASSWORD_CHARACTER_TYPES[t])
        .join('');
      const seen = new Set<string>();
      for (let i = 0; i < 12; i++) {
        for (const c of await password(a, { ...options, passwordLength: '128' })) seen.add(c);
      }
      // 1,536 draws from at most 94 characters: every one of them shows up (a miss has odds below 1e-6).
      expect([...seen].sort().join(''), `excluded: ${excluded.join(', ')}`).toBe([...allowed].sort().join(''));
    }
  });

  it('when ExcludeCharacters is given, then none of them is ever drawn, punctuation included', async () => {
    const excluded = 'ABCabc019!"#%&+=\\`~ ';
    const excludeCharacters = excluded.trim();
    const seen = new Set<string>();
    for (let i = 0; i < 16; i++) {
      for (const c of await password(a, { excludeCharacters, passwordLength: '128' })) seen.add(c);
    }
    const allowed = [...ALL_CHARACTERS].filter((c) => !excludeCharacters.includes(c));
    expect([...seen].sort()).toEqual(allowed.sort());
  });

  it('when RequireEachIncludedType is true, then every short password holds each included type', async () => {
    const cases: Record<string, string>[] = [
      { requireEachIncludedType: 'true', passwordLength: '8' },
      { requireEachIncludedType: 'true', passwordLength: '8', excludePunctuation: 'true' },
      // Digits reduced to one character: still required, still present.
      { requireEachIncludedType: 'true', passwordLength: '8', excludeCharacters: '012345678' },
    ];
    for (const options of cases) {
      for (let i = 0; i < 40; i++) {
        const p = await password(a, options);
        expect(p).toHaveLength(8);
        const types = Object.entries(PASSWORD_CHARACTER_TYPES).filter(
          ([type]) => !(type === 'punctuation' && options.excludePunctuation === 'true'),
        );
        for (const [type, chars] of types) {
          const usable = [...chars].filter((c) => !(options.excludeCharacters ?? '').includes(c));
          expect(
            [...p].some((c) => usable.includes(c)),
            `${type} in ${p}`,
          ).toBe(true);
        }
      }
    }
  });

  it('when many passwords are drawn, then every allowed character has the same probability (chi-square)', async () => {
    const samples: string[] = [];
    const request = () => password(a, { passwordLength: '128', requireEachIncludedType: 'false' });
    for (let round = 0; round < 75; round++) samples.push(...(await Promise.all(Array.from({ length: 8 }, request))));
    const counts = characterCounts(samples, ALL_CHARACTERS);
    const statistic = chiSquare(counts, (samples.length * 128) / ALL_CHARACTERS.length);
    // 76,800 characters over 94 symbols; p ≈ 1e-6 critical value: a modulo-biased mapping scores in the thousands.
    expect(statistic).toBeLessThan(chiSquareCritical(ALL_CHARACTERS.length - 1, 4.75));
  });

  it('when a parameter is out of range or impossible, then the answer is InvalidParameter naming it', async () => {
    const cases: [Record<string, string>, string][] = [
      [{ passwordLength: '7' }, 'PasswordLength'],
      [{ passwordLength: '129' }, 'PasswordLength'],
      [{ passwordLength: '3e1' }, 'PasswordLength'],
      [{ excludeNumbers: 'yes' }, 'ExcludeNumbers'],
      [{ requireEachIncludedType: '1' }, 'RequireEachIncludedType'],
      [{ excludeCharacters: 'é' }, 'é'],
      [
        { excludeLowercase: 'true', excludeUppercase: 'true', excludeNumbers: 'true', excludePunctuation: 'true' },
        'excluded',
      ],
      [
        {
          excludeLowercase: 'true',
          excludeUppercase: 'true',
          excludePunctuation: 'true',
          excludeCharacters: '0123456789',
        },
        'excluded',
      ],
    ];
    for (const [options, named] of cases) {
      const err = await expectError(password(a, options), 'InvalidParameter', 400);
      expect(err.data.Message).toContain(named);
    }
  });
});

describe('data keys, encryption and decryption', () => {
  it('when a data key is generated, then Decrypt gives back its plaintext, key and key version', async () => {
    const keyId = await newKey();
    const made = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId }));
    expect(Buffer.from(made.plaintext, 'base64')).toHaveLength(32);
    expect(made.keyId).toBe(keyId);
    expect(made.keyVersionId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob }));
    expect(opened).toMatchObject({ plaintext: made.plaintext, keyId, keyVersionId: made.keyVersionId });
    const described = await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }));
    expect(described.keyMetadata.primaryKeyVersion).toBe(made.keyVersionId);
  });

  it('when KeySpec or NumberOfBytes is given, then the data key has that length; with both, NumberOfBytes wins', async () => {
    const keyId = await newKey();
    const length = async (options: Record<string, unknown>) =>
      Buffer.from((await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, ...options }))).plaintext, 'base64')
        .length;
    expect(await length({ keySpec: 'AES_128' })).toBe(16);
    expect(await length({ keySpec: 'AES_256' })).toBe(32);
    expect(await length({ numberOfBytes: 1 })).toBe(1);
    expect(await length({ numberOfBytes: 1024 })).toBe(1024);
    expect(await length({ numberOfBytes: 24, keySpec: 'AES_128' })).toBe(24);
    for (const bad of [{ numberOfBytes: 0 }, { numberOfBytes: 1025 }, { keySpec: 'AES_512' }]) {
      await expectError(a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, ...bad })), 'InvalidParameter', 400);
    }
  });

  it('when a data key is generated without plaintext, then Decrypt still opens it', async () => {
    const keyId = await newKey();
    const made = await a.generateDataKeyWithoutPlaintext(
      new $Kms.GenerateDataKeyWithoutPlaintextRequest({ keyId, numberOfBytes: 48 }),
    );
    expect(made).not.toHaveProperty('plaintext', expect.anything());
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob }));
    expect(Buffer.from(opened.plaintext, 'base64')).toHaveLength(48);
  });

  it('when data is encrypted with an encryption context, then only the same context decrypts it', async () => {
    const keyId = await newKey();
    const plaintext = Buffer.from('Hello, world: données + 中文').toString('base64');
    const encryptionContext = { purpose: 'test', 'with space': 'a+b=c&d' };
    const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext, encryptionContext }));
    expect(sealed.keyId).toBe(keyId);
    const opened = await a.decrypt(
      new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob, encryptionContext }),
    );
    expect(opened.plaintext).toBe(plaintext);
    for (const context of [undefined, { purpose: 'test' }, { ...encryptionContext, purpose: 'other' }]) {
      const err = await expectError(
        a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob, encryptionContext: context })),
        'InvalidParameter',
        400,
      );
      expect(err.data.Message).toContain('CiphertextBlob');
    }
  });

  it('when EncryptionContext is sent as the documented JSON string, then it binds the same way', async () => {
    const keyId = await newKey();
    const context = JSON.stringify({ purpose: 'json' });
    const sealed = await raw({ Action: 'Encrypt', KeyId: keyId, Plaintext: 'AAEC', EncryptionContext: context });
    expect(sealed.status).toBe(200);
    // The SDK's flattened form of the same context opens it.
    const opened = await a.decrypt(
      new $Kms.DecryptRequest({ ciphertextBlob: sealed.body.CiphertextBlob, encryptionContext: { purpose: 'json' } }),
    );
    expect(opened.plaintext).toBe('AAEC');
    for (const bad of ['{"a":1}', '["a"]', 'not json']) {
      const r = await raw({ Action: 'Encrypt', KeyId: keyId, Plaintext: 'AAEC', EncryptionContext: bad });
      expect([r.status, r.body.Code]).toEqual([400, 'InvalidParameter']);
    }
  });

  it('when a key is named by alias or ARN, then Encrypt uses that key', async () => {
    const keyId = await newKey();
    await a.createAlias(new $Kms.CreateAliasRequest({ keyId, aliasName: 'alias/by-name' }));
    const arn = (await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata.arn;
    expect(arn).toBe(`acs:kms:local-1:${A}:key/${keyId}`);
    for (const name of ['alias/by-name', arn, `acs:kms:local-1:${A}:alias/by-name`]) {
      const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId: name, plaintext: 'AAEC' }));
      expect(sealed.keyId).toBe(keyId);
    }
  });

  it('when the ciphertext or plaintext is malformed, then the answer is InvalidParameter, never a 5xx', async () => {
    const keyId = await newKey();
    const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'AAEC' }));
    const blob = Buffer.from(sealed.ciphertextBlob, 'base64');
    blob[blob.length - 40] ^= 1;
    for (const ciphertextBlob of [blob.toString('base64'), 'not base64!', 'AAAA', 'A'.repeat(12_000)]) {
      await expectError(a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob })), 'InvalidParameter', 400);
    }
    // Plaintext is any text, up to the frame's 4096 bytes of UTF-8.
    for (const plaintext of ['x'.repeat(4097), '€'.repeat(1366)]) {
      await expectError(a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext })), 'InvalidParameter', 400);
    }
    await expectError(a.encrypt(new $Kms.EncryptRequest({ keyId })), 'MissingParameter', 400);
  });
});

describe('Encrypt of any text', () => {
  const aws = () => new KMSClient({ endpoint: kms.url, region: 'local-1', credentials: credentialsA, maxAttempts: 1 });

  it.each([
    ['"Hello World"', 'Hello World'],
    ['a single space', ' '],
    ['only whitespace', '\t\n  '],
    ['"SGVsbG8=", which looks like Base64', 'SGVsbG8='],
    ['"AAEC", which is Base64', 'AAEC'],
    ['emoji, CJK and accents', '😀 emoji, 密钥 CJK, é, 한국어'],
    ['4096 ASCII bytes', 'x'.repeat(4096)],
    ['4095 bytes of three-byte characters', '€'.repeat(1365)],
  ])('when %s is encrypted, then Decrypt gives back exactly that string', async (_label, plaintext) => {
    const keyId = await newKey();
    const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext }));
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob }));
    expect(opened).toMatchObject({ keyId, plaintext });
  });

  it('when a text blob is decrypted through AWS and Huawei, then AWS gives its UTF-8 bytes and Huawei the text', async () => {
    const keyId = await newKey();
    const text = 'Hello 世界 🔑';
    const encryptionContext = { app: 'text' };
    const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: text, encryptionContext }));
    const client = aws();
    const opened = await client.send(
      new DecryptCommand({
        CiphertextBlob: Buffer.from(sealed.ciphertextBlob, 'base64'),
        EncryptionContext: encryptionContext,
      }),
    );
    expect(Buffer.from(opened.Plaintext as Uint8Array).toString('utf8')).toBe(text);
    client.destroy();
    const huawei = await kms.call(A, 'decrypt-data', {
      cipher_text: sealed.ciphertextBlob,
      encryption_context: encryptionContext,
    });
    expect(huawei.body).toEqual({
      key_id: keyId,
      plain_text: text,
      plain_text_base64: Buffer.from(text, 'utf8').toString('base64'),
    });
  });

  it('when AWS re-encrypts a text blob under another key, then it stays text for Alibaba Decrypt', async () => {
    const [from, to] = [await newKey(), await newKey()];
    const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId: from, plaintext: 'moved 🚚' }));
    const client = aws();
    const moved = await client.send(
      new ReEncryptCommand({ CiphertextBlob: Buffer.from(sealed.ciphertextBlob, 'base64'), DestinationKeyId: to }),
    );
    client.destroy();
    const opened = await a.decrypt(
      new $Kms.DecryptRequest({ ciphertextBlob: Buffer.from(moved.CiphertextBlob as Uint8Array).toString('base64') }),
    );
    expect(opened).toMatchObject({ keyId: to, plaintext: 'moved 🚚' });
  });

  it('when Huawei encrypt-data seals a text, then Alibaba Decrypt gives the text back', async () => {
    const keyId = await newKey();
    const sealed = await kms.call(A, 'encrypt-data', { key_id: keyId, plain_text: 'from huawei ✓' });
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.body.cipher_text }));
    expect(opened.plaintext).toBe('from huawei ✓');
  });

  it('when a data key is decrypted, then Decrypt still gives its Base64, the same bytes Huawei and AWS give', async () => {
    const keyId = await newKey();
    const made = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, numberOfBytes: 32 }));
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob }));
    expect(opened.plaintext).toBe(made.plaintext);
    const huawei = await kms.call(A, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: Buffer.from(made.ciphertextBlob, 'base64').toString('hex'),
      datakey_cipher_length: '32',
    });
    expect(huawei.body.data_key).toBe(Buffer.from(made.plaintext, 'base64').toString('hex').toUpperCase());
    const client = aws();
    const viaAws = await client.send(
      new DecryptCommand({ CiphertextBlob: Buffer.from(made.ciphertextBlob, 'base64') }),
    );
    expect(Buffer.from(viaAws.Plaintext as Uint8Array).toString('base64')).toBe(made.plaintext);
    client.destroy();
  });

  it('when the text is over 4096 bytes of UTF-8, then Encrypt answers InvalidParameter saying so', async () => {
    const keyId = await newKey();
    const err = await expectError(
      a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: '€'.repeat(1366) })),
      'InvalidParameter',
      400,
    );
    expect(err.data.Message).toBe(
      'The specified parameter "Plaintext" is not valid: at most 4096 bytes of UTF-8 text.',
    );
  });
});

describe('keys and their states', () => {
  it('when a key is created, then DescribeKey reports Alibaba-shaped metadata', async () => {
    const created = await a.createKey(new $Kms.CreateKeyRequest({ description: 'for tests' }));
    const meta = created.keyMetadata;
    expect(meta).toMatchObject({
      description: 'for tests',
      keyState: 'Enabled',
      keyUsage: 'ENCRYPT/DECRYPT',
      keySpec: 'Aliyun_AES_256',
      origin: 'Aliyun_KMS',
      protectionLevel: 'HSM',
      creator: A,
      automaticRotation: 'Disabled',
      arn: `acs:kms:local-1:${A}:key/${meta.keyId}`,
    });
    expect(meta.creationDate).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
    const described = await a.describeKey(new $Kms.DescribeKeyRequest({ keyId: meta.keyId }));
    expect(described.keyMetadata).toEqual(meta);
  });

  it('when CreateKey asks for what the service does not offer, then the answer is UnsupportedOperation', async () => {
    for (const options of [{ keyUsage: 'SIGN/VERIFY' }, { keySpec: 'RSA_2048' }, { origin: 'EXTERNAL' }]) {
      await expectError(a.createKey(new $Kms.CreateKeyRequest(options)), 'UnsupportedOperation', 400);
    }
    await expectError(
      a.createKey(new $Kms.CreateKeyRequest({ description: 'x'.repeat(8193) })),
      'InvalidParameter',
      400,
    );
    const hsm = await a.createKey(new $Kms.CreateKeyRequest({ protectionLevel: 'SOFTWARE' }));
    expect(hsm.keyMetadata.protectionLevel).toBe('HSM');
  });

  it('when keys are listed page by page, then every key of the project shows up once', async () => {
    const listing = await kms.running.credentials.create('alibabalisting');
    const c = client(listing);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await newKey(c));
    const first = await c.listKeys(new $Kms.ListKeysRequest({ pageSize: 2 }));
    expect(first).toMatchObject({ totalCount: 5, pageNumber: 1, pageSize: 2 });
    const seen: string[] = [];
    for (let page = 1; page <= 3; page++) {
      const listed = await c.listKeys(new $Kms.ListKeysRequest({ pageNumber: page, pageSize: 2 }));
      for (const k of listed.keys.key) {
        expect(k.keyArn).toBe(`acs:kms:local-1:alibabalisting:key/${k.keyId}`);
        seen.push(k.keyId);
      }
    }
    expect(seen.sort()).toEqual(ids.sort());
    expect((await c.listKeys(new $Kms.ListKeysRequest({}))).pageSize).toBe(10);
    await c.disableKey(new $Kms.DisableKeyRequest({ keyId: ids[0] as string }));
    await c.scheduleKeyDeletion(
      new $Kms.ScheduleKeyDeletionRequest({ keyId: ids[1] as string, pendingWindowInDays: 7 }),
    );
    // The 1.x SDK has no Filters field: they go as the documented JSON string, signed like any parameter.
    const filtered = async (filters: unknown, extra: Record<string, string> = {}) => {
      const r = await raw(
        { Action: 'ListKeys', Filters: JSON.stringify(filters), PageSize: '100', ...extra },
        { credentials: listing },
      );
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      return { total: r.body.TotalCount, ids: r.body.Keys.Key.map((k: { KeyId: string }) => k.KeyId).sort() };
    };
    const enabled = ids.slice(2).sort();
    expect(await filtered([{ Key: 'KeyState', Values: ['Enabled'] }])).toEqual({ total: 3, ids: enabled });
    expect(await filtered([{ Key: 'KeyState', Values: ['Enabled', 'Disabled'] }])).toEqual({
      total: 4,
      ids: [ids[0], ...enabled].sort(),
    });
    expect(
      (
        await filtered([{ Key: 'KeyState', Values: ['Enabled', 'PendingDeletion'] }], {
          PageSize: '2',
          PageNumber: '2',
        })
      ).total,
    ).toBe(4);
    expect(
      await filtered([
        { Key: 'KeyState', Values: ['PendingDeletion'] },
        { Key: 'KeySpec', Values: ['Aliyun_AES_256'] },
      ]),
    ).toEqual({ total: 1, ids: [ids[1]] });
    expect(await filtered([{ Key: 'KeySpec', Values: ['RSA_2048'] }])).toEqual({ total: 0, ids: [] });
    expect((await filtered([])).total).toBe(5);
    for (const bad of [
      'not json',
      '{"Key":"KeyState"}',
      '[{"Key":"Color","Values":["red"]}]',
      '[{"Key":"KeyState","Values":"Enabled"}]',
    ]) {
      const r = await raw({ Action: 'ListKeys', Filters: bad }, { credentials: listing });
      expect([r.status, r.body.Code], bad).toEqual([400, 'InvalidParameter']);
    }
    await expectError(c.listKeys(new $Kms.ListKeysRequest({ pageSize: 101 })), 'InvalidParameter', 400);
    await expectError(c.listKeys(new $Kms.ListKeysRequest({ pageNumber: 0 })), 'InvalidParameter', 400);
  });

  it('when a key is disabled, then it refuses cryptography with Rejected.Disabled until enabled again', async () => {
    const keyId = await newKey();
    const made = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId }));
    await a.disableKey(new $Kms.DisableKeyRequest({ keyId }));
    await a.disableKey(new $Kms.DisableKeyRequest({ keyId }));
    expect((await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata.keyState).toBe('Disabled');
    const err = await expectError(
      a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId })),
      'Rejected.Disabled',
      409,
    );
    expect(err.data.Message).toBe('The request was rejected because the key state is Disabled.');
    await expectError(
      a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob })),
      'Rejected.Disabled',
      409,
    );
    await a.enableKey(new $Kms.EnableKeyRequest({ keyId }));
    await a.enableKey(new $Kms.EnableKeyRequest({ keyId }));
    await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob }));
  });

  it('when a key is scheduled for deletion, then it is PendingDeletion until the deletion is cancelled', async () => {
    const keyId = await newKey();
    await expectError(a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId })), 'MissingParameter', 400);
    for (const days of [6, 367]) {
      await expectError(
        a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId, pendingWindowInDays: days })),
        'InvalidParameter',
        400,
      );
    }
    const before = Date.now();
    await a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId, pendingWindowInDays: 7 }));
    const meta = (await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata;
    expect(meta.keyState).toBe('PendingDeletion');
    const due = Date.parse(meta.deleteDate);
    expect(due).toBeGreaterThanOrEqual(before + 7 * 86_400_000 - 1000);
    expect(due).toBeLessThanOrEqual(Date.now() + 7 * 86_400_000);
    await expectError(
      a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'AAEC' })),
      'Rejected.PendingDeletion',
      409,
    );
    for (const call of [
      () => a.enableKey(new $Kms.EnableKeyRequest({ keyId })),
      () => a.disableKey(new $Kms.DisableKeyRequest({ keyId })),
      () => a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId, pendingWindowInDays: 7 })),
    ]) {
      await expectError(call(), 'Rejected.PendingDeletion', 409);
    }
    await a.cancelKeyDeletion(new $Kms.CancelKeyDeletionRequest({ keyId }));
    // Alibaba, unlike Huawei and AWS, returns the key to Enabled.
    const after = (await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata;
    expect(after.keyState).toBe('Enabled');
    expect(after.deleteDate).toBeUndefined();
    await expectError(
      a.cancelKeyDeletion(new $Kms.CancelKeyDeletionRequest({ keyId })),
      'Rejected.NotPendingDeletion',
      409,
    );
  });

  it('when a key is unknown or belongs to another project, then every operation says Forbidden.KeyNotFound', async () => {
    const foreign = await newKey(b);
    for (const keyId of [foreign, randomUUID(), 'not-a-key', `acs:kms:local-1:${B}:key/${foreign}`]) {
      await expectError(a.describeKey(new $Kms.DescribeKeyRequest({ keyId })), 'Forbidden.KeyNotFound', 404);
      await expectError(a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId })), 'Forbidden.KeyNotFound', 404);
      await expectError(a.disableKey(new $Kms.DisableKeyRequest({ keyId })), 'Forbidden.KeyNotFound', 404);
    }
    const made = await b.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId: foreign }));
    await expectError(
      a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob })),
      'Forbidden.KeyNotFound',
      404,
    );
    await expectError(
      a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId: 'alias/nothing-here' })),
      'Forbidden.AliasNotFound',
      404,
    );
  });
});

describe('descriptions and regions', () => {
  it('when a description is updated, then DescribeKey shows it; a key pending deletion refuses the change', async () => {
    const keyId = await newKey(a, 'before');
    await a.updateKeyDescription(new $Kms.UpdateKeyDescriptionRequest({ keyId, description: 'after' }));
    expect((await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata.description).toBe('after');
    await expectError(
      a.updateKeyDescription(new $Kms.UpdateKeyDescriptionRequest({ keyId, description: 'x'.repeat(8193) })),
      'InvalidParameter',
      400,
    );
    await a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId, pendingWindowInDays: 7 }));
    await expectError(
      a.updateKeyDescription(new $Kms.UpdateKeyDescriptionRequest({ keyId, description: 'late' })),
      'Rejected.PendingDeletion',
      409,
    );
  });

  it('when regions are described, then the one region of the service is listed', async () => {
    const described = await a.describeRegions(new $Kms.DescribeRegionsRequest({}));
    expect(described.regions.region).toEqual([{ regionId: 'local-1' }]);
  });
});

describe('aliases', () => {
  it('when aliases are created, listed, moved and deleted, then each step is visible', async () => {
    const c = client(await kms.running.credentials.create('alibabaaliases'));
    const first = await newKey(c);
    const second = await newKey(c);
    for (const name of ['alias/one', 'alias/two', 'alias/three']) {
      await c.createAlias(new $Kms.CreateAliasRequest({ keyId: first, aliasName: name }));
    }
    await expectError(
      c.createAlias(new $Kms.CreateAliasRequest({ keyId: second, aliasName: 'alias/one' })),
      'Rejected.ResourceExist',
      409,
    );
    const page = await c.listAliases(new $Kms.ListAliasesRequest({ pageSize: 2, pageNumber: 2 }));
    expect(page).toMatchObject({ totalCount: 3, pageNumber: 2, pageSize: 2 });
    expect(page.aliases.alias).toEqual([
      { keyId: first, aliasName: 'alias/two', aliasArn: 'acs:kms:local-1:alibabaaliases:alias/two' },
    ]);
    await c.updateAlias(new $Kms.UpdateAliasRequest({ keyId: second, aliasName: 'alias/two' }));
    expect((await c.describeKey(new $Kms.DescribeKeyRequest({ keyId: 'alias/two' }))).keyMetadata.keyId).toBe(second);
    await c.deleteAlias(new $Kms.DeleteAliasRequest({ aliasName: 'alias/one' }));
    await expectError(
      c.deleteAlias(new $Kms.DeleteAliasRequest({ aliasName: 'alias/one' })),
      'Forbidden.AliasNotFound',
      404,
    );
    const ofSecond = await c.listAliasesByKeyId(new $Kms.ListAliasesByKeyIdRequest({ keyId: second }));
    expect(ofSecond).toMatchObject({ totalCount: 1, pageNumber: 1, pageSize: 10 });
    expect(ofSecond.aliases.alias.map((x) => x.aliasName)).toEqual(['alias/two']);
    // Named by one of its aliases; the second page of one-alias pages of a key with one alias is empty.
    const ofFirst = await c.listAliasesByKeyId(new $Kms.ListAliasesByKeyIdRequest({ keyId: 'alias/three' }));
    expect(ofFirst.aliases.alias).toEqual([
      { keyId: first, aliasName: 'alias/three', aliasArn: 'acs:kms:local-1:alibabaaliases:alias/three' },
    ]);
    const beyond = await c.listAliasesByKeyId(
      new $Kms.ListAliasesByKeyIdRequest({ keyId: first, pageSize: 1, pageNumber: 2 }),
    );
    expect(beyond).toMatchObject({ totalCount: 1, pageNumber: 2, pageSize: 1 });
    expect(beyond.aliases.alias ?? []).toEqual([]);
    await expectError(
      c.listAliasesByKeyId(new $Kms.ListAliasesByKeyIdRequest({ keyId: 'alias/none' })),
      'Forbidden.AliasNotFound',
      404,
    );
    const left = await c.listAliases(new $Kms.ListAliasesRequest({}));
    expect(left.aliases.alias.map((x) => x.aliasName)).toEqual(['alias/three', 'alias/two']);
  });

  it('when an alias made through AWS holds a colon, then Alibaba can move and delete it but not create one so', async () => {
    const keyId = await newKey();
    const aws = new KMSClient({ endpoint: kms.url, region: 'local-1', credentials: credentialsA, maxAttempts: 1 });
    await aws.send(new CreateAliasCommand({ AliasName: 'alias/team:orders', TargetKeyId: keyId }));
    aws.destroy();
    const other = await newKey();
    await a.updateAlias(new $Kms.UpdateAliasRequest({ aliasName: 'alias/team:orders', keyId: other }));
    expect((await a.describeKey(new $Kms.DescribeKeyRequest({ keyId: 'alias/team:orders' }))).keyMetadata.keyId).toBe(
      other,
    );
    await a.deleteAlias(new $Kms.DeleteAliasRequest({ aliasName: 'alias/team:orders' }));
    await expectError(
      a.createAlias(new $Kms.CreateAliasRequest({ keyId, aliasName: 'alias/team:orders' })),
      'InvalidParameter',
      400,
    );
  });

  it('when an alias name breaks Alibaba’s rules, then the answer is InvalidParameter', async () => {
    const keyId = await newKey();
    for (const aliasName of ['no-prefix', 'alias/', 'alias/acs/reserved', `alias/${'x'.repeat(250)}`, 'alias/sp ace']) {
      await expectError(a.createAlias(new $Kms.CreateAliasRequest({ keyId, aliasName })), 'InvalidParameter', 400);
    }
    await expectError(
      a.createAlias(new $Kms.CreateAliasRequest({ keyId: 'alias/x', aliasName: 'alias/y' })),
      'InvalidParameter',
      400,
    );
  });
});

describe('the RPC protocol and its signature', () => {
  it('when parameters come as a GET query or a POST form body, then both are served', async () => {
    for (const options of [{ method: 'GET' as const }, { via: 'form' as const }, {}]) {
      const r = await raw({ Action: 'GetRandomPassword', PasswordLength: '12' }, options);
      expect(r.status).toBe(200);
      expect(r.body.RandomPassword).toHaveLength(12);
      expect(r.body.RequestId).toBe(r.headers.get('x-acs-request-id'));
    }
  });

  it('when a request is replayed, then the second is SignatureNonceUsed', async () => {
    const first = await raw({ Action: 'GetRandomPassword' });
    expect(first.status).toBe(200);
    const again = await raw(first.signed);
    expect([again.status, again.body.Code]).toEqual([400, 'SignatureNonceUsed']);
  });

  it('when the timestamp is stale or malformed, then the request is refused', async () => {
    const stale = await raw({
      Action: 'GetRandomPassword',
      Timestamp: new Date(Date.now() - 16 * 60_000).toISOString(),
    });
    expect([stale.status, stale.body.Code]).toEqual([400, 'InvalidTimeStamp.Expired']);
    const malformed = await raw({ Action: 'GetRandomPassword', Timestamp: '24/11/2026 12:00' });
    expect([malformed.status, malformed.body.Code]).toEqual([400, 'InvalidTimeStamp.Format']);
    const missing = await raw({ Action: 'GetRandomPassword', Timestamp: '\0' });
    expect([missing.status, missing.body.Code]).toEqual([400, 'IllegalTimestamp']);
  });

  it('when the signature is wrong or the access key unknown or revoked, then the SDK surfaces the right code', async () => {
    const wrong = client({ accessKeyId: credentialsA.accessKeyId, secretAccessKey: 'not-the-secret' });
    const err = await expectError(password(wrong), 'SignatureDoesNotMatch', 400);
    expect(err.data.Message).toContain('server string to sign is:POST&%2F&AccessKeyId%3D');
    const unknown = client({ accessKeyId: 'AKIAAAAAAAAAAAAAAAAA', secretAccessKey: 'x' });
    await expectError(password(unknown), 'InvalidAccessKeyId.NotFound', 404);
    const creds = await kms.running.credentials.create(A);
    const revoked = client(creds);
    await password(revoked);
    await kms.running.credentials.revoke(creds.accessKeyId);
    await expectError(password(revoked), 'InvalidAccessKeyId.NotFound', 404);
  });

  it('when common parameters are missing or wrong, then the answer names them in Alibaba’s error body', async () => {
    const cases: [Record<string, string>, number, string][] = [
      [{ Action: '\0' }, 400, 'MissingParameter'],
      [{ Action: 'GetRandomPassword', Version: '\0' }, 400, 'MissingParameter'],
      [{ Action: 'GetRandomPassword', Version: '2014-05-26' }, 400, 'InvalidVersion'],
      [{ Action: 'DeleteEverything' }, 404, 'InvalidAction.NotFound'],
      [{ Action: 'toString' }, 404, 'InvalidAction.NotFound'],
      [{ Action: 'GetRandomPassword', Format: 'XML' }, 400, 'InvalidParameter'],
      [{ Action: 'GetRandomPassword', SignatureMethod: 'HMAC-SHA256' }, 400, 'InvalidParameter'],
      [{ Action: 'GetRandomPassword', AccessKeyId: '\0' }, 400, 'MissingParameter'],
      [{ Action: 'GetRandomPassword', SignatureNonce: '\0' }, 400, 'MissingParameter'],
      [{ Action: 'GetRandomPassword', Signature: 'AAAA' }, 400, 'SignatureDoesNotMatch'],
    ];
    for (const [params, status, code] of cases) {
      const r = await raw(params, { via: 'form' });
      expect([r.status, r.body.Code], JSON.stringify(params)).toEqual([status, code]);
      expect(Object.keys(r.body).sort()).toEqual(['Code', 'HostId', 'Message', 'Recommend', 'RequestId']);
      expect(r.body.HostId).toBe(new URL(kms.url).host);
    }
  });

  it('when a parameter is given twice, then the request is refused rather than guessed at', async () => {
    const r = await fetch(`${kms.url}/?Action=GetRandomPassword&Action=Encrypt`, { method: 'POST' });
    expect(r.status).toBe(400);
    expect(((await r.json()) as Body).Code).toBe('InvalidParameter');
  });

  it('when an Action comes with another HTTP method, then the answer is UnsupportedHTTPMethod', async () => {
    for (const method of ['PUT', 'DELETE', 'PATCH']) {
      const r = await fetch(`${kms.url}/?Action=GetRandomPassword&Version=2016-01-20`, { method });
      expect([r.status, ((await r.json()) as Body).Code], method).toEqual([403, 'UnsupportedHTTPMethod']);
    }
  });

  it('when a request has no Action, then the other dialects still answer on /', async () => {
    const versions = await fetch(`${kms.url}/`);
    expect(versions.status).toBe(200);
    expect(((await versions.json()) as Body).versions).toBeDefined();
  });
});

describe('across dialects', () => {
  it('when Alibaba generates a data key, then the Huawei and AWS dialects decrypt it to the same bytes', async () => {
    const keyId = await newKey();
    const encryptionContext = { app: 'cross' };
    const made = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, encryptionContext }));
    const huawei = await kms.call(A, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: Buffer.from(made.ciphertextBlob, 'base64').toString('hex'),
      datakey_cipher_length: '32',
      encryption_context: encryptionContext,
    });
    expect(huawei.status).toBe(200);
    expect(huawei.body.data_key).toBe(Buffer.from(made.plaintext, 'base64').toString('hex').toUpperCase());

    const aws = new KMSClient({ endpoint: kms.url, region: 'local-1', credentials: credentialsA, maxAttempts: 1 });
    const opened = await aws.send(
      new DecryptCommand({
        CiphertextBlob: Buffer.from(made.ciphertextBlob, 'base64'),
        EncryptionContext: encryptionContext,
      }),
    );
    expect(Buffer.from(opened.Plaintext as Uint8Array).toString('base64')).toBe(made.plaintext);

    const sealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('from aws') }));
    const back = await a.decrypt(
      new $Kms.DecryptRequest({ ciphertextBlob: Buffer.from(sealed.CiphertextBlob as Uint8Array).toString('base64') }),
    );
    expect(Buffer.from(back.plaintext, 'base64').toString()).toBe('from aws');
    aws.destroy();
  });

  it('when Huawei creates a key with an alias, then Alibaba sees the key and the alias', async () => {
    const created = await kms.call(A, 'create-key', { key_alias: 'from-huawei' });
    expect(created.status).toBe(200);
    const keyId = created.body.key_info.key_id;
    const described = await a.describeKey(new $Kms.DescribeKeyRequest({ keyId: 'alias/from-huawei' }));
    expect(described.keyMetadata.keyId).toBe(keyId);
    const listed = await a.listAliases(new $Kms.ListAliasesRequest({ pageSize: 100 }));
    expect(listed.aliases.alias).toContainEqual(expect.objectContaining({ keyId, aliasName: 'alias/from-huawei' }));
  });
});
