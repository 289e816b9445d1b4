import { KmsError, needs } from './errors.js';
import type { KeyService } from './key.service.js';
import { assertUsableForCrypto, type KeyRecord } from './keys.js';
import type { Clock, Hsm, MetadataStore } from './ports.js';
import { withKeyVersion } from './with-key-version.js';
import {
  decodeXksMetadata,
  encodeXksMetadata,
  XKS_IV_BYTES,
  XKS_TAG_BYTES,
  xksHsmAad,
  xksIntegrityValue,
} from './xks-ciphertext.js';

/** How long a health probe's answer stands: the XKS spec allows a deep check to be cached for a minute at most. */
export const XKS_HEALTH_MAX_AGE_MS = 60_000;
/** What the probe seals: no secret, only proof that the HSM still does a round trip. */
const PROBE_PLAINTEXT = Buffer.from('hsm-kms XKS health probe', 'utf8');
const PROBE_AAD = Buffer.from('hsm-kms/xks-health/v1', 'utf8');

export type XksKeyStatus = 'ENABLED' | 'DISABLED';
export type XksHealthStatus = 'ACTIVE' | 'UNAVAILABLE';

export interface XksEncryptInput {
  readonly plaintext: Buffer;
  /** The caller's AAD; none is the same as empty (the spec gives a missing field length 0). */
  readonly aad: Buffer;
  /** Whether to compute the integrity value (and so test-decrypt before answering). */
  readonly integrityValue: boolean;
}

export interface XksSealed {
  readonly ciphertext: Buffer;
  readonly iv: Buffer;
  readonly tag: Buffer;
  readonly metadata: Buffer;
  readonly integrityValue: Buffer | undefined;
  /** The key version sealed under (for the audit trail; the metadata carries it too). */
  readonly keyVersion: number;
}

export interface XksDecryptInput {
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
  readonly iv: Buffer;
  readonly aad: Buffer;
  /** As Encrypt returned it; undefined when the caller sent none. */
  readonly metadata: Buffer | undefined;
}

/**
 * The AWS XKS proxy use cases (custom-key-stores.md §1): a project's AES-256 CMK serves as an external key of AWS
 * KMS. Each Encrypt uses the key's current version and names it in the ciphertext metadata, which the tag binds
 * (src/core/xks-ciphertext.ts); Decrypt takes the version from there. Every cryptographic failure is the same
 * InvalidCiphertext.
 */
export class XksService {
  #health: { readonly status: XksHealthStatus; readonly at: number } | undefined;
  #probing: Promise<XksHealthStatus> | undefined;

  constructor(
    private readonly store: MetadataStore,
    private readonly keys: KeyService,
    /** The service's own HSM: the health probe's key lives there. */
    private readonly defaultHsm: Hsm,
    private readonly clock: Clock,
  ) {}

  /** The key and what XKS calls its status: a key that cannot be used now (disabled, pending deletion) is DISABLED. */
  async metadata(projectId: string, keyId: string): Promise<{ key: KeyRecord; status: XksKeyStatus }> {
    const key = await this.keys.get(projectId, { kind: 'id', id: keyId });
    return { key, status: key.state === 'Enabled' ? 'ENABLED' : 'DISABLED' };
  }

