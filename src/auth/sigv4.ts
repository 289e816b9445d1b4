import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { KmsError } from '../core/errors.js';
import { headerDisplayName, singleHeader } from '../http/single-header.js';
import { isoBasicDate, parseIsoBasicDate } from './iso-basic-date.js';
import { percentDecode, uriEncode } from './uri-encoding.js';

/**
 * AWS Signature Version 4, header form only (`Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…,
 * Signature=…`), as AWS documents it ("Create a signed AWS API request", "Elements of an AWS API request
 * signature") and as @smithy/signature-v4, the AWS SDK's own signer, computes it.
 *
 * The checks run in the order AWS's front end runs them, and their messages are AWS's own, because SDKs and
 * operators match on them (clock-skew retries look for "Signature expired" / "Signature not yet current"):
 * missing parts → algorithm → credential shape → date format → validity window → `host`, the date and the
 * required headers signed → credential scope → session token → payload mode → access key → payload hash →
 * signature. A header read as one value (Authorization, the date, a required header) is refused when repeated.
 *
 * Everything up to the access key is checked on the request's head alone (`authenticateSigV4`), so that a request
 * of an unknown or revoked key is refused before its body is read; the body's hash and the signature follow
 * (`SigV4Check.verify`).
 */

export interface SigV4Request {
  readonly method: string;
  /** The raw request path as it came on the wire (still percent-encoded), e.g. '/'. */
  readonly path: string;
  /** The raw query string without '?', may be ''. */
  readonly query: string;
  /**
   * Node's IncomingHttpHeaders (lower-case names). Pass `req.headersDistinct` to keep repeated headers apart: AWS
   * joins their values with ',' whereas `req.headers` joins them with ', '.
   */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Buffer;
}

/** A request before its body is read. */
export type SigV4RequestHead = Omit<SigV4Request, 'body'>;

/** The checks left once the access key is known: the body's hash and the signature. */
export interface SigV4Check {
  /** Verifies the signature over the head and this body, and returns who signed it. Throws KmsError. */
  verify(body: Buffer): VerifiedCaller;
}

export interface SigV4Options {
  /** The signing name of the service, e.g. 'kms'. */
  readonly service: string;
  /** The regions the operator configures; a scope for another region is refused. */
  readonly regions: readonly string[];
  /** Milliseconds since the epoch. */
  readonly now: () => number;
  /** How far the request time may be from `now`; default 15 minutes, as AWS. */
  readonly maxSkewMs?: number;
  /**
   * Headers, besides `host` and the date, that the signature must cover, because they say what the request does
   * (the KMS dialect's `x-amz-target`): unsigned, a captured DescribeKey could be replayed as ScheduleKeyDeletion.
   */
  readonly requiredSignedHeaders?: readonly string[];
}

/** Resolves an access key to its secret; throws KmsError AuthUnknownCredential for an unknown or revoked key. */
export type SecretLookup = (accessKeyId: string) => Promise<{ projectId: string; secretAccessKey: string }>;

export interface VerifiedCaller {
  readonly accessKeyId: string;
  readonly projectId: string;
  readonly region: string;
}

const ALGORITHM = 'AWS4-HMAC-SHA256';
const TERMINATOR = 'aws4_request';
const DEFAULT_MAX_SKEW_MS = 15 * 60 * 1000;
const SCOPE_DATE = /^\d{8}$/;
const UNSIGNED_PAYLOAD = 'UNSIGNED-PAYLOAD';
const SIGNATURE_MISMATCH =
  'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key ' +
  'and signing method. Consult the service documentation for details.';
/** Signing keys are valid for a whole day: one per (secret, date, region, service) is enough. */
const SIGNING_KEY_CACHE_LIMIT = 1024;
const signingKeys = new Map<string, Buffer>();

