import { KmsError } from './errors.js';

/**
 * A customer master key (CMK) as the metadata store holds it. The key itself never leaves the HSM in plaintext: each
 * key version is kept wrapped under a root key that never leaves the HSM (see docs/architecture.md).
 */
export type KeyState = 'PendingCreation' | 'Enabled' | 'Disabled' | 'PendingDeletion';

export type KeySpec = 'AES_256';
export type KeyUsage = 'ENCRYPT_DECRYPT';
export type KeyOrigin = 'kms';

export interface KeyRecord {
  /** Lower-case UUID, 36 characters: the Huawei key_id format. */
  readonly id: string;
  readonly projectId: string;
  /** The alias exactly as the caller gave it at creation or update. */
  readonly alias: string;
  readonly description: string;
  readonly state: KeyState;
  readonly keySpec: KeySpec;
  readonly keyUsage: KeyUsage;
  readonly origin: KeyOrigin;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /** Milliseconds since the epoch; set only while PendingDeletion. */
  readonly deletionDate: number | null;
  /** The version new ciphertexts are made with. */
  readonly currentVersion: number;
  /** The tenant's key store (src/core/key-stores.ts) the key lives in; null: the default HSM. */
  readonly keyStoreId: string | null;
  /** Days between automatic rotations; null while automatic rotation is off. */
  readonly rotationPeriodDays: number | null;
  /** When the next automatic rotation is due (ms since the epoch); null while automatic rotation is off. */
  readonly nextRotationAt: number | null;
  /** When the key was last rotated, automatically or on demand; null if never. */
  readonly lastRotatedAt: number | null;
  /** How many times the key was rotated (its current version number, as versions start at 0). */
  readonly rotations: number;
  /** How many of those rotations were asked for (on demand), not scheduled. */
  readonly onDemandRotations: number;
}

/** Why a version after the first was made. */
export type RotationType = 'AUTOMATIC' | 'ON_DEMAND';

/** A version the key was rotated to, as AWS ListKeyRotations and Alibaba ListKeyVersions show it. */
export interface KeyRotationRecord {
  readonly version: number;
  readonly createdAt: number;
  /** Null for the key's first version, made with the key. */
  readonly rotationType: RotationType | null;
}

/**
 * How a key version is kept. Versions of different schemes live side by side; the HSM adapter dispatches on it.
 * - `kwp-v1`: the version's AES-256 key, generated in the HSM and wrapped there under the root key (RFC 5649).
 * - `cbc-encrypt-data-v1`: legacy; 32 bytes of derivation data from which the HSM derives the key under a
 *   derive-only root key (C_DeriveKey, CKM_AES_CBC_ENCRYPT_DATA). Moved to kwp-v1 by a root rotation.
 * - `token-object-v1`: the version's AES-256 key is a persistent object on a tenant's token (custom key store), as
 *   AWS keeps the keys of CloudHSM key stores. keyMaterial holds the object's CKA_ID (16 random bytes the caller
 *   chose), rootKeyLabel is '' (no root). Never rewrapped: destroying the object, not deleting keyMaterial, shreds it.
 */
export type KeyScheme = 'kwp-v1' | 'cbc-encrypt-data-v1' | 'token-object-v1';

/** Bytes of the CKA_ID of a token-object-v1 version: drawn in the store's HSM, recorded before the object is made. */
export const TOKEN_OBJECT_ID_BYTES = 16;

/** The derive-only root key of the legacy scheme cbc-encrypt-data-v1, on every token made before kwp-v1. */
export const LEGACY_ROOT_KEY_LABEL = 'hsm-kms-root-1';

/** How a key version is kept: what the HSM needs to bring its key back, useless without the root key. */
export interface KeptKeyVersion {
  readonly scheme: KeyScheme;
  /** Label of the root key on the token that keyMaterial is kept under. */
  readonly rootKeyLabel: string;
  /** The wrapped key (kwp-v1) or the derivation data (cbc-encrypt-data-v1). Deleting it shreds the version. */
  readonly keyMaterial: Buffer;
}

/** One version of a CMK: what the HSM needs to bring that version's AES-256 key back. */
export interface KeyVersionRecord extends KeptKeyVersion {
  readonly keyId: string;
  readonly version: number;
  readonly createdAt: number;
}

