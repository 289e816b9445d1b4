import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Module } from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { KmsError, needs } from '../core/errors.js';
import type { KeptKeyVersion } from '../core/keys.js';
import type { CmkVersionRef, GcmSealed, Hsm } from '../core/ports.js';
import { RandomSourceHealth } from '../core/random-health.js';
import { TokenNotReached } from './connection-errors.js';
import { checkGcmPlaintextLength, gcmEncrypt, gcmEncryptAsync } from './gcm.js';
import { DEFAULT_STARTUP_RETRY, type HsmConfig } from './hsm-config.js';
import { chooseProfile, type HsmProfile } from './hsm-profiles.js';
import {
  AES_KEY_GEN_MECHANISM,
  CREDENTIAL_MAC_BYTES,
  credentialKeyTemplate,
  credentialMacInput,
  DERIVATION_DATA_BYTES,
  derivationMechanism,
  GCM_IV_BYTES,
  GCM_TAG_BYTES,
  gcmMechanism,
  HMAC_SHA256_MECHANISM,
  kwpMechanism,
  newVersionKeyTemplate,
  rootWrappingKeyTemplate,
  secretSealingKeyTemplate,
  type TemplateRules,
  TOKEN_OBJECT_ID_BYTES,
  tokenVersionKeyTemplate,
  versionKeyTemplate,
  WRAPPED_AES_256_BYTES,
} from './key-templates.js';
import { pkcs11Async } from './pkcs11-async.js';
import {
  ckrOf,
  isKeyHandleFailure,
  isSessionFailure,
  needsReinitialize,
  quietly,
  toKmsError,
} from './pkcs11-errors.js';
import { acquireLibrary, type Pkcs11Library } from './pkcs11-library.js';
import { runSelfTest } from './self-test.js';
import { DEFAULT_SESSION_WAIT_MS, SessionPool, type SessionPoolState } from './session-pool.js';
import { VersionKeyCache } from './version-key-cache.js';

export type { HsmConfig } from './hsm-config.js';

type Handle = Buffer;

export { LEGACY_ROOT_KEY_LABEL } from '../core/keys.js';
/** The label of the token object that computes the secrets of access keys (HMAC-SHA256 over the access key id). */
export const CREDENTIAL_KEY_LABEL = 'hsm-kms-credentials-1';

/** The label of the token object that seals service secrets, such as tenants' key store PINs (AES-GCM). */
export const SECRET_SEALING_KEY_LABEL = 'hsm-kms-secrets-1';

/** CK_STATE of a logged-in read-write session (pkcs11js exports no CKS_* constants). */
const CKS_RW_USER_FUNCTIONS = 3;
const SESSION_FLAGS = pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION;
const MAX_RANDOM_BYTES = 1024 * 1024;
/** Most secret keys destroyIncompleteTokenKeys looks at on a tenant's token (one per CMK version kept there). */
const MAX_OBJECTS_SCANNED = 1_000_000;
/** More objects with one CKA_ID than destroyTokenKeyVersion looks at in one go (there should be one). */
const MAX_OBJECTS_PER_ID = 64;
/** The boolean attributes a token-object-v1 version's key must have true, and those it must have false. */
const TOKEN_VERSION_KEY_IS = [pkcs11js.CKA_TOKEN, pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT];
const TOKEN_VERSION_KEY_IS_NOT = [
  pkcs11js.CKA_EXTRACTABLE,
  pkcs11js.CKA_WRAP,
  pkcs11js.CKA_UNWRAP,
  pkcs11js.CKA_DERIVE,
  pkcs11js.CKA_SIGN,
];
const NO_KEY: Handle = Buffer.alloc(0);
/** The generation of an instance whose token the library no longer shows: never the library's. */
const TOKEN_LOST = -1;
/** What #run takes in place of a CMK version to run an operation with one of the token keys. */
const CREDENTIAL_KEY = 'credential-key';
const SECRET_SEALING_KEY = 'secret-sealing-key';
type TokenKeyName = typeof CREDENTIAL_KEY | typeof SECRET_SEALING_KEY;
/** The key an operation on a pool session runs with: a CMK version or one of the token keys. */
type KeySource = CmkVersionRef | TokenKeyName;

/**
 * A long-lived token key that open() finds, or creates when allowed, checks and caches. Every process relies on
 * the one object with the label: a second one would make existing CMKs or access keys undecidable.
 */
interface TokenKeySpec {
  readonly label: string;
  /** "Root key", "Credential key": how messages name it. */
  readonly role: string;
  /** Why a duplicate must be resolved by hand, and which object to keep. */
  readonly keepHint: string;
  readonly generate: pkcs11js.Mechanism;
  readonly template: (label: string, rules: TemplateRules) => pkcs11js.Template;
  readonly keyType: number;
  /** Boolean attributes that must be true (besides CKA_SENSITIVE) and false (besides CKA_EXTRACTABLE). */
  readonly allowed: readonly number[];
  readonly forbidden: readonly number[];
  /** "AES key that can only wrap and unwrap": completes "is not a sensitive, non-extractable …". */
  readonly description: string;
}

/** A root wrapping key; its label is chosen by the core (RootKeyService), one per rotation. */
const rootKeySpec = (label: string): TokenKeySpec => ({
  label,
  role: 'Root key',
  keepHint: 'keep the one existing key versions were wrapped under',
  generate: AES_KEY_GEN_MECHANISM,
  // A random CKA_ID: the database records it, so that a root of the same label on another token is never taken
  // for this one (every installation labels its roots alike).
  template: (keyLabel, rules) => [
    ...rootWrappingKeyTemplate(keyLabel, rules),
    { type: pkcs11js.CKA_ID, value: randomBytes(16) },
  ],
  keyType: pkcs11js.CKK_AES,
  allowed: [pkcs11js.CKA_WRAP, pkcs11js.CKA_UNWRAP],
  forbidden: [pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT, pkcs11js.CKA_DERIVE, pkcs11js.CKA_SIGN],
  description: 'AES key that can only wrap and unwrap',
});

const CREDENTIAL_KEY_SPEC: TokenKeySpec = {
  label: CREDENTIAL_KEY_LABEL,
  role: 'Credential key',
  keepHint: 'keep the one existing access keys were issued under',
  generate: { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN },
  template: credentialKeyTemplate,
  keyType: pkcs11js.CKK_GENERIC_SECRET,
  allowed: [pkcs11js.CKA_SIGN],
  forbidden: [
    pkcs11js.CKA_ENCRYPT,
    pkcs11js.CKA_DECRYPT,
    pkcs11js.CKA_DERIVE,
    pkcs11js.CKA_WRAP,
    pkcs11js.CKA_UNWRAP,
    pkcs11js.CKA_VERIFY,
  ],
  description: 'generic secret key that can only sign',
};

const SECRET_SEALING_KEY_SPEC: TokenKeySpec = {
  label: SECRET_SEALING_KEY_LABEL,
  role: 'Secret-sealing key',
  keepHint: "keep the one the key stores' PINs were sealed under",
  generate: AES_KEY_GEN_MECHANISM,
  template: secretSealingKeyTemplate,
  keyType: pkcs11js.CKK_AES,
  allowed: [pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_DECRYPT],
  forbidden: [pkcs11js.CKA_WRAP, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE, pkcs11js.CKA_SIGN, pkcs11js.CKA_VERIFY],
  description: 'AES key that can only encrypt and decrypt',
};

