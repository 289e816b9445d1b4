import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { expect } from 'vitest';
import type { CmkVersionRef } from '../../src/core/ports.js';
import { GrapheneHsm, LEGACY_ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import type { HsmConfig } from '../../src/hsm/hsm-config.js';
import { makeLegacyRootKey } from '../support/legacy-root-key.js';
import type { AnyTestToken, TokenProvider } from '../support/softhsm.js';

/** The root wrapping key tests make (the core names its roots; open makes none). */
export const TEST_ROOT_KEY_LABEL = 'hsm-kms-wrap-1';

export function configFor(token: AnyTestToken, overrides: Partial<HsmConfig> = {}): HsmConfig {
  return {
    library: token.library,
    initParams: token.initParams,
    tokenLabel: token.tokenLabel,
    pin: token.pin,
    poolSize: 2,
    keyCacheSize: 16,
    createTokenKeysIfMissing: true,
    startupRetry: { attempts: 2, delayMs: 10 },
    ...overrides,
  };
}

export function openHsm(token: AnyTestToken, overrides: Partial<HsmConfig> = {}): Promise<GrapheneHsm> {
  return GrapheneHsm.open(configFor(token, overrides));
}

/** Opens the adapter and makes the root wrapping key `rootKeyLabel` (as the core does before its first key). */
export async function openHsmWithRoot(
  token: AnyTestToken,
  overrides: Partial<HsmConfig> = {},
  rootKeyLabel = TEST_ROOT_KEY_LABEL,
): Promise<GrapheneHsm> {
  const hsm = await openHsm(token, overrides);
  await hsm.ensureRootKey(rootKeyLabel);
  return hsm;
}

/** A new CMK version made by the HSM (kwp-v1 under `rootKeyLabel`), as the metadata store would hand it back. */
export async function newVersion(
  hsm: GrapheneHsm,
  keyId: string,
  version = 1,
  rootKeyLabel = TEST_ROOT_KEY_LABEL,
): Promise<CmkVersionRef> {
  return { keyId, version, ...(await hsm.createKeyVersion(keyId, version, rootKeyLabel)) };
}

/** The same version as a caller holding only a copy of its stored bytes would name it. */
export function storedCopy(ref: CmkVersionRef): CmkVersionRef {
  return { ...ref, keyMaterial: Buffer.from(ref.keyMaterial) };
}

/** Makes the legacy derive-only root on the token of an open adapter, as releases before kwp-v1 did. */
export function addLegacyRootKey(hsm: GrapheneHsm): Buffer {
  const { lib, anchorSession } = hsm.forTesting();
  return makeLegacyRootKey(lib, anchorSession as Buffer);
}

/** A version of the legacy scheme: 32 bytes of derivation data under the legacy root. */
export function legacyVersion(keyId: string, version = 1, derivationData = randomBytes(32)): CmkVersionRef {
  return {
    keyId,
    version,
    scheme: 'cbc-encrypt-data-v1',
    rootKeyLabel: LEGACY_ROOT_KEY_LABEL,
    keyMaterial: derivationData,
  };
}

/** The rejection of `promise` (fails the test if it resolves). */
export async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.fail('expected a rejection'),
    (err: unknown) => err,
  );
}

