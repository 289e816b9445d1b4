import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const P = 'projectcrypto1';
let kms: TestService;
let keyId: string;

/** The cipher_text examples of Huawei's (Open Telekom Cloud's) published API pages, kept as test vectors. */
const PUBLISHED: { name: string; encoding: 'hex' | 'base64'; cipherText: string; keyId: string }[] = JSON.parse(
  readFileSync(new URL('../vectors/huawei-published-blobs.json', import.meta.url), 'utf8'),
).blobs;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

beforeAll(async () => {
  kms = await startTestService();
  keyId = await createKey(kms, P, 'crypto');
});
afterAll(async () => {
  await kms.destroy();
});

describe('gen-random', () => {
  it.each([8, 512, 8192])('when %i bits are asked, then that many upper-case hex bits come back', async (bits) => {
    const res = await kms.call(P, 'gen-random', { random_data_length: String(bits) });
    expect(res.status).toBe(200);
    expect(res.body.random_data).toMatch(new RegExp(`^[0-9A-F]{${bits / 4}}$`));
  });

  it('when no length is given, then the documented 512 bits come back, different each time', async () => {
    const a = await kms.call(P, 'gen-random', {});
    const b = await kms.call(P, 'gen-random', {});
    expect(a.body.random_data).toHaveLength(128);
    expect(a.body.random_data).not.toBe(b.body.random_data);
  });

  it.each([
    ['0', 'KMS.1801'],
    ['8200', 'KMS.1801'],
    ['12', 'KMS.1802'],
    ['abc', 'KMS.1801'],
    [true, 'KMS.1801'],
  ])('when random_data_length is %j, then it answers %s', async (length, code) => {
    const res = await kms.call(P, 'gen-random', { random_data_length: length });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe(code);
  });
});

