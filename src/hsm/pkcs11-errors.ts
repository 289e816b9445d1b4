import pkcs11js from 'pkcs11js';
import { KmsError } from '../core/errors.js';

/**
 * PKCS#11 failures, mapped once from the numeric CKR_* code that pkcs11js errors carry (`.code`).
 * Messages name the return value and the function, never arguments (PINs, key material).
 */

const CKR_NAMES: ReadonlyMap<number, string> = (() => {
  const names = new Map<number, string>();
  for (const [name, value] of Object.entries(pkcs11js)) {
    if (name.startsWith('CKR_') && typeof value === 'number' && !names.has(value)) names.set(value, name);
  }
  return names;
})();

export function ckrName(code: number): string {
  return CKR_NAMES.get(code) ?? 'CKR_UNKNOWN';
}

/** The CKR_* code of a pkcs11js error, or of the pkcs11js error a KmsError wraps; undefined for anything else. */
export function ckrOf(err: unknown): number | undefined {
  const source = err instanceof KmsError ? err.cause : err;
  if (source instanceof pkcs11js.Pkcs11Error) return source.code;
  if (typeof source === 'object' && source !== null && 'code' in source && typeof source.code === 'number') {
    return source.code;
  }
  return undefined;
}

/**
 * The session (or the whole library) is gone: replace the session and retry once. Everything here also means the
 * HSM is unavailable to the caller if the retry fails.
 */
const SESSION_FAILURES: ReadonlySet<number> = new Set([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
]);

/**
 * C_OpenSession's answers that mean the library must be initialised again and the token's slot found again:
 * SoftHSM says CKR_CRYPTOKI_NOT_INITIALIZED after a C_Finalize, NSS softokn 3.87 says CKR_SLOT_ID_INVALID (its
 * C_GetSlotList still answers). A slot that really went away is found again, or reported gone, the same way.
 */
const REINITIALIZE_ON_OPEN: ReadonlySet<number> = new Set([
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
  pkcs11js.CKR_SLOT_ID_INVALID,
]);

/** The HSM cannot serve now; a later retry may succeed. */
const UNAVAILABLE: ReadonlySet<number> = new Set([
  ...SESSION_FAILURES,
  pkcs11js.CKR_DEVICE_MEMORY,
  pkcs11js.CKR_HOST_MEMORY,
  pkcs11js.CKR_SESSION_COUNT,
  pkcs11js.CKR_FUNCTION_CANCELED,
]);

/**
 * CKR_GENERAL_ERROR is the module's own failure, and a retry may succeed: SoftHSM answers it while it cannot read its
 * token's files (test/api/hsm-faults.test.ts). Except from these functions, where SoftHSM also answers it for kept
 * material that fails RFC 5649's integrity check (test/hsm/hsm-fixtures.ts): an error no retry mends. (From C_Decrypt
 * it is SoftHSM's bad GCM tag: the profile's tagFailureCodes decide that before this mapping.)
 */
const GENERAL_ERROR_MAY_BE_THE_DATA: ReadonlySet<string> = new Set(['C_UnwrapKey', 'C_DeriveKey']);

/**
 * The key handle passed is stale: look the key up again and retry once. A wrapping or unwrapping key's handle is a
 * root key's: SoftHSM answers these once it has dropped the objects of a token whose files went away
 * (test/api/hsm-faults.test.ts).
 */
const KEY_HANDLE_FAILURES: ReadonlySet<number> = new Set([
  pkcs11js.CKR_KEY_HANDLE_INVALID,
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_WRAPPING_KEY_HANDLE_INVALID,
  pkcs11js.CKR_UNWRAPPING_KEY_HANDLE_INVALID,
]);

export const isSessionFailure = (code: number | undefined): boolean => code !== undefined && SESSION_FAILURES.has(code);
export const needsReinitialize = (code: number | undefined): boolean =>
  code !== undefined && REINITIALIZE_ON_OPEN.has(code);
export const isKeyHandleFailure = (code: number | undefined): boolean =>
  code !== undefined && KEY_HANDLE_FAILURES.has(code);

/** Runs a clean-up call whose failure changes nothing: the object, session or library may already be gone. */
export function quietly(action: () => void): void {
  try {
    action();
  } catch {
    // Best effort.
  }
}

/** Maps anything a PKCS#11 call threw to a KmsError; a KmsError passes through unchanged. */
export function toKmsError(err: unknown, fn: string): KmsError {
  if (err instanceof KmsError) return err;
  const code = ckrOf(err);
  if (code === undefined) {
    return new KmsError('InternalError', `HSM call ${fn} failed: ${err instanceof Error ? err.name : typeof err}`, {
      cause: err,
    });
  }
  const message = `HSM error ${ckrName(code)} (0x${code.toString(16)}) in ${fn}`;
  const unavailable =
    UNAVAILABLE.has(code) || (code === pkcs11js.CKR_GENERAL_ERROR && !GENERAL_ERROR_MAY_BE_THE_DATA.has(fn));
  return new KmsError(unavailable ? 'HsmUnavailable' : 'InternalError', message, { cause: err });
}
