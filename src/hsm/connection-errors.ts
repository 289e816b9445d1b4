import pkcs11js from 'pkcs11js';
import type { ConnectionErrorCode } from '../core/connection-error-code.js';
import { KmsError } from '../core/errors.js';
import { ckrOf } from './pkcs11-errors.js';

export type { ConnectionErrorCode } from '../core/connection-error-code.js';

/**
 * The cause GrapheneHsm.open attaches to a failure that no CKR_* code describes (the module is called, or the token
 * looked for, before any PKCS#11 call can fail; or the token is found logged in by someone else in this process, which
 * no call answers with an error), so that connectionErrorCodeOf can still tell what went wrong.
 */
export class TokenNotReached extends Error {
  override readonly name = 'TokenNotReached';
  readonly reason: 'no-such-token' | 'library-not-loaded' | 'logged-in-elsewhere';

  constructor(reason: TokenNotReached['reason'], options?: { cause?: unknown }) {
    super(MESSAGES[reason], options);
    this.reason = reason;
  }
}

const MESSAGES: Readonly<Record<TokenNotReached['reason'], string>> = {
  'no-such-token': 'No token has the label.',
  'library-not-loaded': 'The PKCS#11 library did not load.',
  'logged-in-elsewhere': 'This process is already logged in to the token.',
};

/** What AWS reports for a CloudHSM key store that fails so. */
const BY_REASON: Readonly<Record<TokenNotReached['reason'], ConnectionErrorCode>> = {
  'no-such-token': 'CLUSTER_NOT_FOUND',
  'library-not-loaded': 'NETWORK_ERRORS',
  'logged-in-elsewhere': 'USER_LOGGED_IN',
};

/** CKR_* codes of a failed open, by the ConnectionErrorCode AWS reports for a CloudHSM key store that fails so. */
const BY_CKR: ReadonlyMap<number, ConnectionErrorCode> = new Map([
  [pkcs11js.CKR_PIN_INCORRECT, 'INVALID_CREDENTIALS'],
  [pkcs11js.CKR_PIN_INVALID, 'INVALID_CREDENTIALS'],
  [pkcs11js.CKR_PIN_LEN_RANGE, 'INVALID_CREDENTIALS'],
  [pkcs11js.CKR_PIN_LOCKED, 'USER_LOCKED_OUT'],
  [pkcs11js.CKR_USER_ALREADY_LOGGED_IN, 'USER_LOGGED_IN'],
  [pkcs11js.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, 'USER_LOGGED_IN'],
  [pkcs11js.CKR_DEVICE_ERROR, 'NETWORK_ERRORS'],
  [pkcs11js.CKR_DEVICE_MEMORY, 'NETWORK_ERRORS'],
  [pkcs11js.CKR_DEVICE_REMOVED, 'NETWORK_ERRORS'],
  [pkcs11js.CKR_TOKEN_NOT_PRESENT, 'NETWORK_ERRORS'],
]);

/** Causes are followed this deep at most: a chain is a few links long, and a cycle must not hang the caller. */
const MAX_CAUSES = 8;

/**
 * Why GrapheneHsm.open failed, as the ConnectionErrorCode of a custom key store: the first TokenNotReached or CKR_*
 * code found along the error's causes decides; a failed self-test, a missing key and anything else is INTERNAL_ERROR.
 */
export function connectionErrorCodeOf(err: unknown): ConnectionErrorCode {
  let cause: unknown = err;
  for (let depth = 0; depth < MAX_CAUSES && cause !== undefined && cause !== null; depth++) {
    if (cause instanceof TokenNotReached) return BY_REASON[cause.reason];
    // A KmsError's own code is a string; ckrOf would read its cause, which the next step looks at anyway.
    const code = cause instanceof KmsError ? undefined : ckrOf(cause);
    if (code !== undefined) return BY_CKR.get(code) ?? 'INTERNAL_ERROR';
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return 'INTERNAL_ERROR';
}
