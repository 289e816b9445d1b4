import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ownStringMap } from '../../src/api/encryption-context.js';
import { type EncryptionContext, encodeEncryptionContext } from '../../src/core/encryption-context.js';
import { expectInvalidParameter } from './blob-test-kit.js';

/**
 * An independent parser of the canonical form. It refuses anything that is not exactly canonical (unsorted or
 * duplicate keys, trailing bytes), so `parse(encode(m))` deep-equal to `m` proves the encoding injective.
 */
function parseCanonical(bytes: Buffer): Record<string, string> {
  let offset = 0;
  const take = (length: number): Buffer => {
    if (offset + length > bytes.length) throw new Error('truncated');
    const out = bytes.subarray(offset, offset + length);
    offset += length;
    return out;
  };
  const u16 = (): number => take(2).readUInt16BE(0);
  const count = u16();
  const out: Record<string, string> = Object.create(null);
  let previousKey: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const key = take(u16());
    const value = take(u16());
    if (previousKey && Buffer.compare(previousKey, key) >= 0) throw new Error('keys not strictly ascending by bytes');
    previousKey = key;
    out[key.toString('utf8')] = value.toString('utf8');
  }
  if (offset !== bytes.length) throw new Error('trailing bytes');
  return out;
}

const contextArb = fc.dictionary(
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  {
    maxKeys: 8,
  },
);

describe('encodeEncryptionContext', () => {
  it('when the context is absent or empty, then both encode as a zero pair count (00 00)', () => {
    expect(encodeEncryptionContext(undefined).toString('hex')).toBe('0000');
    expect(encodeEncryptionContext({}).toString('hex')).toBe('0000');
  });

  it('when a context has one pair, then it is count ‖ key length ‖ key ‖ value length ‖ value, big-endian', () => {
    expect(encodeEncryptionContext({ a: 'bc' }).toString('hex')).toBe('0001' + '0001' + '61' + '0002' + '6263');
  });

  it('when two contexts concatenate to the same text ({"ab":"c"} and {"a":"bc"}), then their bytes still differ', () => {
    expect(encodeEncryptionContext({ ab: 'c' }).equals(encodeEncryptionContext({ a: 'bc' }))).toBe(false);
  });

  it('when keys sort differently by UTF-16 and by UTF-8, then the pairs follow the UTF-8 byte order', () => {
    // JS order: 'Z' < 'é' < '😀' (D83D) < '｡' (FF61); UTF-8 order: 5a < c3a9 < efbda1 < f09f9880.
    const ctx = { '｡': '3', '😀': '4', é: '2', Z: '1' };
    expect(Object.keys(ctx).sort()).toEqual(['Z', 'é', '😀', '｡']);
    expect(encodeEncryptionContext(ctx).toString('hex')).toBe(
      [
        '0004',
        '0001',
        '5a',
        '0001',
        '31',
        '0002',
        'c3a9',
        '0001',
        '32',
        '0003',
        'efbda1',
        '0001',
        '33',
        '0004',
        'f09f9880',
        '0001',
        '34',
      ].join(''),
    );
  });

  it('when a value is not a string, then it is an InvalidParameter', () => {
    for (const value of [1, true, null, undefined, { nested: 'x' }, ['x']]) {
      expectInvalidParameter(
        () => encodeEncryptionContext({ key: value } as unknown as EncryptionContext),
        'encryption_context must be an object of string values.',
      );
    }
  });

  it('when the context itself is null, an array or a string, then it is an InvalidParameter', () => {
    for (const ctx of [null, ['a'], 'a=b']) {
      expectInvalidParameter(
        () => encodeEncryptionContext(ctx as unknown as EncryptionContext),
        'encryption_context must be an object of string values.',
      );
    }
  });

  it('when a key or value holds a lone surrogate, then it is an InvalidParameter (it would encode like U+FFFD)', () => {
    expectInvalidParameter(
      () => encodeEncryptionContext({ '\uD800': 'x' }),
      'encryption_context must be valid Unicode text.',
    );
    expectInvalidParameter(
      () => encodeEncryptionContext({ x: 'a\uDC00' }),
      'encryption_context must be valid Unicode text.',
    );
  });

  it('when a value is 65535 bytes, then it encodes; at 65536 UTF-8 bytes (32768 × é), it is an InvalidParameter', () => {
    expect(encodeEncryptionContext({ k: 'x'.repeat(0xffff) }).length).toBe(2 + 2 + 1 + 2 + 0xffff);
    expectInvalidParameter(
      () => encodeEncryptionContext({ k: 'é'.repeat(0x8000) }),
      'encryption_context key or value is too long.',
    );
    expectInvalidParameter(
      () => encodeEncryptionContext({ ['é'.repeat(0x8000)]: 'v' }),
      'encryption_context key or value is too long.',
    );
  });

  it('when a context has 65536 pairs, then it is an InvalidParameter', () => {
    const ctx = Object.fromEntries(Array.from({ length: 0x10000 }, (_, i) => [String(i), '']));
    expectInvalidParameter(() => encodeEncryptionContext(ctx), 'encryption_context has too many pairs.');
  });

  it('when a context has a __proto__ key, then it is encoded like any other key', () => {
    const ctx = JSON.parse('{"__proto__":"x"}') as EncryptionContext;
    expect(parseCanonical(encodeEncryptionContext(ctx))).toEqual(JSON.parse('{"__proto__":"x"}'));
  });
});

