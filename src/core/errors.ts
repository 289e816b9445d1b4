import type { KeyRef } from './keys.js';

/**
 * The only error type that crosses layers. Codes are dialect-neutral; every dialect adapter renders them through
 * its own table (src/api/<dialect>/error-table.ts), and a test fails when a code is missing from a table.
 * HTTP status never lives here.
 */
export const KMS_ERROR_CODES = [
  /** The key does not exist in the caller's project (a foreign key is indistinguishable from a missing one). */
  'KeyNotFound',
  /** A key is used for cryptography while disabled. */
  'KeyDisabled',
  /** A key is used for cryptography while scheduled for deletion. */
  'KeyPendingDeletion',
  /** enable-key on a key that is not disabled. */
  'KeyNotDisabled',
  /** disable-key on a key that is not enabled. */
  'KeyNotEnabled',
  /** schedule-key-deletion on a key already pending deletion. */
  'KeyAlreadyPendingDeletion',
  /** cancel-key-deletion on a key that is not pending deletion. */
  'KeyNotPendingDeletion',
  /** The alias is taken by another key of the project. */
  'AliasAlreadyExists',
  /** The project already has as many keys as its quota allows. */
  'KeyQuotaExceeded',
  /** A key would have more tags than allowed. */
  'TagLimitExceeded',
  /** A ciphertext is malformed, tampered with, or its encryption context does not match. One code: no oracle. */
  'InvalidCiphertext',
  /** The ciphertext was made under a different key than the one the caller named. */
  'IncorrectKey',
  /** A value is outside what the service accepts; the message names it. */
  'InvalidParameter',
  /** The request carries no credentials. */
  'AuthMissing',
  /** The credentials are malformed, forged or from an unknown issuer. */
  'AuthInvalid',
  /** A request signature is structurally incomplete (a missing or malformed Authorization part). */
  'AuthIncomplete',
  /** A request signature does not match the request, or is outside its validity window. */
  'AuthSignatureMismatch',
  /** The access key is unknown or revoked. */
  'AuthUnknownCredential',
  /** The credentials were valid once and have expired. */
  'AuthExpired',
  /** The credentials are valid but for another project than the one the request addresses. */
  'ProjectMismatch',
  /** The key store does not exist in the caller's project. */
  'KeyStoreNotFound',
  /** Another key store of the project has the name. */
  'KeyStoreNameInUse',
  /** The key store's connection state does not allow the operation (e.g. delete while connected). */
  'KeyStoreInvalidState',
  /** The key store still holds keys, in any state. */
  'KeyStoreHasKeys',
  /** The project already has as many key stores as allowed. */
  'KeyStoreLimitExceeded',
  /** A key's store is not connected: its key cannot be used until the tenant connects it again. */
  'KeyStoreNotConnected',
  /** No connection the operator offers to the project has this id. */
  'ConnectionNotFound',
  /** Another key store already uses the connection (one token, one store). */
  'ConnectionInUse',
  /** A store cannot move to another connection: its keys are on the token of the one it has. */
  'ConnectionNotRelated',
  /** The key has had as many on-demand rotations as the dialect allows (AWS's 25). */
  'RotationLimitExceeded',
  /** The key cannot be rotated where it is kept (token objects of a tenant's store). */
  'RotationNotSupported',
  /** The project sent more requests of this class than its rate limit allows; retry after the time given. */
  'Throttled',
  /** The HSM did not answer or reported a device failure; the request can be retried. */
  'HsmUnavailable',
  /** Anything unexpected. Logged in full, answered generically. */
  'InternalError',
] as const;

export type KmsErrorCode = (typeof KMS_ERROR_CODES)[number];

export class KmsError extends Error {
  override readonly name = 'KmsError';
  readonly code: KmsErrorCode;
  /** The key or alias the error is about (KeyNotFound), as the caller named it: AWS names it in its message. */
  readonly subject: KeyRef | undefined;
  /** Whole seconds after which a retry may succeed, sent as `Retry-After`: set on Throttled, defaulted on HsmUnavailable. */
  readonly retryAfterSeconds: number | undefined;
  /**
   * True when the layer that raised it has logged the condition once (a failed random source: when it failed, not
   * on every request refused meanwhile) and wrote its message for the client: dialects send the message as it is and
   * do not log the error per request, though its code (HsmUnavailable) would otherwise be.
   */
  readonly reported: boolean;

  constructor(
    code: KmsErrorCode,
    message: string,
    options?: { cause?: unknown; subject?: KeyRef; retryAfterSeconds?: number; reported?: boolean },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.subject = options?.subject;
    this.reported = options?.reported ?? false;
    this.retryAfterSeconds =
      options?.retryAfterSeconds ?? (code === 'HsmUnavailable' ? HSM_RETRY_AFTER_SECONDS : undefined);
  }
}

/** What a client is told to wait after an HSM failure: the session pool heals within seconds (docs/reliability.md). */
export const HSM_RETRY_AFTER_SECONDS = 1;

/** The `Retry-After` value (whole seconds, at least 1) for an error a client may retry; undefined for any other. */
export function retryAfterOf(err: unknown): string | undefined {
  if (!(err instanceof KmsError) || err.retryAfterSeconds === undefined) return undefined;
  return String(Math.max(1, Math.ceil(err.retryAfterSeconds)));
}

/** Precondition check that narrows types; throws InvalidParameter with the given message. */
export function needs(condition: unknown, message: string): asserts condition {
  if (!condition) throw new KmsError('InvalidParameter', message);
}