/** What tests may reach behind the port: live views, read at access time. Not for production code. */
export interface GrapheneHsmTestHooks {
  readonly module: Module;
  readonly lib: pkcs11js.PKCS11;
  readonly slot: Handle;
  /** The session that logged in and owns the CMK version keys. */
  readonly anchorSession: Handle | undefined;
  /** Pool sessions not in use right now. */
  readonly idleSessions: readonly Handle[];
  /** How many pool sessions are idle and leased, and how many callers wait for one. */
  readonly poolState: SessionPoolState;
  /** Whether the hot-path calls go through pkcs11js's callback variants (HsmConfig.asyncCalls, or the profile's). */
  readonly asyncCalls: boolean;
  /** CMK version key handles by `${keyId}:${version}`, least recently used first. */
  readonly versionKeys: ReadonlyMap<string, Handle>;
  readonly profile: HsmProfile;
  rootKeyHandle(label: string): Handle | undefined;
  /** The cached handle of the credential key. */
  credentialKeyHandle(): Handle | undefined;
  /** The cached handle of the secret-sealing key. */
  secretSealingKeyHandle(): Handle | undefined;
  /** The session pool and recovery counters right now (a snapshot). */
  poolStats(): HsmPoolStats;
}

/** What the session pool holds and what recovery has done since open(): tests check counters return to baseline. */
export interface HsmPoolStats {
  /** Pool sessions open (idle or leased), besides the anchor. */
  readonly open: number;
  readonly idle: number;
  readonly leased: number;
  /** Whether the anchor session is open (it is replaced lazily after a failure). */
  readonly anchor: boolean;
  /** Pool sessions opened and closed (discarded after an error, purged as dead, or closed at the end). */
  readonly sessionsOpened: number;
  readonly sessionsClosed: number;
  /** Pool sessions forgotten because the library was initialised again (C_Finalize closed them). */
  readonly sessionsAbandoned: number;
  /** Times the library was initialised again under this adapter (by it, or by another adapter on the library). */
  readonly libraryRestarts: number;
  /** Session failures recovered from (#recoverSessions runs), and anchors replaced. */
  readonly recoveries: number;
  readonly anchorsReplaced: number;
}

/**
 * The Hsm port over PKCS#11 (graphene-pk11 to load and enumerate, pkcs11js calls on the hot path).
 *
 * - One anchor session logs in once and stays open for the life of the process: login state is per process and
 *   closing the last session logs out. The anchor also owns the CMK version keys (session objects die with the
 *   session that created them).
 * - `poolSize` further sessions run encrypt, decrypt and random with synchronous calls (faster than pkcs11js's
 *   async variants for small data on SoftHSM), or, with `asyncCalls` (a network HSM), GCM's C_Encrypt / C_Decrypt
 *   and the credential C_Sign through pkcs11js's callback variants, so that the event loop serves other requests
 *   while the module works; a session then stays leased until the module answers, and a caller finding every
 *   session busy waits at most `sessionWaitMs` (src/hsm/session-pool.ts).
 * - A CMK version is never a token object: its key is kept wrapped under a root key (scheme kwp-v1), unwrapped on
 *   first use into a non-extractable session object, and its handle cached within the profile's session-key budget.
 * - On a tenant's key store (a token of its own), a CMK version may instead be a token object (scheme
 *   token-object-v1), found by its CKA_ID; its handle is cached like the others, but never destroyed with the cache.
 * - The secret of an access key is never stored: it is an HMAC under the credential key, a token object (absent on
 *   a key store, opened with `credentialKey: false`).
 * - What differs between modules comes from the profile (src/hsm/hsm-profiles.ts), checked by a self-test at open.
 * - Every C_GenerateRandom block (random bytes, data keys, host-random IVs) passes the SP 800-90B health tests of
 *   this token's own RandomSourceHealth before use; a failed generator refuses them until a re-test passes.
 * - One instance per token: login is per process and token. Instances on tokens of one library share it
 *   (src/hsm/pkcs11-library.ts): it is initialised once, finalized when the last instance closes, and re-initialised
 *   once for all of them when it was finalized under one.
 */
