import type { CiphertextBinding } from './ciphertext-binding.js';
import {
  blobAad,
  decodeFrame,
  decodePayload,
  encodeBlob,
  MAX_PLAINTEXT_LENGTH,
  type PlaintextKind,
} from './ciphertext-blob.js';
import { KmsError, needs } from './errors.js';
import type { KeyService } from './key.service.js';
import { assertUsableForCrypto, type KeyRecord, type KeyRef } from './keys.js';
import type { GcmSealed, MetadataStore } from './ports.js';
import { withKeyVersion } from './with-key-version.js';

/** Largest data key the service draws: 8192 bits, Huawei's upper bound. */
export const MAX_DATA_KEY_LENGTH = 1024;

export interface Sealed {
  readonly key: KeyRecord;
  /** The key version the blob was sealed with. */
  readonly keyVersion: number;
  readonly ciphertextBlob: Buffer;
}

/** A blob moved by reEncrypt: sealed under `key`'s newest version, from `source`'s `sourceVersion`. */
export interface ReEncrypted extends Sealed {
  readonly source: KeyRecord;
  readonly sourceVersion: number;
}

export interface Opened {
  readonly key: KeyRecord;
  /** The key version the blob was sealed with. */
  readonly keyVersion: number;
  readonly plaintext: Buffer;
  /** Whether the plaintext was sealed as bytes or as UTF-8 text: each dialect says it back in its own form. */
  readonly kind: PlaintextKind;
}

/**
 * Data keys and small payloads sealed under a CMK inside the HSM, in the Huawei-shaped ciphertext frame
 * (src/core/ciphertext-blob.ts). Every dialect's encrypt, decrypt and data-key operation ends here.
 */
export class DataKeyService {
  constructor(
    private readonly store: MetadataStore,
    private readonly keys: KeyService,
  ) {}

  /** A fresh data key drawn from the HSM's RNG, and its ciphertext. The caller zeroes `plaintext` after use. */
  async generateDataKey(
    projectId: string,
    ref: KeyRef,
    length: number,
    binding: CiphertextBinding,
  ): Promise<Sealed & { plaintext: Buffer }> {
    needs(Number.isInteger(length) && length >= 1 && length <= MAX_DATA_KEY_LENGTH, 'Invalid data key length.');
    const key = await this.usableKey(projectId, ref);
    // From the HSM the key lives in: a tenant's data keys come from the tenant's HSM and no other.
    const plaintext = await (await this.keys.hsmFor(key)).generateRandom(length);
    try {
      const ciphertextBlob = await this.seal(key, plaintext, binding, 'bytes');
      return { key, keyVersion: key.currentVersion, plaintext, ciphertextBlob };
    } catch (err) {
      // No one else will ever see this data key: it must not outlive the failure in memory.
      plaintext.fill(0);
      throw err;
    }
  }

  /**
   * Seals caller-supplied bytes (a data key or up to 4096 bytes of data) under the key. `kind` 'text' records that
   * they are the UTF-8 bytes of a text the caller gave, so that a dialect answering in text can give it back.
   */
  async encrypt(
    projectId: string,
    ref: KeyRef,
    plaintext: Buffer,
    binding: CiphertextBinding,
    kind: PlaintextKind = 'bytes',
  ): Promise<Sealed> {
    needs(plaintext.length >= 1 && plaintext.length <= MAX_PLAINTEXT_LENGTH, 'Invalid plaintext length.');
    const key = await this.usableKey(projectId, ref);
    return { key, keyVersion: key.currentVersion, ciphertextBlob: await this.seal(key, plaintext, binding, kind) };
  }

  /**
   * Opens a blob made by `encrypt` or `generateDataKey`. The key comes from the blob; when the caller also names a
   * key, it must be the same one (IncorrectKey otherwise). Every cryptographic failure is the same InvalidCiphertext.
   */
  async decrypt(
    projectId: string,
    ciphertextBlob: Buffer,
    binding: CiphertextBinding,
    expectedKey?: KeyRef,
  ): Promise<Opened> {
    const { key, keyVersion, payload, aad } = await this.sealedUnder(projectId, ciphertextBlob, binding, expectedKey);
    const hsm = await this.keys.hsmFor(key);
    const plaintext = await withKeyVersion(this.store, key.id, keyVersion, (version) =>
      hsm.decrypt(version, payload.iv, payload.ciphertextWithTag, aad),
    );
    return { key, keyVersion, plaintext, kind: payload.kind };
  }

