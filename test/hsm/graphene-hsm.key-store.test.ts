import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import type { CmkVersionRef } from '../../src/core/ports.js';
import { connectionErrorCodeOf } from '../../src/hsm/connection-errors.js';
import { CREDENTIAL_KEY_LABEL, type GrapheneHsm } from '../../src/hsm/graphene-hsm.js';
import { AES_KEY_GEN_MECHANISM, tokenVersionKeyTemplate } from '../../src/hsm/key-templates.js';
import { toKmsError } from '../../src/hsm/pkcs11-errors.js';
import {
  type AnyTestToken,
  createTestToken,
  removeTestToken,
  TOKEN_PROVIDERS,
  type TokenProvider,
} from '../support/softhsm.js';
import {
  expectBooleans,
  MODULE_FACTS,
  newVersion,
  objectsLabelled,
  openHsm,
  rejectionOf,
  TEST_ROOT_KEY_LABEL,
} from './hsm-fixtures.js';

/**
 * How the service opens a tenant's key store: no credential key, a missing token reported at once, and a PIN that
 * must log in itself.
 */
const KEY_STORE = { credentialKey: false, requireOwnLogin: true, startupRetry: { attempts: 1, delayMs: 0 } } as const;

const aad = Buffer.from('key-store aad');

/** CK_STATE of a read-write session that is not logged in. */
const CKS_RW_PUBLIC_SESSION = 2;

/** DER of the OID of NIST P-256 (CKA_EC_PARAMS). */
const P256_OID = Buffer.from('06082a8648ce3d030107', 'hex');

/**
 * NSS softokn 3.87 keeps one token secret key per CKA_ID: generating another one with the id (of any key type)
 * replaces the first in place (same handle, new value, label and usages). SoftHSM keeps both.
 */
const ONE_SECRET_KEY_PER_ID: Readonly<Record<TokenProvider, boolean>> = {
  softhsm: false,
  nss: true,
  'cloudhsm-shim': false,
};

/** Token objects carrying the CKA_ID, seen from the adapter's anchor session. */
function objectsWithId(hsm: GrapheneHsm, objectId: Buffer): Buffer[] {
  const { lib, anchorSession } = hsm.forTesting();
  const session = anchorSession as Buffer;
  lib.C_FindObjectsInit(session, [
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_ID, value: objectId },
  ]);
  try {
    return lib.C_FindObjects(session, 10);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
}

function labelOf(hsm: GrapheneHsm, handle: Buffer): string | undefined {
  const { lib, anchorSession } = hsm.forTesting();
  const [label] = lib.C_GetAttributeValue(anchorSession as Buffer, handle, [{ type: pkcs11js.CKA_LABEL }]);
  return (label?.value as Buffer | undefined)?.toString('utf8');
}

async function tokenVersion(hsm: GrapheneHsm, keyId: string, version = 1): Promise<CmkVersionRef> {
  const kept = await hsm.createTokenKeyVersion(keyId, version, `kms:${keyId}:${version}`, randomBytes(16));
  return { keyId, version, ...kept };
}

async function roundTrip(hsm: GrapheneHsm, key: CmkVersionRef, text: string): Promise<string> {
  const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from(text), aad);
  return (await hsm.decrypt(key, iv, ciphertextWithTag, aad)).toString('utf8');
}

/** The error `open` fails with (closing the adapter if it opened after all). */
async function openFailure(promise: Promise<GrapheneHsm>): Promise<unknown> {
  return promise.then(
    async (hsm) => {
      await hsm.close();
      return expect.fail('expected open to fail');
    },
    (err: unknown) => err,
  );
}

