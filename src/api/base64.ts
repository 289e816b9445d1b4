/** Padded base64 (RFC 4648 §4). Node's decoder silently skips what is not base64, so every dialect checks first. */
const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The bytes of a well-formed base64 string, or undefined if it is not one. */
export function decodeBase64(value: string): Buffer | undefined {
  return BASE64_PATTERN.test(value) ? Buffer.from(value, 'base64') : undefined;
}
