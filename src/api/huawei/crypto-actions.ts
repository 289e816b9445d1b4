import { createHash } from 'node:crypto';
import { z } from 'zod';
import { ownEntry } from '../own-entry.js';
import type { HuaweiAction } from './context.js';
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

const GenRandom = z.object({ random_data_length: integerString.optional(), sequence });

export const genRandom: HuaweiAction = async (services, _projectId, body) => {
  const req = parseBody(GenRandom, body);
  const bits = req.random_data_length ?? DOCUMENTED_LENGTH_BITS;
  const bytes = await services.random.generate(bitLengthToBytes(bits, 'random_data_length', 'KMS.1801', 'KMS.1802'));
  return { random_data: toHex(bytes) };
};

const CreateDataKey = z.object({
  key_id: z.string(),
  datakey_length: integerString.optional(),
  key_spec: z.string().optional(),
  encryption_context: encryptionContext,
  sequence,
});

/** datakey_length wins over key_spec when both are given (Huawei's rule); neither means the documented 512 bits. */
function dataKeyBytes(req: z.infer<typeof CreateDataKey>): number {
  const specBits = req.key_spec === undefined ? undefined : ownEntry(KEY_SPEC_BITS, req.key_spec);
  if (req.key_spec !== undefined && specBits === undefined) {
    throw invalid('KMS.1902', 'key_spec can only be AES_128 or AES_256.');
  }
  const bits = req.datakey_length ?? specBits ?? DOCUMENTED_LENGTH_BITS;
  return bitLengthToBytes(bits, 'datakey_length', 'KMS.1901', 'KMS.1903');
}

export const createDataKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(CreateDataKey, body);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const sealed = await services.dataKeys.generateDataKey(projectId, ref, dataKeyBytes(req), req.encryption_context);
  try {
    return { key_id: sealed.key.id, plain_text: toHex(sealed.plaintext), cipher_text: toHex(sealed.ciphertextBlob) };
  } finally {
    sealed.plaintext.fill(0);
  }
};

export const createDataKeyWithoutPlaintext: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(CreateDataKey, body);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const sealed = await services.dataKeys.generateDataKey(projectId, ref, dataKeyBytes(req), req.encryption_context);
  sealed.plaintext.fill(0);
  return { key_id: sealed.key.id, cipher_text: toHex(sealed.ciphertextBlob) };
};

const EncryptDataKey = z.object({
  key_id: z.string(),
  plain_text: z.string(),
  datakey_plain_length: integerString,
  encryption_context: encryptionContext,
  sequence,
});

/** plain_text is hex(DEK ‖ SHA-256(DEK)); the digest is checked before the DEK is sealed. */
export const encryptDataKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(EncryptDataKey, body);
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
    const sealed = await services.dataKeys.encrypt(projectId, ref, dek, req.encryption_context);
    return { key_id: sealed.key.id, cipher_text: toHex(sealed.ciphertextBlob), datakey_length: String(length) };
  } finally {
    plain.fill(0);
  }
};

const DecryptDataKey = z.object({
  key_id: z.string(),
  cipher_text: z.string(),
  datakey_cipher_length: integerString,
  encryption_context: encryptionContext,
  sequence,
});

/** datakey_cipher_length is, despite its name, the byte length of the plaintext DEK (Huawei's example: "64"). */
export const decryptDataKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(DecryptDataKey, body);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const length = dekByteLength(req.datakey_cipher_length, 'datakey_cipher_length', 'KMS.2202');
  const blob = fromHex(req.cipher_text, 'KMS.2201', 'cipher_text');
  const opened = await services.dataKeys.decrypt(projectId, blob, req.encryption_context, ref);
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

const EncryptData = z.object({
  key_id: z.string(),
  plain_text: z.string(),
  encryption_context: encryptionContext,
  encryption_algorithm: z.literal('SYMMETRIC_DEFAULT').optional(),
  sequence,
});

export const encryptData: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(EncryptData, body);
  const ref = keyRef(req.key_id, { region: services.region, domainId: projectId });
  const plain = Buffer.from(req.plain_text, 'utf8');
  if (plain.length < 1 || plain.length > MAX_DATA_BYTES) {
    throw invalid('KMS.2101', 'Invalid plain_text: it must be 1 to 4096 bytes of UTF-8.');
  }
  const sealed = await services.dataKeys.encrypt(projectId, ref, plain, req.encryption_context);
  // encrypt-data answers in base64, unlike the data-key endpoints (Huawei's example).
  return { key_id: sealed.key.id, cipher_text: sealed.ciphertextBlob.toString('base64') };
};

const DecryptData = z.object({
  cipher_text: z.string(),
  encryption_context: encryptionContext,
  encryption_algorithm: z.literal('SYMMETRIC_DEFAULT').optional(),
  sequence,
});

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** decrypt-data takes no key_id: the key is named inside the blob. */
export const decryptData: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(DecryptData, body);
  const blob = fromBase64(req.cipher_text, 'KMS.2201', 'cipher_text');
  const opened = await services.dataKeys.decrypt(projectId, blob, req.encryption_context);
  try {
    return { key_id: opened.key.id, plain_text: utf8.decode(opened.plaintext) };
  } catch (err) {
    // Bytes sealed by encrypt-datakey or create-datakey are not text: say so rather than return mangled text.
    if (err instanceof TypeError) throw invalid('KMS.2201', 'Invalid cipher_text: it does not hold UTF-8 text.');
    throw err;
  } finally {
    opened.plaintext.fill(0);
  }
};
