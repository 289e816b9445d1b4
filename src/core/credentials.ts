/**
 * Access keys for the signed dialects (AWS SigV4, later Alibaba's RPC signatures). An access key belongs to one
 * project: the AWS "account" of every request signed with it.
 */
export interface CredentialRecord {
  /** `AKIA` (signing dialects) or `XKSA` (XKS proxy) and 16 characters of base32. */
  readonly accessKeyId: string;
  readonly projectId: string;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /** Milliseconds since the epoch; null while the key is active. */
  readonly revokedAt: number | null;
}

/** Access keys of the signed dialects (AWS SigV4, Alibaba RPC, Huawei AK/SK): like AWS's own. */
export const ACCESS_KEY_ID_PATTERN = /^AKIA[A-Z2-7]{16}$/;

/**
 * Access keys of the XKS proxy API (src/api/xks), which an operator hands to AWS KMS in CreateCustomKeyStore. AWS
 * takes an XKS access key id of 20 to 30 characters of [A-Z2-7] (custom-key-stores.md §1.1): this one has 20. Such a
 * key serves the XKS API alone, and the XKS API no other key: AWS KMS, which holds it, must not be able to manage the
 * project's keys, and a dialect's key has a secret too short for AWS to accept as an XKS one.
 */
export const XKS_ACCESS_KEY_ID_PATTERN = /^XKSA[A-Z2-7]{16}$/;

/** Which API an access key serves, told by its id's prefix (so the store needs no column for it). */
export type CredentialKind = 'signing' | 'xks';
