/**
 * The `cipher_text` blob of data keys and encrypted data, in the frame Huawei Cloud KMS v1.0 returns
 * (Huawei does not document it; reverse-engineered from the four examples in the Open Telekom Cloud KMS API reference:
 * create-datakey, create-datakey-without-plaintext, encrypt-datakey, encrypt-data). Full description and rationale:
 * docs/ciphertext-format.md; golden vectors: test/vectors/ciphertext-blob.json.
 *
 * Outer frame, byte-identical to Huawei's (all integers little-endian):
 * ```
 * offset   size  content
 * 0        2     02 00        frame version 2 (u16 LE), as in every published Huawei example
 * 2        2     N (u16 LE)   offset of the byte just after the key id
 * 4        N-40  payload
 * N-36     36    key id, ASCII lower-case UUID, ^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$
 * N        4     key version (u32 LE); Huawei's examples all carry 0
 * N+4      32    SHA-256 of bytes [0, N+4): an unkeyed checksum, as Huawei's; integrity comes from GCM
 * total    N + 36
 * ```
 *
 * Our payload (Huawei's is opaque to its clients, so only we read it):
 * ```
 * 0        1     payload format: AES-256-GCM inside the HSM, 96-bit IV, 128-bit tag, over a plaintext given as
 *                0x01 = bytes (data keys, AWS, base64 input), 0x02 = UTF-8 text (Huawei encrypt-data, Alibaba Encrypt)
 * 1        12    IV
 * 13       L     ciphertext, L = plaintext length, 1..4096
 * 13+L     16    GCM tag
 * ```
 * A 64-byte DEK gives a 93-byte payload, N = 133 and a 169-byte blob (Huawei's is 188).
 *
 * AAD given to GCM: frame bytes [0,4) (02 00 ‖ N) ‖ payload format ‖ key id (36 ASCII) ‖ key version (u32 LE) ‖
 * canonical binding: the encryption context, then the additional authenticated data if any (./ciphertext-binding.ts).
 * A change to the header, format, key id, version, context or additional data therefore fails the tag check, even
 * when the SHA-256 tail is recomputed. The format byte is authenticated, so a bytes blob cannot be passed off as text.
 *
 * Decoding is strict and every failure is the same InvalidCiphertext 'Invalid cipher_text.', so a caller learns
 * nothing about which check failed. decodeFrame accepts Huawei's own blobs (the frame is valid); decodePayload
 * rejects them (their payload is not ours).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { type CiphertextBinding, encodeBinding } from './ciphertext-binding.js';
import { KmsError, needs } from './errors.js';

/** What the caller gave as plaintext, recorded (authenticated) in the payload format so decryption can say it back. */
export type PlaintextKind = 'bytes' | 'text';

/** Payload format 0x01: AES-256-GCM over bytes. Every blob made before text blobs existed has it. */
export const PAYLOAD_FORMAT_AES_256_GCM = 0x01;
/** Payload format 0x02: the same AES-256-GCM, over the UTF-8 bytes of a text. */
export const PAYLOAD_FORMAT_AES_256_GCM_TEXT = 0x02;
const PAYLOAD_FORMATS = {
  bytes: PAYLOAD_FORMAT_AES_256_GCM,
  text: PAYLOAD_FORMAT_AES_256_GCM_TEXT,
} as const satisfies Record<PlaintextKind, number>;
export const GCM_IV_LENGTH = 12;
export const GCM_TAG_LENGTH = 16;
export const MAX_PLAINTEXT_LENGTH = 4096;

/** 02 00: frame version 2, u16 LE, constant in every published Huawei blob. */
const FRAME_VERSION = 2;
const HEADER_LENGTH = 4;
const KEY_ID_LENGTH = 36;
const KEY_VERSION_LENGTH = 4;
const CHECKSUM_LENGTH = 32;
/** Smallest N: an empty payload, then the key id. */
const MIN_N = HEADER_LENGTH + KEY_ID_LENGTH;
const MIN_BLOB_LENGTH = MIN_N + KEY_VERSION_LENGTH + CHECKSUM_LENGTH;
/** Payload bytes other than the ciphertext: format byte, IV, tag. */
const PAYLOAD_OVERHEAD = 1 + GCM_IV_LENGTH + GCM_TAG_LENGTH;
const KEY_ID_PATTERN = /^[0-9a-z]{8}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{12}$/;
const MAX_KEY_VERSION = 0xffff_ffff;

export interface BlobParts {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly iv: Buffer;
  readonly ciphertextWithTag: Buffer;
  /** Bytes when absent. */
  readonly kind?: PlaintextKind;
}

export interface Frame {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly payload: Buffer;
}

export interface Payload {
  readonly iv: Buffer;
  readonly ciphertextWithTag: Buffer;
  readonly plaintextLength: number;
  readonly kind: PlaintextKind;
}

/** Total blob length for a plaintext of `plaintextLength` bytes (169 for a 64-byte DEK). */
export function blobLength(plaintextLength: number): number {
  return frameN(plaintextLength) + KEY_VERSION_LENGTH + CHECKSUM_LENGTH;
}

