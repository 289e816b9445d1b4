/**
 * The percent-encoding both signed dialects canonicalise paths and queries with (AWS SigV4, Huawei SDK-HMAC-SHA256).
 */

/** Decodes %XX escapes; a malformed escape leaves the text as it is, so a signature over it simply does not match. */
export function percentDecode(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** RFC 3986: everything but A-Z a-z 0-9 - _ . ~ becomes %XX (upper-case) of its UTF-8 bytes. */
export function uriEncode(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const unreserved =
      (byte >= 0x30 && byte <= 0x39) ||
      (byte >= 0x41 && byte <= 0x5a) ||
      (byte >= 0x61 && byte <= 0x7a) ||
      byte === 0x2d ||
      byte === 0x2e ||
      byte === 0x5f ||
      byte === 0x7e;
    out += unreserved ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
