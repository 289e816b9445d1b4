import type { CredentialRecord } from './credentials.js';
import type {
  ConnectionOffer,
  ConnectionState,
  KeyStoreExpectation,
  KeyStorePatch,
  KeyStoreRecord,
} from './key-stores.js';
import type {
  AliasRecord,
  KeptKeyVersion,
  KeyRecord,
  KeyRotationRecord,
  KeyState,
  KeyVersionRecord,
  RootKeyRecord,
  RotationType,
  Tag,
} from './keys.js';

/** What the HSM needs to bring one CMK version's key back inside itself. Carries no key material in plaintext. */
export interface CmkVersionRef extends KeptKeyVersion {
  readonly keyId: string;
  readonly version: number;
}

/** An AES-GCM encryption: the IV the HSM layer chose (12 bytes) and ciphertext ‖ 16-byte tag. */
export interface GcmSealed {
  readonly iv: Buffer;
  readonly ciphertextWithTag: Buffer;
}

/**
 * The hardware security module, as the core sees it. The only implementation talks PKCS#11 through graphene
 * (src/hsm); tests may wrap it to inject faults but never replace it.
 *
 * Every method can throw KmsError('HsmUnavailable') when the device fails; decrypt throws
 * KmsError('InvalidCiphertext') when the GCM tag does not verify.
 */
export interface Hsm {
  /** `length` bytes from C_GenerateRandom. */
  generateRandom(length: number): Promise<Buffer>;
  /**
   * Makes the root wrapping key `label` on the token if it is not there yet (checking it if it is). Idempotent, so
   * that a crash between making it and recording it is harmless.
   */
  ensureRootKey(label: string): Promise<Buffer>;
  /**
   * Checks that the token holds the root key `label`, as a root key should be, with the object id `tokenId` the
   * database recorded (null: none recorded); never makes it. Throws KmsError('HsmUnavailable') naming the label and
   * the token when it is missing or another object.
   */
  checkRootKey(label: string, tokenId: Buffer | null): Promise<void>;
  /** Destroys the root key `label` on the token; false if there was none. Every version under it is then lost. */
  destroyRootKey(label: string): Promise<boolean>;
  /**
   * A new CMK version: an AES-256 key generated inside the HSM, wrapped there under the root key `rootKeyLabel`,
   * and kept ready for use. Returns how it is kept; its plaintext never leaves the HSM.
   */
  createKeyVersion(keyId: string, version: number, rootKeyLabel: string): Promise<KeptKeyVersion>;
  /**
   * A new CMK version kept as a persistent token object (scheme token-object-v1): an AES-256 key generated in the
   * HSM, sensitive, never extractable, able only to encrypt and decrypt, labelled `label`, with CKA_ID `objectId`.
   */
  createTokenKeyVersion(keyId: string, version: number, label: string, objectId: Buffer): Promise<KeptKeyVersion>;
  /** Destroys the token object(s) of a token-object-v1 version by CKA_ID; false if there was none. Only AES keys
   *  that encrypt and cannot wrap are ever destroyed here. */
  destroyTokenKeyVersion(objectId: Buffer): Promise<boolean>;
  /**
   * Destroys what a crash during createTokenKeyVersion may have left of a key on some modules (SoftHSM): an object
   * without label, CKA_ID or value, which holds no key. Only run when no creation can be under way (start-up).
   * Returns how many were destroyed.
   */
  destroyIncompleteTokenKeys(): Promise<number>;
  /** The version's key, kept again under the root key `rootKeyLabel` (root rotation; migration of legacy schemes). */
  rewrapKeyVersion(key: CmkVersionRef, rootKeyLabel: string): Promise<KeptKeyVersion>;
  /** AES-256-GCM in the HSM under the CMK version, with an IV the HSM layer chooses (never the caller). */
  encrypt(key: CmkVersionRef, plaintext: Buffer, aad: Buffer): Promise<GcmSealed>;
  /** Inverse of encrypt; the tag is the last 16 bytes of `ciphertextWithTag`. */
  decrypt(key: CmkVersionRef, iv: Buffer, ciphertextWithTag: Buffer, aad: Buffer): Promise<Buffer>;
  /**
   * decrypt under `from`, then encrypt the result under `to` with `toAad`, in the HSM layer: the plaintext never
   * leaves it and is zeroed there. Both versions are of this HSM. Throws KmsError('InvalidCiphertext') as decrypt does.
   */
  reencrypt(
    from: CmkVersionRef,
    iv: Buffer,
    ciphertextWithTag: Buffer,
    fromAad: Buffer,
    to: CmkVersionRef,
    toAad: Buffer,
  ): Promise<GcmSealed>;
  /**
   * AES-256-GCM under the token's secret-sealing key (a token object of the default HSM, encrypt and decrypt only):
   * how tenants' PINs are kept. `openSecret` throws KmsError('InvalidCiphertext') when the tag does not verify.
   */
  sealSecret(plaintext: Buffer, aad: Buffer): Promise<GcmSealed>;
  openSecret(sealed: GcmSealed, aad: Buffer): Promise<Buffer>;
  /**
   * The secret of an access key: HMAC-SHA256 inside the HSM under the non-extractable credential key, over the
   * access key id. Computed on demand, so no secret is ever stored.
   */
  credentialSecret(accessKeyId: string): Promise<Buffer>;
  /** Drops the cached key of a version whose key material is being deleted. */
  forget(keyId: string, version: number): void;
  close(): Promise<void>;
}

