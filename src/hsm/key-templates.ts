import pkcs11js from 'pkcs11js';

/**
 * Which attributes our keys get: the attribute policy lives here and nowhere else.
 *
 * - Root wrapping key: a token object that can only wrap and unwrap. Each CMK version is an AES-256 key generated
 *   in the HSM as a session object, wrapped under it with RFC 5649 at once, and unwrapped, for use, into a session
 *   object that can only encrypt and decrypt.
 * - Legacy root key (scheme cbc-encrypt-data-v1): a token object that can only derive; no longer created.
 * - Credential key: a token object that can only sign (HMAC-SHA256), from which the secrets of access keys come.
 * - Token version key (scheme token-object-v1, tenants' key stores): a CMK version kept as a token object that can
 *   only encrypt and decrypt, found by its CKA_ID.
 * All are sensitive; only a version key on its way to being wrapped, and never beyond the call that wraps it, is
 * extractable.
 */

export const AES_256_BYTES = 32;
export const DERIVATION_DATA_BYTES = 32;
/** RFC 5649 output for a 32-byte key: the key plus one 8-byte integrity block. */
export const WRAPPED_AES_256_BYTES = 40;
export const CREDENTIAL_KEY_BYTES = 32;
export { TOKEN_OBJECT_ID_BYTES } from '../core/keys.js';
/** HMAC-SHA256 output. */
export const CREDENTIAL_MAC_BYTES = 32;

interface Usage {
  encrypt?: boolean;
  derive?: boolean;
  sign?: boolean;
  wrap?: boolean;
}

const usages = (allowed: Usage): pkcs11js.Template => [
  { type: pkcs11js.CKA_ENCRYPT, value: allowed.encrypt === true },
  { type: pkcs11js.CKA_DECRYPT, value: allowed.encrypt === true },
  { type: pkcs11js.CKA_DERIVE, value: allowed.derive === true },
  { type: pkcs11js.CKA_WRAP, value: allowed.wrap === true },
  { type: pkcs11js.CKA_UNWRAP, value: allowed.wrap === true },
  { type: pkcs11js.CKA_SIGN, value: allowed.sign === true },
  { type: pkcs11js.CKA_VERIFY, value: false },
];

/** What a module lets templates say: see HsmProfile.templatesMayFreeze. */
export interface TemplateRules {
  readonly templatesMayFreeze: boolean;
}

/** A long-lived token key: private, sensitive, never extractable, unmodifiable where allowed, one usage. */
function tokenKeyTemplate(
  label: string,
  keyType: number,
  bytes: number,
  allowed: Usage,
  rules: TemplateRules,
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
    ...(rules.templatesMayFreeze ? [{ type: pkcs11js.CKA_MODIFIABLE, value: false }] : []),
    ...usages(allowed),
  ];
}

/** Generated with CKM_AES_KEY_GEN; wraps and unwraps CMK version keys and does nothing else. */
export function rootWrappingKeyTemplate(label: string, rules: TemplateRules): pkcs11js.Template {
  return tokenKeyTemplate(label, pkcs11js.CKK_AES, AES_256_BYTES, { wrap: true }, rules);
}

/** The same key as a session object: for throwaway keys that must behave like the token key (the self-test). */
export function asSessionObject(template: pkcs11js.Template): pkcs11js.Template {
  return template.map((attribute) =>
    attribute.type === pkcs11js.CKA_TOKEN ? { type: pkcs11js.CKA_TOKEN, value: false } : attribute,
  );
}

/** Generated with CKM_AES_KEY_GEN; seals service secrets (tenants' PINs) with AES-GCM and does nothing else. */
export function secretSealingKeyTemplate(label: string, rules: TemplateRules): pkcs11js.Template {
  return tokenKeyTemplate(label, pkcs11js.CKK_AES, AES_256_BYTES, { encrypt: true }, rules);
}

/** Generated with CKM_GENERIC_SECRET_KEY_GEN; signs with CKM_SHA256_HMAC and nothing else. */
export function credentialKeyTemplate(label: string, rules: TemplateRules): pkcs11js.Template {
  return tokenKeyTemplate(label, pkcs11js.CKK_GENERIC_SECRET, CREDENTIAL_KEY_BYTES, { sign: true }, rules);
}

/**
 * Generated with CKM_AES_KEY_GEN on a tenant's token: a CMK version (scheme token-object-v1) that encrypts and
 * decrypts and does nothing else; `objectId` (CKA_ID) is how it is found again.
 */
export function tokenVersionKeyTemplate(label: string, objectId: Buffer, rules: TemplateRules): pkcs11js.Template {
  return [
    ...tokenKeyTemplate(label, pkcs11js.CKK_AES, AES_256_BYTES, { encrypt: true }, rules),
    { type: pkcs11js.CKA_ID, value: objectId },
  ];
}

/**
 * A CMK version key as a session object. `forUse`: encrypt and decrypt only, never extractable. Otherwise it can do
 * nothing but be wrapped: a new version right after C_GenerateKey, or an old one being rewrapped under a new root.
 * No CKA_VALUE_LEN: C_UnwrapKey takes the length from the wrapped bytes, and some modules refuse it there.
 */
export function versionKeyTemplate(keyId: string, version: number, forUse: boolean): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_LABEL, value: `cmk:${keyId}:${version}` },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: !forUse },
    ...usages({ encrypt: forUse }),
  ];
}

/** versionKeyTemplate for C_GenerateKey and C_DeriveKey, which need the length. */
export function newVersionKeyTemplate(keyId: string, version: number, forUse: boolean): pkcs11js.Template {
  return [...versionKeyTemplate(keyId, version, forUse), { type: pkcs11js.CKA_VALUE_LEN, value: AES_256_BYTES }];
}

export const AES_KEY_GEN_MECHANISM: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_AES_KEY_GEN };

/** RFC 5649 under the module's own number for it (HsmProfile.kwpMechanism); no parameter: the default IV. */
export function kwpMechanism(mechanism: number): pkcs11js.Mechanism {
  return { mechanism };
}

/**
 * What the credential key signs for an access key: a versioned, domain-separated string, so the same key could
 * later serve other purposes (or a v2 scheme) without two inputs ever colliding.
 */
export function credentialMacInput(accessKeyId: string): Buffer {
  return Buffer.from(`hsm-kms/aws-secret/v1:${accessKeyId}`, 'utf8');
}

export const HMAC_SHA256_MECHANISM: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_SHA256_HMAC };

const ZERO_IV = Buffer.alloc(16);

/**
 * The legacy scheme (cbc-encrypt-data-v1): CKM_AES_CBC_ENCRYPT_DATA with a zero IV, deterministic for the same
 * root key and data. Kept to open versions made before the wrapped scheme, and to migrate them.
 */
export function derivationMechanism(derivationData: Buffer): pkcs11js.Mechanism {
  const parameter: pkcs11js.AesCBC = { type: pkcs11js.CK_PARAMS_AES_CBC, iv: ZERO_IV, data: derivationData };
  return { mechanism: pkcs11js.CKM_AES_CBC_ENCRYPT_DATA, parameter };
}

export const GCM_IV_BYTES = 12;
export const GCM_TAG_BYTES = 16;

/** `iv`: the IV to use, or, where the module writes it (IvMode 'module-writes-piv'), 12 zero bytes it fills in. */
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