/** Verifies the request's SigV4 signature and returns who signed it. Every failure is a KmsError. */
export async function verifySigV4(
  request: SigV4Request,
  lookup: SecretLookup,
  options: SigV4Options,
): Promise<VerifiedCaller> {
  const check = await authenticateSigV4(request, lookup, options);
  return check.verify(request.body);
}

/**
 * Checks the signature's parts that the request's head carries and resolves its access key: an unknown or revoked
 * key is refused here, before anyone waits for the body. Every failure is a KmsError.
 */
export async function authenticateSigV4(
  request: SigV4RequestHead,
  lookup: SecretLookup,
  options: SigV4Options,
): Promise<SigV4Check> {
  const authorization = single(request.headers, 'authorization');
  const queryAuth = /(?:^|&)X-Amz-Algorithm=/.test(request.query);
  if (authorization !== undefined && queryAuth) {
    throw new KmsError(
      'AuthSignatureMismatch',
      "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.",
    );
  }
  if (queryAuth) {
    throw new KmsError(
      'AuthIncomplete',
      'Query-string authentication is not supported: sign the Authorization header.',
    );
  }
  // AWS answers a non-SigV4 Authorization (Basic, Bearer, …) as if there were none.
  if (authorization === undefined || !authorization.trim().startsWith('AWS4-')) {
    throw new KmsError('AuthMissing', 'Missing Authentication Token');
  }

  const { algorithm, credential, signedHeaders, signature } = parseAuthorization(authorization);
  const xAmzDate = single(request.headers, 'x-amz-date');
  const httpDate = single(request.headers, 'date');
  const missing = [
    credential === undefined ? "Authorization header requires 'Credential' parameter." : '',
    signature === undefined ? "Authorization header requires 'Signature' parameter." : '',
    signedHeaders === undefined ? "Authorization header requires 'SignedHeaders' parameter." : '',
    xAmzDate === undefined && httpDate === undefined
      ? "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
      : '',
  ].filter(Boolean);
  if (missing.length > 0 || credential === undefined || signature === undefined || signedHeaders === undefined) {
    throw new KmsError('AuthIncomplete', `${missing.join(' ')} Authorization=${authorization}`);
  }
  if (algorithm !== ALGORITHM) {
    throw new KmsError('AuthIncomplete', `Unsupported AWS 'algorithm': '${algorithm}' (only ${ALGORITHM} for now).`);
  }
  const scope = credential.split('/');
  const [accessKeyId, scopeDate, region, service, terminator] = scope;
  if (scope.length !== 5 || !accessKeyId || !scopeDate || !region || !service || !terminator) {
    throw new KmsError(
      'AuthIncomplete',
      `Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '${credential}'`,
    );
  }

  // The time is X-Amz-Date, else the HTTP Date header; whichever it is must itself be signed.
  const dateHeader = xAmzDate !== undefined ? 'x-amz-date' : 'date';
  const requestTime = xAmzDate !== undefined ? parseIsoBasicDate(xAmzDate) : Date.parse(httpDate ?? '');
  if (Number.isNaN(requestTime)) {
    throw new KmsError(
      'AuthIncomplete',
      `Date must be in ISO-8601 'basic format'. Got '${xAmzDate ?? httpDate}'. See http://en.wikipedia.org/wiki/ISO_8601`,
    );
  }
  const amzDate = isoBasicDate(requestTime);
  checkValidityWindow(requestTime, options.now(), options.maxSkewMs ?? DEFAULT_MAX_SKEW_MS);

  const signedNames = canonicalHeaderNames(signedHeaders);
  if (!signedNames.includes('host')) {
    throw new KmsError(
      'AuthSignatureMismatch',
      "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
    );
  }
  for (const required of [dateHeader, ...(options.requiredSignedHeaders ?? [])]) {
    if (!signedNames.includes(required)) {
      throw new KmsError(
        'AuthSignatureMismatch',
        `'${headerDisplayName(required)}' must be a 'SignedHeader' in the AWS Authorization.`,
      );
    }
    single(request.headers, required);
  }

  const scopeErrors = [
    options.regions.includes(region) ? '' : `Credential should be scoped to a valid region, not '${region}'.`,
    service === options.service ? '' : `Credential should be scoped to correct service: '${options.service}'.`,
    terminator === TERMINATOR
      ? ''
      : `Credential should be scoped with a valid terminator: '${TERMINATOR}', not '${terminator}'.`,
    scopeDate === amzDate.slice(0, 8) && SCOPE_DATE.test(scopeDate)
      ? ''
      : `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${scopeDate}' != '${amzDate.slice(0, 8)}', from '${amzDate}'.`,
  ].filter(Boolean);
  if (scopeErrors.length > 0) throw new KmsError('AuthSignatureMismatch', scopeErrors.join(' '));

  // We issue no temporary credentials, so any session token is one we cannot have issued.
  if (request.headers['x-amz-security-token'] !== undefined) {
    throw new KmsError('AuthUnknownCredential', 'The security token included in the request is invalid.');
  }

  const declaredPayloadHash = signedPayloadHash(request.headers);
  const { projectId, secretAccessKey } = await lookup(accessKeyId);

  return {
    verify(body: Buffer): VerifiedCaller {
      const canonicalRequest = [
        request.method.toUpperCase(),
        canonicalUri(request.path),
        canonicalQuery(request.query),
        signedNames.map((name) => `${name}:${canonicalHeaderValue(request.headers[name])}\n`).join(''),
        signedNames.join(';'),
        checkedPayloadHash(declaredPayloadHash, body),
      ].join('\n');
      const credentialScope = `${scopeDate}/${region}/${service}/${TERMINATOR}`;
      const stringToSign = [ALGORITHM, amzDate, credentialScope, sha256Hex(canonicalRequest)].join('\n');
      const expected = createHmac('sha256', signingKey(secretAccessKey, scopeDate, region, service))
        .update(stringToSign, 'utf8')
        .digest('hex');
      if (!constantTimeEqual(expected, signature)) throw new KmsError('AuthSignatureMismatch', SIGNATURE_MISMATCH);
      return { accessKeyId, projectId, region };
    },
  };
}

