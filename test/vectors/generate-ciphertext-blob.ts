/**
 * Wrote test/vectors/ciphertext-blob.json once, from the codec and a real AES-256-GCM (node:crypto standing in for
 * the HSM, under a throw-away test key). The format is frozen: do NOT regenerate to make a failing test pass; a
 * vector that no longer matches means the codec changed the wire format.
 *
 *   npx tsx test/vectors/generate-ciphertext-blob.ts > test/vectors/ciphertext-blob.json
 */
import { createCipheriv } from 'node:crypto';
import { encodeBinding } from '../../src/core/ciphertext-binding.js';
import { blobAad, encodeBlob, type PlaintextKind } from '../../src/core/ciphertext-blob.js';
import { type EncryptionContext, encodeEncryptionContext } from '../../src/core/encryption-context.js';

const AES_KEY = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');

interface Case {
  name: string;
  description: string;
  plaintext: Buffer;
  keyId: string;
  keyVersion: number;
  iv: Buffer;
  context: EncryptionContext | null;
  /** Added with Huawei's additional_authenticated_data; absent from the first six vectors. */
  additionalData?: string;
  /** Added with text blobs (payload format 0x02); absent means bytes (0x01). */
  kind?: PlaintextKind;
}

const pattern = (length: number, seed: number): Buffer =>
  Buffer.from(Array.from({ length }, (_, i) => (i * 73 + seed) & 0xff));

const cases: Case[] = [
  {
    name: 'dek-64-no-context',
    description: 'A 64-byte DEK (the plain_text of the Huawei create-datakey example), no encryption context.',
    plaintext: Buffer.from(
      '8151014275E426C72EE7D44267EF11590DCE0089E19863BA8CC832187B156A72A5A17F17B5EF0D525872C59ECEB72948AF85E18427F8BE0D46545C979306C08D',
      'hex',
    ),
    keyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f',
    keyVersion: 0,
    iv: Buffer.from('000000000000000000000001', 'hex'),
    context: null,
  },
  {
    name: 'dek-64-with-context',
    description: 'The same DEK under key version 3 with a two-pair encryption context.',
    plaintext: Buffer.from(
      '8151014275E426C72EE7D44267EF11590DCE0089E19863BA8CC832187B156A72A5A17F17B5EF0D525872C59ECEB72948AF85E18427F8BE0D46545C979306C08D',
      'hex',
    ),
    keyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f',
    keyVersion: 3,
    iv: Buffer.from('cafebabefacedbaddecaf888', 'hex'),
    context: { tenant: 'acme', purpose: 'disk-encryption' },
  },
  {
    name: 'one-byte-empty-context',
    description: 'The smallest plaintext (1 byte); an empty context {} encodes like an absent one.',
    plaintext: Buffer.from([0x2a]),
    keyId: '25abe69f-ae10-44cd-bc87-1bda1de3b7d7',
    keyVersion: 1,
    iv: Buffer.from('0102030405060708090a0b0c', 'hex'),
    context: {},
  },
  {
    name: 'data-1024-max-version',
    description: '1024 bytes of data under the largest key version, 0xffffffff.',
    plaintext: pattern(1024, 19),
    keyId: 'a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d',
    keyVersion: 0xffff_ffff,
    iv: Buffer.from('f0e0d0c0b0a0908070605040', 'hex'),
    context: { a: 'bc' },
  },
  {
    name: 'data-4096-max-length',
    description: 'The largest plaintext, 4096 bytes.',
    plaintext: pattern(4096, 101),
    keyId: 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    keyVersion: 7,
    iv: Buffer.from('ffffffffffffffffffffffff', 'hex'),
    context: null,
  },
  {
    name: 'unicode-context-byte-order',
    description:
      'Context keys sorted by UTF-8 bytes: Z (5a) < é (c3a9) < ｡ U+FF61 (efbda1) < 😀 U+1F600 (f09f9880); JS string order would put 😀 before ｡.',
    plaintext: pattern(32, 7),
    keyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f',
    keyVersion: 2,
    iv: Buffer.from('5bd25e6d1f5d1c6e0f0d7e21', 'hex'),
    context: { '😀': 'smile', '｡': 'halfwidth ideographic full stop', é: 'e-acute', Z: 'zed' },
  },
  {
    name: 'dek-32-additional-data',
    description:
      'A 32-byte DEK bound to Huawei\'s additional_authenticated_data "a" and no context: 00 00 then 01 ‖ 00 01 ‖ 61.',
    plaintext: pattern(32, 3),
    keyId: '0d0466b0-e727-4d9c-b35d-f84bb474a37f',
    keyVersion: 0,
    iv: Buffer.from('a0a1a2a3a4a5a6a7a8a9aaab', 'hex'),
    context: null,
    additionalData: 'a',
  },
  {
    name: 'dek-64-context-and-additional-data',
    description: 'A 64-byte DEK bound to both a context and 128 bytes of additional data (the limit), UTF-8.',
    plaintext: pattern(64, 11),
    keyId: '25abe69f-ae10-44cd-bc87-1bda1de3b7d7',
    keyVersion: 4,
    iv: Buffer.from('b0b1b2b3b4b5b6b7b8b9babb', 'hex'),
    context: { tenant: 'acme' },
    additionalData: `h\u00e9llo ${'x'.repeat(121)}`,
  },
  {
    name: 'text-hello-world',
    description: 'The text "Hello World" as Alibaba Encrypt and Huawei encrypt-data seal it: payload format 0x02.',
    plaintext: Buffer.from('Hello World', 'utf8'),
    keyId: 'a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d',
    keyVersion: 1,
    iv: Buffer.from('c0c1c2c3c4c5c6c7c8c9cacb', 'hex'),
    context: null,
    kind: 'text',
  },
  {
    name: 'text-unicode-context-and-additional-data',
    description: 'UTF-8 text with an emoji and CJK, format 0x02, bound to a context and additional data.',
    plaintext: Buffer.from('密钥 🔑 ok', 'utf8'),
    keyId: 'ffffffff-ffff-ffff-ffff-ffffffffffff',
    keyVersion: 2,
    iv: Buffer.from('d0d1d2d3d4d5d6d7d8d9dadb', 'hex'),
    context: { a: 'bc' },
    additionalData: 'ab',
    kind: 'text',
  },
];

