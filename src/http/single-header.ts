/**
 * The one value of a header that must come once — a credential, a signature, a date, an operation's name — or
 * undefined when it is absent. Pass `req.headersDistinct`: node keeps only the first of some repeated headers
 * (Authorization) and joins others with ', ' (X-Auth-Token, X-Amz-Target) in `req.headers`, so a second value could
 * ride along unseen, or be checked in one place and acted on in another. A repeated header gets `repeated()`.
 */
export function singleHeader(
  headers: Readonly<Record<string, string | readonly string[] | undefined>>,
  name: string,
  repeated: () => Error,
): string | undefined {
  const value = headers[name.toLowerCase()];
  if (value === undefined || typeof value === 'string') return value;
  if (value.length !== 1) throw repeated();
  return value[0];
}

/** A header's name as people write it, for messages: `x-amz-date` is `X-Amz-Date`. */
export function headerDisplayName(name: string): string {
  return name.replace(/(^|-)([a-z])/g, (_, dash: string, letter: string) => dash + letter.toUpperCase());
}