/**
 * A header the verifier reads as one value. Repeated, it is refused: of two Authorization headers node's `req.headers`
 * keeps the first, so a second could ride along unchecked, and which of two dates or targets was meant is a guess.
 */
function single(headers: SigV4Request['headers'], name: string): string | undefined {
  return singleHeader(
    headers,
    name,
    () => new KmsError('AuthIncomplete', `The '${headerDisplayName(name)}' header must be given once, not repeated.`),
  );
}

/** `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`; AWS accepts commas, spaces or both between parts. */
function parseAuthorization(header: string) {
  const [algorithm = '', ...parts] = header.trim().split(/[\s,]+/);
  const params = new Map<string, string>();
  for (const part of parts) {
    const eq = part.indexOf('=');
    const name = part.slice(0, eq);
    if (eq > 0 && !params.has(name)) params.set(name, part.slice(eq + 1));
  }
  const nonEmpty = (name: string) => params.get(name) || undefined;
  return {
    algorithm,
    credential: nonEmpty('Credential'),
    signedHeaders: nonEmpty('SignedHeaders'),
    signature: nonEmpty('Signature'),
  };
}

function checkValidityWindow(requestTime: number, now: number, maxSkewMs: number): void {
  const window = `${maxSkewMs / 60_000} min.`;
  if (requestTime < now - maxSkewMs) {
    throw new KmsError(
      'AuthSignatureMismatch',
      `Signature expired: ${isoBasicDate(requestTime)} is now earlier than ${isoBasicDate(now - maxSkewMs)} (${isoBasicDate(now)} - ${window})`,
    );
  }
  if (requestTime > now + maxSkewMs) {
    throw new KmsError(
      'AuthSignatureMismatch',
      `Signature not yet current: ${isoBasicDate(requestTime)} is still later than ${isoBasicDate(now + maxSkewMs)} (${isoBasicDate(now)} + ${window})`,
    );
  }
}

