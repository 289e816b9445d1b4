import { createHash } from 'node:crypto';

/**
 * The bytes of an AWS XKS proxy encryption (xks_proxy_api_spec.md v1.0.3; custom-key-stores.md §1.1).
 *
 * AWS KMS keeps the ciphertext itself; the proxy gives it the IV, the ciphertext and the tag apart, and may add up
 * to 20 bytes of `ciphertextMetadata` of its own, which KMS hands back at Decrypt. Ours names the key version:
 *
 *   offset  size  field
 *   0       1     format: 0x01
 *   1       4     key version, unsigned big-endian
 *
 * The AAD the HSM authenticates is the spec's, every part length-prefixed so that no two (AAD, metadata) pairs give
 * the same bytes:
 *
 *   len16_be(AAD) ‖ AAD ‖ len8(ciphertextMetadata) ‖ ciphertextMetadata
 *
 * so the tag binds the version too: a metadata naming another version fails as any tampered ciphertext does.
 */

export const XKS_IV_BYTES = 12;
export const XKS_TAG_BYTES = 16;
/** The spec's bound on ciphertextMetadata. */
export const MAX_XKS_METADATA_BYTES = 20;
/** len16_be bounds the AAD. */
export const MAX_XKS_AAD_BYTES = 0xffff;

const METADATA_FORMAT_V1 = 0x01;
const METADATA_V1_BYTES = 5;

/** The ciphertextMetadata of a ciphertext made with `version` of the key. */
export function encodeXksMetadata(version: number): Buffer {
  const metadata = Buffer.alloc(METADATA_V1_BYTES);
  metadata.writeUInt8(METADATA_FORMAT_V1, 0);
  metadata.writeUInt32BE(version, 1);
  return metadata;
}

/** The key version the metadata names, or undefined if it is not metadata this service makes. */
export function decodeXksMetadata(metadata: Buffer): number | undefined {
  if (metadata.length !== METADATA_V1_BYTES || metadata.readUInt8(0) !== METADATA_FORMAT_V1) return undefined;
  return metadata.readUInt32BE(1);
}

/** The AAD given to the HSM: the caller's AAD and the metadata, each after its length. */
export function xksHsmAad(aad: Buffer, metadata: Buffer): Buffer {
  if (aad.length > MAX_XKS_AAD_BYTES || metadata.length > MAX_XKS_METADATA_BYTES) {
    throw new RangeError('The AAD or the ciphertext metadata is too long for its length prefix.');
  }
  const aadLength = Buffer.alloc(2);
  aadLength.writeUInt16BE(aad.length, 0);
  return Buffer.concat([aadLength, aad, Buffer.of(metadata.length), metadata]);
}

/**
 * The ciphertextDataIntegrityValue: SHA-256 over AAD ‖ ciphertextMetadata ‖ IV ‖ ciphertext ‖ tag, with no lengths
 * (the spec's definition; KMS recomputes it and fails the call on a mismatch).
 */
export function xksIntegrityValue(parts: {
  readonly aad: Buffer;
  readonly metadata: Buffer;
  readonly iv: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
}): Buffer {
  return createHash('sha256')
    .update(parts.aad)
    .update(parts.metadata)
    .update(parts.iv)
    .update(parts.ciphertext)
    .update(parts.tag)
    .digest();
}
