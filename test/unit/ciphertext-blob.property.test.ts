import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { blobAad, decodeFrame, decodePayload, encodeBlob } from '../../src/core/ciphertext-blob.js';
import type { EncryptionContext } from '../../src/core/encryption-context.js';
import { KmsError } from '../../src/core/errors.js';
import {
  expectInvalidCiphertext,
  gcmOpen,
  gcmSeal,
  handBuiltBlob,
  thrownBy,
  withRecomputedChecksum,
} from './blob-test-kit.js';

const keyIdArb = fc.stringMatching(/^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$/);
const keyVersionArb = fc.nat({ max: 0xffff_ffff });
const bytes = (min: number, max: number) =>
  fc.uint8Array({ minLength: min, maxLength: max }).map((u) => Buffer.from(u.buffer, u.byteOffset, u.byteLength));
const contextArb = fc.option(fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 4 }), {
  nil: undefined,
});

/** Blob parts with ciphertext lengths 1..4096 (plus the tag), biased towards small and DEK-sized values. */
const partsArb = fc.record({
  keyId: keyIdArb,
  keyVersion: keyVersionArb,
  iv: bytes(12, 12),
  ciphertextWithTag: fc
    .oneof(fc.integer({ min: 1, max: 128 }), fc.constantFrom(1, 64, 4096), fc.integer({ min: 1, max: 4096 }))
    .chain((length) => bytes(length + 16, length + 16)),
});

/**
 * A blob sealed for real: node:crypto AES-256-GCM stands in for the HSM, under the AAD the service would give it.
 * Returns what a decrypting service would need to try to open a (possibly tampered) blob.
 */
const sealedArb = fc
  .record({
    key: bytes(32, 32),
    keyId: keyIdArb,
    keyVersion: keyVersionArb,
    iv: bytes(12, 12),
    plaintext: bytes(1, 96),
    context: contextArb,
  })
  .map((s) => {
    const aad = blobAad(s.keyId, s.keyVersion, s.plaintext.length, { context: s.context });
    const ciphertextWithTag = gcmSeal(s.key, s.iv, s.plaintext, aad);
    return { ...s, blob: encodeBlob({ keyId: s.keyId, keyVersion: s.keyVersion, iv: s.iv, ciphertextWithTag }) };
  });

/** What the data-key service does to decrypt: decode, rebuild the AAD, open with AES-GCM. Undefined if refused. */
function open(key: Buffer, blob: Buffer, context: EncryptionContext | undefined): Buffer | undefined {
  try {
    const frame = decodeFrame(blob);
    const payload = decodePayload(frame);
    const aad = blobAad(frame.keyId, frame.keyVersion, payload.plaintextLength, { context }, payload.kind);
    return gcmOpen(key, payload.iv, payload.ciphertextWithTag, aad);
  } catch (error) {
    if (error instanceof KmsError && error.code === 'InvalidCiphertext') return undefined;
    throw error;
  }
}

