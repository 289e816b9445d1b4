import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { KmsError } from '../core/errors.js';
import { headerDisplayName } from '../http/single-header.js';
import { isoBasicDate, parseIsoBasicDate } from './iso-basic-date.js';
import type { SecretLookup } from './sigv4.js';
import { percentDecode, uriEncode } from './uri-encoding.js';

/**
 * Huawei Cloud's AK/SK request signature, SDK-HMAC-SHA256, as Huawei's "API Request Signing Guide" describes it and
 * as the Python, Node and Go SDKs compute it (../shared/reference/huawei-sdk.md §B):
 *
 *   CanonicalRequest = METHOD \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n SignedHeaders \n hex(SHA256(body))
 *   StringToSign     = "SDK-HMAC-SHA256" \n X-Sdk-Date \n hex(SHA256(CanonicalRequest))
 *   Signature        = hex(HMAC-SHA256(key = SK as UTF-8, StringToSign))
 *   Authorization: SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<names>, Signature=<hex>
 *
 * The SDKs sign different header sets (Python: content-type;host;user-agent;x-project-id;x-sdk-date, Node:
 * content-type;host;x-project-id;x-sdk-date, Go: user-agent;x-project-id;x-sdk-date), so the canonical headers are
 * rebuilt from the names the request itself lists; only x-sdk-date must be among them, as Huawei's gateway requires.
 * The body hash is over the raw bytes received: Python sends `", "`/`": "` separators and `\uXXXX` escapes, which
 * re-serialised JSON would lose.
 *
 * Verification runs in two steps so that a large body is never read for a request that cannot be genuine: everything
 * the head of the request can prove (shape, date, access key) first, then, once the body is in, the signature.
 */

export const HUAWEI_ALGORITHM = 'SDK-HMAC-SHA256';

/** The head of a request, as it came on the wire. */
export interface HuaweiSignedHead {
  readonly method: string;
  /** The raw path, still percent-encoded, without the query. */
  readonly path: string;
  /** The raw query string without '?', may be ''. */
  readonly query: string;
  /**
   * Lower-case names to every value received (Node's `req.headersDistinct`): `req.headers` silently keeps one of two
   * Authorization headers, and a repeated header must be refused, not half-verified.
   */
  readonly headers: Readonly<Record<string, readonly string[] | undefined>>;
}

export interface HuaweiSignatureOptions {
  /** Milliseconds since the epoch. */
  readonly now: () => number;
  /** How far X-Sdk-Date may be from `now`, either way; default 15 minutes, as Huawei's API gateway. */
  readonly maxSkewMs?: number;
}

/** A request whose head checked out; `verify` checks its signature over the body received. */
export interface PendingHuaweiSignature {
  readonly accessKeyId: string;
  /** The project the access key belongs to. */
  readonly projectId: string;
  /** Throws KmsError AuthSignatureMismatch unless the request was signed, as received, with the access key's SK. */
  verify(body: Buffer): void;
}

const DEFAULT_MAX_SKEW_MS = 15 * 60 * 1000;
const SIGNATURE = /^[0-9a-f]{64}$/;
/** An HTTP token (RFC 9110), lower-case: what a header name in SignedHeaders may be. */
const HEADER_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]+$/;
/** Values echoed in error messages only when they are this plain: a message never carries what a client sent blind. */
const ECHOABLE = /^[A-Za-z0-9._-]{1,64}$/;
const AUTHORIZATION_PARTS = ['Access', 'SignedHeaders', 'Signature'] as const;
/** Headers whose repetition would leave in doubt which value was signed or acted on, signed or not. */
const SINGLE_HEADERS = ['authorization', 'x-sdk-date', 'x-project-id', 'x-sdk-content-sha256'] as const;
const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
const SIGNATURE_MISMATCH =
  'The request signature does not match: check the SK, and that the method, path, query, signed headers and body ' +
  'are sent exactly as they were signed.';

/**
 * Checks everything the head of an SDK-HMAC-SHA256 request can prove, in order: no repeated header, the
 * Authorization's shape and algorithm, the signed header list, X-Sdk-Date signed and within the window, and last the
 * access key (the one credential lookup). Every failure is a KmsError whose message says what was wrong.
 */