describe.each(TOKEN_PROVIDERS)('on %s', (provider) => {
  const facts = MODULE_FACTS[provider];
  let token: AnyTestToken;
  const open: GrapheneHsm[] = [];

  /** Opens the token as a tenant's key store; closed after the test. */
  async function openKeyStore(overrides: Parameters<typeof openHsm>[1] = {}): Promise<GrapheneHsm> {
    const hsm = await openHsm(token, { ...KEY_STORE, ...overrides });
    open.push(hsm);
    return hsm;
  }

  /** Opens the token as the service opens its own, taking a login it finds; closed after the test. */
  async function openServiceAdapter(): Promise<GrapheneHsm> {
    const hsm = await openHsm(token, { credentialKey: false });
    open.push(hsm);
    return hsm;
  }

  beforeEach(() => {
    token = createTestToken(provider);
  });

  afterEach(async () => {
    for (const hsm of open.splice(0)) await hsm.close();
    removeTestToken(token.dir);
  });

  describe('a token opened without a credential key', () => {
    it('when it is opened on a fresh token, then no credential key is looked for or created, and none is on it', async () => {
      const hsm = await openKeyStore({ createTokenKeysIfMissing: false });
      expect(objectsLabelled(hsm, CREDENTIAL_KEY_LABEL)).toEqual([]);
      expect(hsm.forTesting().credentialKeyHandle()).toBeUndefined();

      // Even where creating token keys is allowed.
      await hsm.close();
      const second = await openKeyStore({ createTokenKeysIfMissing: true });
      expect(objectsLabelled(second, CREDENTIAL_KEY_LABEL)).toEqual([]);
    });

    it('when an access key secret is asked for, then it is refused with InternalError', async () => {
      const hsm = await openKeyStore();
      const err = await rejectionOf(hsm.credentialSecret('AKIAEXAMPLE'));
      expect(err).toBeInstanceOf(KmsError);
      expect(err).toMatchObject({
        code: 'InternalError',
        message: `Token "${token.tokenLabel}" was opened without a credential key: it issues no access key secrets.`,
      });
    });

    it('when root keys and wrapped versions are used on it, then they work as on the default token', async () => {
      const hsm = await openKeyStore();
      await hsm.ensureRootKey(TEST_ROOT_KEY_LABEL);
      const key = await newVersion(hsm, randomBytes(8).toString('hex'));
      expect(key.scheme).toBe('kwp-v1');
      expect(await roundTrip(hsm, key, 'wrapped on a key store')).toBe('wrapped on a key store');
      expect(objectsLabelled(hsm, CREDENTIAL_KEY_LABEL)).toEqual([]);
    });

    it('when startupRetry allows one attempt and the token is missing, then open fails at once with CLUSTER_NOT_FOUND', async () => {
      const started = performance.now();
      // A delay that would show if a second attempt were made.
      const err = await openFailure(
        openHsm(token, {
          credentialKey: false,
          tokenLabel: 'no-such-store',
          startupRetry: { attempts: 1, delayMs: 5_000 },
        }),
      );
      expect(performance.now() - started).toBeLessThan(2_000);
      expect(err).toMatchObject({ code: 'HsmUnavailable' });
      expect(connectionErrorCodeOf(err)).toBe('CLUSTER_NOT_FOUND');
    });
  });

  describe('CMK versions kept as token objects (token-object-v1)', () => {
    it('when a version is created, then it is a persistent, sensitive, non-extractable AES key with the label and CKA_ID given', async () => {
      const hsm = await openKeyStore();
      const objectId = randomBytes(16);
      const kept = await hsm.createTokenKeyVersion('key-a', 3, 'kms:key-a:3', objectId);
      expect(kept).toEqual({ scheme: 'token-object-v1', rootKeyLabel: '', keyMaterial: objectId });
      expect(kept.keyMaterial).not.toBe(objectId); // a copy: the caller's buffer stays the caller's
      await hsm.close();

      // From another instance, with new sessions: the object persists on the token.
      const again = await openKeyStore();
      const [byId, ...moreById] = objectsWithId(again, objectId);
      expect(moreById).toEqual([]);
      const [byLabel, ...moreByLabel] = objectsLabelled(again, 'kms:key-a:3');
      expect(moreByLabel).toEqual([]);
      expect(byId?.equals(byLabel as Buffer)).toBe(true);
      expect(labelOf(again, byId as Buffer)).toBe('kms:key-a:3');
      expectBooleans(again, byId as Buffer, {
        CKA_TOKEN: true,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        CKA_NEVER_EXTRACTABLE: true,
        CKA_ALWAYS_SENSITIVE: true,
        // CloudHSM takes CKA_MODIFIABLE only at its default.
        CKA_MODIFIABLE: !facts.templatesMayFreeze,
        CKA_ENCRYPT: true,
        CKA_DECRYPT: true,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
        CKA_DERIVE: false,
        CKA_SIGN: false,
        CKA_VERIFY: false,
      });
      const { lib, anchorSession } = again.forTesting();
      const [length] = lib.C_GetAttributeValue(anchorSession as Buffer, byId as Buffer, [
        { type: pkcs11js.CKA_VALUE_LEN },
      ]);
      expect((length?.value as Buffer | undefined)?.readUInt32LE(0)).toBe(32);
    });

    it('when data is encrypted under it, then it decrypts, also after close and open', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-b');
      expect(await roundTrip(hsm, key, 'kept on the token')).toBe('kept on the token');
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('before the restart'), aad);
      await hsm.close();

      const again = await openKeyStore();
      const stored = { ...key, keyMaterial: Buffer.from(key.keyMaterial) };
      expect((await again.decrypt(stored, iv, ciphertextWithTag, aad)).toString()).toBe('before the restart');
      // Looked up once, then cached.
      expect(again.forTesting().versionKeys.has('key-b:1')).toBe(true);
    });

    it('when the cache evicts it, is cleared by forget() or close(), then the token object is never destroyed', async () => {
      const hsm = await openKeyStore({ keyCacheSize: 1 });
      const first = await tokenVersion(hsm, 'key-c', 1);
      const second = await tokenVersion(hsm, 'key-c', 2);
      for (let round = 0; round < 3; round++) {
        expect(await roundTrip(hsm, first, 'one')).toBe('one');
        expect(await roundTrip(hsm, second, 'two')).toBe('two');
      }
      expect([...hsm.forTesting().versionKeys.keys()]).toEqual(['key-c:2']);
      hsm.forget('key-c', 2);
      expect(hsm.forTesting().versionKeys.size).toBe(0);
      expect(objectsWithId(hsm, first.keyMaterial)).toHaveLength(1);
      expect(objectsWithId(hsm, second.keyMaterial)).toHaveLength(1);
      expect(await roundTrip(hsm, second, 'two again')).toBe('two again');
      await hsm.close();

      const again = await openKeyStore();
      expect(objectsWithId(again, first.keyMaterial)).toHaveLength(1);
      expect(objectsWithId(again, second.keyMaterial)).toHaveLength(1);
    });

    it('when the library is finalized behind the adapter, then the object is looked up again, not its old handle used', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-d');
      const hooks = hsm.forTesting();
      const before = hooks.versionKeys.get('key-d:1');
      expect(before).toBeDefined();
      hooks.lib.C_Finalize();
      // New objects take handle numbers afresh, so that the old number may well name one of them now.
      const others = [];
      for (let version = 2; version <= 8; version++) others.push(await tokenVersion(hsm, 'key-d', version));

      expect(await roundTrip(hsm, key, 'after re-initialising')).toBe('after re-initialising');
      const after = hsm.forTesting().versionKeys.get('key-d:1');
      expect(after).toBeDefined();
      expect(objectsWithId(hsm, key.keyMaterial)).toEqual([after]);
      for (const other of others) expect(await roundTrip(hsm, other, 'another')).toBe('another');
    });

    it('when its version is destroyed, then the object is gone and decrypt fails naming the key and version', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-e', 4);
      const { iv, ciphertextWithTag } = await hsm.encrypt(key, Buffer.from('soon unreadable'), aad);

      expect(await hsm.destroyTokenKeyVersion(key.keyMaterial)).toBe(true);
      expect(objectsWithId(hsm, key.keyMaterial)).toEqual([]);
      expect(hsm.forTesting().versionKeys.has('key-e:4')).toBe(false);
      const err = await rejectionOf(hsm.decrypt(key, iv, ciphertextWithTag, aad));
      expect(err).toMatchObject({
        code: 'HsmUnavailable',
        message: `The token object of key key-e version 4 is not on token "${token.tokenLabel}".`,
      });
      expect(JSON.stringify(err)).not.toContain(token.pin);
      expect(await hsm.destroyTokenKeyVersion(key.keyMaterial)).toBe(false);
    });

    it('when a root key carries the CKA_ID, then destroyTokenKeyVersion refuses and destroys nothing', async () => {
      const hsm = await openKeyStore();
      const rootId = await hsm.ensureRootKey(TEST_ROOT_KEY_LABEL);
      const err = await rejectionOf(hsm.destroyTokenKeyVersion(rootId));
      expect(err).toMatchObject({
        code: 'InternalError',
        message:
          `Refusing to destroy the objects with CKA_ID ${rootId.toString('hex')} on token "${token.tokenLabel}": ` +
          'one is not a key version kept as a token object.',
      });
      expect(objectsLabelled(hsm, TEST_ROOT_KEY_LABEL)).toHaveLength(1);
    });

    it('when a version and a key pair share the CKA_ID, then destroyTokenKeyVersion refuses and destroys nothing', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-f');
      const { lib, anchorSession } = hsm.forTesting();
      // A tenant's own key pair that happens to carry the id: not ours to destroy, nor is the version beside it.
      const common = [
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_ID, value: key.keyMaterial },
      ];
      lib.C_GenerateKeyPair(
        anchorSession as Buffer,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [...common, { type: pkcs11js.CKA_EC_PARAMS, value: P256_OID }, { type: pkcs11js.CKA_VERIFY, value: true }],
        [
          ...common,
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_SIGN, value: true },
        ],
      );
      await expect(hsm.destroyTokenKeyVersion(key.keyMaterial)).rejects.toMatchObject({ code: 'InternalError' });
      expect(objectsWithId(hsm, key.keyMaterial)).toHaveLength(3);
      expect(await roundTrip(hsm, key, 'still here')).toBe('still here');
    });

    it('when another token key is made with its CKA_ID, then the version is not used (or, on NSS, was replaced)', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-g', 2);
      const { lib, anchorSession } = hsm.forTesting();
      lib.C_GenerateKey(
        anchorSession as Buffer,
        AES_KEY_GEN_MECHANISM,
        tokenVersionKeyTemplate('impostor', key.keyMaterial, hsm.profile),
      );
      hsm.forget('key-g', 2);
      if (ONE_SECRET_KEY_PER_ID[provider]) {
        // Why createTokenKeyVersion never makes a key with an id that is on the token already.
        const [only, ...more] = objectsWithId(hsm, key.keyMaterial);
        expect(more).toEqual([]);
        expect(labelOf(hsm, only as Buffer)).toBe('impostor');
        return;
      }
      await expect(hsm.encrypt(key, Buffer.from('x'), aad)).rejects.toMatchObject({
        code: 'HsmUnavailable',
        message: `The token object of key key-g version 2 is more than once on token "${token.tokenLabel}".`,
      });
    });

    it('when a version is created with a CKA_ID already on the token, then it is refused and nothing is made', async () => {
      const hsm = await openKeyStore();
      const key = await tokenVersion(hsm, 'key-h');
      await expect(hsm.createTokenKeyVersion('key-h', 2, 'kms:key-h:2', key.keyMaterial)).rejects.toMatchObject({
        code: 'InternalError',
      });
      expect(objectsWithId(hsm, key.keyMaterial)).toHaveLength(1);
      expect(objectsLabelled(hsm, 'kms:key-h:2')).toEqual([]);
    });

    it('when its object lets the key out, then the version is refused', async () => {
      const hsm = await openKeyStore();
      const objectId = randomBytes(16);
      const { lib, anchorSession } = hsm.forTesting();
      lib.C_GenerateKey(
        anchorSession as Buffer,
        AES_KEY_GEN_MECHANISM,
        tokenVersionKeyTemplate('leaky', objectId, hsm.profile).map((attribute) =>
          attribute.type === pkcs11js.CKA_EXTRACTABLE ? { type: pkcs11js.CKA_EXTRACTABLE, value: true } : attribute,
        ),
      );
      const key: CmkVersionRef = {
        keyId: 'key-i',
        version: 1,
        scheme: 'token-object-v1',
        rootKeyLabel: '',
        keyMaterial: objectId,
      };
      await expect(hsm.encrypt(key, Buffer.from('x'), aad)).rejects.toMatchObject({
        code: 'InternalError',
        message:
          `Refusing to use key key-i version 1: its object on token "${token.tokenLabel}" is not a sensitive, ` +
          'non-extractable AES key that can only encrypt and decrypt.',
      });
      expect(hsm.forTesting().versionKeys.size).toBe(0);
    });

    it('when a token-object version is to be rewrapped, then it is refused: it is under no root', async () => {
      const hsm = await openKeyStore();
      await hsm.ensureRootKey(TEST_ROOT_KEY_LABEL);
      const key = await tokenVersion(hsm, 'key-j');
      await expect(hsm.rewrapKeyVersion(key, TEST_ROOT_KEY_LABEL)).rejects.toMatchObject({
        code: 'InternalError',
        message:
          'Version key-j:1 is a token object (scheme token-object-v1): it is under no root key and is never rewrapped.',
      });
      expect(objectsWithId(hsm, key.keyMaterial)).toHaveLength(1);
    });
  });

  describe('a PIN that must log in itself (requireOwnLogin)', () => {
    it('when the process is already logged in to the token, then the store is refused with USER_LOGGED_IN, whatever its PIN', async () => {
      // The service's own adapter, which takes the login it finds.
      const logged = await openServiceAdapter();
      const wrongPin = await openFailure(openHsm(token, { ...KEY_STORE, pin: `${token.pin}0` }));
      expect(wrongPin).toMatchObject({
        code: 'InternalError',
        message: `Refusing to use token "${token.tokenLabel}": this process is already logged in to it, so the PIN given would not be checked. Is another connection on the same token open?`,
      });
      expect(connectionErrorCodeOf(wrongPin)).toBe('USER_LOGGED_IN');
      // The right PIN too: it would not be what logged in.
      expect(connectionErrorCodeOf(await openFailure(openHsm(token, KEY_STORE)))).toBe('USER_LOGGED_IN');
      // The refusals left the login that was there alone.
      expect(await logged.generateRandom(8)).toHaveLength(8);
      await logged.close();

      expect(connectionErrorCodeOf(await openFailure(openHsm(token, { ...KEY_STORE, pin: `${token.pin}0` })))).toBe(
        'INVALID_CREDENTIALS',
      );
      const own = await openKeyStore();
      expect(await own.generateRandom(8)).toHaveLength(8);
    });

    it('when another store holds the login, then a second store on the token is refused with USER_LOGGED_IN', async () => {
      const first = await openKeyStore();
      const second = await openFailure(openHsm(token, KEY_STORE));
      expect(connectionErrorCodeOf(second)).toBe('USER_LOGGED_IN');
      expect(await roundTrip(first, await tokenVersion(first, 'key-l'), 'still the first')).toBe('still the first');
    });

    it('when C_Login answers CKR_USER_ALREADY_LOGGED_IN, then it is refused with USER_LOGGED_IN, not taken as a login', async () => {
      const logged = await openServiceAdapter();
      // A module whose session state does not show the login (injected): only C_Login's answer tells.
      const { lib } = logged.forTesting();
      const realSessionInfo = lib.C_GetSessionInfo;
      lib.C_GetSessionInfo = (session) => ({ ...realSessionInfo.call(lib, session), state: CKS_RW_PUBLIC_SESSION });
      let err: unknown;
      try {
        err = await openFailure(openHsm(token, { ...KEY_STORE, pin: `${token.pin}0` }));
      } finally {
        lib.C_GetSessionInfo = realSessionInfo;
      }
      expect(err).toMatchObject({ message: expect.stringContaining('this process is already logged in to it') });
      expect(connectionErrorCodeOf(err)).toBe('USER_LOGGED_IN');
    });
  });

  describe('connectionErrorCodeOf', () => {
    it('when the PIN is wrong, then a failed open is INVALID_CREDENTIALS', async () => {
      const err = await openFailure(openHsm(token, { ...KEY_STORE, pin: `${token.pin}0` }));
      expect(connectionErrorCodeOf(err)).toBe('INVALID_CREDENTIALS');
    });

    it('when no token has the label, then a failed open is CLUSTER_NOT_FOUND', async () => {
      const err = await openFailure(openHsm(token, { ...KEY_STORE, tokenLabel: 'no-such-store' }));
      expect(connectionErrorCodeOf(err)).toBe('CLUSTER_NOT_FOUND');
    });
  });
});

