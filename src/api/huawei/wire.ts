import { z } from 'zod';
import type { EncryptionContext } from '../../core/encryption-context.js';
import { KmsError } from '../../core/errors.js';
import { KEY_ID_PATTERN, type KeyRef } from '../../core/keys.js';
import { decodeBase64 } from '../base64.js';
import { encryptionContextSchema } from '../encryption-context.js';
import { ownEntry } from '../own-entry.js';
import { invalid } from './errors.js';

/**
 * Parsing of Huawei wire values. Huawei types every scalar as a string ("512", "64") but its own examples send
 * some unquoted (kms-apis.md §1.1): numeric fields accept both and are emitted as documented.
 */

/** The KMS code a field's shape error gets; fields not listed get KMS.0308 "Invalid parameter". */
const FIELD_ERROR_CODES: Readonly<Record<string, string>> = {
  key_id: 'KMS.0205',
  sequence: 'KMS.0206',
  encryption_context: 'KMS.0208',
  key_alias: 'KMS.1101',
  key_description: 'KMS.1103',
  pending_days: 'KMS.1401',
  limit: 'KMS.1601',
  marker: 'KMS.1602',
  random_data_length: 'KMS.1801',
  datakey_length: 'KMS.1901',
  key_spec: 'KMS.1902',
  plain_text: 'KMS.2101',
  datakey_plain_length: 'KMS.2102',
  cipher_text: 'KMS.2201',
  datakey_cipher_length: 'KMS.2202',
  rotation_interval: 'KMS.3001',
};

export const integerString = z
  .union([z.string().regex(/^\d{1,10}$/), z.number().int().nonnegative()])
  .transform(Number);

/** `sequence`: "a 36-byte serial number of a request message", e.g. 919c82d4-8046-4722-9094-35c3c6524cff. */
export const sequence = z
  .string()
  .regex(/^[0-9A-Za-z-]{36}$/)
  .optional();

/** Bodies that only name a key: management endpoints take a key id, never an alias (kms-apis.md §1.1). */
export const KeyOnly = z.object({ key_id: z.string(), sequence }).strict();

/** Key-value pairs of at most 8192 characters (Huawei's limit), bound to the ciphertext as AAD. */
export const encryptionContext = encryptionContextSchema.refine((ctx) => JSON.stringify(ctx).length <= 8192).optional();

/** Validates a body against a schema; the first problem becomes the KMS code of the field it concerns. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === undefined) body = {};
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalid('KMS.0202', 'Invalid JSON format of the request message: the body must be a JSON object.');
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (issue?.code === 'unrecognized_keys') {
    throw invalid('KMS.0308', `Invalid parameter: unknown field ${issue.keys.map((k) => `'${k}'`).join(', ')}.`);
  }
  const field = String(issue?.path[0] ?? '');
  if ((body as Record<string, unknown>)[field] === undefined) {
    throw invalid('KMS.0204', `Parameters missing in the request message: ${field}.`);
  }
  throw invalid(ownEntry(FIELD_ERROR_CODES, field) ?? 'KMS.0308', `Invalid parameter: ${field}.`);
}

const ALIAS_PATTERN = /^[a-zA-Z0-9:/_-]{1,255}$/;
/** An alias URN: kms:<region>:<domain id>:alias:<alias name>. */
const ALIAS_URN_PATTERN = /^kms:([^:]*):([^:]*):alias:(.+)$/;

/**
 * Whose aliases a key_id may name: the service's region and the caller's domain — the project, which is what
 * describe-key reports as `domain_id`.
 */
export interface AliasScope {
  readonly region: string;
  readonly domainId: string;
}

/**
 * A key_id as Huawei takes it: a key id everywhere, and on the crypto endpoints and describe-key (given `aliases`)
 * also `alias/<name>` or an alias URN. A URN of another region or domain names nothing the caller can see: the same
 * KeyNotFound as a key id that does not exist.
 */
export function keyRef(value: string, aliases: AliasScope | false): KeyRef {
  if (KEY_ID_PATTERN.test(value)) return { kind: 'id', id: value };
  if (aliases) {
    const urn = ALIAS_URN_PATTERN.exec(value);
    const alias = urn ? urn[3] : value.startsWith('alias/') ? value : undefined;
    if (alias !== undefined && ALIAS_PATTERN.test(alias)) {
      if (urn && (urn[1] !== aliases.region || urn[2] !== aliases.domainId)) {
        throw new KmsError('KeyNotFound', 'The key does not exist.');
      }
      return { kind: 'alias', alias };
    }
  }
  throw invalid('KMS.0205', 'Invalid key ID.');
}

/** Room for a keystore id (`cks-` and 17 hex digits) without echoing arbitrary text in a not-found message. */
const KEYSTORE_ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

/** A keystore_id, in a keystore path or create-key's body; whether the project has it is the core's to say. */
export function validKeystoreId(id: string): string {
  if (!KEYSTORE_ID_PATTERN.test(id)) throw invalid('KMS.0308', 'Invalid parameter: keystore_id.');
  return id;
}

/** A key alias as create-key and update-key-alias take it. */
export function validAlias(alias: string): string {
  if (!ALIAS_PATTERN.test(alias) || alias.endsWith('/default') || alias === 'alias/') {
    throw invalid('KMS.1101', 'Invalid key_alias.');
  }
  return alias;
}

export function validDescription(description: string): string {
  if (description.length > 255) throw invalid('KMS.1103', 'Invalid key_description.');
  return description;
}

/** A length in bits (random_data_length, datakey_length): a multiple of 8 from 8 to 8192, returned in bytes. */
export function bitLengthToBytes(bits: number, field: string, rangeCode: string, multipleCode: string): number {
  if (bits < 8 || bits > 8192) throw invalid(rangeCode, `${field} must be in the range 8 bits to 8,192 bits.`);
  if (bits % 8 !== 0) throw invalid(multipleCode, `${field} must be a multiple of 8.`);
  return bits / 8;
}

/** A DEK length in bytes (datakey_plain_length, datakey_cipher_length): 1 to 1024. */
export function dekByteLength(bytes: number, field: string, code: string): number {
  if (bytes < 1 || bytes > 1024) throw invalid(code, `${field} must be in the range 1 to 1,024 bytes.`);
  return bytes;
}

const HEX_PATTERN = /^(?:[0-9a-fA-F]{2})+$/;

export function fromHex(value: string, code: string, field: string): Buffer {
  if (!HEX_PATTERN.test(value)) throw invalid(code, `Invalid ${field}.`);
  return Buffer.from(value, 'hex');
}

export function fromBase64(value: string, code: string, field: string): Buffer {
  const bytes = value.length === 0 ? undefined : decodeBase64(value);
  if (bytes === undefined) throw invalid(code, `Invalid ${field}.`);
  return bytes;
}

/** Huawei's examples show upper-case hex for every binary field. */
export function toHex(bytes: Buffer): string {
  return bytes.toString('hex').toUpperCase();
}

export type { EncryptionContext };