export interface ListKeysQuery {
  readonly projectId: string;
  readonly state?: KeyState;
  readonly offset: number;
  readonly limit: number;
}

export type KeyPatch = Partial<Pick<KeyRecord, 'alias' | 'description' | 'state' | 'deletionDate'>>;

/** What a rotation records with the new version: why, when, and the most on-demand rotations allowed before it. */
export interface RotationChange {
  readonly type: RotationType;
  readonly at: number;
  readonly maxOnDemand?: number;
}

/**
 * Key metadata. Never holds key material in plaintext: a key version's kept material is useless without the
 * HSM's root key. Every read is scoped to a project, so one project can never see another's keys.
 */
export interface MetadataStore {
  /**
   * Inserts a key in state PendingCreation together with its first version, atomically, if the version is kept
   * under the active root key; false, inserting nothing, if that root has been replaced since (a rotation began).
   * A key of a tenant's store (keyStoreId) is under none of those roots: it is inserted only if its store is still
   * CONNECTED and the key's project's (false otherwise).
   * Throws KmsError('AliasAlreadyExists') when the project already has the alias (compared by aliasName()) and
   * KmsError('KeyQuotaExceeded') when the project already holds `quota` keys.
   */
  insertPendingKey(key: KeyRecord, version: KeyVersionRecord, quota: number): Promise<boolean>;
  /** PendingCreation → Enabled. */
  activateKey(keyId: string): Promise<void>;
  /** Keys left in PendingCreation by a crash, in every project: reconciled at start-up. */
  listPendingCreation(): Promise<KeyRecord[]>;
  /**
   * Deletes the key, with every version's key material, its aliases and tags, only if it is still in
   * PendingCreation (checked in the same transaction); true if it was deleted.
   */
  purgePendingCreation(keyId: string): Promise<boolean>;
  /**
   * Deletes for good, in one transaction, each of the keys that is still in PendingDeletion with a deletion date at
   * or before `now` when the transaction runs, with every version's key material, its aliases and tags. A key whose
   * deletion was cancelled (or rescheduled) since it was listed, by any process, stays. Returns the ids deleted.
   */
  purgeDueKeys(keyIds: readonly string[], now: number): Promise<string[]>;
  /**
   * Makes sure no copy of purged data is left in the store's files (journal, free space). Call after purging; true
   * when done, false when other processes held the files too long (the next call tries again).
   */
  erasePurged(): Promise<boolean>;

