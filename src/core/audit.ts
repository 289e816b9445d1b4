/**
 * The audit trail's port. Every key-management and cryptographic request of every dialect leaves one record, written
 * before its answer is sent; a record that cannot be written fails the request (fail-closed, as Vault's audit devices
 * do). A record names who asked what of which key and how it ended, never what was sealed: no plaintext, data key,
 * ciphertext, token, signature, PIN or secret ever goes in one.
 */

export type AuditDialect = 'huawei' | 'aws' | 'alibaba' | 'xks';

/** What one request did, as the dialect's listener saw it. */
export interface AuditEvent {
  /** ISO 8601, milliseconds, UTC. */
  readonly time: string;
  readonly dialect: AuditDialect;
  /** The request id the dialect answered with (XKS: the kmsRequestId AWS KMS sent). */
  readonly requestId: string | undefined;
  /** The client's address, as the connection has it. */
  readonly source: string | undefined;
  /** `access-key:<id>`, `xks-access-key:<id>` or `token:<subject>`; undefined when the request never proved one. */
  readonly caller: string | undefined;
  readonly projectId: string | undefined;
  /** The dialect's name for the operation (`create-datakey`, `Encrypt`, `GenerateDataKey`, `encrypt`). */
  readonly operation: string | undefined;
  /** The key actually used (for a decrypt, the one the ciphertext names), or else the key the request named. */
  readonly keyId: string | undefined;
  /** The key version used, when the request used one. */
  readonly keyVersion: number | undefined;
  readonly outcome: 'ok' | 'error';
  /** The HTTP status sent. */
  readonly status: number;
  /** The error code the dialect sent (its own word, e.g. `KMS.0207`, `NotFoundException`). */
  readonly errorCode: string | undefined;
}

/**
 * An append-only log. `append` returns once the record is written (or throws): the caller sends its answer only then.
 * It is synchronous so that no other request's record can come between two steps of one append.
 */
export interface AuditLog {
  append(event: AuditEvent): void;
  close(): void;
}

/**
 * What one request's handling learns as it goes: the listener makes one per request and fills the caller and
 * operation; an operation that uses a key says which (`usedKey`). Plain fields, no async context: cheap on the hot
 * path.
 */
export class AuditDraft {
  caller: string | undefined = undefined;
  projectId: string | undefined = undefined;
  operation: string | undefined = undefined;
  keyId: string | undefined = undefined;
  keyVersion: number | undefined = undefined;

  /** Set once an operation has said which key it used: what the request or answer named no longer counts. */
  private used = false;

  /** The key (and version) the operation used: overrides whatever the request or answer named. */
  usedKey(keyId: string, keyVersion?: number): void {
    this.keyId = keyId;
    this.keyVersion = keyVersion;
    this.used = true;
  }

  /**
   * A key the request or its answer names (an id, ARN or alias), unless an operation said which key it used. The
   * answer's name replaces the request's (`replace`): it is the key the name resolved to.
   */
  namedKey(keyId: unknown, replace = false): void {
    if (this.used || (this.keyId !== undefined && !replace)) return;
    if (typeof keyId === 'string' && keyId.length > 0) this.keyId = keyId.slice(0, MAX_KEY_NAME);
  }
}

/** A key named by a caller is recorded as given, but only so much of it. */
const MAX_KEY_NAME = 256;
