import pkcs11js from 'pkcs11js';

/**
 * How a module reports, at C_Decrypt, an AES-GCM tag that does not verify: any of these is an invalid ciphertext
 * (the caller's fault), never an HSM failure. One entry per module family, each with where it was seen, so that a
 * per-module profile can take its own entry later; until modules are told apart, the adapter accepts them all.
 */
export const TAG_FAILURE_CODES = {
  /** SoftHSM 2.6.1 (tested here): CKR_GENERAL_ERROR, not the code the standard suggests. */
  softhsm2: [pkcs11js.CKR_GENERAL_ERROR],
  /** NSS softokn 3.87 (tested here). */
  nss: [pkcs11js.CKR_ENCRYPTED_DATA_INVALID],
  /** What PKCS#11 itself names for a ciphertext that does not decrypt. */
  standard: [pkcs11js.CKR_ENCRYPTED_DATA_INVALID, pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE],
} as const satisfies Readonly<Record<string, readonly number[]>>;