  /** A key of the project, never one in PendingCreation. */
  findKey(projectId: string, keyId: string): Promise<KeyRecord | undefined>;
  /** Look-up by alias, compared by aliasName(). */
  findKeyByAlias(projectId: string, alias: string): Promise<KeyRecord | undefined>;
  /** `fresh`: read past any cache (a root rotation may have rewrapped the version meanwhile). */
  findKeyVersion(keyId: string, version: number, fresh?: boolean): Promise<KeyVersionRecord | undefined>;
  /** The root keys, active first, then by label (numbers in order). */
  listRootKeys(): Promise<RootKeyRecord[]>;
  /**
   * Reserves a root key label (state creating) before the key is made on the token, so that two processes never make
   * two keys with one label. Returns the label reserved: `label`, or that of a reservation made before `staleBefore`
   * (abandoned by a process that died), which is taken over. Undefined if a fresher reservation exists.
   */
  reserveRootKey(label: string, at: number, staleBefore: number): Promise<string | undefined>;
  /**
   * Makes `label` the active root key, in one transaction: the previously active one, if any, becomes retiring.
   * `tokenId`: the key's CKA_ID on the token (ensureRootKey's answer), so that start-up can tell its token.
   */
  activateRootKey(label: string, at: number, tokenId?: Buffer): Promise<void>;
  /**
   * Retiring → destroying, in one transaction, only if no version is kept under the root key; false if one still is
   * (nothing changes then). From then on no version can be kept under it: it only waits to be destroyed.
   */
  markRootKeyDestroying(label: string): Promise<boolean>;
  /** Forgets a root key in state destroying, once it is gone from the token. */
  forgetRootKey(label: string): Promise<void>;
  /** Versions of any key, in any state, kept under another root key than `rootKeyLabel`; at most `limit`. */
  listVersionsNotUnder(rootKeyLabel: string, limit: number): Promise<KeyVersionRecord[]>;
  /**
   * Replaces how a version is kept, only if it is still kept as `current` says (compare-and-set: a purge or another
   * rotation may have got there first) and `next` is kept under the active root key; true if replaced.
   */
  replaceKeptVersion(current: KeyVersionRecord, next: KeptKeyVersion): Promise<boolean>;
  /**
   * Makes `version` the key's current version, in one transaction, only if the key is Enabled, its current version
   * is still the one before, an AUTOMATIC rotation is still due (its period set and its date passed) and an on-demand
   * one within `maxOnDemand`, and (for a key of the default HSM) the version is kept under the active root key:
   * 'conflict' when another rotation got there first or the key or its schedule changed, 'root-replaced' when a root
   * rotation began. An automatic rotation sets the next date a period after `at`. The key as it is now otherwise.
   */
  addKeyVersion(
    key: KeyRecord,
    version: KeyVersionRecord,
    change: RotationChange,
  ): Promise<KeyRecord | 'conflict' | 'root-replaced'>;
  /**
   * Turns automatic rotation off (null) or on with a period, only if the key is still in `expectedState`. The next
   * date is computed in the same statement: a period from `now`, or, when the period only changes, a period after
   * the last automatic rotation (the old next date less the old period). Undefined if the key changed state.
   */
  setRotationPeriod(
    projectId: string,
    keyId: string,
    expectedState: KeyState,
    periodDays: number | null,
    now: number,
  ): Promise<KeyRecord | undefined>;
  /** The key's versions, oldest first: when each was made and why. */
  listKeyRotations(keyId: string): Promise<KeyRotationRecord[]>;
  /** Enabled keys of every project whose automatic rotation is due at `now`, earliest first, at most `limit`. */
  listKeysDueForRotation(now: number, limit: number): Promise<KeyRecord[]>;
  /** Keys of the project in creation order (oldest first), PendingCreation excluded. */
  listKeys(query: ListKeysQuery): Promise<{ keys: KeyRecord[]; total: number }>;
  countKeys(projectId: string): Promise<number>;
  /** Keys in the key store, in any state (PendingCreation included). */
  countKeysInStore(keyStoreId: string): Promise<number>;
  /**
   * Records a key store. Throws KmsError('KeyStoreNameInUse') when the project has a store of that name,
   * KmsError('ConnectionInUse') when any store uses the connection, KmsError('KeyStoreLimitExceeded') when the
   * project already has `quota` stores.
   */
  insertKeyStore(store: KeyStoreRecord, quota: number): Promise<void>;
  /** A key store of the project; never cached, so that a disconnection is seen by every process at once. */
  findKeyStore(projectId: string, keyStoreId: string): Promise<KeyStoreRecord | undefined>;
  findKeyStoreByName(projectId: string, name: string): Promise<KeyStoreRecord | undefined>;
  /** Key stores of every project in one of the states (start-up resumes what a crash interrupted). */
  listKeyStoresIn(states: readonly ConnectionState[]): Promise<KeyStoreRecord[]>;
  /** The project's key stores, in creation order. */
  listKeyStores(projectId: string, offset: number, limit: number): Promise<{ stores: KeyStoreRecord[]; total: number }>;
  /**
   * Applies the patch only if the store is as `expected` says (compare-and-set across processes); the updated store,
   * or undefined when it is gone or not as expected. Throws KmsError('KeyStoreNameInUse') on a name clash.
   */
  updateKeyStore(
    projectId: string,
    keyStoreId: string,
    expected: KeyStoreExpectation,
    patch: KeyStorePatch,
  ): Promise<KeyStoreRecord | undefined>;
  /**
   * Deletes the store only if it is in one of `expectedStates` and holds no key (checked in the same transaction).
   * 'has-keys' and 'invalid-state' say why it was not deleted.
   */
  deleteKeyStore(
    projectId: string,
    keyStoreId: string,
    expectedStates: readonly ConnectionState[],
  ): Promise<'deleted' | 'not-found' | 'has-keys' | 'invalid-state'>;
  /**
   * Applies the patch only if the key is still in `expectedState` (compare-and-set across processes). Returns the
   * updated key, or undefined if the key is gone or its state changed meanwhile. Throws
   * KmsError('AliasAlreadyExists') on an alias clash.
   */
  updateKey(projectId: string, keyId: string, expectedState: KeyState, patch: KeyPatch): Promise<KeyRecord | undefined>;
  /** Records a new access key. Its secret is never stored: it is derived in the HSM from the access key id. */
  insertCredential(credential: CredentialRecord): Promise<void>;
  /** An access key, revoked or not; never cached, so a revocation takes effect on the next request. */
  findCredential(accessKeyId: string): Promise<CredentialRecord | undefined>;
  /** Marks the access key revoked at `at`; false if it does not exist or was already revoked. */
  revokeCredential(accessKeyId: string, at: number): Promise<boolean>;
  /**
   * Adds an alias of a key (AliasAlreadyExists if the project has the name). The key's `alias` (Huawei's key_alias)
   * always names one of its aliases, or is '' when it has none; the alias operations keep it so.
   */
  createAlias(alias: AliasRecord): Promise<void>;
  /** Points an alias at another key of the project; false if there is no such alias. */
  retargetAlias(projectId: string, name: string, keyId: string, at: number): Promise<boolean>;
  /** Deletes an alias; false if there is no such alias. */
  deleteAlias(projectId: string, name: string): Promise<boolean>;
  findAlias(projectId: string, name: string): Promise<AliasRecord | undefined>;
  /** The project's aliases (of one key, if given), by name. */
  listAliases(projectId: string, keyId?: string): Promise<AliasRecord[]>;
  /**
   * Adds the tags to the key, replacing the values of tag names it has already. Throws KmsError('TagLimitExceeded'),
   * changing nothing, if the key would then have more than `maxTags` tags. The caller has checked the key's project.
   */
  putTags(keyId: string, tags: readonly Tag[], maxTags: number): Promise<void>;
  /** Removes the named tags from the key; names it does not have are ignored. */
  removeTags(keyId: string, tagKeys: readonly string[]): Promise<void>;
  /** The key's tags, by name. */
  listTags(keyId: string): Promise<Tag[]>;
  /**
   * Keys in PendingDeletion whose deletion date is at or before `now`, in every project, earliest date first, at most
   * `limit` of them.
   */
  listKeysDueForDeletion(now: number, limit: number): Promise<KeyRecord[]>;
  close(): Promise<void>;
}

