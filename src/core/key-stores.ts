import type { ConnectionErrorCode } from './connection-error-code.js';
import type { GcmSealed } from './ports.js';

export type { ConnectionErrorCode } from './connection-error-code.js';

/**
 * Custom key stores: a tenant's own PKCS#11 token, on one of the connections the operator offers. AWS calls it a
 * CloudHSM key store, Huawei a dedicated keystore, Alibaba a KMS instance; here it is one record whichever dialect
 * made it (docs/custom-key-stores.md).
 */

/** AWS's ConnectionState: CONNECTING and DISCONNECTING while the service opens or closes the token. */
export type ConnectionState = 'CONNECTED' | 'CONNECTING' | 'FAILED' | 'DISCONNECTED' | 'DISCONNECTING';

/**
 * How CMK versions of a store's keys are kept; the operator chooses it per connection.
 * - `token-object`: a persistent, non-extractable token key per version, labelled with the key's ARN (as AWS does
 *   in CloudHSM key stores); the database holds only its CKA_ID.
 * - `wrapped`: versions wrapped under the store's own root key, as on the default HSM (Alibaba's
 *   HsmEncryptedDatabase); the token holds one key whatever the number of CMKs.
 */
export type KeyStoreKeyScheme = 'token-object' | 'wrapped';

/** A connection the operator offers tenants (configuration); its module path and token stay in the HSM layer. */
export interface ConnectionOffer {
  /** What tenants name it by: AWS's CloudHsmClusterId, Huawei's hsm_cluster_id. */
  readonly id: string;
  /** Projects that may create a store on it; undefined: every project. */
  readonly projects: readonly string[] | undefined;
  readonly keyScheme: KeyStoreKeyScheme;
}

/** AWS's pattern for CloudHsmClusterId, which connection ids follow so that every dialect can name them. */
export const CONNECTION_ID_PATTERN = /^cluster-[2-7a-zA-Z]{11,16}$/;

/** The label of a store's root key on its token (scheme `wrapped`). Stores' roots are not rotated yet. */
export const STORE_ROOT_KEY_LABEL = 'hsm-kms-store-wrap-1';

/** AWS's bounds on KeyStorePassword, the token user's PIN, in bytes of its UTF-8 form. */
export const MIN_PIN_LENGTH = 7;
export const MAX_PIN_LENGTH = 32;
/** AWS's bound on TrustAnchorCertificate. */
export const MAX_TRUST_ANCHOR_LENGTH = 5000;
export const MAX_KEY_STORE_NAME_LENGTH = 256;

/** AWS's limit of custom key stores per account and region, applied per project. */
export const MAX_KEY_STORES_PER_PROJECT = 10;

export interface KeyStoreRecord {
  /** `cks-` and 17 hex digits, as AWS's CustomKeyStoreId; also the Huawei keystore_id and the Alibaba instance id. */
  readonly id: string;
  readonly projectId: string;
  /** Unique in the project. */
  readonly name: string;
  readonly connectionId: string;
  readonly keyScheme: KeyStoreKeyScheme;
  /** The tenant's CA certificate of the HSM, in PEM, kept and returned as given (AWS TrustAnchorCertificate). */
  readonly trustAnchorCertificate: string;
  /** The token user's PIN, sealed under the default HSM's secret key; never stored or returned in plaintext. */
  readonly sealedPin: GcmSealed;
  readonly connectionState: ConnectionState;
  /** Set while connectionState is FAILED. */
  readonly connectionErrorCode: ConnectionErrorCode | null;
  /** CKA_ID of the store's root key on its token (scheme `wrapped`), once made at the first connection. */
  readonly rootTokenId: Buffer | null;
  /**
   * Counts the connections begun: each move to CONNECTING takes the next number, and an attempt records its outcome
   * only if the number is still its own (a later attempt, or a disconnection, overrides it). A process holding the
   * token open for an earlier number (before a disconnection and a change of PIN, say) opens it again.
   */
  readonly connectionEpoch: number;
  /** When connectionState last changed: a CONNECTING left by a process that died is taken over after a while. */
  readonly stateChangedAt: number;
  readonly createdAt: number;
}

/** What an update of a store expects to find, compare-and-set: one of the states, and the epoch if given. */
export interface KeyStoreExpectation {
  readonly states: readonly ConnectionState[];
  readonly epoch?: number;
}

export type KeyStorePatch = Partial<
  Pick<
    KeyStoreRecord,
    | 'name'
    | 'sealedPin'
    | 'connectionState'
    | 'connectionErrorCode'
    | 'rootTokenId'
    | 'connectionEpoch'
    | 'stateChangedAt'
  >
>;

/** The AAD binding a sealed PIN to its store: a PIN copied to another store's record does not open. */
export function pinAad(storeId: string): Buffer {
  return Buffer.from(`hsm-kms key store PIN ${storeId}`, 'utf8');
}

/** Why a store's token could not be opened, in AWS's terms (the HSM layer classifies the PKCS#11 failure). */
export class ConnectionFailure extends Error {
  override readonly name = 'ConnectionFailure';
  constructor(
    readonly code: ConnectionErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
