import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { expect } from 'vitest';
import type { CmkVersionRef } from '../../src/core/ports.js';
import { GrapheneHsm, ROOT_KEY_LABEL } from '../../src/hsm/graphene-hsm.js';
import type { HsmConfig } from '../../src/hsm/hsm-config.js';
import type { AnyTestToken, TokenProvider } from '../support/softhsm.js';

export function configFor(token: AnyTestToken, overrides: Partial<HsmConfig> = {}): HsmConfig {
  return {
    library: token.library,
    initParams: token.initParams,
    tokenLabel: token.tokenLabel,
    pin: token.pin,
    poolSize: 2,
    keyCacheSize: 16,
    createRootKeyIfMissing: true,
    startupRetry: { attempts: 2, delayMs: 10 },
    ...overrides,
  };
}

export function openHsm(token: AnyTestToken, overrides: Partial<HsmConfig> = {}): Promise<GrapheneHsm> {
  return GrapheneHsm.open(configFor(token, overrides));
}

export function cmkVersion(keyId: string, version = 1, derivationData = randomBytes(32)): CmkVersionRef {
  return { keyId, version, rootKeyLabel: ROOT_KEY_LABEL, derivationData };
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
 * - SoftHSM carries the root key's history over to a derived key; NSS reports a derived key as extractable-ever and
 *   not always sensitive, though it is sensitive and non-extractable now.
 * - A key used for a function its attributes forbid: SoftHSM says CKR_KEY_FUNCTION_NOT_PERMITTED, NSS
 *   CKR_KEY_TYPE_INCONSISTENT. Both refuse.
 * - Wrapping a key marked CKA_EXTRACTABLE=false: SoftHSM refuses with CKR_KEY_UNEXTRACTABLE, a non-FIPS NSS database
 *   wraps it (undefined: no error). SECURITY.md says so.
 */
export const MODULE_FACTS = {
  softhsm: {
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: true, CKA_ALWAYS_SENSITIVE: true },
    keyFunctionRefused: pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
    wrapNonExtractable: pkcs11js.CKR_KEY_UNEXTRACTABLE as number | undefined,
  },
  nss: {
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: false, CKA_ALWAYS_SENSITIVE: false },
    keyFunctionRefused: pkcs11js.CKR_KEY_TYPE_INCONSISTENT,
    wrapNonExtractable: undefined,
  },
  // SoftHSM answers underneath; the shim refuses C_DeriveKey(CKM_AES_CBC_ENCRYPT_DATA), so there is no derived key.
  'cloudhsm-shim': {
    derivedKeyHistory: { CKA_NEVER_EXTRACTABLE: true, CKA_ALWAYS_SENSITIVE: true },
    keyFunctionRefused: pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED,
    wrapNonExtractable: pkcs11js.CKR_KEY_UNEXTRACTABLE as number | undefined,
  },
} as const satisfies Record<TokenProvider, unknown>;