/** The payload hash the client declares in x-amz-content-sha256, if any; it must be a hash of the body. */
function signedPayloadHash(headers: SigV4RequestHead['headers']): string | undefined {
  const declared = single(headers, 'x-amz-content-sha256');
  // S3's streaming and unsigned modes would leave the body unauthenticated; KMS never uses them.
  if (declared === UNSIGNED_PAYLOAD || declared?.startsWith('STREAMING-')) {
    throw new KmsError(
      'AuthSignatureMismatch',
      `The payload must be signed: x-amz-content-sha256 '${declared}' is not accepted.`,
    );
  }
  return declared;
}

/** The payload hash the client signed: the declared one, which must then be the body's, or the body's. */
function checkedPayloadHash(declared: string | undefined, body: Buffer): string {
  const bodyHash = sha256Hex(body);
  if (declared === undefined) return bodyHash;
  if (declared.toLowerCase() !== bodyHash) {
    throw new KmsError(
      'AuthSignatureMismatch',
      "The provided 'x-amz-content-sha256' header does not match what was computed.",
    );
  }
  return declared;
}

function canonicalHeaderNames(signedHeaders: string): string[] {
  const names = new Set(signedHeaders.split(';').map((name) => name.trim().toLowerCase()));
  names.delete('');
  return [...names].sort();
}

/** Trimmed, inner whitespace runs collapsed, repeated headers joined with ',' (as @smithy/signature-v4). */
function canonicalHeaderValue(value: string | string[] | undefined): string {
  const values = value === undefined ? [] : Array.isArray(value) ? value : [value];
  return values.map((v) => v.trim().replace(/\s+/g, ' ')).join(',');
}

/**
 * Non-S3 services normalise the path (empty, '.' and '..' segments removed) and URI-encode each segment of the
 * path as it came on the wire, so an encoded character is encoded twice ('%3A' → '%253A'), as the SDKs sign it.
 */
function canonicalUri(path: string): string {
  const segments: string[] = [];
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') segments.pop();
    else segments.push(segment);
  }
  const trailingSlash = segments.length > 0 && path.endsWith('/') ? '/' : '';
  return `/${segments.map(uriEncode).join('/')}${trailingSlash}`;
}

/** Parameters decoded, then RFC 3986 encoded, sorted by name and then by value; a bare name gets '='. */
function canonicalQuery(query: string): string {
  const pairs: Array<readonly [string, string]> = [];
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq === -1 ? part : part.slice(0, eq);
    const value = eq === -1 ? '' : part.slice(eq + 1);
    pairs.push([uriEncode(percentDecode(name)), uriEncode(percentDecode(value))]);
  }
  pairs.sort(([an, av], [bn, bv]) => compare(an, bn) || compare(av, bv));
  return pairs.map(([name, value]) => `${name}=${value}`).join('&');
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function sha256Hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function signingKey(secret: string, date: string, region: string, service: string): Buffer {
  const cacheKey = `${date}\n${region}\n${service}\n${secret}`;
  const cached = signingKeys.get(cacheKey);
  if (cached) return cached;
  const kDate = createHmac('sha256', `AWS4${secret}`).update(date).digest();
  const kRegion = createHmac('sha256', kDate).update(region).digest();
  const kService = createHmac('sha256', kRegion).update(service).digest();
  const key = createHmac('sha256', kService).update(TERMINATOR).digest();
  if (signingKeys.size >= SIGNING_KEY_CACHE_LIMIT) {
    const oldest = signingKeys.keys().next().value;
    if (oldest !== undefined) signingKeys.delete(oldest);
  }
  signingKeys.set(cacheKey, key);
  return key;
}

function constantTimeEqual(expectedHex: string, given: string): boolean {
  const a = Buffer.from(expectedHex, 'utf8');
  const b = Buffer.from(given, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}
