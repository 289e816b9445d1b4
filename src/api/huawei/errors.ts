import type { KmsErrorCode } from '../../core/errors.js';
import { KmsError } from '../../core/errors.js';

/**
 * Huawei KMS's error body, `{"error":{"error_code":"KMS.xxxx","error_msg":"..."}}`, with the HTTP status and the
 * verbatim message of OTC-API appendix/error_code.rst (see ../shared/reference/kms-apis.md §1.5), plus the same pair
 * at the top level, as Huawei's API gateway sends it: Huawei's Node core SDK reads only `error.code` or a top-level
 * `error_code` (exception/ExceptionUtil.js), so without it a Node caller gets the status but no code. The Python and
 * Go SDKs search the top level first and find the same pair (../shared/reference/huawei-sdk.md §A.4).
 */
export interface HuaweiErrorBody {
  readonly error: { readonly error_code: string; readonly error_msg: string };
  readonly error_code: string;
  readonly error_msg: string;
}

/** An error raised by the Huawei adapter itself (wire validation): it already carries its KMS code and status. */
export class HuaweiApiError extends Error {
  override readonly name = 'HuaweiApiError';
  constructor(
    readonly errorCode: string,
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export const invalid = (errorCode: string, message: string) => new HuaweiApiError(errorCode, 400, message);
/** KMS.0302, Huawei's code for a token it cannot accept, with a message saying why. */
export const invalidToken = (message: string) => new HuaweiApiError('KMS.0302', 403, message);

interface Mapping {
  readonly errorCode: string;
  readonly status: number;
  /** Replaces the core's message when the core's would say more than Huawei does (internal failures). */
  readonly message?: string;
}

/** Every core error code, rendered the Huawei way. `satisfies` makes a missing code a type error. */
export const HUAWEI_ERROR_TABLE = {
  KeyNotFound: { errorCode: 'KMS.0207', status: 404 },
  KeyDisabled: { errorCode: 'KMS.0209', status: 400 },
  KeyPendingDeletion: { errorCode: 'KMS.0210', status: 400 },
  KeyNotDisabled: { errorCode: 'KMS.1201', status: 400 },
  KeyNotEnabled: { errorCode: 'KMS.1301', status: 400 },
  KeyAlreadyPendingDeletion: { errorCode: 'KMS.1402', status: 400 },
  KeyNotPendingDeletion: { errorCode: 'KMS.1501', status: 400 },
  AliasAlreadyExists: { errorCode: 'KMS.1104', status: 400, message: 'Duplicate key aliases.' },
  KeyQuotaExceeded: { errorCode: 'KMS.1105', status: 400, message: 'Too many keys.' },
  TagLimitExceeded: { errorCode: 'KMS.0409', status: 400, message: 'Too many tags.' },
  InvalidCiphertext: { errorCode: 'KMS.2201', status: 400, message: 'Invalid cipher_text.' },
  IncorrectKey: { errorCode: 'KMS.2201', status: 400 },
  InvalidParameter: { errorCode: 'KMS.0308', status: 400 },
  AuthMissing: { errorCode: 'KMS.0301', status: 403, message: 'Invalid or null X-Auth-Token.' },
  AuthInvalid: { errorCode: 'KMS.0302', status: 403, message: 'Invalid X-Auth-Token.' },
  // The codes below keep their message: each says what was wrong with a token or an AK/SK signature
  // (src/auth/huawei-signature.ts), and none carries a secret.
  AuthIncomplete: { errorCode: 'KMS.0301', status: 403 },
  AuthSignatureMismatch: { errorCode: 'KMS.0302', status: 403 },
  AuthUnknownCredential: { errorCode: 'KMS.0302', status: 403 },
  AuthExpired: { errorCode: 'KMS.0303', status: 403 },
  ProjectMismatch: { errorCode: 'KMS.0321', status: 403 },
  // Huawei documents no keystore codes but KMS.0338-0340 (docs/custom-key-stores.md, Huawei): a missing keystore is
  // its one not-found code, refusals are its "Invalid parameter", and a key whose keystore is disabled is KMS.0340.
  KeyStoreNotFound: { errorCode: 'KMS.0207', status: 404 },
  KeyStoreNameInUse: { errorCode: 'KMS.0308', status: 400 },
  KeyStoreInvalidState: { errorCode: 'KMS.0308', status: 400 },
  KeyStoreHasKeys: { errorCode: 'KMS.0308', status: 400 },
  KeyStoreLimitExceeded: { errorCode: 'KMS.1105', status: 400 },
  KeyStoreNotConnected: { errorCode: 'KMS.0340', status: 400 },
  ConnectionNotFound: { errorCode: 'KMS.0308', status: 400 },
  ConnectionInUse: { errorCode: 'KMS.0308', status: 400 },
  ConnectionNotRelated: { errorCode: 'KMS.0308', status: 400 },
  // Huawei has no on-demand rotation: never raised through this dialect.
  RotationLimitExceeded: { errorCode: 'KMS.1105', status: 400 },
  RotationNotSupported: { errorCode: 'KMS.0338', status: 400, message: 'The custom keystore do not support rotation.' },
  // Huawei's API gateway answers a user over its rate limit with this (APIG's error table), before KMS sees it.
  Throttled: {
    errorCode: 'APIG.0308',
    status: 429,
    message: 'The throttling threshold has been reached: policy user over ratelimit.',
  },
  HsmUnavailable: {
    errorCode: 'KMS.0104',
    status: 503,
    message: 'A system exception occurred. Contact technical support.',
  },
  InternalError: { errorCode: 'KMS.0101', status: 500, message: 'KMS error.' },
} as const satisfies Record<KmsErrorCode, Mapping>;

/** The status and body for any error; `unexpected` is true when the error must be logged as a bug. */
export function renderHuaweiError(err: unknown): { status: number; body: HuaweiErrorBody; unexpected: boolean } {
  if (err instanceof HuaweiApiError) {
    return { status: err.status, body: body(err.errorCode, err.message), unexpected: false };
  }
  if (err instanceof KmsError) {
    const mapping: Mapping = HUAWEI_ERROR_TABLE[err.code];
    const unexpected = (err.code === 'InternalError' || err.code === 'HsmUnavailable') && !err.reported;
    const message = err.reported ? err.message : (mapping.message ?? err.message);
    return { status: mapping.status, body: body(mapping.errorCode, message), unexpected };
  }
  const generic = HUAWEI_ERROR_TABLE.InternalError;
  return { status: generic.status, body: body(generic.errorCode, generic.message), unexpected: true };
}

function body(errorCode: string, message: string): HuaweiErrorBody {
  return { error: { error_code: errorCode, error_msg: message }, error_code: errorCode, error_msg: message };
}
