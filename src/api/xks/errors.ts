import type { KmsErrorCode } from '../../core/errors.js';
import { KmsError } from '../../core/errors.js';

/**
 * The XKS proxy API's error body, `{"errorName": "...", "errorMessage": "..."}`, with the names and HTTP statuses of
 * the spec's table (xks_proxy_api_spec.md v1.0.3, "Error codes"; custom-key-stores.md §1.1). KMS reads only the name;
 * the message is at most 512 printable ASCII characters.
 */
export interface XksErrorBody {
  readonly errorName: XksErrorName;
  readonly errorMessage: string;
}

/** The spec's error names and their HTTP statuses. */
export const XKS_ERROR_STATUS = {
  ValidationException: 400,
  InvalidStateException: 400,
  InvalidCiphertextException: 400,
  InvalidKeyUsageException: 400,
  AuthenticationFailedException: 401,
  AccessDeniedException: 403,
  KeyNotFoundException: 404,
  InvalidUriPathException: 404,
  ThrottlingException: 429,
  UnsupportedOperationException: 501,
  DependencyTimeoutException: 503,
  InternalException: 500,
} as const;

export type XksErrorName = keyof typeof XKS_ERROR_STATUS;

/** An error raised by the XKS adapter itself (URI, method, wire validation). */
export class XksApiError extends Error {
  override readonly name = 'XksApiError';
  constructor(
    readonly errorName: XksErrorName,
    message: string,
    /** Only a GET (or any other method) on an API URI has a status of its own: 405, as the spec asks. */
    readonly status: number = XKS_ERROR_STATUS[errorName],
  ) {
    super(message);
  }
}

const INTERNAL_MESSAGE = 'An internal error occurred. The request can be retried.';

/**
 * Every core error code, in the spec's words. `satisfies` makes a missing code a type error. Codes of operations the
 * XKS API has no way to ask for (aliases, tags, key store management) are mapped all the same, as what they would mean.
 */
export const XKS_ERROR_TABLE = {
  KeyNotFound: 'KeyNotFoundException',
  // A disabled or deleting key exists but cannot be used: the spec's "not in a state that allows the operation".
  KeyDisabled: 'InvalidStateException',
  KeyPendingDeletion: 'InvalidStateException',
  KeyNotDisabled: 'InvalidStateException',
  KeyNotEnabled: 'InvalidStateException',
  KeyAlreadyPendingDeletion: 'InvalidStateException',
  KeyNotPendingDeletion: 'InvalidStateException',
  AliasAlreadyExists: 'ValidationException',
  KeyQuotaExceeded: 'ValidationException',
  TagLimitExceeded: 'ValidationException',
  InvalidCiphertext: 'InvalidCiphertextException',
  IncorrectKey: 'InvalidCiphertextException',
  InvalidParameter: 'ValidationException',
  AuthMissing: 'AuthenticationFailedException',
  AuthInvalid: 'AuthenticationFailedException',
  AuthIncomplete: 'AuthenticationFailedException',
  AuthSignatureMismatch: 'AuthenticationFailedException',
  AuthUnknownCredential: 'AuthenticationFailedException',
  AuthExpired: 'AuthenticationFailedException',
  // An access key of another project: the reference proxy has credentials per URI prefix, so it is an unknown one.
  ProjectMismatch: 'AuthenticationFailedException',
  KeyStoreNotFound: 'KeyNotFoundException',
  KeyStoreNameInUse: 'ValidationException',
  // A key in a tenant's key store that is not connected cannot be used until it is: its state, not a fault.
  KeyStoreInvalidState: 'InvalidStateException',
  KeyStoreHasKeys: 'InvalidStateException',
  KeyStoreLimitExceeded: 'ValidationException',
  KeyStoreNotConnected: 'InvalidStateException',
  ConnectionNotFound: 'InternalException',
  ConnectionInUse: 'InternalException',
  ConnectionNotRelated: 'InternalException',
  // Key rotation is never asked for through XKS.
  RotationNotSupported: 'UnsupportedOperationException',
  RotationLimitExceeded: 'UnsupportedOperationException',
  Throttled: 'ThrottlingException',
  HsmUnavailable: 'DependencyTimeoutException',
  InternalError: 'InternalException',
} as const satisfies Record<KmsErrorCode, XksErrorName>;

/** The status and body for any error; `unexpected` is true when the error must be logged as a failure of ours. */
export function renderXksError(err: unknown): { status: number; body: XksErrorBody; unexpected: boolean } {
  if (err instanceof XksApiError) {
    return { status: err.status, body: body(err.errorName, err.message), unexpected: false };
  }
  if (err instanceof KmsError) {
    const errorName: XksErrorName = XKS_ERROR_TABLE[err.code];
    const unexpected =
      (errorName === 'InternalException' || errorName === 'DependencyTimeoutException') && !err.reported;
    return {
      status: XKS_ERROR_STATUS[errorName],
      body: body(errorName, errorName === 'InternalException' ? INTERNAL_MESSAGE : err.message),
      unexpected,
    };
  }
  return { status: 500, body: body('InternalException', INTERNAL_MESSAGE), unexpected: true };
}

/** The spec allows 512 printable ASCII characters: anything else in a message (a caller's value) is replaced. */
function body(errorName: XksErrorName, message: string): XksErrorBody {
  return { errorName, errorMessage: message.replace(/[^\x20-\x7e]/g, '?').slice(0, 512) };
}