describe('data keys', () => {
  it('when a 512-bit data key is created, then the cipher_text is a 169-byte Huawei frame that decrypts to plain_text', async () => {
    const created = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '512' });
    expect(created.status).toBe(200);
    expect(created.body.key_id).toBe(keyId);
    expect(created.body.plain_text).toMatch(/^[0-9A-F]{128}$/);
    const blob = Buffer.from(created.body.cipher_text, 'hex');
    expect(blob.length).toBeLessThanOrEqual(188);
    expect(blob.subarray(0, 2)).toEqual(Buffer.from([2, 0]));
    const n = blob.readUInt16LE(2);
    expect(blob.length).toBe(n + 36);
    expect(blob.subarray(n - 36, n).toString('ascii')).toBe(keyId);
    expect(blob.readUInt32LE(n)).toBe(0);
    expect(blob.subarray(n + 4)).toEqual(sha256(blob.subarray(0, n + 4)));

    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: created.body.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(opened.status).toBe(200);
    expect(opened.body.data_key).toBe(created.body.plain_text);
    expect(opened.body.datakey_length).toBe('64');
    expect(opened.body.datakey_dgst).toBe(
      sha256(Buffer.from(created.body.plain_text, 'hex')).toString('hex').toUpperCase(),
    );
  });

  it('when key_spec is given without datakey_length, then it sets the length; datakey_length wins when both are given', async () => {
    const aes128 = await kms.call(P, 'create-datakey', { key_id: keyId, key_spec: 'AES_128' });
    expect(aes128.body.plain_text).toHaveLength(32);
    const both = await kms.call(P, 'create-datakey', { key_id: keyId, key_spec: 'AES_128', datakey_length: '8' });
    expect(both.body.plain_text).toHaveLength(2);
    const max = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: 8192 });
    expect(max.body.plain_text).toHaveLength(2048);
  });

  it.each([
    [{ datakey_length: '0' }, 'KMS.1901'],
    [{ datakey_length: '8200' }, 'KMS.1901'],
    [{ datakey_length: '100' }, 'KMS.1903'],
    [{ key_spec: 'SM4' }, 'KMS.1902'],
    [{ encryption_context: { a: 1 } }, 'KMS.0208'],
    [{ encryption_context: 'a=b' }, 'KMS.0208'],
    [{ encryption_context: { a: 'x'.repeat(8200) } }, 'KMS.0208'],
  ])('when create-datakey gets %j, then it answers %s', async (extra, code) => {
    const res = await kms.call(P, 'create-datakey', { key_id: keyId, ...extra });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe(code);
  });

  it('when a data key is created without plaintext, then only key_id and cipher_text come back and it decrypts', async () => {
    const created = await kms.call(P, 'create-datakey-without-plaintext', {
      key_id: 'alias/crypto',
      datakey_length: '256',
    });
    expect(Object.keys(created.body).sort()).toEqual(['cipher_text', 'key_id']);
    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: created.body.cipher_text,
      datakey_cipher_length: '32',
    });
    expect(opened.body.data_key).toMatch(/^[0-9A-F]{64}$/);
  });

  it('when an encryption context is bound, then only the same context decrypts, in any key order', async () => {
    const context = { tenant: 'acme', table: 'orders' };
    const created = await kms.call(P, 'create-datakey', { key_id: keyId, encryption_context: context });
    const request = { key_id: keyId, cipher_text: created.body.cipher_text, datakey_cipher_length: '64' };
    const same = await kms.call(P, 'decrypt-datakey', {
      ...request,
      encryption_context: { table: 'orders', tenant: 'acme' },
    });
    expect(same.body.data_key).toBe(created.body.plain_text);
    for (const other of [undefined, {}, { tenant: 'acme' }, { tenant: 'acme', table: 'order' }]) {
      const res = await kms.call(P, 'decrypt-datakey', { ...request, encryption_context: other });
      expect(res.status).toBe(400);
      expect(res.body.error.error_code).toBe('KMS.2201');
    }
  });

  it('when a caller encrypts its own DEK with its SHA-256, then decrypt-datakey returns it with the same digest', async () => {
    const dek = randomBytes(64);
    const plain = Buffer.concat([dek, sha256(dek)]).toString('hex');
    const sealed = await kms.call(P, 'encrypt-datakey', {
      key_id: keyId,
      plain_text: plain,
      datakey_plain_length: '64',
    });
    expect(sealed.status).toBe(200);
    expect(sealed.body).toMatchObject({ key_id: keyId, datakey_length: '64' });
    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: sealed.body.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(opened.body.data_key).toBe(dek.toString('hex').toUpperCase());
    expect(opened.body.datakey_dgst).toBe(sha256(dek).toString('hex').toUpperCase());
    const wrongLength = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: sealed.body.cipher_text,
      datakey_cipher_length: '32',
    });
    expect(wrongLength.body.error.error_code).toBe('KMS.2204');
  });

  it.each([
    [
      'the digest does not match',
      'KMS.2103',
      (dek: Buffer) => Buffer.concat([dek, Buffer.alloc(32)]).toString('hex'),
      '64',
    ],
    ['the length does not match', 'KMS.2104', (dek: Buffer) => Buffer.concat([dek, sha256(dek)]).toString('hex'), '32'],
    ['plain_text is not hex', 'KMS.2101', () => 'zz'.repeat(96), '64'],
    ['plain_text has an odd length', 'KMS.2101', () => 'a'.repeat(191), '64'],
    ['datakey_plain_length is 0', 'KMS.2102', (dek: Buffer) => Buffer.concat([dek, sha256(dek)]).toString('hex'), '0'],
    [
      'datakey_plain_length is 1025',
      'KMS.2102',
      (dek: Buffer) => Buffer.concat([dek, sha256(dek)]).toString('hex'),
      '1025',
    ],
  ])('when encrypt-datakey gets a plain_text where %s, then it answers %s', async (_what, code, make, length) => {
    const res = await kms.call(P, 'encrypt-datakey', {
      key_id: keyId,
      plain_text: make(Buffer.alloc(64, 7)),
      datakey_plain_length: length,
    });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe(code);
  });

  it('when the cipher_text was made under another key than key_id names, then decrypt-datakey refuses it', async () => {
    const otherKey = await createKey(kms, P, 'other-key');
    const created = await kms.call(P, 'create-datakey', { key_id: keyId });
    const res = await kms.call(P, 'decrypt-datakey', {
      key_id: otherKey,
      cipher_text: created.body.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe('KMS.2201');
  });

  it.each(PUBLISHED)(
    'when the published Huawei $name cipher_text is decrypted, then its frame parses and the unknown key answers KMS.0207',
    async (published) => {
      const blob = Buffer.from(published.cipherText, published.encoding);
      const asDataKey = await kms.call(P, 'decrypt-datakey', {
        key_id: published.keyId,
        cipher_text: blob.toString('hex'),
        datakey_cipher_length: '64',
      });
      expect(asDataKey.status).toBe(404);
      expect(asDataKey.body.error.error_code).toBe('KMS.0207');
      const asData = await kms.call(P, 'decrypt-data', { cipher_text: blob.toString('base64') });
      expect(asData.status).toBe(404);
      expect(asData.body.error.error_code).toBe('KMS.0207');
    },
  );

  it('when the cipher_text is malformed or tampered with, then decrypt-datakey answers KMS.2201', async () => {
    const created = await kms.call(P, 'create-datakey', { key_id: keyId });
    const blob = Buffer.from(created.body.cipher_text, 'hex');
    const flipped = Buffer.from(blob);
    flipped[20] = (flipped[20] as number) ^ 1;
    for (const bad of ['', 'xyz', '0200', blob.subarray(0, 100).toString('hex'), flipped.toString('hex')]) {
      const res = await kms.call(P, 'decrypt-datakey', {
        key_id: keyId,
        cipher_text: bad,
        datakey_cipher_length: '64',
      });
      expect(res.status).toBe(400);
      expect(res.body.error.error_code).toBe('KMS.2201');
    }
  });
});

