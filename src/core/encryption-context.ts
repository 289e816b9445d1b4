/**
 * Canonical bytes of an encryption context, the part of the AES-GCM AAD that binds a ciphertext to its context
 * (layout and rationale: docs/ciphertext-format.md).
 *
 * ```
 * u16 BE  pair count
 * then, for each pair in ascending byte-wise (memcmp) order of the key's UTF-8 bytes:
 *   u16 BE  key length in bytes     ‖ key, UTF-8
 *   u16 BE  value length in bytes   ‖ value, UTF-8
 * ```
 *
 * Every field is length-prefixed: nsmithuk/local-kms concatenates keys and values without lengths, so
 * {"ab":"c"} and {"a":"bc"} give it the same AAD. Pairs are sorted by UTF-8 bytes, not by JS string order (UTF-16
 * code units), because the two orders differ above U+FFFF (aws-encryption-sdk learned this across languages).
 * An absent context and `{}` both encode as 00 00.
 */
import { KmsError } from './errors.js';

export type EncryptionContext = Readonly<Record<string, string>>;

const U16_MAX = 0xffff;

/** The canonical AAD bytes of `ctx`. Throws InvalidParameter for non-string values or lengths beyond u16. */
export function encodeEncryptionContext(ctx: EncryptionContext | undefined): Buffer {
  if (ctx === undefined) return Buffer.from([0, 0]);
  if (typeof ctx !== 'object' || ctx === null || Array.isArray(ctx)) {
    throw invalid('encryption_context must be an object of string values.');
  }
  const entries = Object.entries(ctx as Record<string, unknown>);
  if (entries.length > U16_MAX) throw invalid('encryption_context has too many pairs.');

  const pairs = entries.map(([key, value]) => {
    if (typeof value !== 'string') throw invalid('encryption_context must be an object of string values.');
    return { key: utf8(key), value: utf8(value) };
  });
  pairs.sort((a, b) => Buffer.compare(a.key, b.key));

  const parts: Buffer[] = [u16be(pairs.length)];
  for (const { key, value } of pairs) parts.push(u16be(key.length), key, u16be(value.length), value);
  return Buffer.concat(parts);
}

/**
 * UTF-8 bytes of a well-formed string. A lone surrogate would be replaced by U+FFFD, so two different contexts
 * would encode alike: refuse it instead.
 */
function utf8(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.toString('utf8') !== text) throw invalid('encryption_context must be valid Unicode text.');
  if (bytes.length > U16_MAX) throw invalid('encryption_context key or value is too long.');
  return bytes;
}

function u16be(n: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16BE(n);
  return out;
}

function invalid(message: string): KmsError {
  return new KmsError('InvalidParameter', message);
}
