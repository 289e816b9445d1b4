/**
 * Access keys for the signed dialects (AWS SigV4, later Alibaba's RPC signatures). An access key belongs to one
 * project: the AWS "account" of every request signed with it.
 */
export interface CredentialRecord {
  /** `AKIA` and 16 characters of base32, like AWS's. */
  readonly accessKeyId: string;
  readonly projectId: string;
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /** Milliseconds since the epoch; null while the key is active. */
  readonly revokedAt: number | null;
}

export const ACCESS_KEY_ID_PATTERN = /^AKIA[A-Z2-7]{16}$/;