export class GrapheneHsm implements Hsm {
  readonly #library: Pkcs11Library;
  readonly #lib: pkcs11js.PKCS11;
  readonly #config: HsmConfig;
  readonly #profile: HsmProfile;
  #slot: Handle;
  #anchor: Handle | undefined;
  /** The library's generation our handles are from: when it moves on, they mean nothing (or another token's). */
  #generation: number;
  /** The generation in which our own C_Login last succeeded: a login from before, or anyone else's, is not ours. */
  #loggedInAt: number | undefined;
  readonly #roots = new Map<string, Handle>();
  /** Handles of the credential and secret-sealing keys, found at start-up and again after a re-login. */
  readonly #tokenKeys = new Map<TokenKeyName, Handle>();
  readonly #keys: VersionKeyCache;
  readonly #pool: SessionPool;
  /** Whether the hot-path calls go through pkcs11js's callback variants: see the class comment. */
  readonly #async: boolean;
  /** The health tests every C_GenerateRandom block passes before it is used (src/core/random-health.ts). */
  readonly #randomHealth: RandomSourceHealth;
  readonly #counts = {
    sessionsOpened: 0,
    sessionsClosed: 0,
    sessionsAbandoned: 0,
    libraryRestarts: 0,
    recoveries: 0,
    anchorsReplaced: 0,
  };
  #closed = false;

  private constructor(library: Pkcs11Library, slot: Handle, config: HsmConfig, profile: HsmProfile) {
    this.#library = library;
    this.#lib = config.wrapPkcs11?.(library.lib) ?? library.lib;
    this.#generation = library.generation;
    this.#slot = slot;
    this.#config = config;
    this.#profile = profile;
    const budget = Math.min(config.keyCacheSize, profile.sessionKeyBudget);
    this.#keys = new VersionKeyCache(budget, (handle) => this.#destroyQuietly(handle));
    this.#async = config.asyncCalls ?? profile.asyncCalls;
    this.#randomHealth = new RandomSourceHealth(
      config.onRandomHealth === undefined ? {} : { onEvent: config.onRandomHealth },
    );
    this.#pool = new SessionPool(
      config.poolSize,
      config.sessionWaitMs ?? DEFAULT_SESSION_WAIT_MS,
      () => {
        const session = this.#openSession();
        this.#counts.sessionsOpened++;
        return session;
      },
      (session) => {
        this.#counts.sessionsClosed++;
        this.#closeQuietly(session);
      },
    );
  }

  static async open(config: HsmConfig): Promise<GrapheneHsm> {
    needs(Number.isInteger(config.poolSize) && config.poolSize >= 1, 'poolSize must be a positive integer.');
    needs(
      config.sessionWaitMs === undefined || (Number.isInteger(config.sessionWaitMs) && config.sessionWaitMs >= 1),
      'sessionWaitMs must be a positive integer.',
    );
    needs(
      Number.isInteger(config.keyCacheSize) && config.keyCacheSize >= 1,
      'keyCacheSize must be a positive integer.',
    );
    const retry = config.startupRetry ?? DEFAULT_STARTUP_RETRY;

    const library = acquireLibrary(config.library, config.initParams);
    let hsm: GrapheneHsm | undefined;
    try {
      const slot = await findTokenSlot(library, config, retry);
      const info = library.lib.C_GetInfo();
      const profile = chooseProfile(
        { manufacturerId: info.manufacturerID, libraryDescription: info.libraryDescription },
        config.profile,
      );
      hsm = new GrapheneHsm(library, slot, config, profile);
      await hsm.#start(retry);
      return hsm;
    } catch (err) {
      // Our sessions go (closing the last one logs this token out); the library is finalized only if no other
      // instance uses it, so that the next open() in this process starts from a clean library.
      if (hsm !== undefined) await hsm.close();
      else library.release();
      throw toKmsError(err, 'open');
    }
  }

  /** The profile the adapter runs with: what this module can do and how. */
  get profile(): HsmProfile {
    return this.#profile;
  }

  async generateRandom(length: number): Promise<Buffer> {
    needs(Number.isInteger(length) && length >= 0 && length <= MAX_RANDOM_BYTES, 'Invalid random length.');
    if (length === 0) return Buffer.alloc(0);
    const perCall = this.#profile.randomBytesPerCall;
    this.#randomHealth.assertServing();
    return this.#run(undefined, (session) => {
      const out = Buffer.alloc(length);
      try {
        for (let at = 0; at < length; at += perCall) {
          this.#drawRandom(session, out.subarray(at, Math.min(at + perCall, length)));
        }
        return out;
      } catch (err) {
        // The blocks drawn before a failing one go with it: the caller gets all of its bytes or none.
        out.fill(0);
        throw toKmsError(err, 'C_GenerateRandom');
      }
    });
  }

  async ensureRootKey(label: string): Promise<Buffer> {
    this.#assertOpen();
    const handle = await this.#findOrCreate(rootKeySpec(label), { attempts: 1, delayMs: 0 }, true);
    this.#roots.set(label, handle);
    return this.#objectId(handle);
  }

  async checkRootKey(label: string, tokenId: Buffer | null): Promise<void> {
    this.#assertOpen();
    const found = this.#onAnchor('C_FindObjects', (anchor) => this.#findByLabel(anchor, label));
    const token = `token "${this.#config.tokenLabel}"`;
    if (found.length === 0) {
      throw new KmsError(
        'HsmUnavailable',
        `Refusing to use this token: root key "${label}", which the database's key versions are wrapped under, is not on ` +
          `${token}. Is this the token the database was made with?`,
      );
    }
    const handle = await this.#findOrCreate(rootKeySpec(label), { attempts: 1, delayMs: 0 }, false);
    if (tokenId !== null && !this.#objectId(handle).equals(tokenId)) {
      throw new KmsError(
        'HsmUnavailable',
        `Refusing to use this token: root key "${label}" on ${token} has another CKA_ID than the one the database's key ` +
          'versions are wrapped under: this is not the token the database was made with.',
      );
    }
    this.#roots.set(label, handle);
  }

  #objectId(handle: Handle): Buffer {
    const [id] = this.#onAnchor('C_GetAttributeValue', (anchor) =>
      this.#lib.C_GetAttributeValue(anchor, handle, [{ type: pkcs11js.CKA_ID }]),
    );
    return Buffer.from((id?.value as Buffer | undefined) ?? Buffer.alloc(0));
  }

  async destroyRootKey(label: string): Promise<boolean> {
    this.#assertOpen();
    this.#roots.delete(label);
    const found = this.#onAnchor('C_FindObjects', (anchor) => this.#findByLabel(anchor, label));
    for (const handle of found) {
      // A wrong label must never cost another key: only an AES key that wraps or derives (a root key of either
      // scheme) is destroyed here, never the credential key or anything else that happens to carry the label.
      if (!this.#isRootKey(handle)) {
        throw new KmsError('InternalError', `Refusing to destroy "${label}": it is not a root key.`);
      }
    }
    for (const handle of found) {
      this.#onAnchor('C_DestroyObject', (anchor) => this.#lib.C_DestroyObject(anchor, handle));
    }
    return found.length > 0;
  }

  #isRootKey(handle: Handle): boolean {
    const [klass, keyType, wrap, derive] = this.#onAnchor('C_GetAttributeValue', (anchor) =>
      this.#lib.C_GetAttributeValue(anchor, handle, [
        { type: pkcs11js.CKA_CLASS },
        { type: pkcs11js.CKA_KEY_TYPE },
        { type: pkcs11js.CKA_WRAP },
        { type: pkcs11js.CKA_DERIVE },
      ]),
    ).map((attribute) => attribute.value as Buffer | undefined);
    return (
      klass?.readUInt32LE(0) === pkcs11js.CKO_SECRET_KEY &&
      keyType?.readUInt32LE(0) === pkcs11js.CKK_AES &&
      (wrap?.[0] === 1 || derive?.[0] === 1)
    );
  }

  async createKeyVersion(keyId: string, version: number, rootKeyLabel: string): Promise<KeptKeyVersion> {
    this.#assertOpen();
    const kept = this.#withRootKey('C_GenerateKey/C_WrapKey', rootKeyLabel, (anchor, root) => {
      const fresh = this.#lib.C_GenerateKey(
        anchor,
        AES_KEY_GEN_MECHANISM,
        newVersionKeyTemplate(keyId, version, false),
      );
      try {
        return this.#wrap(anchor, root, fresh, rootKeyLabel);
      } finally {
        this.#destroyQuietly(fresh);
      }
    });
    // Unwrapped at once into the key that is used: proves the wrapped bytes open, and warms the cache. A handle
    // cached under the same id and number (a creation retried after a root race) is another key: drop it first.
    this.#keys.delete(cacheId(keyId, version));
    this.#keyHandle({ keyId, version, ...kept });
    return kept;
  }

  async createTokenKeyVersion(
    keyId: string,
    version: number,
    label: string,
    objectId: Buffer,
  ): Promise<KeptKeyVersion> {
    this.#assertOpen();
    needs(objectId.length === TOKEN_OBJECT_ID_BYTES, `The object id must be ${TOKEN_OBJECT_ID_BYTES} bytes.`);
    const handle = this.#onAnchor('C_GenerateKey', (anchor) => {
      // Never a second object with the CKA_ID: the version would be ambiguous and unusable, and NSS softokn would
      // even replace the existing secret key with the new one in place (it keeps one per CKA_ID).
      if (this.#find(anchor, [{ type: pkcs11js.CKA_ID, value: objectId }], 1).length > 0) {
        throw new KmsError(
          'InternalError',
          `Refusing to create key ${keyId} version ${version}: an object with CKA_ID ${objectId.toString('hex')} is ` +
            `already on token "${this.#config.tokenLabel}".`,
        );
      }
      return this.#lib.C_GenerateKey(
        anchor,
        AES_KEY_GEN_MECHANISM,
        tokenVersionKeyTemplate(label, objectId, this.#profile),
      );
    });
    this.#keys.set(cacheId(keyId, version), handle, 'token-object', objectId);
    return { scheme: 'token-object-v1', rootKeyLabel: '', keyMaterial: Buffer.from(objectId) };
  }

  async destroyTokenKeyVersion(objectId: Buffer): Promise<boolean> {
    this.#assertOpen();
    needs(objectId.length === TOKEN_OBJECT_ID_BYTES, `The object id must be ${TOKEN_OBJECT_ID_BYTES} bytes.`);
    // Every object carrying the CKA_ID, whatever its kind: a wrong id must never cost a root key or a tenant's own.
    const found = this.#onAnchor('C_FindObjects', (anchor) =>
      this.#find(anchor, [{ type: pkcs11js.CKA_ID, value: objectId }], MAX_OBJECTS_PER_ID),
    );
    for (const handle of found) {
      if (!this.#isTokenVersionKey(handle)) {
        throw new KmsError(
          'InternalError',
          `Refusing to destroy the objects with CKA_ID ${objectId.toString('hex')} on token ` +
            `"${this.#config.tokenLabel}": one is not a key version kept as a token object.`,
        );
      }
    }
    for (const handle of found) {
      this.#keys.forgetHandle(handle);
      this.#onAnchor('C_DestroyObject', (anchor) => this.#lib.C_DestroyObject(anchor, handle));
    }
    return found.length > 0;
  }

  async destroyIncompleteTokenKeys(): Promise<number> {
    this.#assertOpen();
    const secretKeys = this.#onAnchor('C_FindObjects', (anchor) =>
      this.#find(anchor, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }], MAX_OBJECTS_SCANNED),
    );
    let destroyed = 0;
    for (const handle of secretKeys) {
      if (!this.#isIncompleteKey(handle)) continue;
      this.#onAnchor('C_DestroyObject', (anchor) => this.#lib.C_DestroyObject(anchor, handle));
      destroyed++;
    }
    return destroyed;
  }

  /**
   * The stub SoftHSM leaves of a key whose C_GenerateKey was killed: it writes the object before its attributes, so
   * what remains has no label, no CKA_ID and a value of length 0. It holds no key: destroying it loses nothing. A
   * module whose objects cannot be read so (an attribute it refuses) has no such stubs, and nothing is destroyed.
   */
  #isIncompleteKey(handle: Handle): boolean {
    let attributes: pkcs11js.Attribute[];
    try {
      attributes = this.#onAnchor('C_GetAttributeValue', (anchor) =>
        this.#lib.C_GetAttributeValue(anchor, handle, [
          { type: pkcs11js.CKA_VALUE_LEN },
          { type: pkcs11js.CKA_LABEL },
          { type: pkcs11js.CKA_ID },
        ]),
      );
    } catch {
      return false;
    }
    const [valueLength, label, id] = attributes.map((attribute) => attribute.value as Buffer | undefined);
    return (
      valueLength !== undefined &&
      valueLength.length > 0 &&
      valueLength.every((byte) => byte === 0) &&
      (label?.length ?? 0) === 0 &&
      (id?.length ?? 0) === 0
    );
  }

  /**
   * What a token-object-v1 version must be, and the only kind of object destroyTokenKeyVersion destroys: a token
   * AES key, sensitive and never extractable, that encrypts and decrypts and can do nothing else.
   */
  #isTokenVersionKey(handle: Handle): boolean {
    const read = (types: readonly number[]) =>
      this.#onAnchor('C_GetAttributeValue', (anchor) =>
        this.#lib.C_GetAttributeValue(
          anchor,
          handle,
          types.map((type) => ({ type })),
        ),
      ).map((attribute) => attribute.value as Buffer | undefined);
    // The class first: asking an object of another class (a certificate, say) for key attributes is an error.
    const [klass] = read([pkcs11js.CKA_CLASS]);
    if (klass?.readUInt32LE(0) !== pkcs11js.CKO_SECRET_KEY) return false;
    const [keyType, ...flags] = read([pkcs11js.CKA_KEY_TYPE, ...TOKEN_VERSION_KEY_IS, ...TOKEN_VERSION_KEY_IS_NOT]);
    return (
      keyType?.readUInt32LE(0) === pkcs11js.CKK_AES &&
      flags.every((flag, i) => flag?.[0] === (i < TOKEN_VERSION_KEY_IS.length ? 1 : 0))
    );
  }

  async rewrapKeyVersion(key: CmkVersionRef, rootKeyLabel: string): Promise<KeptKeyVersion> {
    this.#assertOpen();
    // The version's key, extractable for the one wrap below; destroyed right after it.
    const movable = this.#materialise(key, false);
    try {
      return this.#withRootKey('C_WrapKey', rootKeyLabel, (anchor, root) =>
        this.#wrap(anchor, root, movable, rootKeyLabel),
      );
    } finally {
      this.#destroyQuietly(movable);
    }
  }

  /**
   * Brings the version's key back inside the HSM and caches its handle, proving it opens. The core never needs it
   * (encrypt and decrypt do it on a miss); tests and `bench/run micro` use it to warm or probe the cache.
   */
  async prepareKey(key: CmkVersionRef): Promise<void> {
    this.#assertOpen();
    this.#keyHandle(key);
  }

  async encrypt(key: CmkVersionRef, plaintext: Buffer, aad: Buffer): Promise<GcmSealed> {
    // pkcs11js passes an empty buffer as NULL: SoftHSM answers CKR_ARGUMENTS_BAD.
    needs(plaintext.length > 0, 'The plaintext must not be empty.');
    // Before #run: a refused plaintext must cost no session and no unwrap of the version's key.
    checkGcmPlaintextLength(this.#profile, plaintext.length);
    this.#assertIvSourceServing();
    return this.#run(key, (session, keyHandle) => this.#gcmEncrypt(session, keyHandle, plaintext, aad));
  }

  #gcmEncrypt(session: Handle, keyHandle: Handle, plaintext: Buffer, aad: Buffer): GcmSealed | Promise<GcmSealed> {
    const encrypt = this.#async ? gcmEncryptAsync : gcmEncrypt;
    return encrypt(this.#lib, session, this.#profile, keyHandle, plaintext, aad, this.#ivDraw(session));
  }

  async decrypt(key: CmkVersionRef, iv: Buffer, ciphertextWithTag: Buffer, aad: Buffer): Promise<Buffer> {
    return this.#gcmDecrypt(key, iv, ciphertextWithTag, aad);
  }

  /**
   * Decrypts under one version and encrypts under another on one pool session, so that the plaintext exists only
   * here, between the two calls, and is zeroed before the session goes back to the pool.
   */
  async reencrypt(
    from: CmkVersionRef,
    iv: Buffer,
    ciphertextWithTag: Buffer,
    fromAad: Buffer,
    to: CmkVersionRef,
    toAad: Buffer,
  ): Promise<GcmSealed> {
    this.#checkOurCiphertext(iv, ciphertextWithTag);
    this.#assertIvSourceServing();
    return this.#onPoolSession(async (session, handleOf) => {
      const out = Buffer.alloc(ciphertextWithTag.length);
      try {
        const plaintext = await this.#decryptOn(session, handleOf(from), iv, ciphertextWithTag, fromAad, out);
        return await this.#gcmEncrypt(session, handleOf(to), plaintext, toAad);
      } finally {
        out.fill(0);
      }
    });
  }

  async #gcmDecrypt(
    key: CmkVersionRef | TokenKeyName,
    iv: Buffer,
    ciphertextWithTag: Buffer,
    aad: Buffer,
  ): Promise<Buffer> {
    this.#checkOurCiphertext(iv, ciphertextWithTag);
    return this.#run(key, (session, keyHandle) =>
      this.#decryptOn(session, keyHandle, iv, ciphertextWithTag, aad, Buffer.alloc(ciphertextWithTag.length)),
    );
  }

  /**
   * We never make empty-plaintext ciphertexts, so anything not longer than a tag is not one of ours, and nothing
   * longer than the module takes at once was made here.
   */
  #checkOurCiphertext(iv: Buffer, ciphertextWithTag: Buffer): void {
    if (
      iv.length !== GCM_IV_BYTES ||
      ciphertextWithTag.length <= GCM_TAG_BYTES ||
      ciphertextWithTag.length > this.#profile.gcmMaxBytesPerCall + GCM_TAG_BYTES
    ) {
      throw invalidCiphertext();
    }
  }

  /**
   * AES-GCM decryption on the session into `out` (which must hold the whole input, tag included: SoftHSM answers
   * CKR_BUFFER_TOO_SMALL otherwise); the plaintext is the start of `out`. With asynchronous calls, C_Decrypt runs
   * on the libuv pool: the caller keeps `out` (and zeroes it) only after the promise settles.
   */
  #decryptOn(
    session: Handle,
    keyHandle: Handle,
    iv: Buffer,
    ciphertextWithTag: Buffer,
    aad: Buffer,
    out: Buffer,
  ): Buffer | Promise<Buffer> {
    let fn = 'C_DecryptInit';
    try {
      this.#lib.C_DecryptInit(session, gcmMechanism(iv, aad), keyHandle);
      fn = 'C_Decrypt';
      if (this.#async) {
        return pkcs11Async<Buffer>((done) => this.#lib.C_Decrypt(session, ciphertextWithTag, out, done)).catch(
          (err: unknown) => {
            throw this.#decryptFailure(err, 'C_Decrypt');
          },
        );
      }
      return this.#lib.C_Decrypt(session, ciphertextWithTag, out);
    } catch (err) {
      throw this.#decryptFailure(err, fn);
    }
  }

  /** Modules disagree on the code of a tag mismatch: the profile names this module's (any ends the operation). */
  #decryptFailure(err: unknown, fn: string): KmsError {
    const code = ckrOf(err);
    if (fn === 'C_Decrypt' && code !== undefined && this.#profile.tagFailureCodes.includes(code)) {
      return invalidCiphertext(err);
    }
    return toKmsError(err, fn);
  }

  async credentialSecret(accessKeyId: string): Promise<Buffer> {
    if (this.#config.credentialKey === false) {
      throw new KmsError(
        'InternalError',
        `Token "${this.#config.tokenLabel}" was opened without a credential key: it issues no access key secrets.`,
      );
    }
    const data = credentialMacInput(accessKeyId);
    return this.#run(CREDENTIAL_KEY, async (session, keyHandle) => {
      let fn = 'C_SignInit';
      try {
        this.#lib.C_SignInit(session, HMAC_SHA256_MECHANISM, keyHandle);
        fn = 'C_Sign';
        const mac = Buffer.alloc(CREDENTIAL_MAC_BYTES);
        if (!this.#async) return this.#lib.C_Sign(session, data, mac);
        return await pkcs11Async<Buffer>((done) => this.#lib.C_Sign(session, data, mac, done));
      } catch (err) {
        throw toKmsError(err, fn);
      }
    });
  }

  async sealSecret(plaintext: Buffer, aad: Buffer): Promise<GcmSealed> {
    needs(plaintext.length > 0, 'The secret must not be empty.');
    this.#assertIvSourceServing();
    return this.#run(SECRET_SEALING_KEY, (session, keyHandle) => this.#gcmEncrypt(session, keyHandle, plaintext, aad));
  }

  async openSecret(sealed: GcmSealed, aad: Buffer): Promise<Buffer> {
    return this.#gcmDecrypt(SECRET_SEALING_KEY, sealed.iv, sealed.ciphertextWithTag, aad);
  }

  forget(keyId: string, version: number): void {
    this.#keys.delete(cacheId(keyId, version));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#pool.closeAll();
    // Asynchronous calls still running (asyncCalls) use their sessions and keys: let them finish first.
    await this.#pool.drained();
    // Nothing is destroyed or closed if the library was initialised again since: see #destroyQuietly.
    this.#keys.clear({ destroy: true });
    if (this.#anchor !== undefined) this.#closeQuietly(this.#anchor);
    this.#anchor = undefined;
    this.#forgetTokenKeys();
    // Finalizes the library if no other instance uses it.
    this.#library.release();
  }

  forTesting(): GrapheneHsmTestHooks {
    const hsm = this;
    return {
      module: this.#library.module,
      lib: this.#lib,
      get slot() {
        return hsm.#slot;
      },
      get anchorSession() {
        return hsm.#anchor;
      },
      get idleSessions() {
        return hsm.#pool.idleSessions;
      },
      get poolState() {
        return hsm.#pool.state;
      },
      asyncCalls: this.#async,
      get versionKeys() {
        return hsm.#keys.handles();
      },
      profile: this.#profile,
      rootKeyHandle: (label) => this.#roots.get(label),
      credentialKeyHandle: () => this.#tokenKeys.get(CREDENTIAL_KEY),
      secretSealingKeyHandle: () => this.#tokenKeys.get(SECRET_SEALING_KEY),
      poolStats: () => {
        const open = this.#pool.openCount;
        const idle = this.#pool.idleSessions.length;
        return { open, idle, leased: open - idle, anchor: this.#anchor !== undefined, ...this.#counts };
      },
    };
  }

  // ---- start-up -------------------------------------------------------------------------------------------------

  async #start(retry: { attempts: number; delayMs: number }): Promise<void> {
    this.#anchor = this.#openSession();
    runSelfTest(this.#lib, this.#anchor, this.#profile, this.#config.library);
    // A tenant's key store holds only its CMK versions (and roots): the service's own keys are not its business.
    if (this.#config.credentialKey === false) return;
    const create = this.#config.createTokenKeysIfMissing;
    this.#tokenKeys.set(CREDENTIAL_KEY, await this.#findOrCreate(CREDENTIAL_KEY_SPEC, retry, create));
    this.#tokenKeys.set(SECRET_SEALING_KEY, await this.#findOrCreate(SECRET_SEALING_KEY_SPEC, retry, create));
  }

  /**
   * The handle of the one object labelled `spec.label`, after checking its attributes; created if missing and the
   * config allows it, otherwise looked for again until another process (the cluster primary) has created it.
   */
  async #findOrCreate(
    spec: TokenKeySpec,
    retry: { attempts: number; delayMs: number },
    create: boolean,
  ): Promise<Handle> {
    const { label } = spec;
    for (let attempt = 1; ; attempt++) {
      const found = this.#onAnchor('C_FindObjects', (anchor) => this.#findByLabel(anchor, label));
      if (found.length > 1) {
        throw new KmsError(
          'InternalError',
          `Refusing to start: more than one object on token "${this.#config.tokenLabel}" is labelled "${label}". ` +
            `Remove the duplicates (${spec.keepHint}).`,
        );
      }
      if (found.length === 1) {
        this.#checkTokenKey(found[0] as Handle, spec);
        return found[0] as Handle;
      }
      if (create) {
        return this.#onAnchor('C_GenerateKey', (anchor) =>
          this.#lib.C_GenerateKey(anchor, spec.generate, spec.template(label, this.#profile)),
        );
      }
      if (attempt >= retry.attempts) {
        throw new KmsError(
          'HsmUnavailable',
          `${spec.role} "${label}" is not on token "${this.#config.tokenLabel}" (looked ${attempt} times). ` +
            'Only the process started with createTokenKeysIfMissing (the cluster primary) creates it.',
        );
      }
      await sleep(retry.delayMs);
    }
  }

  /** A token key of the wrong kind, or one that could leave the HSM, is a misconfiguration: refuse to use it. */
  #checkTokenKey(handle: Handle, spec: TokenKeySpec): void {
    const booleans = [pkcs11js.CKA_SENSITIVE, ...spec.allowed, pkcs11js.CKA_EXTRACTABLE, ...spec.forbidden];
    const attrs = this.#onAnchor('C_GetAttributeValue', (anchor) =>
      this.#lib.C_GetAttributeValue(anchor, handle, [
        { type: pkcs11js.CKA_CLASS },
        { type: pkcs11js.CKA_KEY_TYPE },
        ...booleans.map((type) => ({ type })),
      ]),
    );
    const [klass, keyType, ...flags] = attrs.map((a) => a.value as Buffer | undefined);
    const mustBeTrue = 1 + spec.allowed.length;
    const ok =
      klass?.readUInt32LE(0) === pkcs11js.CKO_SECRET_KEY &&
      keyType?.readUInt32LE(0) === spec.keyType &&
      flags.every((flag, i) => flag?.[0] === (i < mustBeTrue ? 1 : 0));
    if (!ok) {
      throw new KmsError(
        'InternalError',
        `Refusing to start: "${spec.label}" on token "${this.#config.tokenLabel}" is not a sensitive, non-extractable ` +
          `${spec.description}.`,
      );
    }
  }

  #forgetTokenKeys(): void {
    this.#roots.clear();
    this.#tokenKeys.clear();
  }

  // ---- sessions -------------------------------------------------------------------------------------------------

  /**
   * Opens a read-write session, logging in if the process is not logged in (first session, or all were closed).
   * Under requireOwnLogin, a session found logged in while we hold no login of our own is refused: the login is
   * someone else's in this process, and the PIN we were given would never be checked.
   */
  #openSession(): Handle {
    let session: Handle;
    try {
      session = this.#lib.C_OpenSession(this.#slot, SESSION_FLAGS);
    } catch (err) {
      if (!needsReinitialize(ckrOf(err))) throw toKmsError(err, 'C_OpenSession');
      this.#reinitialize();
      try {
        session = this.#lib.C_OpenSession(this.#slot, SESSION_FLAGS);
      } catch (err2) {
        throw toKmsError(err2, 'C_OpenSession');
      }
    }
    try {
      const loggedIn = this.#lib.C_GetSessionInfo(session).state === CKS_RW_USER_FUNCTIONS;
      if (!loggedIn) this.#login(session);
      else if (this.#config.requireOwnLogin === true && this.#loggedInAt !== this.#generation) {
        throw this.#loggedInElsewhere();
      }
    } catch (err) {
      this.#closeQuietly(session);
      throw toKmsError(err, 'C_GetSessionInfo');
    }
    return session;
  }

  #loggedInElsewhere(cause?: unknown): KmsError {
    return new KmsError(
      'InternalError',
      `Refusing to use token "${this.#config.tokenLabel}": this process is already logged in to it, so the PIN given ` +
        'would not be checked. Is another connection on the same token open?',
      { cause: new TokenNotReached('logged-in-elsewhere', cause === undefined ? undefined : { cause }) },
    );
  }

  #login(session: Handle): void {
    try {
      this.#lib.C_Login(session, pkcs11js.CKU_USER, this.#config.pin);
    } catch (err) {
      const code = ckrOf(err);
      if (code === pkcs11js.CKR_USER_ALREADY_LOGGED_IN && this.#config.requireOwnLogin === true) {
        throw this.#loggedInElsewhere(err);
      }
      if (code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
        const token = `"${this.#config.tokenLabel}"`;
        if (code === pkcs11js.CKR_PIN_INCORRECT || code === pkcs11js.CKR_PIN_LEN_RANGE) {
          throw new KmsError('InternalError', `Login to token ${token} failed: the PIN is incorrect.`, { cause: err });
        }
        if (code === pkcs11js.CKR_PIN_LOCKED) {
          throw new KmsError('InternalError', `Login to token ${token} failed: the user PIN is locked.`, {
            cause: err,
          });
        }
        throw toKmsError(err, 'C_Login');
      }
    }
    this.#loggedInAt = this.#generation;
    // A fresh login means every session had been closed: session objects died with them and private object
    // handles are no longer valid.
    this.#forgetTokenKeys();
    this.#keys.clear({ destroy: false });
  }

  /**
   * Someone finalized the library under us: initialise it again (once for every instance on it) and start over.
   */
  #reinitialize(): void {
    this.#library.reinitialize(this.#generation);
    this.#followLibrary();
  }

  /**
   * When the library was initialised again since our handles were made (by us or by another instance on it), they
   * mean nothing, or another token's sessions and objects: forget them and find the slot again. The next session
   * logs in again.
   */
  #followLibrary(): void {
    if (this.#isCurrent()) return;
    if (this.#generation !== TOKEN_LOST) this.#counts.libraryRestarts++;
    this.#generation = this.#library.generation;
    this.#counts.sessionsAbandoned += this.#pool.openCount;
    this.#pool.abandonAll();
    this.#anchor = undefined;
    this.#forgetTokenKeys();
    this.#keys.clear({ destroy: false });
    let slot = scanForToken(this.#library.module, this.#config.tokenLabel).slot;
    // The module lists its tokens at C_Initialize only: one that was lost and is back shows after a restart.
    if (slot === undefined && this.#library.recover(this.#generation)) {
      this.#counts.libraryRestarts++;
      this.#generation = this.#library.generation;
      slot = scanForToken(this.#library.module, this.#config.tokenLabel).slot;
    }
    if (slot === undefined) {
      // Looked for again by the next call (the library started again when due), rather than calling a slot that is
      // gone: C_OpenSession's CKR_SLOT_ID_INVALID would re-initialise the library, and every instance on it, each time.
      this.#generation = TOKEN_LOST;
      throw new KmsError('HsmUnavailable', `Token "${this.#config.tokenLabel}" is gone after re-initialising.`, {
        cause: new TokenNotReached('no-such-token'),
      });
    }
    this.#slot = slot;
  }

  #isUsable(session: Handle): boolean {
    try {
      return this.#lib.C_GetSessionInfo(session).state === CKS_RW_USER_FUNCTIONS;
    } catch {
      return false;
    }
  }

  /**
   * SoftHSM keeps a token whose files went away invalid until the library is initialised again, even once they are
   * back: C_GetTokenInfo and C_Login answer CKR_GENERAL_ERROR and its objects are gone (test/api/hsm-faults.test.ts).
   * So after a failure, a token that no longer answers C_GetTokenInfo makes the library start again (rate-limited,
   * once for every instance on it) and is found again; meanwhile callers get HsmUnavailable. True if it was lost.
   */
  #recoverIfTokenLost(): boolean {
    try {
      this.#lib.C_GetTokenInfo(this.#slot);
      return false;
    } catch {
      // Lost: start the library again below.
    }
    if (this.#library.recover(this.#generation)) quietly(() => this.#followLibrary());
    return true;
  }

  /**
   * A root or token key is missing: unavailable if the token is lost (its objects come back with it), otherwise
   * a misconfiguration (this is not the token the keys were made on) that no retry mends.
   */
  #missingKey(what: string): KmsError {
    const lost = this.#recoverIfTokenLost();
    return new KmsError(
      lost ? 'HsmUnavailable' : 'InternalError',
      `${what}: no object with this label on token "${this.#config.tokenLabel}".`,
    );
  }

  #replaceAnchor(): Handle {
    const old = this.#anchor;
    const generation = this.#generation;
    this.#anchor = undefined;
    // Open the new session before closing the old one: closing the last session logs the process out.
    const fresh = this.#openSession();
    this.#counts.anchorsReplaced++;
    if (old !== undefined && generation === this.#generation) this.#closeQuietly(old);
    // The CMK version keys were session objects of the old anchor.
    this.#keys.clear({ destroy: false });
    this.#anchor = fresh;
    return fresh;
  }

  /** After a session failure: replace a dead anchor and drop dead idle sessions, so that one retry is enough. */
  #recoverSessions(): void {
    this.#counts.recoveries++;
    if (this.#anchor === undefined || !this.#isUsable(this.#anchor)) this.#replaceAnchor();
    this.#pool.purge((session) => this.#isUsable(session));
  }

  /** Runs `op` on the anchor session; replaces the anchor and retries once if the session failed. */
  #onAnchor<T>(fn: string, op: (anchor: Handle) => T): T {
    for (let attempt = 0; ; attempt++) {
      this.#followLibrary();
      const anchor = this.#anchor ?? this.#replaceAnchor();
      try {
        return op(anchor);
      } catch (err) {
        if (attempt === 0 && isSessionFailure(ckrOf(err))) {
          this.#recoverSessions();
          continue;
        }
        throw this.#failed(err, fn);
      }
    }
  }

  /** One C_GenerateRandom into `out`, health-tested: `out` is zeroed and HsmUnavailable thrown when a test fails. */
  #drawRandom(session: Handle, out: Buffer): void {
    this.#randomHealth.fill(out, (into) => this.#lib.C_GenerateRandom(session, into));
  }

  #ivDraw(session: Handle): (iv: Buffer) => void {
    return (iv) => this.#drawRandom(session, iv);
  }

  /**
   * Before a session is taken: a failed generator refuses host-random encryption at once, while it is not due for a
   * re-test (the IV would come from it). A module that writes its own IV uses no bytes of ours.
   */
  #assertIvSourceServing(): void {
    if (this.#profile.ivMode === 'host-random') this.#randomHealth.assertServing();
  }

  /**
   * Runs `op` on a pool session with the key handle of the CMK version or the token key (or none). See
   * #onPoolSession.
   */
  #run<T>(key: KeySource | undefined, op: (session: Handle, keyHandle: Handle) => T | Promise<T>): Promise<T> {
    return this.#onPoolSession((session, handleOf) => op(session, key === undefined ? NO_KEY : handleOf(key)));
  }

  /**
   * Runs `op` on a pool session; `op` gets key handles from `handleOf` (cached, or brought back on a miss). A session
   * that saw an error is never reused (CKR_BUFFER_TOO_SMALL and CKR_ARGUMENTS_BAD leave its operation active).
   * Retries once after a session failure (on a new session) or a stale key handle (that of the key `op` asked for
   * last, which is the one its failing call was using: brought back or looked up again). A key that cannot be brought
   * back fails the call at once, and the session goes back to the pool. An asynchronous `op` keeps the session until
   * it settles: no other operation runs on it meanwhile.
   */
  async #onPoolSession<T>(op: (session: Handle, handleOf: (key: KeySource) => Handle) => T | Promise<T>): Promise<T> {
    this.#assertOpen();
    for (let attempt = 0; ; attempt++) {
      this.#followLibrary();
      const session = this.#pool.tryAcquire() ?? (await this.#pool.acquire());
      if (!this.#isCurrent()) {
        // Another instance initialised the library again while we waited: the session is from before.
        attempt--;
        continue;
      }
      let lastKey: KeySource | undefined;
      let lookupFailure: unknown;
      const handleOf = (key: KeySource): Handle => {
        lastKey = key;
        try {
          return typeof key === 'string' ? this.#tokenKeyHandle(key) : this.#keyHandle(key);
        } catch (err) {
          lookupFailure = err;
          throw err;
        }
      };
      try {
        const pending = op(session, handleOf);
        // Awaited only when asynchronous: the synchronous path keeps its one promise per operation.
        const result = pending instanceof Promise ? await pending : pending;
        this.#pool.release(session);
        return result;
      } catch (err) {
        if (lookupFailure !== undefined && err === lookupFailure) {
          this.#pool.release(session);
          throw err;
        }
        this.#pool.discard(session);
        const code = ckrOf(err);
        if (attempt === 0 && isSessionFailure(code)) {
          this.#recoverSessions();
          continue;
        }
        if (attempt === 0 && lastKey !== undefined && isKeyHandleFailure(code)) {
          if (typeof lastKey === 'string') this.#tokenKeys.delete(lastKey);
          else this.#keys.delete(cacheId(lastKey.keyId, lastKey.version));
          continue;
        }
        throw this.#failed(err, 'operation');
      }
    }
  }

  /** The error an operation ends with; one that says the HSM is unavailable first checks the token is not lost. */
  #failed(err: unknown, fn: string): KmsError {
    const failure = toKmsError(err, fn);
    if (failure.code === 'HsmUnavailable') this.#recoverIfTokenLost();
    return failure;
  }

  // ---- keys -----------------------------------------------------------------------------------------------------

  /**
   * The cached handle of the CMK version's key; on a miss, brought back on the anchor session, or, for a token
   * object, looked up by its CKA_ID.
   */
  #keyHandle(key: CmkVersionRef): Handle {
    const id = cacheId(key.keyId, key.version);
    const cached = this.#keys.get(id, key.keyMaterial);
    if (cached !== undefined) return cached;
    if (key.scheme === 'token-object-v1') {
      const found = this.#tokenVersionKey(key);
      this.#keys.set(id, found, 'token-object', key.keyMaterial);
      return found;
    }
    const handle = this.#materialise(key, true);
    this.#keys.set(id, handle, 'session-object', key.keyMaterial);
    return handle;
  }

  /** The one token object of a token-object-v1 version, checked to be what such a version must be. */
  #tokenVersionKey(key: CmkVersionRef): Handle {
    const what = `key ${key.keyId} version ${key.version}`;
    const token = `token "${this.#config.tokenLabel}"`;
    if (key.keyMaterial.length !== TOKEN_OBJECT_ID_BYTES) {
      throw new KmsError('InternalError', `The object id of ${what} is not ${TOKEN_OBJECT_ID_BYTES} bytes.`);
    }
    const found = this.#onAnchor('C_FindObjects', (anchor) =>
      this.#find(anchor, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_ID, value: key.keyMaterial },
      ]),
    );
    if (found.length !== 1) {
      throw new KmsError(
        'HsmUnavailable',
        `The token object of ${what} is ${found.length === 0 ? 'not' : 'more than once'} on ${token}.`,
      );
    }
    const handle = found[0] as Handle;
    if (!this.#isTokenVersionKey(handle)) {
      throw new KmsError(
        'InternalError',
        `Refusing to use ${what}: its object on ${token} is not a sensitive, non-extractable AES key that can only ` +
          'encrypt and decrypt.',
      );
    }
    return handle;
  }

  /**
   * The version's key as a new session object: `forUse`, it can only encrypt and decrypt and is never extractable;
   * otherwise it can only be wrapped (a rotation moving it to a new root). Dispatches on how the version is kept.
   */
  #materialise(key: CmkVersionRef, forUse: boolean): Handle {
    const id = cacheId(key.keyId, key.version);
    switch (key.scheme) {
      case 'kwp-v1':
        if (key.keyMaterial.length !== WRAPPED_AES_256_BYTES) {
          throw new KmsError('InternalError', `Wrapped key of version ${id} is not ${WRAPPED_AES_256_BYTES} bytes.`);
        }
        return this.#withRootKey('C_UnwrapKey', key.rootKeyLabel, (anchor, root) =>
          this.#lib.C_UnwrapKey(
            anchor,
            kwpMechanism(this.#profile.kwpMechanism),
            root,
            key.keyMaterial,
            versionKeyTemplate(key.keyId, key.version, forUse),
          ),
        );
      case 'cbc-encrypt-data-v1':
        if (!this.#profile.derivesCbcEncryptData) {
          throw new KmsError(
            'HsmUnavailable',
            `Version ${id} is kept with the legacy scheme cbc-encrypt-data-v1, which profile ` +
              `${this.#profile.name} cannot open: migrate it with \`kms root rotate\` on a module that can.`,
          );
        }
        if (key.keyMaterial.length !== DERIVATION_DATA_BYTES) {
          throw new KmsError(
            'InternalError',
            `Derivation data of version ${id} is not ${DERIVATION_DATA_BYTES} bytes.`,
          );
        }
        return this.#withRootKey('C_DeriveKey', key.rootKeyLabel, (anchor, root) =>
          this.#lib.C_DeriveKey(
            anchor,
            derivationMechanism(key.keyMaterial),
            root,
            newVersionKeyTemplate(key.keyId, key.version, forUse),
          ),
        );
      case 'token-object-v1':
        // Reached only by a rewrap: #keyHandle looks token objects up.
        throw new KmsError(
          'InternalError',
          `Version ${id} is a token object (scheme token-object-v1): it is under no root key and is never rewrapped.`,
        );
    }
  }

  /** RFC 5649 under the root key, with this module's number for it. */
  #wrap(anchor: Handle, root: Handle, key: Handle, rootKeyLabel: string): KeptKeyVersion {
    const mechanism = kwpMechanism(this.#profile.kwpMechanism);
    const keyMaterial = this.#lib.C_WrapKey(anchor, mechanism, root, key, Buffer.alloc(2 * WRAPPED_AES_256_BYTES));
    return { scheme: 'kwp-v1', rootKeyLabel, keyMaterial: Buffer.from(keyMaterial) };
  }

  /**
   * Runs `op` on the anchor with the root key's handle; looks the root up again, once, if the cached handle went
   * stale (another process may have replaced the object, or a re-login dropped handles).
   */
  #withRootKey<T>(fn: string, label: string, op: (anchor: Handle, root: Handle) => T): T {
    for (let attempt = 0; ; attempt++) {
      const root = this.#rootKey(label);
      try {
        return this.#onAnchor(fn, (anchor) => op(anchor, root));
      } catch (err) {
        if (attempt === 0 && isKeyHandleFailure(ckrOf(err))) {
          this.#roots.delete(label);
          continue;
        }
        throw err;
      }
    }
  }

  /** Root key handles are looked up once (C_FindObjects costs ~20 µs per token object) and then cached. */
  #rootKey(label: string): Handle {
    const cached = this.#roots.get(label);
    if (cached !== undefined) return cached;
    const found = this.#onAnchor('C_FindObjects', (anchor) => this.#findByLabel(anchor, label));
    if (found.length === 0) throw this.#missingKey(`Root key "${label}"`);
    if (found.length !== 1) {
      throw new KmsError(
        'InternalError',
        `Root key "${label}": more than one object with this label on token "${this.#config.tokenLabel}".`,
      );
    }
    const handle = found[0] as Handle;
    this.#roots.set(label, handle);
    return handle;
  }

  /** Looked up once like the root keys; after a re-login the one object with the label is found again. */
  #tokenKeyHandle(name: TokenKeyName): Handle {
    const cached = this.#tokenKeys.get(name);
    if (cached !== undefined) return cached;
    const spec = name === CREDENTIAL_KEY ? CREDENTIAL_KEY_SPEC : SECRET_SEALING_KEY_SPEC;
    const found = this.#onAnchor('C_FindObjects', (anchor) => this.#findByLabel(anchor, spec.label));
    if (found.length === 0) throw this.#missingKey(`${spec.role} "${spec.label}"`);
    if (found.length !== 1) {
      throw new KmsError(
        'InternalError',
        `${spec.role} "${spec.label}": more than one object with this label on token "${this.#config.tokenLabel}".`,
      );
    }
    this.#tokenKeys.set(name, found[0] as Handle);
    return found[0] as Handle;
  }

  /** Up to two objects with the label: enough to tell none, one and too many apart. */
  #findByLabel(session: Handle, label: string): Handle[] {
    return this.#find(session, [{ type: pkcs11js.CKA_LABEL, value: label }]);
  }

  /** Up to `max` objects matching the template (two: enough to tell none, one and too many apart). */
  #find(session: Handle, template: pkcs11js.Template, max = 2): Handle[] {
    this.#lib.C_FindObjectsInit(session, template);
    try {
      return this.#lib.C_FindObjects(session, max);
    } finally {
      this.#lib.C_FindObjectsFinal(session);
    }
  }

  /** Handles from an older generation of the library are never passed to it: they may be another token's now. */
  #destroyQuietly(handle: Handle): void {
    const anchor = this.#anchor;
    if (anchor !== undefined && this.#isCurrent()) quietly(() => this.#lib.C_DestroyObject(anchor, handle));
  }

  #closeQuietly(session: Handle): void {
    if (this.#isCurrent()) quietly(() => this.#lib.C_CloseSession(session));
  }

  #isCurrent(): boolean {
    return this.#library.generation === this.#generation;
  }

  #assertOpen(): void {
    if (this.#closed) throw new KmsError('HsmUnavailable', 'The HSM adapter is closed.');
  }
}

