/**
 * What a ciphertext is bound to besides its key: the encryption context (a map, every dialect) and the additional
 * authenticated data (a string, Huawei's `additional_authenticated_data`). Both must be given again, identical, to
 * decrypt. Their canonical bytes end the AES-GCM AAD (layout and rationale: docs/ciphertext-format.md):
 *
 * ```
 * canonical encryption context (./encryption-context.ts)
 * then, only when the additional data is a non-empty string:
 *   01       binding tag: additional authenticated data follows
 *   u16 BE   its length in bytes (1..128)
 *   UTF-8 bytes
 * ```
 *
 * The context encoding is self-delimiting (a pair count, then length-prefixed fields), so no context's bytes are a
 * prefix of another's: a trailer can never be read as part of a context, and a context can never stand in for a
 * trailer. Without additional data nothing is appended, so every blob made before the field existed keeps its AAD
 * byte for byte. An empty string means the same as an absent one, as `{}` means the same as no context.
 */
import { type EncryptionContext, encodeEncryptionContext } from './encryption-context.js';
import { KmsError } from './errors.js';

export interface CiphertextBinding {
  readonly context?: EncryptionContext | undefined;
  readonly additionalData?: string | undefined;
}

/** Huawei's limit on additional_authenticated_data: "any string, at most 128 bytes". */
export const MAX_ADDITIONAL_DATA_BYTES = 128;

const ADDITIONAL_DATA_TAG = 0x01;

/** The canonical binding bytes. Throws InvalidParameter for a bad context, or additional data beyond 128 bytes. */
export function encodeBinding(binding: CiphertextBinding): Buffer {
  const context = encodeEncryptionContext(binding.context);
  const trailer = additionalDataBytes(binding.additionalData);
  if (trailer === undefined) return context;
  const length = Buffer.alloc(2);
  length.writeUInt16BE(trailer.length);
  return Buffer.concat([context, Buffer.from([ADDITIONAL_DATA_TAG]), length, trailer]);
}

/** The UTF-8 bytes of the additional data; undefined when there is none (absent or ''). */
function additionalDataBytes(data: string | undefined): Buffer | undefined {
  if (data === undefined || data === '') return undefined;
  if (typeof data !== 'string') throw invalid('additional_authenticated_data must be a string.');
  const bytes = Buffer.from(data, 'utf8');
  // A lone surrogate would encode as U+FFFD, so two different strings would bind alike.
  if (bytes.toString('utf8') !== data) throw invalid('additional_authenticated_data must be valid Unicode text.');
  if (bytes.length > MAX_ADDITIONAL_DATA_BYTES) {
    throw invalid(`additional_authenticated_data must be at most ${MAX_ADDITIONAL_DATA_BYTES} bytes of UTF-8.`);
  }
  return bytes;
}

function invalid(message: string): KmsError {
  return new KmsError('InvalidParameter', message);
}