/** The AAD the HSM's AES-GCM binds to a blob: header ‖ payload format ‖ key id ‖ key version ‖ binding. */
export function blobAad(
  keyId: string,
  keyVersion: number,
  plaintextLength: number,
  binding: CiphertextBinding,
  kind: PlaintextKind = 'bytes',
): Buffer {
  checkKeyId(keyId);
  checkKeyVersion(keyVersion);
  return Buffer.concat([
    header(frameN(plaintextLength)),
    Buffer.from([PAYLOAD_FORMATS[kind]]),
    Buffer.from(keyId, 'ascii'),
    u32le(keyVersion),
    encodeBinding(binding),
  ]);
}

/** The blob for an AES-GCM result made with `blobAad(keyId, keyVersion, plaintext length, binding, kind)`. */
export function encodeBlob(parts: BlobParts): Buffer {
  const { keyId, keyVersion, iv, ciphertextWithTag, kind = 'bytes' } = parts;
  checkKeyId(keyId);
  checkKeyVersion(keyVersion);
  needs(iv.length === GCM_IV_LENGTH, 'Invalid IV length.');
  const n = frameN(ciphertextWithTag.length - GCM_TAG_LENGTH);
  const authenticated = Buffer.concat([
    header(n),
    Buffer.from([PAYLOAD_FORMATS[kind]]),
    iv,
    ciphertextWithTag,
    Buffer.from(keyId, 'ascii'),
    u32le(keyVersion),
  ]);
  return Buffer.concat([authenticated, sha256(authenticated)]);
}

/** Validates the Huawei frame and returns its parts. Any defect: InvalidCiphertext 'Invalid cipher_text.'. */
export function decodeFrame(blob: Buffer): Frame {
  if (!(blob instanceof Uint8Array) || blob.length < MIN_BLOB_LENGTH) throw invalidCiphertext();
  const bytes = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  if (bytes.readUInt16LE(0) !== FRAME_VERSION) throw invalidCiphertext();
  const n = bytes.readUInt16LE(2);
  if (n < MIN_N || n + KEY_VERSION_LENGTH + CHECKSUM_LENGTH !== bytes.length) throw invalidCiphertext();

  const authenticatedEnd = n + KEY_VERSION_LENGTH;
  const checksum = sha256(bytes.subarray(0, authenticatedEnd));
  if (!timingSafeEqual(checksum, bytes.subarray(authenticatedEnd))) throw invalidCiphertext();

  const keyId = bytes.toString('latin1', n - KEY_ID_LENGTH, n);
  if (!KEY_ID_PATTERN.test(keyId)) throw invalidCiphertext();
  return {
    keyId,
    keyVersion: bytes.readUInt32LE(n),
    // A copy: the caller's buffer may be reused or zeroed while the frame is still in use.
    payload: Buffer.from(bytes.subarray(HEADER_LENGTH, n - KEY_ID_LENGTH)),
  };
}

/** Reads our AES-GCM payload (format 0x01 or 0x02) from a valid frame. Foreign (Huawei) or malformed: InvalidCiphertext. */
export function decodePayload(frame: Frame): Payload {
  const { payload } = frame;
  if (!(payload instanceof Uint8Array) || payload.length < PAYLOAD_OVERHEAD + 1) throw invalidCiphertext();
  const kind = kindOf(payload[0]);
  if (kind === undefined) throw invalidCiphertext();
  const plaintextLength = payload.length - PAYLOAD_OVERHEAD;
  if (plaintextLength > MAX_PLAINTEXT_LENGTH) throw invalidCiphertext();
  return {
    iv: Buffer.from(payload.subarray(1, 1 + GCM_IV_LENGTH)),
    ciphertextWithTag: Buffer.from(payload.subarray(1 + GCM_IV_LENGTH)),
    plaintextLength,
    kind,
  };
}

/** N, the offset just after the key id, for a plaintext length; InvalidParameter outside 1..4096. */
function frameN(plaintextLength: number): number {
  needs(
    Number.isInteger(plaintextLength) && plaintextLength >= 1 && plaintextLength <= MAX_PLAINTEXT_LENGTH,
    'Invalid plaintext length.',
  );
  return HEADER_LENGTH + PAYLOAD_OVERHEAD + plaintextLength + KEY_ID_LENGTH;
}

function kindOf(format: number | undefined): PlaintextKind | undefined {
  if (format === PAYLOAD_FORMAT_AES_256_GCM) return 'bytes';
  if (format === PAYLOAD_FORMAT_AES_256_GCM_TEXT) return 'text';
  return undefined;
}

function header(n: number): Buffer {
  const out = Buffer.alloc(HEADER_LENGTH);
  out.writeUInt16LE(FRAME_VERSION, 0);
  out.writeUInt16LE(n, 2);
  return out;
}

function u32le(n: number): Buffer {
  const out = Buffer.alloc(KEY_VERSION_LENGTH);
  out.writeUInt32LE(n);
  return out;
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function checkKeyId(keyId: string): void {
  needs(typeof keyId === 'string' && KEY_ID_PATTERN.test(keyId), 'Invalid key id.');
}

function checkKeyVersion(keyVersion: number): void {
  needs(Number.isInteger(keyVersion) && keyVersion >= 0 && keyVersion <= MAX_KEY_VERSION, 'Invalid key version.');
}

function invalidCiphertext(): KmsError {
  return new KmsError('InvalidCiphertext', 'Invalid cipher_text.');
}