function cacheId(keyId: string, version: number): string {
  return `${keyId}:${version}`;
}

function invalidCiphertext(cause?: unknown): KmsError {
  return new KmsError('InvalidCiphertext', 'The ciphertext is invalid.', cause === undefined ? undefined : { cause });
}

function scanForToken(module: Module, label: string): { slot: Handle | undefined; labels: string[] } {
  const labels: string[] = [];
  const slots = module.getSlots(true);
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    const token = slot.getToken();
    if ((token.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) continue;
    if (token.label === label) return { slot: slot.handle, labels };
    labels.push(token.label);
  }
  return { slot: undefined, labels };
}

/**
 * What decides which tokens the module shows: the library parameters when there are any (named, never printed:
 * they hold paths), otherwise SoftHSM's config file, whose wrong path makes SoftHSM fall back to its default.
 */
function whereTokensComeFrom(config: HsmConfig): string {
  if (config.initParams !== undefined) return 'check the library parameters (KMS_PKCS11_INIT_PARAMS)';
  return `SOFTHSM2_CONF=${process.env.SOFTHSM2_CONF ?? '(unset: the library default)'}`;
}

/**
 * Finds the token by label, never by slot number. A worker started together with others has been seen to miss the
 * token once, so a miss is retried after re-initialising the library (SoftHSM reads its slots at C_Initialize) when
 * no other instance uses it; with others on it, the slots are only read again: re-initialising would log them out,
 * and one token missing must not disturb the others.
 */
async function findTokenSlot(
  library: Pkcs11Library,
  config: HsmConfig,
  retry: { attempts: number; delayMs: number },
): Promise<Handle> {
  const { module } = library;
  const label = config.tokenLabel;
  for (let attempt = 1; ; attempt++) {
    let scan: { slot: Handle | undefined; labels: string[] };
    try {
      scan = scanForToken(module, label);
    } catch (err) {
      throw toKmsError(err, 'C_GetSlotList');
    }
    if (scan.slot !== undefined) return scan.slot;
    if (attempt >= retry.attempts) {
      throw new KmsError(
        'HsmUnavailable',
        `No PKCS#11 token labelled "${label}" in ${module.libFile}; tokens found: ${JSON.stringify(scan.labels)}; ` +
          `${whereTokensComeFrom(config)}.`,
        { cause: new TokenNotReached('no-such-token') },
      );
    }
    await sleep(retry.delayMs);
    if (library.users === 1) library.restart();
  }
}
