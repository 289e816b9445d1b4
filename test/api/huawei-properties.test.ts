import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const P = 'projectprops1';
let kms: TestService;
let keyId: string;

beforeAll(async () => {
  kms = await startTestService();
  keyId = await createKey(kms, P, 'props');
});
afterAll(async () => {
  await kms.destroy();
});

const ACTIONS = [
  'gen-random',
  'create-key',
  'describe-key',
  'list-keys',
  'enable-key',
  'disable-key',
  'schedule-key-deletion',
  'cancel-key-deletion',
  'update-key-alias',
  'update-key-description',
  'create-datakey',
  'create-datakey-without-plaintext',
  'encrypt-datakey',
  'decrypt-datakey',
  'encrypt-data',
  'decrypt-data',
];
const FIELDS = [
  'key_id',
  'key_alias',
  'key_description',
  'key_state',
  'limit',
  'marker',
  'pending_days',
  'random_data_length',
  'datakey_length',
  'key_spec',
  'plain_text',
  'cipher_text',
  'datakey_plain_length',
  'datakey_cipher_length',
  'encryption_context',
  'sequence',
];

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();

/** A value of the kind a careless or hostile client might send for any field. */
const anyValue = (): fc.Arbitrary<unknown> =>
  fc.oneof(
    fc.string(),
    fc.integer(),
    fc.double(),
    fc.boolean(),
    fc.constant(null),
    fc.constantFrom('alias/props', 'alias/', '512', '-1', '1e3', '0d0466b0-e727-4d9c-b35d-f84bb474a37f'),
    fc.array(fc.string(), { maxLength: 3 }),
    fc.dictionary(fc.string(), fc.oneof(fc.string(), fc.integer()), { maxKeys: 3 }),
    fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('hex')),
  );

describe('properties of the Huawei API', () => {
  it('when any body is posted to any action, then the answer is a Huawei error or success, never a 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...ACTIONS),
        fc.dictionary(fc.constantFrom(...FIELDS), anyValue(), { maxKeys: 6 }),
        async (action, body) => {
          if (action === 'create-key' && typeof body.key_alias === 'string') body.key_alias = `p${body.key_alias}`;
          const res = await kms.call(P, action, body);
          expect(res.status).toBeLessThan(500);
          if (res.status !== 200) expect(res.body.error.error_code).toMatch(/^KMS\.\d{4}$/);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('when any byte of a valid blob is changed, even with its checksum recomputed, then decryption is refused', async () => {
    const made = await kms.call(P, 'create-datakey', { key_id: keyId, encryption_context: { k: 'v' } });
    const blob = Buffer.from(made.body.cipher_text, 'hex');
    const n = blob.readUInt16LE(2);
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: blob.length - 1 }),
        fc.integer({ min: 1, max: 255 }),
        fc.boolean(),
        async (at, xor, recomputeChecksum) => {
          const mutated = Buffer.from(blob);
          mutated[at] = (mutated[at] as number) ^ xor;
          if (recomputeChecksum && at < n + 4) sha256(mutated.subarray(0, n + 4)).copy(mutated, n + 4);
          const res = await kms.call(P, 'decrypt-datakey', {
            key_id: keyId,
            cipher_text: mutated.toString('hex'),
            datakey_cipher_length: '64',
            encryption_context: { k: 'v' },
          });
          expect(res.status).toBe(400);
          expect(res.body.error.error_code).toBe('KMS.2201');
        },
      ),
      { numRuns: 150 },
    );
  });

  it('when a blob is truncated or extended, then decryption is refused', async () => {
    const made = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: 'truncate me' });
    const blob = Buffer.from(made.body.cipher_text, 'base64');
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.integer({ min: 0, max: blob.length - 1 }).map((len) => blob.subarray(0, len)),
          fc.uint8Array({ minLength: 1, maxLength: 8 }).map((extra) => Buffer.concat([blob, extra])),
        ),
        async (changed) => {
          const res = await kms.call(P, 'decrypt-data', { cipher_text: changed.toString('base64') });
          expect(res.status).toBe(400);
          expect(res.body.error.error_code).toBe('KMS.2201');
        },
      ),
      { numRuns: 60 },
    );
  });

  it('when the encryption context differs in any way from the one sealed, then decryption is refused', async () => {
    const context = fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 4 });
    await fc.assert(
      fc.asyncProperty(context, context, async (sealedWith, openedWith) => {
        fc.pre(JSON.stringify(Object.entries(sealedWith).sort()) !== JSON.stringify(Object.entries(openedWith).sort()));
        const made = await kms.call(P, 'encrypt-data', {
          key_id: keyId,
          plain_text: 'ctx',
          encryption_context: sealedWith,
        });
        const ok = await kms.call(P, 'decrypt-data', {
          cipher_text: made.body.cipher_text,
          encryption_context: sealedWith,
        });
        expect(ok.body.plain_text).toBe('ctx');
        const res = await kms.call(P, 'decrypt-data', {
          cipher_text: made.body.cipher_text,
          encryption_context: openedWith,
        });
        expect(res.status).toBe(400);
        expect(res.body.error.error_code).toBe('KMS.2201');
      }),
      { numRuns: 60 },
    );
  });
});
