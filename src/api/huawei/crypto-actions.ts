import { createHash } from 'node:crypto';
import { z } from 'zod';
import { type CiphertextBinding, MAX_ADDITIONAL_DATA_BYTES } from '../../core/ciphertext-binding.js';
import { ownEntry } from '../own-entry.js';
import type { HuaweiAction, Services } from './context.js';
import { invalid } from './errors.js';
import {
  bitLengthToBytes,
  dekByteLength,
  encryptionContext,
  fromBase64,
  fromHex,
  integerString,
  keyRef,
  parseBody,
  sequence,
  toHex,
} from './wire.js';

/** Random numbers, data keys and small data, sealed in the Huawei `cipher_text` frame. */

/** 512 bits is the value Huawei's pages document for random_data_length and datakey_length. */
const DOCUMENTED_LENGTH_BITS = 512;
const SHA256_LENGTH = 32;
const KEY_SPEC_BITS: Readonly<Record<string, number>> = { AES_256: 256, AES_128: 128 };

const GenRandom = z.object({ random_data_length: integerString.optional(), sequence }).strict();

/**
 * What a sealed blob is bound to: `encryption_context` (an object, Huawei's older pages) and
 * `additional_authenticated_data` (a string, the field of Huawei's current pages and SDK models). Both may be given.
 */
const bindingFields = {
  encryption_context: encryptionContext,
  additional_authenticated_data: z.string().optional(),
};