const vectors = cases.map((c) => {
  const context = c.context ?? undefined;
  const binding = { context, additionalData: c.additionalData };
  const aad = blobAad(c.keyId, c.keyVersion, c.plaintext.length, binding, c.kind);
  const cipher = createCipheriv('aes-256-gcm', AES_KEY, c.iv, { authTagLength: 16 });
  cipher.setAAD(aad);
  const ciphertextWithTag = Buffer.concat([cipher.update(c.plaintext), cipher.final(), cipher.getAuthTag()]);
  const blob = encodeBlob({ keyId: c.keyId, keyVersion: c.keyVersion, iv: c.iv, ciphertextWithTag, kind: c.kind });
  return {
    name: c.name,
    description: c.description,
    keyId: c.keyId,
    keyVersion: c.keyVersion,
    context: c.context,
    ...(c.additionalData !== undefined
      ? { additionalData: c.additionalData, bindingHex: encodeBinding(binding).toString('hex') }
      : {}),
    ...(c.kind !== undefined ? { kind: c.kind } : {}),
    contextHex: encodeEncryptionContext(context).toString('hex'),
    plaintextHex: c.plaintext.toString('hex'),
    ivHex: c.iv.toString('hex'),
    ciphertextWithTagHex: ciphertextWithTag.toString('hex'),
    aadHex: aad.toString('hex'),
    blobLength: blob.length,
    blobHex: blob.toString('hex'),
  };
});

process.stdout.write(
  `${JSON.stringify(
    {
      description:
        'Golden vectors for src/core/ciphertext-blob.ts (docs/ciphertext-format.md). ciphertextWithTag is real AES-256-GCM under aesKeyHex, a test-only key, with aadHex as AAD.',
      aesKeyHex: AES_KEY.toString('hex'),
      vectors,
    },
    null,
    2,
  )}\n`,
);