export async function openHuaweiSignature(
  head: HuaweiSignedHead,
  lookup: SecretLookup,
  options: HuaweiSignatureOptions,
): Promise<PendingHuaweiSignature> {
  for (const name of SINGLE_HEADERS) {
    if (valuesOf(head, name).length > 1) incomplete(`The ${headerDisplayName(name)} header is given more than once.`);
  }
  const authorization = single(head, 'authorization') ?? incomplete('The Authorization header is missing.');
  const { accessKeyId, signedHeaders, signature } = parseAuthorization(authorization);
  const signedNames = checkedSignedNames(signedHeaders);
  const values = signedNames.map((name) => {
    const received = valuesOf(head, name);
    if (received.length === 0) incomplete(`The signed header '${name}' is not in the request.`);
    if (received.length > 1) incomplete(`The signed header '${name}' is given more than once.`);
    return (received[0] as string).trim();
  });
  if (!signedNames.includes('x-sdk-date')) {
    incomplete(
      valuesOf(head, 'x-sdk-date').length === 0
        ? 'The X-Sdk-Date header is missing: it must be sent and signed.'
        : 'X-Sdk-Date must be signed: SignedHeaders does not name x-sdk-date.',
    );
  }
  const sdkDate = values[signedNames.indexOf('x-sdk-date')] as string;
  checkDate(sdkDate, options.now(), options.maxSkewMs ?? DEFAULT_MAX_SKEW_MS);
  // We issue no temporary credentials, so a security token is one this service cannot have issued.
  if (valuesOf(head, 'x-security-token').length > 0) {
    throw new KmsError(
      'AuthUnknownCredential',
      'Temporary credentials (X-Security-Token) are not accepted: sign with an access key of the project.',
    );
  }
  const declaredHash = single(head, 'x-sdk-content-sha256');
  if (declaredHash === UNSIGNED_PAYLOAD) {
    incomplete(`The body must be signed: X-Sdk-Content-Sha256 '${UNSIGNED_PAYLOAD}' is not accepted.`);
  }

  const { projectId, secretAccessKey } = await lookup(accessKeyId).catch((err: unknown) => {
    if (err instanceof KmsError && err.code === 'AuthUnknownCredential') {
      const named = ECHOABLE.test(accessKeyId) ? ` '${accessKeyId}'` : '';
      throw new KmsError('AuthUnknownCredential', `The access key${named} is unknown or revoked.`);
    }
    throw err;
  });

  return {
    accessKeyId,
    projectId,
    verify(body: Buffer) {
      const bodyHash = sha256Hex(body);
      // The SDKs put their own payload hash in this header when they have one; it must then be the body's.
      if (declaredHash !== undefined && declaredHash !== bodyHash) {
        throw new KmsError('AuthSignatureMismatch', 'X-Sdk-Content-Sha256 does not match the body received.');
      }
      const canonicalRequest = huaweiCanonicalRequest({
        method: head.method,
        path: head.path,
        query: head.query,
        headers: signedNames.map((name, i) => [name, values[i] as string] as const),
        bodyHash,
      });
      const expected = createHmac('sha256', secretAccessKey)
        .update(huaweiStringToSign(sdkDate, canonicalRequest), 'utf8')
        .digest();
      if (!timingSafeEqual(expected, Buffer.from(signature, 'hex'))) {
        throw new KmsError('AuthSignatureMismatch', SIGNATURE_MISMATCH);
      }
    },
  };
}

export interface CanonicalRequestParts {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  /** The signed headers in SignedHeaders order, values trimmed. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  /** Lower-case hex SHA-256 of the body. */
  readonly bodyHash: string;
}

/** The canonical request of §B.1 step 5: every header line ends in '\n', so an empty line follows the headers. */
export function huaweiCanonicalRequest(parts: CanonicalRequestParts): string {
  return [
    parts.method.toUpperCase(),
    canonicalUri(parts.path),
    canonicalQuery(parts.query),
    parts.headers.map(([name, value]) => `${name}:${value}\n`).join(''),
    parts.headers.map(([name]) => name).join(';'),
    parts.bodyHash,
  ].join('\n');
}

export function huaweiStringToSign(sdkDate: string, canonicalRequest: string): string {
  return `${HUAWEI_ALGORITHM}\n${sdkDate}\n${sha256Hex(canonicalRequest)}`;
}