describe('encrypt-data and decrypt-data', () => {
  it('when text is encrypted, then the base64 cipher_text decrypts to it without naming the key', async () => {
    const text = 'Grüße, 世界! 12345678';
    const sealed = await kms.call(P, 'encrypt-data', {
      key_id: keyId,
      plain_text: text,
      encryption_context: { a: 'b' },
    });
    expect(sealed.status).toBe(200);
    expect(sealed.body.key_id).toBe(keyId);
    expect(sealed.body.cipher_text).toMatch(/^[A-Za-z0-9+/]+=*$/);
    const blob = Buffer.from(sealed.body.cipher_text, 'base64');
    expect(blob.subarray(0, 2)).toEqual(Buffer.from([2, 0]));
    const opened = await kms.call(P, 'decrypt-data', {
      cipher_text: sealed.body.cipher_text,
      encryption_context: { a: 'b' },
    });
    expect(opened.body).toEqual({
      key_id: keyId,
      plain_text: text,
      plain_text_base64: Buffer.from(text, 'utf8').toString('base64'),
    });
    const noContext = await kms.call(P, 'decrypt-data', { cipher_text: sealed.body.cipher_text });
    expect(noContext.body.error.error_code).toBe('KMS.2201');
  });

  it('when the text is 4096 bytes, then it round-trips; 4097 bytes or empty text is refused', async () => {
    const max = 'é'.repeat(2048);
    const sealed = await kms.call(P, 'encrypt-data', { key_id: 'alias/crypto', plain_text: max });
    expect(sealed.status).toBe(200);
    const opened = await kms.call(P, 'decrypt-data', { cipher_text: sealed.body.cipher_text });
    expect(opened.body.plain_text).toBe(max);
    for (const plain of [`${max}a`, '']) {
      const res = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: plain });
      expect(res.body.error.error_code).toBe('KMS.2101');
    }
  });

  it('when the text holds a lone surrogate, then KMS.2101 refuses it rather than seal other text', async () => {
    for (const plain of ['a\ud800b', '\udfff', 'ok \ud83d']) {
      const res = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: plain });
      expect([res.status, res.body.error?.error_code, res.body.error?.error_msg], JSON.stringify(plain)).toEqual([
        400,
        'KMS.2101',
        'Invalid plain_text: it must be valid Unicode text (a lone surrogate is not).',
      ]);
    }
  });

  it('when decrypt-data gets bad base64 or a tampered blob, then it answers KMS.2201', async () => {
    const sealed = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'hello' });
    const blob = Buffer.from(sealed.body.cipher_text, 'base64');
    blob[blob.length - 40] = (blob[blob.length - 40] as number) ^ 0x80;
    for (const bad of ['!!!!', 'abc', blob.toString('base64')]) {
      const res = await kms.call(P, 'decrypt-data', { cipher_text: bad });
      expect(res.status).toBe(400);
      expect(res.body.error.error_code).toBe('KMS.2201');
    }
  });

  it('when decrypt-data opens a blob holding a binary data key, then it says the blob does not hold text', async () => {
    const created = await kms.call(P, 'create-datakey-without-plaintext', { key_id: keyId, datakey_length: '8192' });
    const res = await kms.call(P, 'decrypt-data', {
      cipher_text: Buffer.from(created.body.cipher_text, 'hex').toString('base64'),
    });
    // 1024 random bytes are valid UTF-8 with negligible probability.
    expect(res.body.error.error_code).toBe('KMS.2201');
  });
});

describe('key states and cryptography', () => {
  it('when the key is disabled, then crypto answers KMS.0209; pending deletion answers KMS.0210; enabled works again', async () => {
    const id = await createKey(kms, P, 'stateful');
    const made = await kms.call(P, 'create-datakey', { key_id: id });
    const decryptReq = { key_id: id, cipher_text: made.body.cipher_text, datakey_cipher_length: '64' };

    await kms.call(P, 'disable-key', { key_id: id });
    expect((await kms.call(P, 'create-datakey', { key_id: id })).body.error.error_code).toBe('KMS.0209');
    expect((await kms.call(P, 'decrypt-datakey', decryptReq)).body.error.error_code).toBe('KMS.0209');

    await kms.call(P, 'schedule-key-deletion', { key_id: id, pending_days: '30' });
    expect((await kms.call(P, 'encrypt-data', { key_id: id, plain_text: 'x' })).body.error.error_code).toBe('KMS.0210');
    expect((await kms.call(P, 'decrypt-datakey', decryptReq)).body.error.error_code).toBe('KMS.0210');

    await kms.call(P, 'cancel-key-deletion', { key_id: id });
    await kms.call(P, 'enable-key', { key_id: id });
    expect((await kms.call(P, 'decrypt-datakey', decryptReq)).body.data_key).toBe(made.body.plain_text);
  });
});
