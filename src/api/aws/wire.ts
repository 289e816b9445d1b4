import { z } from 'zod';
import { KmsError } from '../../core/errors.js';
import type { KeyStoreRecord } from '../../core/key-stores.js';
import { aliasName, type KeyRecord, type KeyRef } from '../../core/keys.js';
import { decodeBase64 } from '../base64.js';
import { encryptionContextSchema } from '../encryption-context.js';
import { keyRefOf } from '../key-arn.js';
import { AwsApiError, validationError } from './errors.js';

/** Who signed the request: the project is the AWS "account"; the region is the one the request was signed for. */
export interface Caller {
  readonly projectId: string;
  readonly region: string;
}

/** Validates a JSON body's shape; a missing member gets AWS's "must not be null", a wrong type a serialization error. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new AwsApiError('SerializationException', 'The request body must be a JSON object.');
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (issue?.code === 'unrecognized_keys') {
    // A member this service does not understand is refused, never ignored: the caller must learn it had no effect.
    const where = issue.path.length > 0 ? ` in ${issue.path.join('.')}` : '';
    throw new AwsApiError(
      'ValidationException',
      `Unknown member${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `'${k}'`).join(', ')}${where}: this service refuses members it does not understand.`,
    );
  }
  const field = String(issue?.path[0] ?? '');
  const member = field.charAt(0).toLowerCase() + field.slice(1);
  if ((body as Record<string, unknown>)[field] === undefined) {
    throw validationError(undefined, member, 'Member must not be null');
  }
  throw new AwsApiError('SerializationException', `Unexpected value type for ${field}.`);
}

/** A base64 blob member (the SDKs send every blob as base64 in JSON). */
export const blob = z.string();
export const encryptionContext = encryptionContextSchema.optional();
export const grantTokens = z.array(z.string()).max(10).optional();

/** Decodes a base64 member and checks its byte length against AWS's constraint. */
export function fromBase64(value: string, member: string, min: number, max: number): Buffer {
  const bytes = decodeBase64(value);
  if (bytes === undefined) {
    throw new AwsApiError('SerializationException', `Value for ${member} is not valid base64.`);
  }
  if (bytes.length < min || bytes.length > max) {
    bytes.fill(0); // it may be a plaintext
    const bound = bytes.length < min ? `greater than or equal to ${min}` : `less than or equal to ${max}`;
    throw validationError('', member, `Member must have length ${bound}`);
  }
  return bytes;
}

export function integerInRange(value: number | undefined, member: string, min: number, max: number): number {
  if (value === undefined) throw validationError(undefined, member, 'Member must not be null');
  if (!Number.isInteger(value) || value < min) {
    throw validationError(value, member, `Member must have value greater than or equal to ${min}`);
  }
  if (value > max) throw validationError(value, member, `Member must have value less than or equal to ${max}`);
  return value;
}

/** Only the symmetric default algorithm exists for our keys. */
export function symmetricDefault(algorithm: string | undefined, member: string): void {
  if (algorithm !== undefined && algorithm !== 'SYMMETRIC_DEFAULT') {
    throw validationError(algorithm, member, 'Member must satisfy enum value set: [SYMMETRIC_DEFAULT]');
  }
}

/** arn:aws:kms:<region>:<account>:key/<id> or …:alias/<name>; the account is the project. */
const KMS_ARN = /^arn:aws:kms:([a-z0-9-]+):([^:]+):(key|alias)\/(.+)$/;

/**
 * A KeyId as AWS takes it: key id, key ARN, alias name (`alias/...`) or alias ARN. An ARN of another account, or of
 * another region than the one the request was signed for, names nothing this caller can see: NotFoundException,
 * worded as for a key of the caller's that does not exist.
 */
export function keyRef(keyId: string, caller: Caller): KeyRef {
  const ref = keyRefOf(keyId, KMS_ARN, (region, account) => region === caller.region && account === caller.projectId);
  if (ref !== undefined) return ref;
  const kind = KMS_ARN.exec(keyId)?.[3];
  if (kind === 'key') throw new AwsApiError('NotFoundException', keyNotFound(keyId));
  if (kind === 'alias') throw new AwsApiError('NotFoundException', aliasNotFound(keyId));
  throw new AwsApiError('NotFoundException', `Invalid keyId '${keyId}'`);
}

export function keyArn(key: KeyRecord, caller: Caller): string {
  return keyIdArn(key.id, caller);
}

/** A key's ARN: the caller's region and project (only keys of the caller's project are ever shown or named). */
const keyIdArn = (keyId: string, caller: Caller) => `arn:aws:kms:${caller.region}:${caller.projectId}:key/${keyId}`;

/** `name` with its `alias/` prefix. */
export const aliasArn = (name: string, caller: Caller) => `arn:aws:kms:${caller.region}:${caller.projectId}:${name}`;

/** AWS's wording, which names the key by ARN: `Key 'arn:aws:kms:eu-west-1:111122223333:key/…' does not exist`. */
const keyNotFound = (arn: string) => `Key '${arn}' does not exist`;
/** AWS's wording for an alias, unquoted: `Alias arn:aws:kms:eu-west-1:111122223333:alias/x is not found.` */
const aliasNotFound = (arn: string) => `Alias ${arn} is not found.`;

/**
 * Rewords the core's KeyNotFound as AWS does, naming the key or alias the caller asked for by ARN. For an operation's
 * `.catch`: any other error passes through.
 */
export function inAwsWords(caller: Caller) {
  return (err: unknown): never => {
    if (err instanceof KmsError && err.code === 'KeyNotFound' && err.subject !== undefined) {
      const ref = err.subject;
      throw new AwsApiError(
        'NotFoundException',
        ref.kind === 'id'
          ? keyNotFound(keyIdArn(ref.id, caller))
          : aliasNotFound(aliasArn(`alias/${aliasName(ref.alias)}`, caller)),
      );
    }
    throw err;
  };
}

const toSeconds = (ms: number) => ms / 1000;

/**
 * DescribeKey's KeyMetadata, with the key's store when it is in one. Dates are epoch seconds, as the JSON protocol
 * sends timestamps.
 */
export function keyMetadata(key: KeyRecord, caller: Caller, store?: KeyStoreRecord) {
  const state = keyState(key, store);
  return {
    AWSAccountId: key.projectId,
    KeyId: key.id,
    Arn: keyArn(key, caller),
    CreationDate: toSeconds(key.createdAt),
    Enabled: state === 'Enabled',
    Description: key.description,
    KeyUsage: key.keyUsage,
    KeyState: state,
    ...(key.deletionDate !== null ? { DeletionDate: toSeconds(key.deletionDate) } : {}),
    ...(store === undefined
      ? { Origin: 'AWS_KMS' }
      : { Origin: 'AWS_CLOUDHSM', CustomKeyStoreId: store.id, CloudHsmClusterId: store.connectionId }),
    KeyManager: 'CUSTOMER',
    CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT',
    KeySpec: 'SYMMETRIC_DEFAULT',
    EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
    MultiRegion: false,
  };
}

/**
 * AWS's KeyState of a key whose custom key store is not connected is Unavailable, except while it is pending
 * deletion (so the deletion can be cancelled without connecting); its own state comes back on reconnection
 * (AWS KMS developer guide, "Troubleshooting a custom key store").
 */
function keyState(key: KeyRecord, store: KeyStoreRecord | undefined): string {
  if (store === undefined || store.connectionState === 'CONNECTED' || key.state === 'PendingDeletion') return key.state;
  return 'Unavailable';
}
