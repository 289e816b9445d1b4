import type { KmsErrorCode } from '../../core/errors.js';
import { KmsError } from '../../core/errors.js';

/**
 * AWS's JSON 1.1 error body, `{"__type":"<Exception>","message":"..."}`, sent with the exception's name in
 * `x-amzn-ErrorType` (kms-apis.md §2.1). Client errors are 400, internal ones 500, as AWS KMS sends them.
 */
export interface AwsErrorBody {
  readonly __type: string;
  readonly message: string;
}

/** An error raised by the AWS adapter itself (wire validation, protocol): it already carries its exception. */
export class AwsApiError extends Error {
  override readonly name = 'AwsApiError';
  constructor(
    readonly exception: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

/** AWS's wording for a value that breaks a member's constraint, e.g. `1 validation error detected: Value '0' at
 * 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1`. */
export function validationError(value: unknown, member: string, constraint: string): AwsApiError {
  const shown = value === undefined || value === null ? 'null' : `'${String(value)}'`;
  return new AwsApiError(
    'ValidationException',
    `1 validation error detected: Value ${shown} at '${member}' failed to satisfy constraint: ${constraint}`,
  );
}

interface Mapping {
  readonly exception: string;
  readonly status: number;
  /** Replaces the core's message where AWS says something else (or less). */
  readonly message?: string;
}

/** Every core error code, rendered the AWS way. `satisfies` makes a missing code a type error. */
export const AWS_ERROR_TABLE = {
  KeyNotFound: { exception: 'NotFoundException', status: 400 },
  KeyDisabled: { exception: 'DisabledException', status: 400 },
  KeyPendingDeletion: { exception: 'KMSInvalidStateException', status: 400 },
  KeyNotDisabled: { exception: 'KMSInvalidStateException', status: 400 },
  KeyNotEnabled: { exception: 'KMSInvalidStateException', status: 400 },
  KeyAlreadyPendingDeletion: { exception: 'KMSInvalidStateException', status: 400 },
  KeyNotPendingDeletion: { exception: 'KMSInvalidStateException', status: 400 },
  AliasAlreadyExists: { exception: 'AlreadyExistsException', status: 400 },
  KeyQuotaExceeded: { exception: 'LimitExceededException', status: 400 },
  TagLimitExceeded: { exception: 'LimitExceededException', status: 400 },
  InvalidCiphertext: { exception: 'InvalidCiphertextException', status: 400, message: '' },
  IncorrectKey: {
    exception: 'IncorrectKeyException',
    status: 400,
    message: 'The key ID in the request does not identify a CMK that can perform this operation.',
  },
  InvalidParameter: { exception: 'ValidationException', status: 400 },
  AuthMissing: { exception: 'MissingAuthenticationTokenException', status: 400 },
  AuthInvalid: { exception: 'UnrecognizedClientException', status: 400 },
  AuthIncomplete: { exception: 'IncompleteSignatureException', status: 400 },
  AuthSignatureMismatch: { exception: 'InvalidSignatureException', status: 400 },
  AuthUnknownCredential: { exception: 'UnrecognizedClientException', status: 400 },
  AuthExpired: { exception: 'ExpiredTokenException', status: 400 },
  ProjectMismatch: { exception: 'AccessDeniedException', status: 400 },
  KeyStoreNotFound: { exception: 'CustomKeyStoreNotFoundException', status: 400 },
  KeyStoreNameInUse: { exception: 'CustomKeyStoreNameInUseException', status: 400 },
  KeyStoreInvalidState: { exception: 'CustomKeyStoreInvalidStateException', status: 400 },
  KeyStoreHasKeys: { exception: 'CustomKeyStoreHasCMKsException', status: 400 },
  KeyStoreLimitExceeded: { exception: 'LimitExceededException', status: 400 },
  // AWS answers every cryptographic operation on a key whose store cannot serve it with KMSInvalidStateException
  // (developer guide, "Troubleshooting a custom key store"); management operations get the CustomKeyStore* ones.
  KeyStoreNotConnected: { exception: 'KMSInvalidStateException', status: 400 },
  ConnectionNotFound: { exception: 'CloudHsmClusterNotFoundException', status: 400 },
  ConnectionInUse: { exception: 'CloudHsmClusterInUseException', status: 400 },
  ConnectionNotRelated: { exception: 'CloudHsmClusterNotRelatedException', status: 400 },
  RotationNotSupported: { exception: 'UnsupportedOperationException', status: 400 },
  RotationLimitExceeded: { exception: 'LimitExceededException', status: 400 },
  Throttled: {
    exception: 'ThrottlingException',
    status: 400,
    message: 'You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls.',
  },
  HsmUnavailable: {
    exception: 'DependencyTimeoutException',
    status: 500,
    message: 'The system timed out while trying to fulfill the request. The request can be retried.',
  },
  InternalError: {
    exception: 'KMSInternalException',
    status: 500,
    message: 'The request was rejected because an internal exception occurred. The request can be retried.',
  },
} as const satisfies Record<KmsErrorCode, Mapping>;

/** The status and body for any error; `unexpected` is true when the error must be logged as a bug. */
export function renderAwsError(err: unknown): { status: number; body: AwsErrorBody; unexpected: boolean } {
  if (err instanceof AwsApiError) {
    return { status: err.status, body: { __type: err.exception, message: err.message }, unexpected: false };
  }
  if (err instanceof KmsError) {
    const mapping: Mapping = AWS_ERROR_TABLE[err.code];
    const unexpected = (err.code === 'InternalError' || err.code === 'HsmUnavailable') && !err.reported;
    return {
      status: mapping.status,
      body: { __type: mapping.exception, message: err.reported ? err.message : (mapping.message ?? err.message) },
      unexpected,
    };
  }
  const generic = AWS_ERROR_TABLE.InternalError;
  return { status: generic.status, body: { __type: generic.exception, message: generic.message }, unexpected: true };
}
