import pkcs11js from 'pkcs11js';

/**
 * Which attributes our keys get: the attribute policy lives here and nowhere else.
 *
 * Root key: a token object that can only derive. CMK version keys: session objects derived from it, usable only for
 * AES-GCM encrypt/decrypt. Credential key: a token object that can only sign (HMAC-SHA256), from which the secrets of
 * access keys are computed. All are sensitive and non-extractable; generated and derived keys therefore report
 * CKA_NEVER_EXTRACTABLE=true and CKA_ALWAYS_SENSITIVE=true.
 */

export const AES_256_BYTES = 32;
export const DERIVATION_DATA_BYTES = 32;
export const CREDENTIAL_KEY_BYTES = 32;
/** HMAC-SHA256 output. */
export const CREDENTIAL_MAC_BYTES = 32;

const usages = (allowed: { encrypt?: boolean; derive?: boolean; sign?: boolean }): pkcs11js.Template => [
  { type: pkcs11js.CKA_ENCRYPT, value: allowed.encrypt === true },
  { type: pkcs11js.CKA_DECRYPT, value: allowed.encrypt === true },
  { type: pkcs11js.CKA_DERIVE, value: allowed.derive === true },
  { type: pkcs11js.CKA_WRAP, value: false },
  { type: pkcs11js.CKA_UNWRAP, value: false },
  { type: pkcs11js.CKA_SIGN, value: allowed.sign === true },
  { type: pkcs11js.CKA_VERIFY, value: false },
];

/** A long-lived token key: private, sensitive, never extractable, unmodifiable, with only the given usage. */
function tokenKeyTemplate(
  label: string,
  keyType: number,
  bytes: number,
  allowed: Parameters<typeof usages>[0],
): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: keyType },
    { type: pkcs11js.CKA_VALUE_LEN, value: bytes },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    // SoftHSM 2.6.1 accepts CKA_MODIFIABLE=false on C_GenerateKey.
    { type: pkcs11js.CKA_MODIFIABLE, value: false },
    ...usages(allowed),
  ];
}

/** Generated with CKM_AES_KEY_GEN; derives CMK version keys and does nothing else. */
export function rootKeyTemplate(label: string): pkcs11js.Template {
  return tokenKeyTemplate(label, pkcs11js.CKK_AES, AES_256_BYTES, { derive: true });
}

/** Generated with CKM_GENERIC_SECRET_KEY_GEN; signs with CKM_SHA256_HMAC and nothing else. */
export function credentialKeyTemplate(label: string): pkcs11js.Template {
  return tokenKeyTemplate(label, pkcs11js.CKK_GENERIC_SECRET, CREDENTIAL_KEY_BYTES, { sign: true });
}

/**
 * What the credential key signs for an access key: a versioned, domain-separated string, so the same key could
 * later serve other purposes (or a v2 scheme) without two inputs ever colliding.
 */
export function credentialMacInput(accessKeyId: string): Buffer {
  return Buffer.from(`hsm-kms/aws-secret/v1:${accessKeyId}`, 'utf8');
}

export const HMAC_SHA256_MECHANISM: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_SHA256_HMAC };

export function derivedKeyTemplate(keyId: string, version: number): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: AES_256_BYTES },
    { type: pkcs11js.CKA_LABEL, value: `cmk:${keyId}:${version}` },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    ...usages({ encrypt: true }),
  ];
}

const ZERO_IV = Buffer.alloc(16);

/** CKM_AES_CBC_ENCRYPT_DATA with a zero IV: deterministic for the same root key and data (SoftHSM has no HKDF). */
export function derivationMechanism(derivationData: Buffer): pkcs11js.Mechanism {
  const parameter: pkcs11js.AesCBC = { type: pkcs11js.CK_PARAMS_AES_CBC, iv: ZERO_IV, data: derivationData };
  return { mechanism: pkcs11js.CKM_AES_CBC_ENCRYPT_DATA, parameter };
}

export const GCM_IV_BYTES = 12;
export const GCM_TAG_BYTES = 16;

export function gcmMechanism(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
  const parameter: pkcs11js.GcmParams = {
    type: pkcs11js.CK_PARAMS_GCM,
    iv,
    aad,
    ivBits: GCM_IV_BYTES * 8,
    tagBits: GCM_TAG_BYTES * 8,
  };
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}