describe('connectionErrorCodeOf, beyond a token', () => {
  it('when the PKCS#11 library does not exist, then a failed open is NETWORK_ERRORS', async () => {
    const token = createTestToken();
    const err = await openFailure(openHsm(token, { library: '/nonexistent/libpkcs11-missing.so', ...KEY_STORE }));
    removeTestToken(token.dir);
    expect(err).toMatchObject({ code: 'HsmUnavailable' });
    expect(connectionErrorCodeOf(err)).toBe('NETWORK_ERRORS');
  });

  it.each([
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
    [pkcs11js.CKR_MECHANISM_INVALID, 'INTERNAL_ERROR'],
    [pkcs11js.CKR_GENERAL_ERROR, 'INTERNAL_ERROR'],
  ])('when open fails with CKR code %i, then it is %s', (code, expected) => {
    const failure = toKmsError(new pkcs11js.Pkcs11Error('CKR_TEST', code, 'C_Login'), 'C_Login');
    expect(connectionErrorCodeOf(failure)).toBe(expected);
    // Also when another error wraps it on the way up.
    expect(connectionErrorCodeOf(new KmsError('InternalError', 'wrapped', { cause: failure }))).toBe(expected);
  });

  it('when the failure carries no CKR code (a refusal of ours, or anything else), then it is INTERNAL_ERROR', () => {
    expect(connectionErrorCodeOf(new KmsError('InternalError', 'Refusing to start: …'))).toBe('INTERNAL_ERROR');
    expect(connectionErrorCodeOf(new Error('boom'))).toBe('INTERNAL_ERROR');
    expect(connectionErrorCodeOf(undefined)).toBe('INTERNAL_ERROR');
  });
});
