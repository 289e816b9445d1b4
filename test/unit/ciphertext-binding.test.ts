import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeBinding, MAX_ADDITIONAL_DATA_BYTES } from '../../src/core/ciphertext-binding.js';
import { type EncryptionContext, encodeEncryptionContext } from '../../src/core/encryption-context.js';
import { expectInvalidParameter } from './blob-test-kit.js';

const contextArb = fc.option(
  fc.dictionary(fc.string({ unit: 'grapheme', maxLength: 6 }), fc.string({ unit: 'grapheme', maxLength: 6 }), {
    maxKeys: 4,
  }),
  { nil: undefined },
);
/** Additional data of 0 to 40 well-formed characters (at most 160 bytes: some are over the limit, filtered out). */
const dataArb = fc
  .option(fc.string({ unit: 'grapheme', maxLength: 40 }), { nil: undefined })
  .filter((d) => d === undefined || Buffer.byteLength(d) <= MAX_ADDITIONAL_DATA_BYTES);

const hex = (b: Buffer) => b.toString('hex');

describe('encodeBinding', () => {
  it('when there is no additional data, or it is empty, then the bytes are the context encoding alone', () => {
    for (const context of [undefined, {}, { a: 'b' }] as (EncryptionContext | undefined)[]) {
      const alone = encodeEncryptionContext(context);
      expect(encodeBinding({ context }).equals(alone)).toBe(true);
      expect(encodeBinding({ context, additionalData: '' }).equals(alone)).toBe(true);
    }
  });

  it('when the additional data is "a" and there is no context, then the bytes are 00 00 01 00 01 61', () => {
    expect(hex(encodeBinding({ additionalData: 'a' }))).toBe('0000010001' + '61');
  });

  it('when the additional data is 128 bytes of UTF-8, then it is bound; at 129 bytes it is an InvalidParameter', () => {
    const at128 = `é${'x'.repeat(126)}`;
    expect(Buffer.byteLength(at128)).toBe(128);
    expect(encodeBinding({ additionalData: at128 }).length).toBe(2 + 3 + 128);
    expectInvalidParameter(
      () => encodeBinding({ additionalData: `${at128}x` }),
      'additional_authenticated_data must be at most 128 bytes of UTF-8.',
    );
  });

  it('when the additional data holds a lone surrogate, then it is an InvalidParameter', () => {
    expectInvalidParameter(
      () => encodeBinding({ additionalData: 'a\ud800' }),
      'additional_authenticated_data must be valid Unicode text.',
    );
  });

  it('when additional data is given, then no context (with or without additional data) encodes the same', () => {
    fc.assert(
      fc.property(contextArb, fc.string({ minLength: 1, maxLength: 20 }), contextArb, (context, data, other) => {
        const bound = encodeBinding({ context, additionalData: data });
        expect(bound.equals(encodeBinding({ context: other }))).toBe(false);
        // A context holding the data as a key or a value is another binding too.
        expect(bound.equals(encodeBinding({ context: { [data]: '' } }))).toBe(false);
        expect(bound.equals(encodeBinding({ context: { '': data } }))).toBe(false);
      }),
      { numRuns: 500 },
    );
  });

  it('when two bindings encode alike, then their contexts and additional data are the same', () => {
    const same = (a?: Readonly<Record<string, string>>, b?: Readonly<Record<string, string>>) =>
      JSON.stringify(Object.entries(a ?? {}).sort()) === JSON.stringify(Object.entries(b ?? {}).sort());
    fc.assert(
      fc.property(contextArb, dataArb, contextArb, dataArb, (c1, d1, c2, d2) => {
        const equal = encodeBinding({ context: c1, additionalData: d1 }).equals(
          encodeBinding({ context: c2, additionalData: d2 }),
        );
        expect(equal).toBe(same(c1, c2) && (d1 ?? '') === (d2 ?? ''));
      }),
      { numRuns: 1000 },
    );
  });
});