describe('ciphertext blob properties', () => {
  it('when any valid parts are encoded, then decoding gives them back and the bytes follow the documented layout', () => {
    fc.assert(
      fc.property(partsArb, (parts) => {
        const blob = encodeBlob(parts);
        expect(blob.equals(handBuiltBlob(parts.keyId, parts.keyVersion, parts.iv, parts.ciphertextWithTag))).toBe(true);
        const frame = decodeFrame(blob);
        expect(frame.keyId).toBe(parts.keyId);
        expect(frame.keyVersion).toBe(parts.keyVersion);
        const payload = decodePayload(frame);
        expect(payload.iv.equals(parts.iv)).toBe(true);
        expect(payload.ciphertextWithTag.equals(parts.ciphertextWithTag)).toBe(true);
        expect(payload.plaintextLength).toBe(parts.ciphertextWithTag.length - 16);
      }),
      { numRuns: 300 },
    );
  });

  it('when any single byte of a valid blob changes, then decodeFrame refuses it (the SHA-256 tail no longer matches)', () => {
    fc.assert(
      fc.property(partsArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (parts, at, flip) => {
        const blob = encodeBlob(parts);
        const index = at % blob.length;
        blob[index] = (blob[index] ?? 0) ^ flip;
        expectInvalidCiphertext(() => decodeFrame(blob));
      }),
      { numRuns: 500 },
    );
  });

  it('when a valid blob is truncated or extended, then decodeFrame refuses it', () => {
    fc.assert(
      fc.property(partsArb, fc.nat(), bytes(1, 64), (parts, cut, extra) => {
        const blob = encodeBlob(parts);
        expectInvalidCiphertext(() => decodeFrame(blob.subarray(0, cut % blob.length)));
        expectInvalidCiphertext(() => decodeFrame(Buffer.concat([blob, extra])));
        // Even a forger who extends and re-hashes cannot make N agree with the new length.
        expectInvalidCiphertext(() => decodeFrame(withRecomputedChecksum(Buffer.concat([blob, extra]))));
      }),
      { numRuns: 300 },
    );
  });

  it('when the header, payload format, key id or version is changed and the checksum recomputed, then decoding refuses it or the AAD changes', () => {
    fc.assert(
      fc.property(sealedArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (sealed, at, flip) => {
        const { blob } = sealed;
        const n = blob.readUInt16LE(2);
        // Authenticated-by-AAD bytes: [0, 5) (header and payload format) and [N-36, N+4) (key id and version).
        const positions = [0, 1, 2, 3, 4, ...Array.from({ length: 40 }, (_, i) => n - 36 + i)];
        const index = positions[at % positions.length] ?? 0;
        const forged = Buffer.from(blob);
        forged[index] = (forged[index] ?? 0) ^ flip;
        const rehashed = withRecomputedChecksum(forged);

        const original = blobAad(sealed.keyId, sealed.keyVersion, sealed.plaintext.length, { context: sealed.context });
        const error = thrownBy(() => {
          const frame = decodeFrame(rehashed);
          const payload = decodePayload(frame);
          expect(
            blobAad(
              frame.keyId,
              frame.keyVersion,
              payload.plaintextLength,
              { context: sealed.context },
              payload.kind,
            ).equals(original),
          ).toBe(false);
        });
        if (error !== undefined) expect(error).toMatchObject({ code: 'InvalidCiphertext' });
        // And so AES-GCM, the real gate, refuses it.
        expect(open(sealed.key, rehashed, sealed.context)).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });

  it('when any byte before the checksum is changed and the checksum recomputed, then AES-GCM refuses to open it', () => {
    fc.assert(
      fc.property(sealedArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (sealed, at, flip) => {
        const forged = Buffer.from(sealed.blob);
        const index = at % (forged.length - 32);
        forged[index] = (forged[index] ?? 0) ^ flip;
        expect(open(sealed.key, withRecomputedChecksum(forged), sealed.context)).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });

  it('when a sealed blob is opened with its own context, then it opens; with a different context, it does not', () => {
    fc.assert(
      fc.property(sealedArb, contextArb, (sealed, other) => {
        expect(open(sealed.key, sealed.blob, sealed.context)?.equals(sealed.plaintext)).toBe(true);
        const same =
          JSON.stringify(Object.entries(other ?? {}).sort()) ===
          JSON.stringify(Object.entries(sealed.context ?? {}).sort());
        fc.pre(!same);
        expect(open(sealed.key, sealed.blob, other)).toBeUndefined();
      }),
      { numRuns: 300 },
    );
  });

  it('when decodeFrame and decodePayload get arbitrary bytes, then they return or throw InvalidCiphertext, nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 400), (input) => {
        const error = thrownBy(() => decodePayload(decodeFrame(input)));
        if (error !== undefined) {
          expect(error).toBeInstanceOf(KmsError);
          expect(error).toMatchObject({ code: 'InvalidCiphertext', message: 'Invalid cipher_text.' });
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('when arbitrary bytes come in a well-formed frame (right version, N and checksum), then only InvalidCiphertext is thrown', () => {
    // Random bytes rarely pass the checksum, so build frames that do, and let the payload and key id be anything.
    const frameArb = fc
      .record({
        payload: fc.oneof(bytes(0, 64), bytes(0, 4200)),
        keyIdBytes: fc.oneof(
          bytes(36, 36),
          keyIdArb.map((id) => Buffer.from(id, 'ascii')),
        ),
        version: bytes(4, 4),
      })
      .map(({ payload, keyIdBytes, version }) => {
        const n = 4 + payload.length + 36;
        const head = Buffer.from([0x02, 0x00, n & 0xff, n >>> 8]);
        return withRecomputedChecksum(Buffer.concat([head, payload, keyIdBytes, version, Buffer.alloc(32)]));
      });
    fc.assert(
      fc.property(frameArb, (blob) => {
        const error = thrownBy(() => decodePayload(decodeFrame(blob)));
        if (error !== undefined)
          expect(error).toMatchObject({ code: 'InvalidCiphertext', message: 'Invalid cipher_text.' });
        if (error !== undefined) expect(error).toBeInstanceOf(KmsError);
      }),
      { numRuns: 1000 },
    );
  });
});