  /**
   * Moves a blob made by `encrypt` or `generateDataKey` to the newest version of the destination key (the same key
   * after a rotation, or another one), keeping its kind; the source is checked as `decrypt` checks it. When both keys
   * live in one HSM the plaintext never leaves the HSM layer; between a tenant's store and another HSM it passes
   * through here, and is zeroed.
   */
  async reEncrypt(
    projectId: string,
    ciphertextBlob: Buffer,
    sourceBinding: CiphertextBinding,
    destination: KeyRef,
    destinationBinding: CiphertextBinding,
    expectedSource?: KeyRef,
  ): Promise<ReEncrypted> {
    const source = await this.sealedUnder(projectId, ciphertextBlob, sourceBinding, expectedSource);
    const { payload } = source;
    const key = await this.usableKey(projectId, destination);
    const keyVersion = key.currentVersion;
    const aad = blobAad(key.id, keyVersion, payload.plaintextLength, destinationBinding, payload.kind);
    const fromHsm = await this.keys.hsmFor(source.key);
    const toHsm = await this.keys.hsmFor(key);
    let sealed: GcmSealed;
    if (fromHsm === toHsm) {
      sealed = await withKeyVersion(this.store, source.key.id, source.keyVersion, (from) =>
        withKeyVersion(this.store, key.id, keyVersion, (to) =>
          fromHsm.reencrypt(from, payload.iv, payload.ciphertextWithTag, source.aad, to, aad),
        ),
      );
    } else {
      const plaintext = await withKeyVersion(this.store, source.key.id, source.keyVersion, (from) =>
        fromHsm.decrypt(from, payload.iv, payload.ciphertextWithTag, source.aad),
      );
      try {
        sealed = await withKeyVersion(this.store, key.id, keyVersion, (to) => toHsm.encrypt(to, plaintext, aad));
      } finally {
        plaintext.fill(0);
      }
    }
    return {
      key,
      keyVersion,
      ciphertextBlob: encodeBlob({ keyId: key.id, keyVersion, ...sealed, kind: payload.kind }),
      source: source.key,
      sourceVersion: source.keyVersion,
    };
  }

  /** The usable key and version a blob was sealed under, its payload, and the AAD it was sealed with. */
  private async sealedUnder(
    projectId: string,
    ciphertextBlob: Buffer,
    binding: CiphertextBinding,
    expectedKey?: KeyRef,
  ) {
    const frame = decodeFrame(ciphertextBlob);
    const named = expectedKey ? await this.keys.get(projectId, expectedKey) : undefined;
    const key = named ?? (await this.keys.get(projectId, { kind: 'id', id: frame.keyId }));
    if (key.id !== frame.keyId) {
      throw new KmsError('IncorrectKey', 'The cipher_text was not made with the key given in key_id.');
    }
    assertUsableForCrypto(key);
    const payload = decodePayload(frame);
    const aad = blobAad(key.id, frame.keyVersion, payload.plaintextLength, binding, payload.kind);
    return { key, keyVersion: frame.keyVersion, payload, aad };
  }

  private async usableKey(projectId: string, ref: KeyRef): Promise<KeyRecord> {
    const key = await this.keys.get(projectId, ref);
    assertUsableForCrypto(key);
    return key;
  }

  /** The HSM layer chooses the IV (docs/hsm-profiles.md): 96 bits, unique per key version (SP 800-38D §8.2). */
  private async seal(
    key: KeyRecord,
    plaintext: Buffer,
    binding: CiphertextBinding,
    kind: PlaintextKind,
  ): Promise<Buffer> {
    const aad = blobAad(key.id, key.currentVersion, plaintext.length, binding, kind);
    const hsm = await this.keys.hsmFor(key);
    const { iv, ciphertextWithTag } = await withKeyVersion(this.store, key.id, key.currentVersion, (version) =>
      hsm.encrypt(version, plaintext, aad),
    );
    return encodeBlob({ keyId: key.id, keyVersion: key.currentVersion, iv, ciphertextWithTag, kind });
  }
}