describe('encodeEncryptionContext properties', () => {
  it('when any context is encoded, then an independent canonical parser gives it back (so the encoding is injective)', () => {
    fc.assert(
      fc.property(contextArb, (ctx) => {
        expect({ ...parseCanonical(encodeEncryptionContext(ctx)) }).toEqual({ ...ctx });
      }),
      { numRuns: 500 },
    );
  });

  it('when two contexts differ, then their encodings differ; when they are equal, the encodings are equal', () => {
    fc.assert(
      fc.property(contextArb, contextArb, (a, b) => {
        const sameMap = JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
        expect(encodeEncryptionContext(a).equals(encodeEncryptionContext(b))).toBe(sameMap);
      }),
      { numRuns: 500 },
    );
  });

  it('when contexts differ only at a key/value boundary, then their encodings differ', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 2 }), fc.string(), fc.nat(), (joined, rest, cut) => {
        const at = 1 + (cut % (joined.length - 1));
        const left = { [joined.slice(0, at)]: joined.slice(at) + rest };
        const right = { [joined]: rest };
        fc.pre(JSON.stringify(left) !== JSON.stringify(right));
        expect(encodeEncryptionContext(left).equals(encodeEncryptionContext(right))).toBe(false);
      }),
    );
  });

  it('when the same pairs are inserted in any order, then the encoding is the same', () => {
    const entriesArb = fc.uniqueArray(fc.tuple(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' })), {
      selector: ([key]) => key,
      maxLength: 10,
    });
    fc.assert(
      fc.property(
        entriesArb.chain((entries) =>
          fc.tuple(
            fc.constant(entries),
            fc.shuffledSubarray(entries, { minLength: entries.length, maxLength: entries.length }),
          ),
        ),
        ([entries, shuffled]) => {
          const a = encodeEncryptionContext(Object.fromEntries(entries));
          const b = encodeEncryptionContext(Object.fromEntries(shuffled));
          expect(a.equals(b)).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('ownStringMap, the dialects parser of a context', () => {
  it('when JSON names a key __proto__ or constructor, then the parsed context holds it as an own key and encodes it', () => {
    const parsed = ownStringMap(JSON.parse('{"__proto__":"tenant-a","constructor":"x"}')) as EncryptionContext;
    expect(Object.entries(parsed)).toEqual([
      ['__proto__', 'tenant-a'],
      ['constructor', 'x'],
    ]);
    const other = ownStringMap(JSON.parse('{"__proto__":"tenant-b","constructor":"x"}'));
    expect(encodeEncryptionContext(parsed)).not.toEqual(encodeEncryptionContext(other));
    expect(encodeEncryptionContext(parsed)).not.toEqual(
      encodeEncryptionContext(ownStringMap(JSON.parse('{"constructor":"x"}'))),
    );
  });

  it('when the value is not an object of strings, then it is refused (undefined)', () => {
    for (const value of [null, [], 'ctx', 1, { a: 1 }, { a: null }, { a: ['x'] }]) {
      expect(ownStringMap(value), JSON.stringify(value)).toBeUndefined();
    }
  });

  it('when any JSON object of strings is parsed, then every pair survives, whatever its key', () => {
    fc.assert(
      fc.property(
        fc.dictionary(
          fc.oneof(fc.constantFrom('__proto__', 'constructor', 'toString', 'valueOf'), fc.string()),
          fc.string(),
        ),
        (pairs) => {
          const json = `{${Object.entries(pairs)
            .map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`)
            .join(',')}}`;
          expect(Object.entries(ownStringMap(JSON.parse(json)) as EncryptionContext)).toEqual(Object.entries(pairs));
        },
      ),
      { numRuns: 300 },
    );
  });
});