/**
 * Opens tenants' key stores: an Hsm per store on the token of the connection the operator configured (module path,
 * token label and profile stay in the HSM layer: a tenant never names a library).
 */
export interface KeyStoreConnector {
  /** The connections the operator offers. */
  readonly offers: readonly ConnectionOffer[];
  /**
   * Logs in to the connection's token with the PIN and passes its profile's self-test. Throws
   * ConnectionFailure (src/core/key-stores.ts) with the reason.
   */
  connect(connectionId: string, pin: Buffer): Promise<Hsm>;
}

export interface Clock {
  now(): number;
}

/**
 * The SignatureNonces already accepted (Alibaba Cloud RPC's replay protection), per access key. Shared by every
 * process that serves the same metadata, so that a request replayed to another worker is refused too.
 */
export interface NonceLedger {
  /**
   * Records the nonce of the access key until `expiresAt` (ms since the epoch). True if it was not yet recorded or
   * its record had expired (expiresAt <= now); false if a live record exists: a replay. Atomic across processes.
   */
  claim(accessKeyId: string, nonce: string, expiresAt: number, now: number): Promise<boolean>;
  /** Deletes the records that expired at or before `now` and returns how many. */
  purgeExpired(now: number): Promise<number>;
  close(): Promise<void>;
}