function bindingOf(req: {
  encryption_context?: Record<string, string> | undefined;
  additional_authenticated_data?: string | undefined;
}): CiphertextBinding {
  const data = req.additional_authenticated_data;
  if (data !== undefined && Buffer.byteLength(data, 'utf8') > MAX_ADDITIONAL_DATA_BYTES) {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: additional_authenticated_data must be at most ${MAX_ADDITIONAL_DATA_BYTES} bytes of UTF-8.`,
    );
  }
  return { context: req.encryption_context, additionalData: data };
}

/**
 * `pin` and `pin_type` protect keys with a PIN in Huawei's level-4 assessment scenario; no key here has one, so they
 * are refused rather than ignored (a caller relying on a PIN must learn that nothing checks it).
 */
const pinFields = { pin: z.string().optional(), pin_type: z.string().optional() };

function refusePin(req: { pin?: string | undefined; pin_type?: string | undefined }): void {
  if (req.pin !== undefined || req.pin_type !== undefined) {
    throw invalid(
      'KMS.0308',
      'Invalid parameter: pin and pin_type are not supported: no key of this service has a PIN.',
    );
  }
}

/** Huawei's encryption_algorithm: AES_256 keys have SYMMETRIC_DEFAULT only. */
function refuseOtherAlgorithm(algorithm: string | undefined): void {
  if (algorithm !== undefined && algorithm !== 'SYMMETRIC_DEFAULT') {
    throw invalid(
      'KMS.0308',
      'Invalid parameter: encryption_algorithm must be SYMMETRIC_DEFAULT, the only algorithm of AES_256 keys.',
    );
  }
}

export const genRandom: HuaweiAction = async (services, _projectId, body) => {
  const req = parseBody(GenRandom, body);
  const bits = req.random_data_length ?? DOCUMENTED_LENGTH_BITS;
  const bytes = await services.random.generate(bitLengthToBytes(bits, 'random_data_length', 'KMS.1801', 'KMS.1802'));
  return { random_data: toHex(bytes) };
};

const CreateDataKey = z
  .object({
    key_id: z.string(),
    datakey_length: integerString.optional(),
    key_spec: z.string().optional(),
    ...bindingFields,
    ...pinFields,
    sequence,
  })
  .strict();

/** datakey_length wins over key_spec when both are given (Huawei's rule); neither means the documented 512 bits. */
function dataKeyBytes(req: z.infer<typeof CreateDataKey>): number {
  const specBits = req.key_spec === undefined ? undefined : ownEntry(KEY_SPEC_BITS, req.key_spec);
  if (req.key_spec !== undefined && specBits === undefined) {
    throw invalid('KMS.1902', 'key_spec can only be AES_128 or AES_256.');
  }
  const bits = req.datakey_length ?? specBits ?? DOCUMENTED_LENGTH_BITS;
  return bitLengthToBytes(bits, 'datakey_length', 'KMS.1901', 'KMS.1903');
}

/** The checks both create-datakey actions make before drawing a key. */
function dataKeyRequest(services: Services, projectId: string, body: unknown) {
  const req = parseBody(CreateDataKey, body);
  refusePin(req);
  return {
    ref: keyRef(req.key_id, { region: services.region, domainId: projectId }),
    length: dataKeyBytes(req),
    binding: bindingOf(req),
  };
}

export const createDataKey: HuaweiAction = async (services, projectId, body, audit) => {
  const { ref, length, binding } = dataKeyRequest(services, projectId, body);
  const sealed = await services.dataKeys.generateDataKey(projectId, ref, length, binding);
  audit.usedKey(sealed.key.id, sealed.keyVersion);
  try {
    return { key_id: sealed.key.id, plain_text: toHex(sealed.plaintext), cipher_text: toHex(sealed.ciphertextBlob) };
  } finally {
    sealed.plaintext.fill(0);
  }
};

export const createDataKeyWithoutPlaintext: HuaweiAction = async (services, projectId, body, audit) => {
  const { ref, length, binding } = dataKeyRequest(services, projectId, body);
  const sealed = await services.dataKeys.generateDataKey(projectId, ref, length, binding);
  audit.usedKey(sealed.key.id, sealed.keyVersion);
  sealed.plaintext.fill(0);
  return { key_id: sealed.key.id, cipher_text: toHex(sealed.ciphertextBlob) };
};

const EncryptDataKey = z
  .object({
    key_id: z.string(),
    plain_text: z.string(),
    datakey_plain_length: integerString,
    ...bindingFields,
    ...pinFields,
    key_spec: z.string().optional(),
    sequence,
  })
  .strict();

/** plain_text is hex(DEK ‖ SHA-256(DEK)); the digest is checked before the DEK is sealed. */
export const encryptDataKey: HuaweiAction = async (services, projectId, body, audit) => {
  const req = parseBody(EncryptDataKey, body);
  refusePin(req);
  // Huawei's key_spec here names an asymmetric CMK's algorithm (SM2, RSA) that wraps the DEK.
  if (req.key_spec !== undefined) {
    throw invalid(
      'KMS.0308',
      'Invalid parameter: key_spec (SM2, RSA) applies to asymmetric keys; every key of this service is AES_256.',
    );
  }
  const binding = bindingOf(req);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const length = dekByteLength(req.datakey_plain_length, 'datakey_plain_length', 'KMS.2102');
  const plain = fromHex(req.plain_text, 'KMS.2101', 'plain_text');
  try {
    if (plain.length !== length + SHA256_LENGTH) {
      throw invalid('KMS.2104', 'The length of plain_text does not match datakey_plain_length.');
    }
    const dek = plain.subarray(0, length);
    const digest = createHash('sha256').update(dek).digest();
    if (!digest.equals(plain.subarray(length))) throw invalid('KMS.2103', 'Failed to verify the DEK hash.');
    const sealed = await services.dataKeys.encrypt(projectId, ref, dek, binding);
    audit.usedKey(sealed.key.id, sealed.keyVersion);
    return { key_id: sealed.key.id, cipher_text: toHex(sealed.ciphertextBlob), datakey_length: String(length) };
  } finally {
    plain.fill(0);
  }
};

const DecryptDataKey = z
  .object({
    key_id: z.string(),
    cipher_text: z.string(),
    datakey_cipher_length: integerString,
    ...bindingFields,
    ...pinFields,
    sequence,
  })
  .strict();

/** datakey_cipher_length is, despite its name, the byte length of the plaintext DEK (Huawei's example: "64"). */
export const decryptDataKey: HuaweiAction = async (services, projectId, body, audit) => {
  const req = parseBody(DecryptDataKey, body);
  refusePin(req);
  const binding = bindingOf(req);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const length = dekByteLength(req.datakey_cipher_length, 'datakey_cipher_length', 'KMS.2202');
  const blob = fromHex(req.cipher_text, 'KMS.2201', 'cipher_text');
  const opened = await services.dataKeys.decrypt(projectId, blob, binding, ref);
  audit.usedKey(opened.key.id, opened.keyVersion);
  try {
    if (opened.plaintext.length !== length) {
      throw invalid('KMS.2204', 'The length of cipher_text does not match datakey_cipher_length.');
    }
    return {
      data_key: toHex(opened.plaintext),
      datakey_length: String(length),
      datakey_dgst: toHex(createHash('sha256').update(opened.plaintext).digest()),
    };
  } finally {
    opened.plaintext.fill(0);
  }
};

const MAX_DATA_BYTES = 4096;

const EncryptData = z
  .object({
    key_id: z.string(),
    plain_text: z.string(),
    ...bindingFields,
    encryption_algorithm: z.string().optional(),
    sequence,
  })
  .strict();

/** plain_text is text: the blob records it as text (payload format 0x02), so Alibaba Decrypt gives the text back. */
export const encryptData: HuaweiAction = async (services, projectId, body, audit) => {
  const req = parseBody(EncryptData, body);
  refuseOtherAlgorithm(req.encryption_algorithm);
  const binding = bindingOf(req);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const plain = Buffer.from(req.plain_text, 'utf8');
  try {
    if (plain.length < 1 || plain.length > MAX_DATA_BYTES) {
      throw invalid('KMS.2101', 'Invalid plain_text: it must be 1 to 4096 bytes of UTF-8.');
    }
    // A lone surrogate (JSON's "\ud800") would be sealed as U+FFFD and come back as other text.
    if (plain.toString('utf8') !== req.plain_text) {
      throw invalid('KMS.2101', 'Invalid plain_text: it must be valid Unicode text (a lone surrogate is not).');
    }
    const sealed = await services.dataKeys.encrypt(projectId, ref, plain, binding, 'text');
    audit.usedKey(sealed.key.id, sealed.keyVersion);
    // encrypt-data answers in base64, unlike the data-key endpoints (Huawei's example).
    return { key_id: sealed.key.id, cipher_text: sealed.ciphertextBlob.toString('base64') };
  } finally {
    plain.fill(0);
  }
};

const DecryptData = z
  .object({
    cipher_text: z.string(),
    key_id: z.string().optional(),
    ...bindingFields,
    encryption_algorithm: z.string().optional(),
    sequence,
  })
  .strict();

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The key is named inside the blob; a key_id (Huawei's SDK model has one) must name that same key. plain_text is
 * the text; plain_text_base64 (also in the SDK model) its UTF-8 bytes.
 */
export const decryptData: HuaweiAction = async (services, projectId, body, audit) => {
  const req = parseBody(DecryptData, body);
  refuseOtherAlgorithm(req.encryption_algorithm);
  const binding = bindingOf(req);
  const expected =
    req.key_id === undefined ? undefined : keyRef(req.key_id, { region: services.region, domainId: projectId });
  const blob = fromBase64(req.cipher_text, 'KMS.2201', 'cipher_text');
  const opened = await services.dataKeys.decrypt(projectId, blob, binding, expected);
  audit.usedKey(opened.key.id, opened.keyVersion);
  try {
    return {
      key_id: opened.key.id,
      plain_text: utf8.decode(opened.plaintext),
      plain_text_base64: opened.plaintext.toString('base64'),
    };
  } catch (err) {
    // Bytes sealed by encrypt-datakey or create-datakey are not text: say so rather than return mangled text.
    if (err instanceof TypeError) throw invalid('KMS.2201', 'Invalid cipher_text: it does not hold UTF-8 text.');
    throw err;
  } finally {
    opened.plaintext.fill(0);
  }
};