/** `SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…`: each part once, nothing else. */
function parseAuthorization(header: string) {
  const space = header.indexOf(' ');
  const algorithm = space === -1 ? header : header.slice(0, space);
  if (algorithm !== HUAWEI_ALGORITHM) {
    const named = ECHOABLE.test(algorithm) ? ` '${algorithm}'` : '';
    incomplete(`Unsupported signing algorithm${named}: only ${HUAWEI_ALGORITHM} is accepted.`);
  }
  const parts = new Map<string, string>();
  for (const part of header.slice(space + 1).split(',')) {
    const trimmed = part.trim();
    const eq = trimmed.indexOf('=');
    const name = eq === -1 ? trimmed : trimmed.slice(0, eq);
    if (!(AUTHORIZATION_PARTS as readonly string[]).includes(name)) {
      incomplete(
        `The Authorization header is malformed: expected '${HUAWEI_ALGORITHM} Access=<AK>, SignedHeaders=<names>, ` +
          `Signature=<hex>'${ECHOABLE.test(name) ? `, got a part '${name}'` : ''}.`,
      );
    }
    if (parts.has(name)) incomplete(`The Authorization header gives ${name} more than once.`);
    parts.set(name, trimmed.slice(eq + 1));
  }
  const [accessKeyId, signedHeaders, signature] = AUTHORIZATION_PARTS.map(
    (name) => parts.get(name) || incomplete(`The Authorization header lacks ${name}.`),
  ) as [string, string, string];
  if (!SIGNATURE.test(signature)) incomplete('The Signature must be 64 lower-case hexadecimal characters.');
  return { accessKeyId, signedHeaders, signature };
}

/** The SDKs all lower-case and sort the names; anything else could only be a different canonical request. */
function checkedSignedNames(signedHeaders: string): string[] {
  const names = signedHeaders.split(';');
  names.forEach((name, i) => {
    if (!HEADER_NAME.test(name) || (i > 0 && name <= (names[i - 1] as string))) {
      incomplete('SignedHeaders must list lower-case header names, sorted, each once, separated by ";".');
    }
  });
  return names;
}

function checkDate(sdkDate: string, now: number, maxSkewMs: number): void {
  const time = parseIsoBasicDate(sdkDate);
  if (Number.isNaN(time)) {
    incomplete('X-Sdk-Date must be a UTC time written YYYYMMDDTHHMMSSZ, e.g. 20261202T054553Z.');
  }
  const window = `${maxSkewMs / 60_000} minutes`;
  if (time < now - maxSkewMs) {
    throw new KmsError(
      'AuthExpired',
      `The request has expired: X-Sdk-Date ${sdkDate} is more than ${window} before the server time ${isoBasicDate(now)}.`,
    );
  }
  if (time > now + maxSkewMs) {
    throw new KmsError(
      'AuthSignatureMismatch',
      `X-Sdk-Date ${sdkDate} is more than ${window} after the server time ${isoBasicDate(now)}: check the client's clock.`,
    );
  }
}

/** Each segment percent-decoded, then RFC 3986 encoded, and a trailing '/' (which the request itself omits). */
function canonicalUri(path: string): string {
  const uri = path
    .split('/')
    .map((segment) => uriEncode(percentDecode(segment)))
    .join('/');
  return uri.endsWith('/') ? uri : `${uri}/`;
}

/**
 * Parameters sorted by name, then by value, each `name=value` RFC 3986 encoded. The SDKs send a space as '+'
 * (Python's urlencode, Go's url.Values) but sign it as %20, so '+' is decoded as a space first.
 */
function canonicalQuery(query: string): string {
  const pairs: Array<readonly [string, string]> = [];
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const decode = (text: string) => percentDecode(text.replaceAll('+', ' '));
    pairs.push([decode(eq === -1 ? part : part.slice(0, eq)), decode(eq === -1 ? '' : part.slice(eq + 1))]);
  }
  pairs.sort(([an, av], [bn, bv]) => compare(an, bn) || compare(av, bv));
  return pairs.map(([name, value]) => `${uriEncode(name)}=${uriEncode(value)}`).join('&');
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Every value of a header. Own properties only: SignedHeaders is the client's text, and a name such as `constructor`
 * or `__proto__` must find nothing, whatever object the headers come in.
 */
function valuesOf(head: HuaweiSignedHead, name: string): readonly string[] {
  return (Object.hasOwn(head.headers, name) ? head.headers[name] : undefined) ?? [];
}

function single(head: HuaweiSignedHead, name: string): string | undefined {
  return valuesOf(head, name)[0];
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function incomplete(message: string): never {
  throw new KmsError('AuthIncomplete', message);
}