  /**
   * AES-256-GCM in the key's HSM under its current version, with an IV the HSM layer chooses. With an integrity
   * value, the spec's order: encrypt, compute the value, then decrypt again and answer only if that gives the
   * plaintext back.
   */
  async encrypt(projectId: string, keyId: string, input: XksEncryptInput): Promise<XksSealed> {
    needs(input.plaintext.length > 0, 'The plaintext must not be empty.');
    const key = await this.#usableKey(projectId, keyId);
    const hsm = await this.keys.hsmFor(key);
    const version = key.currentVersion;
    const metadata = encodeXksMetadata(version);
    const hsmAad = xksHsmAad(input.aad, metadata);
    const sealed = await withKeyVersion(this.store, key.id, version, (found) =>
      hsm.encrypt(found, input.plaintext, hsmAad),
    );
    const split = sealed.ciphertextWithTag.length - XKS_TAG_BYTES;
    const ciphertext = sealed.ciphertextWithTag.subarray(0, split);
    const tag = sealed.ciphertextWithTag.subarray(split);
    if (!input.integrityValue) {
      return { ciphertext, iv: sealed.iv, tag, metadata, integrityValue: undefined, keyVersion: version };
    }

    const integrityValue = xksIntegrityValue({ aad: input.aad, metadata, iv: sealed.iv, ciphertext, tag });
    const reopened = await withKeyVersion(this.store, key.id, version, (found) =>
      hsm.decrypt(found, sealed.iv, sealed.ciphertextWithTag, hsmAad),
    ).catch((err: unknown) => {
      throw new KmsError('InternalError', 'The ciphertext just made does not decrypt.', { cause: err });
    });
    const same = reopened.equals(input.plaintext);
    reopened.fill(0);
    if (!same) throw new KmsError('InternalError', 'The ciphertext just made decrypts to another plaintext.');
    return { ciphertext, iv: sealed.iv, tag, metadata, integrityValue, keyVersion: version };
  }

  /** The plaintext (the caller zeroes it after use); InvalidCiphertext for anything this service did not seal so. */
  async decrypt(projectId: string, keyId: string, input: XksDecryptInput): Promise<Buffer> {
    const key = await this.#usableKey(projectId, keyId);
    // Only 12-byte IVs and our own metadata are ever made here: anything else is not one of our ciphertexts.
    const version = input.metadata === undefined ? undefined : decodeXksMetadata(input.metadata);
    if (
      version === undefined ||
      version > key.currentVersion ||
      input.metadata === undefined ||
      input.iv.length !== XKS_IV_BYTES ||
      input.tag.length !== XKS_TAG_BYTES
    ) {
      throw invalidCiphertext();
    }
    const hsm = await this.keys.hsmFor(key);
    const hsmAad = xksHsmAad(input.aad, input.metadata);
    const ciphertextWithTag = Buffer.concat([input.ciphertext, input.tag]);
    return withKeyVersion(this.store, key.id, version, (found) =>
      hsm.decrypt(found, input.iv, ciphertextWithTag, hsmAad),
    ).catch((err: unknown) => {
      if (err instanceof KmsError && err.code === 'InvalidCiphertext') throw invalidCiphertext();
      throw err;
    });
  }

  /**
   * Whether the default HSM does a real round trip now: its secret-sealing key (a token key of its own, never a
   * customer's) seals and opens a probe. The answer stands for XKS_HEALTH_MAX_AGE_MS; callers meanwhile share it,
   * and callers that come while a probe runs share that probe.
   */
  async health(): Promise<XksHealthStatus> {
    const now = this.clock.now();
    if (this.#health !== undefined && now - this.#health.at < XKS_HEALTH_MAX_AGE_MS) return this.#health.status;
    this.#probing ??= this.#probe()
      .then((status) => {
        this.#health = { status, at: now };
        return status;
      })
      .finally(() => {
        this.#probing = undefined;
      });
    return this.#probing;
  }

  async #probe(): Promise<XksHealthStatus> {
    try {
      const sealed = await this.defaultHsm.sealSecret(PROBE_PLAINTEXT, PROBE_AAD);
      const opened = await this.defaultHsm.openSecret(sealed, PROBE_AAD);
      return opened.equals(PROBE_PLAINTEXT) ? 'ACTIVE' : 'UNAVAILABLE';
    } catch {
      return 'UNAVAILABLE';
    }
  }

  async #usableKey(projectId: string, keyId: string): Promise<KeyRecord> {
    const key = await this.keys.get(projectId, { kind: 'id', id: keyId });
    assertUsableForCrypto(key);
    return key;
  }
}

function invalidCiphertext(): KmsError {
  return new KmsError('InvalidCiphertext', 'The ciphertext, its AAD, tag, IV or metadata do not verify.');
}