/** Handles of every object the session can see (token and session objects). */
export function allObjects(hsm: GrapheneHsm): Buffer[] {
  const { lib, anchorSession } = hsm.forTesting();
  const session = anchorSession as Buffer;
  lib.C_FindObjectsInit(session, []);
  try {
    return lib.C_FindObjects(session, 1000);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

/** Handles of the objects labelled `label`. */
export function objectsLabelled(hsm: GrapheneHsm, label: string): Buffer[] {
  const { lib, anchorSession } = hsm.forTesting();
  const session = anchorSession as Buffer;
  lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_LABEL, value: label }]);
  try {
    return lib.C_FindObjects(session, 10);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

/** Reads boolean attributes of an object through the real library. */
export function readBooleans(
  hsm: GrapheneHsm,
  handle: Buffer,
  names: readonly (keyof typeof BOOLEAN_ATTRIBUTES)[],
): Record<string, boolean> {
  const { lib, anchorSession } = hsm.forTesting();
  const attrs = lib.C_GetAttributeValue(
    anchorSession as Buffer,
    handle,
    names.map((name) => ({ type: BOOLEAN_ATTRIBUTES[name] })),
  );
  return Object.fromEntries(names.map((name, i) => [name, (attrs[i]?.value as Buffer | undefined)?.[0] === 1]));
}

/** Reads the boolean attributes `expected` names and asserts they have exactly its values. */
export function expectBooleans(
  hsm: GrapheneHsm,
  handle: Buffer,
  expected: Readonly<Partial<Record<keyof typeof BOOLEAN_ATTRIBUTES, boolean>>>,
): void {
  const names = Object.keys(expected) as (keyof typeof BOOLEAN_ATTRIBUTES)[];
  expect(readBooleans(hsm, handle, names)).toEqual(expected);
}

export const BOOLEAN_ATTRIBUTES = {
  CKA_TOKEN: pkcs11js.CKA_TOKEN,
  CKA_PRIVATE: pkcs11js.CKA_PRIVATE,
  CKA_SENSITIVE: pkcs11js.CKA_SENSITIVE,
  CKA_EXTRACTABLE: pkcs11js.CKA_EXTRACTABLE,
  CKA_NEVER_EXTRACTABLE: pkcs11js.CKA_NEVER_EXTRACTABLE,
  CKA_ALWAYS_SENSITIVE: pkcs11js.CKA_ALWAYS_SENSITIVE,
  CKA_MODIFIABLE: pkcs11js.CKA_MODIFIABLE,
  CKA_ENCRYPT: pkcs11js.CKA_ENCRYPT,
  CKA_DECRYPT: pkcs11js.CKA_DECRYPT,
  CKA_DERIVE: pkcs11js.CKA_DERIVE,
  CKA_WRAP: pkcs11js.CKA_WRAP,
  CKA_UNWRAP: pkcs11js.CKA_UNWRAP,
  CKA_SIGN: pkcs11js.CKA_SIGN,
  CKA_VERIFY: pkcs11js.CKA_VERIFY,
} as const;

/**
 * The CKR_* code a PKCS#11 call threw. pkcs11js 2.1.7 leaves C_CreateObject, C_CopyObject and C_SetAttributeValue
 * unwrapped: their errors carry no `code`, only a message such as "CKR_ATTRIBUTE_VALUE_INVALID:19".
 */
export function ckrThrownBy(call: () => unknown): number | undefined {
  try {
    call();
  } catch (err) {
    const { code, message } = err as { code?: number; message?: string };
    const fromMessage = /^CKR_\w+:(\d+)/.exec(message ?? '')?.[1];
    return code ?? (fromMessage === undefined ? undefined : Number(fromMessage));
  }
  return undefined;
}

/**
 * Where the modules differ, as observed here (SoftHSM 2.6.1, NSS softokn 3.87), so that tests assert each module's
 * own answer instead of dropping the assertion.
 * - Which profile the adapter chooses for the module, and so which number does RFC 5649 (SoftHSM issue #726).
 * - SoftHSM carries the legacy root key's history over to a derived key; NSS reports a derived key as
 *   extractable-ever and not always sensitive, though it is sensitive and non-extractable now. An unwrapped key
 *   reports neither on both (it existed outside the HSM, wrapped).
 * - A key used for a function its attributes forbid: SoftHSM says CKR_KEY_FUNCTION_NOT_PERMITTED, NSS
 *   CKR_KEY_TYPE_INCONSISTENT. Both refuse.
 * - Wrapping a key marked CKA_EXTRACTABLE=false: SoftHSM refuses with CKR_KEY_UNEXTRACTABLE, a non-FIPS NSS database
 *   wraps it (undefined: no error). SECURITY.md says so.
 * - Unwrapping bytes whose RFC 5649 integrity check fails: SoftHSM says CKR_GENERAL_ERROR, NSS CKR_WRAPPED_KEY_INVALID.
 * - Whether a template may say CKA_MODIFIABLE=false (CloudHSM: only the default, true; the shim refuses anything else
 *   with CKR_ATTRIBUTE_VALUE_INVALID), and so whether the root and credential keys report CKA_MODIFIABLE=false.
 * - Whether the module derives with CKM_AES_CBC_ENCRYPT_DATA, which the legacy scheme cbc-encrypt-data-v1 needs (its
 *   derive-only root is made with CKA_MODIFIABLE=false too, so without derivation there is no legacy root either).
 * The startup suite checks that the profile the adapter chooses says the same.
 */
export const MODULE_FACTS = {
  softhsm: {
    profile: 'softhsm2',
    templatesMayFreeze: true,
    derivesCbcEncryptData: true,
    kwpMechanism: 0x210a,
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: true, CKA_ALWAYS_SENSITIVE: true },
    keyFunctionRefused: pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
    wrapNonExtractable: pkcs11js.CKR_KEY_UNEXTRACTABLE as number | undefined,
    corruptWrappedKey: pkcs11js.CKR_GENERAL_ERROR,
  },
  nss: {
    profile: 'nss',
    templatesMayFreeze: true,
    derivesCbcEncryptData: true,
    kwpMechanism: 0x210b,
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: false, CKA_ALWAYS_SENSITIVE: false },
    keyFunctionRefused: pkcs11js.CKR_KEY_TYPE_INCONSISTENT,
    wrapNonExtractable: undefined,
    corruptWrappedKey: pkcs11js.CKR_WRAPPED_KEY_INVALID,
  },
  // SoftHSM answers underneath; the shim refuses C_DeriveKey(CKM_AES_CBC_ENCRYPT_DATA), so there is no derived key.
  'cloudhsm-shim': {
    profile: 'cloudhsm',
    templatesMayFreeze: false,
    derivesCbcEncryptData: false,
    kwpMechanism: 0x8000216f,
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: true, CKA_ALWAYS_SENSITIVE: true },
    keyFunctionRefused: pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
    wrapNonExtractable: pkcs11js.CKR_KEY_UNEXTRACTABLE as number | undefined,
    corruptWrappedKey: pkcs11js.CKR_GENERAL_ERROR,
  },
} as const satisfies Record<TokenProvider, unknown>;

/** What an unwrapped key (kwp-v1) reports of its history on every module tested here. */
export const UNWRAPPED_KEY_HISTORY = { CKA_NEVER_EXTRACTABLE: false, CKA_ALWAYS_SENSITIVE: false } as const;