/**
 * A root key of the token: exactly one is active (new versions are wrapped under it, and rewrapped to it).
 * - `creating`: reserved by the process making it on the token (at most one); it becomes active next.
 * - `retiring`: replaced by a newer root; the versions still under it are being rewrapped.
 * - `destroying`: no version is under it any more, nor can one ever be again; it is being destroyed on the token.
 */
export interface RootKeyRecord {
  readonly label: string;
  readonly state: 'creating' | 'active' | 'retiring' | 'destroying';
  /** The key's CKA_ID on the token; null for the legacy root and for keys recorded without one. */
  readonly tokenId: Buffer | null;
  readonly createdAt: number;
}

export const MIN_PENDING_DAYS = 7;
export const MAX_PENDING_DAYS = 1096;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Normalises an alias for uniqueness and look-up: `alias/foo` and `foo` name the same key. */
export function aliasName(alias: string): string {
  return alias.startsWith('alias/') ? alias.slice('alias/'.length) : alias;
}

/** Throws the error a cryptographic operation gets for a key in this state. */
export function assertUsableForCrypto(key: KeyRecord): void {
  switch (key.state) {
    case 'Enabled':
      return;
    case 'Disabled':
      throw new KmsError('KeyDisabled', 'The key has been disabled.');
    case 'PendingDeletion':
      throw new KmsError('KeyPendingDeletion', 'The key is in Scheduled deletion state and cannot be used.');
    case 'PendingCreation':
      // Never returned by the store to callers; treated as absent if it ever is.
      throw new KmsError('KeyNotFound', 'The key does not exist.');
  }
}

/** The state transitions of the key lifecycle, each with the error Huawei and AWS raise when it is not allowed. */
export const transitions = {
  enable(key: KeyRecord): Partial<KeyRecord> {
    if (key.state !== 'Disabled') throw new KmsError('KeyNotDisabled', 'The key is not disabled.');
    return { state: 'Enabled' };
  },
  disable(key: KeyRecord): Partial<KeyRecord> {
    if (key.state !== 'Enabled') throw new KmsError('KeyNotEnabled', 'The key is not enabled.');
    return { state: 'Disabled' };
  },
  scheduleDeletion(key: KeyRecord, pendingDays: number, now: number): Partial<KeyRecord> {
    if (key.state === 'PendingDeletion') {
      throw new KmsError('KeyAlreadyPendingDeletion', 'The key is already in Pending deletion state.');
    }
    if (!Number.isInteger(pendingDays) || pendingDays < MIN_PENDING_DAYS || pendingDays > MAX_PENDING_DAYS) {
      throw new KmsError('InvalidParameter', 'Set the pending deletion period between 7 to 1096 days.');
    }
    return { state: 'PendingDeletion', deletionDate: now + pendingDays * DAY_MS };
  },
  /** Alias and description changes; a key pending deletion can no longer be edited, as on Huawei and AWS. */
  edit<T extends Partial<Pick<KeyRecord, 'alias' | 'description'>>>(key: KeyRecord, change: T): T {
    if (key.state === 'PendingDeletion') {
      throw new KmsError('KeyPendingDeletion', 'The key is in Scheduled deletion state and cannot be used.');
    }
    return change;
  },
  cancelDeletion(key: KeyRecord, restoreTo: 'Disabled' | 'Enabled'): Partial<KeyRecord> {
    if (key.state !== 'PendingDeletion') {
      throw new KmsError('KeyNotPendingDeletion', 'The key is not in Pending deletion state.');
    }
    // Huawei and AWS return a key whose deletion was cancelled as disabled; Alibaba as enabled.
    return { state: restoreTo, deletionDate: null };
  },
};

/** How a caller names a key: by id, or by alias (the dialect has already parsed ARNs and URNs down to these). */
export type KeyRef = { readonly kind: 'id'; readonly id: string } | { readonly kind: 'alias'; readonly alias: string };

/** The Huawei key_id format, which our generated ids (lower-case UUIDs) follow. */
export const KEY_ID_PATTERN = /^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$/;

/** A key's tag: a name and a value, both set by the caller (AWS TagResource). */
export interface Tag {
  readonly key: string;
  readonly value: string;
}

/** AWS's limit of tags per key. */
export const MAX_TAGS_PER_KEY = 50;

/** An alias of a key. `name` is the alias without its `alias/` prefix (aliasName()); names are unique per project. */
export interface AliasRecord {
  readonly projectId: string;
  readonly name: string;
  readonly keyId: string;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  readonly updatedAt: number;
}
