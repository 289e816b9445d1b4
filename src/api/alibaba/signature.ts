import { createHmac, timingSafeEqual } from 'node:crypto';
import type { SecretLookup } from '../../auth/sigv4.js';
import { KmsError } from '../../core/errors.js';
import { AlibabaApiError, invalidParameter } from './errors.js';
import { RpcParams } from './wire.js';

/**
 * Alibaba Cloud's RPC signature, version 1.0 (HMAC-SHA1), as the KMS "Request signatures" page documents it and as
 * @alicloud/rpc-util's getSignatureV1 computes it:
 *
 *   StringToSign = HTTPMethod + "&" + percentEncode("/") + "&" + percentEncode(CanonicalizedQueryString)
 *   Signature    = Base64(HMAC-SHA1(AccessKeySecret + "&", UTF-8(StringToSign)))
 *
 * where CanonicalizedQueryString is every parameter but Signature, sorted by name, as `encode(name)=encode(value)`
 * joined with `&`, and encode is RFC 3986 percent-encoding (space → %20, `*` → %2A, `~` kept). The path is always
 * "/" in the string to sign, wherever the operator mounts the dialect.
 *
 * Checks run common parameters first, then the clock, the access key, the signature, and last the nonce, which is
 * recorded only for a request that proved it holds the secret: a forger cannot burn another caller's nonces.
 */

export const API_VERSION = '2016-01-20';
/** How far Timestamp may be from the server's clock, either way (Alibaba's gateway: 15 minutes). */
export const TIMESTAMP_WINDOW_MS = 15 * 60 * 1000;
const MAX_NONCE_LENGTH = 128;
/** ISO 8601 in UTC, as the SDKs send it (`2026-01-01T12:00:00Z`), with optional milliseconds. */
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?Z$/;

/** Records a nonce of an access key until `expiresAt`; false if it is already recorded (a replay). */
export type NonceClaim = (accessKeyId: string, nonce: string, expiresAt: number, now: number) => Promise<boolean>;

export interface RpcVerifyOptions {
  readonly lookupSecret: SecretLookup;
  readonly claimNonce: NonceClaim;
  readonly now: () => number;
}

export interface RpcCaller {
  readonly accessKeyId: string;
  readonly projectId: string;
}

/** RFC 3986 percent-encoding: encodeURIComponent plus the five characters it leaves that RFC 3986 reserves. */
export function percentEncode(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

export function rpcStringToSign(method: string, params: ReadonlyMap<string, string>): string {
  const canonical = [...params.keys()]
    .filter((name) => name !== 'Signature')
    .sort()
    .map((name) => `${percentEncode(name)}=${percentEncode(params.get(name) as string)}`)
    .join('&');
  return `${method}&${percentEncode('/')}&${percentEncode(canonical)}`;
}

export function rpcSignature(stringToSign: string, secret: string): string {
  return createHmac('sha1', `${secret}&`).update(stringToSign, 'utf8').digest('base64');
}

/** Parameters whose values are secrets: an Encrypt's plaintext. */
const SECRET_PARAMETERS = ['Plaintext'];

/**
 * The string to sign as a SignatureDoesNotMatch error shows it, with the values of secret parameters replaced by
 * REDACTED: error bodies end up in clients' logs and proxies' traces, and a plaintext must not (issue 13 item 8). The
 * rest still lets a signer find what it signed differently.
 */
export function echoedStringToSign(method: string, params: ReadonlyMap<string, string>): string {
  if (!SECRET_PARAMETERS.some((name) => params.has(name))) return rpcStringToSign(method, params);
  const shown = new Map(params);
  for (const name of SECRET_PARAMETERS) if (shown.has(name)) shown.set(name, 'REDACTED');
  return rpcStringToSign(method, shown);
}

/** Verifies the signed request's common parameters and signature, and returns who signed it. */
export async function verifyRpcSignature(
  method: string,
  params: ReadonlyMap<string, string>,
  options: RpcVerifyOptions,
): Promise<RpcCaller> {
  const common = new RpcParams(params);
  const accessKeyId = common.required('AccessKeyId');
  const signatureMethod = common.required('SignatureMethod');
  if (signatureMethod !== 'HMAC-SHA1') invalid('SignatureMethod', 'only HMAC-SHA1 is supported.');
  const signatureVersion = common.required('SignatureVersion');
  if (signatureVersion !== '1.0') invalid('SignatureVersion', 'only 1.0 is supported.');
  const now = options.now();
  const timestamp = parseTimestamp(common.optional('Timestamp'));
  if (Math.abs(now - timestamp) > TIMESTAMP_WINDOW_MS) {
    throw new AlibabaApiError('InvalidTimeStamp.Expired', 'Specified time stamp or date value is expired.');
  }
  const nonce = common.required('SignatureNonce');
  if (nonce.length > MAX_NONCE_LENGTH) invalid('SignatureNonce', `at most ${MAX_NONCE_LENGTH} characters.`);
  const signature = common.required('Signature');

  const { projectId, secretAccessKey } = await resolveAccessKey(options.lookupSecret, accessKeyId);
  const stringToSign = rpcStringToSign(method, params);
  const expected = Buffer.from(rpcSignature(stringToSign, secretAccessKey), 'base64');
  // Node's base64 decoder skips stray characters and missing padding: only the canonical spelling of the MAC counts.
  const given = Buffer.from(signature, 'base64');
  const canonical = given.toString('base64') === signature;
  if (!canonical || given.length !== expected.length || !timingSafeEqual(given, expected)) {
    // The gateway shows its string to sign: it is made of the request alone, and it is what a signer needs to debug.
    throw new AlibabaApiError(
      'SignatureDoesNotMatch',
      `Specified signature is not matched with our calculation. server string to sign is:${echoedStringToSign(method, params)}`,
    );
  }
  // Remembered until the timestamp leaves the window: past that, the timestamp check refuses a replay anyway.
  if (!(await options.claimNonce(accessKeyId, nonce, timestamp + TIMESTAMP_WINDOW_MS, now))) {
    throw new AlibabaApiError('SignatureNonceUsed', 'Specified signature nonce was used already.');
  }
  return { accessKeyId, projectId };
}

/** The access key's project and secret; an unknown or revoked key is Alibaba's InvalidAccessKeyId.NotFound. */
export function resolveAccessKey(lookup: SecretLookup, accessKeyId: string): ReturnType<SecretLookup> {
  return lookup(accessKeyId).catch((err: unknown) => {
    if (err instanceof KmsError && err.code === 'AuthUnknownCredential') {
      throw new AlibabaApiError(
        'InvalidAccessKeyId.NotFound',
        'The AccessKey ID provided does not exist in our records.',
        404,
      );
    }
    throw err;
  });
}

function invalid(name: string, valid: string): never {
  throw invalidParameter(name, valid);
}

/** Milliseconds since the epoch; KMS answers a missing Timestamp with IllegalTimestamp (kms-apis.md §3.3). */
function parseTimestamp(value: string | undefined): number {
  if (value === undefined) {
    throw new AlibabaApiError(
      'IllegalTimestamp',
      'The input parameter "Timestamp" that is mandatory for processing this request is not supplied.',
    );
  }
  const ms = Date.parse(value);
  // Date.parse rolls 2026-02-31 over to March: a timestamp must also read back as the fields it was written with.
  if (!TIMESTAMP.test(value) || Number.isNaN(ms) || new Date(ms).toISOString().slice(0, 19) !== value.slice(0, 19)) {
    throw new AlibabaApiError('InvalidTimeStamp.Format', 'Specified time stamp or date value is not well formatted.');
  }
  return ms;
}
