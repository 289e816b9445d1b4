/**
 * Test-side helpers for the ciphertext blob: an independent re-implementation of the layout with plain Buffer
 * operations (so golden vectors are checked against something other than the codec itself), and AES-256-GCM from
 * node:crypto standing in for the HSM.
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { expect } from 'vitest';
import { KmsError } from '../../src/core/errors.js';

/** The frame as docs/ciphertext-format.md draws it, byte by byte; payload format 0x01 (bytes) unless told. */
export function handBuiltBlob(
  keyId: string,
  keyVersion: number,
  iv: Buffer,
  ciphertextWithTag: Buffer,
  format = 0x01,
): Buffer {
  const payload = Buffer.concat([Buffer.from([format]), iv, ciphertextWithTag]);
  const n = 4 + payload.length + 36;
  const body = Buffer.concat([
    Buffer.from([0x02, 0x00, n & 0xff, n >>> 8]),
    payload,
    Buffer.from(keyId, 'ascii'),
    Buffer.from([keyVersion & 0xff, (keyVersion >>> 8) & 0xff, (keyVersion >>> 16) & 0xff, keyVersion >>> 24]),
  ]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/**
 * The AAD as docs/ciphertext-format.md draws it, given the canonical context bytes and, if any, the additional
 * authenticated data (appended as 01 ‖ u16 BE length ‖ UTF-8).
 */
export function handBuiltAad(
  keyId: string,
  keyVersion: number,
  plaintextLength: number,
  contextBytes: Buffer,
  additionalData = '',
  format = 0x01,
): Buffer {
  const n = 4 + 1 + 12 + plaintextLength + 16 + 36;
  const data = Buffer.from(additionalData, 'utf8');
  const trailer =
    data.length === 0
      ? Buffer.alloc(0)
      : Buffer.concat([Buffer.from([0x01, data.length >>> 8, data.length & 0xff]), data]);
  return Buffer.concat([
    Buffer.from([0x02, 0x00, n & 0xff, n >>> 8, format]),
    Buffer.from(keyId, 'ascii'),
    Buffer.from([keyVersion & 0xff, (keyVersion >>> 8) & 0xff, (keyVersion >>> 16) & 0xff, keyVersion >>> 24]),
    contextBytes,
    trailer,
  ]);
}

/** Recomputes the SHA-256 tail, as a forger who knows the (unkeyed) checksum would. */
export function withRecomputedChecksum(blob: Buffer): Buffer {
  const body = blob.subarray(0, blob.length - 32);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

export function gcmSeal(key: Buffer, iv: Buffer, plaintext: Buffer, aad: Buffer): Buffer {
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  cipher.setAAD(aad);
  return Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

/** The plaintext, or undefined when the tag check fails (what the HSM's CKR_ENCRYPTED_DATA_INVALID would mean). */
export function gcmOpen(key: Buffer, iv: Buffer, ciphertextWithTag: Buffer, aad: Buffer): Buffer | undefined {
  if (iv.length !== 12 || ciphertextWithTag.length < 16) return undefined;
  const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  decipher.setAAD(aad);
  decipher.setAuthTag(ciphertextWithTag.subarray(ciphertextWithTag.length - 16));
  try {
    return Buffer.concat([
      decipher.update(ciphertextWithTag.subarray(0, ciphertextWithTag.length - 16)),
      decipher.final(),
    ]);
  } catch {
    return undefined;
  }
}

/** Runs `fn` and returns what it threw (undefined if it returned). */
export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
    return undefined;
  } catch (error) {
    return error;
  }
}

export function expectInvalidCiphertext(fn: () => unknown): void {
  const error = thrownBy(fn);
  expect(error).toBeInstanceOf(KmsError);
  expect(error).toMatchObject({ code: 'InvalidCiphertext', message: 'Invalid cipher_text.' });
}

export function expectInvalidParameter(fn: () => unknown, message?: string): void {
  const error = thrownBy(fn);
  expect(error).toBeInstanceOf(KmsError);
  expect(error).toMatchObject(
    message === undefined ? { code: 'InvalidParameter' } : { code: 'InvalidParameter', message },
  );
}
