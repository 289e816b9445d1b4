import { z } from 'zod';
import type { AuditDraft } from '../../core/audit.js';
import { KmsError } from '../../core/errors.js';
import { type KeyRecord, MAX_TAGS_PER_KEY, type Tag } from '../../core/keys.js';
import type { Services } from '../huawei/context.js';
import { ownEntry } from '../own-entry.js';
import { CUSTOM_KEY_STORE_OPERATIONS, customKeyStoreId, keyStoreOf } from './custom-key-stores.js';
import { AwsApiError, validationError } from './errors.js';
import { KEY_ROTATION_OPERATIONS } from './key-rotation.js';
import {
  aliasArn,
  blob,
  type Caller,
  encryptionContext,
  fromBase64,
  grantTokens,
  integerInRange,
  keyArn,
  keyMetadata,
  keyRef,
  parseBody,
  symmetricDefault,
} from './wire.js';

/** One AWS KMS operation: the unvalidated JSON body in, the response body out. */
/** `audit` is the request's audit draft: an operation that uses a key version says which (`usedKey`). */
export type AwsOperation = (services: Services, caller: Caller, body: unknown, audit: AuditDraft) => Promise<object>;

const DAY_MS = 86_400_000;
const MAX_PLAINTEXT = 4096;
const MAX_CIPHERTEXT = 6144;
const KEY_SPEC_BYTES: Readonly<Record<string, number>> = { AES_256: 32, AES_128: 16 };

/**
 * Recipient (GenerateRandom, GenerateDataKey, Decrypt) asks for the result encrypted to an AWS Nitro Enclave's
 * attested public key: refused, never ignored, since returning the plaintext instead would defeat its purpose.
 */
const recipient = z
  .object({ AttestationDocument: z.string(), KeyEncryptionAlgorithm: z.string() })
  .partial()
  .optional();

function refuseRecipient(value: unknown): void {
  if (value !== undefined) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      'Recipient is not supported: this service does not serve AWS Nitro Enclaves.',
    );
  }
}

/**
 * DryRun, honoured as AWS does: the request runs in full (none of the operations that take it changes any state,
 * so running it is the truest check) and the result is withheld behind DryRunOperationException, HTTP 412.
 */
const dryRun = z.boolean().optional();

function withheldIfDryRun(requested: boolean | undefined): void {
  if (requested === true) {
    throw new AwsApiError(
      'DryRunOperationException',
      'The request would have succeeded, but the DryRun option is set.',
      412,
    );
  }
}

/** DryRunModifiers (IGNORE_CIPHERTEXT) would skip the ciphertext check: a dry run here always makes it. */
const dryRunModifiers = z.array(z.string()).optional();

function refuseDryRunModifiers(modifiers: readonly string[] | undefined): void {
  if (modifiers !== undefined) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      'DryRunModifiers is not supported: a dry run here always checks the ciphertext.',
    );
  }
}

const GenerateRandom = z
  .object({ NumberOfBytes: z.number().optional(), CustomKeyStoreId: z.string().optional(), Recipient: recipient })
  .strict();

const generateRandom: AwsOperation = async (services, caller, body) => {
  const req = parseBody(GenerateRandom, body);
  refuseRecipient(req.Recipient);
  const keyStoreId = customKeyStoreId(req.CustomKeyStoreId);
  const length = integerInRange(req.NumberOfBytes, 'numberOfBytes', 1, 1024);
  const from = keyStoreId === undefined ? undefined : { projectId: caller.projectId, keyStoreId };
  return { Plaintext: (await services.random.generate(length, from)).toString('base64') };
};

const TagList = z.array(z.object({ TagKey: z.string(), TagValue: z.string() }).strict());

/** AWS's tag rules: names of 1–128 characters not starting with `aws:`, values of 0–256, at most 50 per request. */
function validTags(tags: z.infer<typeof TagList>): Tag[] {
  if (tags.length > MAX_TAGS_PER_KEY)
    throw new AwsApiError('TagException', `At most ${MAX_TAGS_PER_KEY} tags per request.`);
  return tags.map(({ TagKey, TagValue }) => {
    if (TagKey.length < 1 || TagKey.length > 128 || TagKey.toLowerCase().startsWith('aws:')) {
      throw new AwsApiError(
        'TagException',
        `Tag key '${TagKey}' is invalid: 1 to 128 characters, not starting with aws:.`,
      );
    }
    if (TagValue.length > 256) {
      throw new AwsApiError('TagException', `The value of tag '${TagKey}' is longer than 256 characters.`);
    }
    return { key: TagKey, value: TagValue };
  });
}

const CreateKey = z
  .object({
    Description: z.string().optional(),
    KeyUsage: z.string().optional(),
    KeySpec: z.string().optional(),
    CustomerMasterKeySpec: z.string().optional(),
    Origin: z.string().optional(),
    MultiRegion: z.boolean().optional(),
    Policy: z.string().optional(),
    BypassPolicyLockoutSafetyCheck: z.boolean().optional(),
    Tags: TagList.optional(),
    CustomKeyStoreId: z.string().optional(),
    XksKeyId: z.string().optional(),
  })
  .strict();

/**
 * CreateKey members that name what this service does not have: key policies (access is by the project's access
 * keys) and external keys. Refused, never ignored: a policy that is silently dropped is a policy the caller believes
 * protects the key.
 */
function refuseUnofferedKeyOptions(req: z.infer<typeof CreateKey>): void {
  if (req.Policy !== undefined || req.BypassPolicyLockoutSafetyCheck === true) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      "Key policies are not offered: access to a key is by its project's access keys.",
    );
  }
  if (req.XksKeyId !== undefined) {
    throw new AwsApiError('UnsupportedOperationException', 'External key stores (XksKeyId) are not offered.');
  }
}

/** AWS's enums for CreateKey's members (kms-apis.md §2), listed in its messages as AWS lists them. */
const KEY_USAGES = ['SIGN_VERIFY', 'ENCRYPT_DECRYPT', 'GENERATE_VERIFY_MAC', 'KEY_AGREEMENT'];
const CUSTOMER_MASTER_KEY_SPECS = [
  'RSA_2048',
  'RSA_3072',
  'RSA_4096',
  'ECC_NIST_P256',
  'ECC_NIST_P384',
  'ECC_NIST_P521',
  'ECC_SECG_P256K1',
  'SYMMETRIC_DEFAULT',
  'HMAC_224',
  'HMAC_256',
  'HMAC_384',
  'HMAC_512',
  'SM2',
];
const KEY_SPECS = [...CUSTOMER_MASTER_KEY_SPECS, 'ECC_NIST_EDWARDS25519', 'ML_DSA_44', 'ML_DSA_65', 'ML_DSA_87'];
const ORIGINS = ['AWS_KMS', 'EXTERNAL', 'AWS_CLOUDHSM', 'EXTERNAL_KEY_STORE'];

/** A member that must be one of `values`: AWS's ValidationException otherwise. */
function oneOf(value: string | undefined, member: string, values: readonly string[]): void {
  if (value !== undefined && !values.includes(value)) {
    throw validationError(value, member, `Member must satisfy enum value set: [${values.join(', ')}]`);
  }
}

/**
 * AWS validates the whole request first (ValidationException) and only then says what it does not offer
 * (UnsupportedOperationException); a request refused either way creates nothing.
 */
const createKey: AwsOperation = async (services, caller, body) => {
  const req = parseBody(CreateKey, body);
  const description = req.Description ?? '';
  if (description.length > 8192) {
    throw validationError(description, 'description', 'Member must have length less than or equal to 8192');
  }
  oneOf(req.KeyUsage, 'keyUsage', KEY_USAGES);
  oneOf(req.CustomerMasterKeySpec, 'customerMasterKeySpec', CUSTOMER_MASTER_KEY_SPECS);
  oneOf(req.KeySpec, 'keySpec', KEY_SPECS);
  oneOf(req.Origin, 'origin', ORIGINS);
  if (req.KeySpec !== undefined && req.CustomerMasterKeySpec !== undefined) {
    throw new AwsApiError(
      'ValidationException',
      'You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.',
    );
  }
  const spec = req.KeySpec ?? req.CustomerMasterKeySpec ?? 'SYMMETRIC_DEFAULT';
  if (spec === 'SYMMETRIC_DEFAULT' && req.KeyUsage !== undefined && req.KeyUsage !== 'ENCRYPT_DECRYPT') {
    throw new AwsApiError(
      'ValidationException',
      `The operation failed because the KeyUsage value of the CMK is ${req.KeyUsage}. To perform this operation, the KeyUsage value must be ENCRYPT_DECRYPT.`,
    );
  }
  const keyStoreId = customKeyStoreId(req.CustomKeyStoreId);
  refuseUnofferedKeyOptions(req);
  refuseUnsupportedOrigin(req.Origin ?? 'AWS_KMS', keyStoreId);
  if (spec !== 'SYMMETRIC_DEFAULT') {
    throw new AwsApiError(
      'UnsupportedOperationException',
      keyStoreId === undefined
        ? `KeySpec ${spec} is not offered by this service.`
        : `KeySpec ${spec} is not supported in a custom key store: only SYMMETRIC_DEFAULT keys can be created there.`,
    );
  }
  if (req.MultiRegion) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      keyStoreId === undefined
        ? 'Multi-Region keys are not offered.'
        : 'Multi-Region keys cannot be created in a custom key store.',
    );
  }
  const tags = validTags(req.Tags ?? []);
  const key = await services.keys.create({
    projectId: caller.projectId,
    alias: '',
    description,
    ...(keyStoreId === undefined ? {} : { keyStoreId }),
  });
  if (tags.length > 0) await services.keys.tag(caller.projectId, { kind: 'id', id: key.id }, tags);
  return { KeyMetadata: keyMetadata(key, caller, await keyStoreOf(services, key)) };
};

/**
 * AWS makes a key in a CloudHSM key store only when both CustomKeyStoreId and Origin AWS_CLOUDHSM are given (one
 * without the other names no valid request), and has UnsupportedOperationException for "a specified parameter is
 * not supported or a specified resource is not valid for this operation".
 */
function refuseUnsupportedOrigin(origin: string, keyStoreId: string | undefined): void {
  if (keyStoreId !== undefined && origin !== 'AWS_CLOUDHSM') {
    throw new AwsApiError(
      'UnsupportedOperationException',
      `A key in custom key store ${keyStoreId} must have Origin AWS_CLOUDHSM, not ${origin}.`,
    );
  }
  if (keyStoreId === undefined && origin === 'AWS_CLOUDHSM') {
    throw new AwsApiError(
      'UnsupportedOperationException',
      'Origin AWS_CLOUDHSM needs the CustomKeyStoreId of the CloudHSM key store to create the key in.',
    );
  }
  if (origin !== 'AWS_KMS' && origin !== 'AWS_CLOUDHSM') {
    throw new AwsApiError('UnsupportedOperationException', `Origin ${origin} is not offered by this service.`);
  }
}

const KeyOnly = z.object({ KeyId: z.string() }).strict();

/**
 * GrantTokens are accepted and not used, as AWS itself does when no grant is needed: they only make a grant usable
 * before it is consistent, and this service has no grants (access is by project).
 */
const DescribeKey = z.object({ KeyId: z.string(), GrantTokens: grantTokens }).strict();

const describeKey: AwsOperation = async (services, caller, body) => {
  const req = parseBody(DescribeKey, body);
  const key = await services.keys.get(caller.projectId, keyRef(req.KeyId, caller));
  return { KeyMetadata: keyMetadata(key, caller, await keyStoreOf(services, key)) };
};

const ListKeys = z.object({ Limit: z.number().optional(), Marker: z.string().optional() }).strict();

const listKeys: AwsOperation = async (services, caller, body) => {
  const req = parseBody(ListKeys, body);
  const limit = req.Limit === undefined ? 100 : integerInRange(req.Limit, 'limit', 1, 1000);
  const offset = req.Marker === undefined ? 0 : Number(req.Marker);
  if (!Number.isSafeInteger(offset) || offset < 0 || !/^\d+$/.test(req.Marker ?? '0')) {
    throw new AwsApiError('InvalidMarkerException', 'The marker that specifies where to start paginating is invalid.');
  }
  const { keys, total } = await services.keys.list(caller.projectId, { offset, limit });
  const truncated = offset + keys.length < total;
  return {
    Keys: keys.map((k) => ({ KeyId: k.id, KeyArn: keyArn(k, caller) })),
    Truncated: truncated,
    ...(truncated ? { NextMarker: String(offset + keys.length) } : {}),
  };
};

/** AWS treats enabling an enabled key (and disabling a disabled one) as success, unlike Huawei. */
const enableKey: AwsOperation = async (services, caller, body) => {
  const ref = keyRef(parseBody(KeyOnly, body).KeyId, caller);
  const key = await services.keys.get(caller.projectId, ref);
  if (key.state !== 'Enabled') await services.keys.enable(caller.projectId, ref).catch(pendingDeletion(key, caller));
  return {};
};

const disableKey: AwsOperation = async (services, caller, body) => {
  const ref = keyRef(parseBody(KeyOnly, body).KeyId, caller);
  const key = await services.keys.get(caller.projectId, ref);
  if (key.state !== 'Disabled') await services.keys.disable(caller.projectId, ref).catch(pendingDeletion(key, caller));
  return {};
};

/** The state errors AWS words with the key's ARN. */
function pendingDeletion(key: KeyRecord, caller: Caller) {
  return (err: unknown): never => {
    if (key.state === 'PendingDeletion') {
      throw new AwsApiError('KMSInvalidStateException', `${keyArn(key, caller)} is pending deletion.`);
    }
    throw err;
  };
}

const ScheduleKeyDeletion = z.object({ KeyId: z.string(), PendingWindowInDays: z.number().optional() }).strict();

/** AWS allows 7 to 30 days, 30 by default (Huawei allows up to 1096). */
const scheduleKeyDeletion: AwsOperation = async (services, caller, body) => {
  const req = parseBody(ScheduleKeyDeletion, body);
  const days =
    req.PendingWindowInDays === undefined ? 30 : integerInRange(req.PendingWindowInDays, 'pendingWindowInDays', 7, 30);
  const ref = keyRef(req.KeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  const key = await services.keys.scheduleDeletion(caller.projectId, ref, days).catch(pendingDeletion(before, caller));
  return {
    KeyId: keyArn(key, caller),
    DeletionDate: (key.deletionDate ?? Date.now() + days * DAY_MS) / 1000,
    KeyState: key.state,
    PendingWindowInDays: days,
  };
};

const cancelKeyDeletion: AwsOperation = async (services, caller, body) => {
  const ref = keyRef(parseBody(KeyOnly, body).KeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  if (before.state !== 'PendingDeletion') {
    throw new AwsApiError('KMSInvalidStateException', `${keyArn(before, caller)} is not pending deletion.`);
  }
  const key = await services.keys.cancelDeletion(caller.projectId, ref);
  return { KeyId: keyArn(key, caller) };
};

const UpdateKeyDescription = z.object({ KeyId: z.string(), Description: z.string() }).strict();

const updateKeyDescription: AwsOperation = async (services, caller, body) => {
  const req = parseBody(UpdateKeyDescription, body);
  if (req.Description.length > 8192) {
    throw validationError(req.Description, 'description', 'Member must have length less than or equal to 8192');
  }
  const ref = keyRef(req.KeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  await services.keys.updateDescription(caller.projectId, ref, req.Description).catch(pendingDeletion(before, caller));
  return {};
};

const GenerateDataKey = z
  .object({
    KeyId: z.string(),
    NumberOfBytes: z.number().optional(),
    KeySpec: z.string().optional(),
    EncryptionContext: encryptionContext,
    GrantTokens: grantTokens,
    Recipient: recipient,
    DryRun: dryRun,
  })
  .strict();

/** GenerateDataKeyWithoutPlaintext has no Recipient: there is no plaintext to encrypt to one. */
const GenerateDataKeyWithoutPlaintext = GenerateDataKey.omit({ Recipient: true });

/** NumberOfBytes (1–1024) or KeySpec (AES_128, AES_256), exactly one of them. */
function dataKeyLength(req: z.infer<typeof GenerateDataKeyWithoutPlaintext>): number {
  if (req.NumberOfBytes !== undefined && req.KeySpec !== undefined) {
    throw new AwsApiError('ValidationException', 'Please specify either number of bytes or key spec, not both.');
  }
  if (req.KeySpec !== undefined) {
    const bytes = ownEntry(KEY_SPEC_BYTES, req.KeySpec);
    if (bytes === undefined) {
      throw validationError(req.KeySpec, 'keySpec', 'Member must satisfy enum value set: [AES_256, AES_128]');
    }
    return bytes;
  }
  if (req.NumberOfBytes === undefined) {
    throw new AwsApiError('ValidationException', 'Please specify either number of bytes or key spec.');
  }
  return integerInRange(req.NumberOfBytes, 'numberOfBytes', 1, 1024);
}

/** A data key under the request's CMK, made even on a dry run; the plaintext is zeroed before a dry run answers. */
async function newDataKey(
  services: Services,
  caller: Caller,
  req: z.infer<typeof GenerateDataKeyWithoutPlaintext>,
  audit: AuditDraft,
) {
  const length = dataKeyLength(req);
  const ref = keyRef(req.KeyId, caller);
  const sealed = await services.dataKeys.generateDataKey(caller.projectId, ref, length, {
    context: req.EncryptionContext,
  });
  audit.usedKey(sealed.key.id, sealed.keyVersion);
  if (req.DryRun === true) sealed.plaintext.fill(0);
  withheldIfDryRun(req.DryRun);
  return sealed;
}

const generateDataKey: AwsOperation = async (services, caller, body, audit) => {
  const req = parseBody(GenerateDataKey, body);
  refuseRecipient(req.Recipient);
  const sealed = await newDataKey(services, caller, req, audit);
  try {
    return {
      CiphertextBlob: sealed.ciphertextBlob.toString('base64'),
      Plaintext: sealed.plaintext.toString('base64'),
      KeyId: keyArn(sealed.key, caller),
    };
  } finally {
    sealed.plaintext.fill(0);
  }
};

const generateDataKeyWithoutPlaintext: AwsOperation = async (services, caller, body, audit) => {
  const sealed = await newDataKey(services, caller, parseBody(GenerateDataKeyWithoutPlaintext, body), audit);
  sealed.plaintext.fill(0);
  return { CiphertextBlob: sealed.ciphertextBlob.toString('base64'), KeyId: keyArn(sealed.key, caller) };
};

const Encrypt = z
  .object({
    KeyId: z.string(),
    Plaintext: blob,
    EncryptionContext: encryptionContext,
    EncryptionAlgorithm: z.string().optional(),
    GrantTokens: grantTokens,
    DryRun: dryRun,
  })
  .strict();

const encrypt: AwsOperation = async (services, caller, body, audit) => {
  const req = parseBody(Encrypt, body);
  symmetricDefault(req.EncryptionAlgorithm, 'encryptionAlgorithm');
  const plaintext = fromBase64(req.Plaintext, 'plaintext', 1, MAX_PLAINTEXT);
  try {
    const sealed = await services.dataKeys.encrypt(caller.projectId, keyRef(req.KeyId, caller), plaintext, {
      context: req.EncryptionContext,
    });
    audit.usedKey(sealed.key.id, sealed.keyVersion);
    withheldIfDryRun(req.DryRun);
    return {
      CiphertextBlob: sealed.ciphertextBlob.toString('base64'),
      KeyId: keyArn(sealed.key, caller),
      EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  } finally {
    plaintext.fill(0);
  }
};

const Decrypt = z
  .object({
    CiphertextBlob: blob,
    KeyId: z.string().optional(),
    EncryptionContext: encryptionContext,
    EncryptionAlgorithm: z.string().optional(),
    GrantTokens: grantTokens,
    Recipient: recipient,
    DryRun: dryRun,
    DryRunModifiers: dryRunModifiers,
  })
  .strict();

/** The key comes from the blob; a KeyId, when given, must name that same key (IncorrectKeyException otherwise). */
const decrypt: AwsOperation = async (services, caller, body, audit) => {
  const req = parseBody(Decrypt, body);
  refuseRecipient(req.Recipient);
  refuseDryRunModifiers(req.DryRunModifiers);
  symmetricDefault(req.EncryptionAlgorithm, 'encryptionAlgorithm');
  const ciphertext = fromBase64(req.CiphertextBlob, 'ciphertextBlob', 1, MAX_CIPHERTEXT);
  const expected = req.KeyId === undefined ? undefined : keyRef(req.KeyId, caller);
  const binding = { context: req.EncryptionContext };
  const opened = await services.dataKeys.decrypt(caller.projectId, ciphertext, binding, expected);
  audit.usedKey(opened.key.id, opened.keyVersion);
  try {
    withheldIfDryRun(req.DryRun);
    return {
      KeyId: keyArn(opened.key, caller),
      Plaintext: opened.plaintext.toString('base64'),
      EncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    };
  } finally {
    opened.plaintext.fill(0);
  }
};

const ReEncrypt = z
  .object({
    CiphertextBlob: blob,
    SourceEncryptionContext: encryptionContext,
    SourceKeyId: z.string().optional(),
    DestinationKeyId: z.string(),
    DestinationEncryptionContext: encryptionContext,
    SourceEncryptionAlgorithm: z.string().optional(),
    DestinationEncryptionAlgorithm: z.string().optional(),
    GrantTokens: grantTokens,
    DryRun: dryRun,
    DryRunModifiers: dryRunModifiers,
  })
  .strict();

/**
 * Moves the ciphertext to the destination key's newest version (the same key after a rotation, or another one) in
 * the HSM layer: the plaintext is never in the dialect. A text blob stays text, so the Alibaba and Huawei dialects
 * still give its text back.
 */
const reEncrypt: AwsOperation = async (services, caller, body, audit) => {
  const req = parseBody(ReEncrypt, body);
  refuseDryRunModifiers(req.DryRunModifiers);
  symmetricDefault(req.SourceEncryptionAlgorithm, 'sourceEncryptionAlgorithm');
  symmetricDefault(req.DestinationEncryptionAlgorithm, 'destinationEncryptionAlgorithm');
  const ciphertext = fromBase64(req.CiphertextBlob, 'ciphertextBlob', 1, MAX_CIPHERTEXT);
  const source = req.SourceKeyId === undefined ? undefined : keyRef(req.SourceKeyId, caller);
  const destination = keyRef(req.DestinationKeyId, caller);
  const moved = await services.dataKeys.reEncrypt(
    caller.projectId,
    ciphertext,
    { context: req.SourceEncryptionContext },
    destination,
    { context: req.DestinationEncryptionContext },
    source,
  );
  audit.usedKey(moved.key.id, moved.keyVersion);
  withheldIfDryRun(req.DryRun);
  return {
    CiphertextBlob: moved.ciphertextBlob.toString('base64'),
    SourceKeyId: keyArn(moved.source, caller),
    KeyId: keyArn(moved.key, caller),
    SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
    DestinationEncryptionAlgorithm: 'SYMMETRIC_DEFAULT',
  };
};

const TagResource = z.object({ KeyId: z.string(), Tags: TagList }).strict();

const tagResource: AwsOperation = async (services, caller, body) => {
  const req = parseBody(TagResource, body);
  const ref = keyRef(req.KeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  await services.keys.tag(caller.projectId, ref, validTags(req.Tags)).catch(pendingDeletion(before, caller));
  return {};
};

const UntagResource = z.object({ KeyId: z.string(), TagKeys: z.array(z.string()) }).strict();

const untagResource: AwsOperation = async (services, caller, body) => {
  const req = parseBody(UntagResource, body);
  const ref = keyRef(req.KeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  await services.keys.untag(caller.projectId, ref, req.TagKeys).catch(pendingDeletion(before, caller));
  return {};
};

const ListResourceTags = z
  .object({ KeyId: z.string(), Limit: z.number().optional(), Marker: z.string().optional() })
  .strict();

const listResourceTags: AwsOperation = async (services, caller, body) => {
  const req = parseBody(ListResourceTags, body);
  const limit = req.Limit === undefined ? 50 : integerInRange(req.Limit, 'limit', 1, 50);
  const offset = req.Marker === undefined ? 0 : Number(req.Marker);
  if (!/^\d+$/.test(req.Marker ?? '0') || !Number.isSafeInteger(offset)) {
    throw new AwsApiError('InvalidMarkerException', 'The marker that specifies where to start paginating is invalid.');
  }
  const tags = await services.keys.tags(caller.projectId, keyRef(req.KeyId, caller));
  const page = tags.slice(offset, offset + limit);
  const truncated = offset + page.length < tags.length;
  return {
    Tags: page.map((t) => ({ TagKey: t.key, TagValue: t.value })),
    Truncated: truncated,
    ...(truncated ? { NextMarker: String(offset + page.length) } : {}),
  };
};

/** AWS's alias names: `alias/` and 1–250 more of [a-zA-Z0-9:/_-]; `alias/aws/` is reserved for AWS managed keys. */
function validAliasName(name: string): string {
  if (name.length < 1 || name.length > 256) {
    throw validationError(name, 'aliasName', 'Member must have length less than or equal to 256');
  }
  if (!/^alias\/[a-zA-Z0-9:/_-]+$/.test(name) || name.startsWith('alias/aws/')) {
    throw new AwsApiError(
      'InvalidAliasNameException',
      `Alias must start with the prefix "alias/" and may not begin with "alias/aws/": ${name}`,
    );
  }
  return name;
}

/** TargetKeyId names a key by id or key ARN, never by alias. */
function targetKey(targetKeyId: string, caller: Caller) {
  const ref = keyRef(targetKeyId, caller);
  if (ref.kind === 'alias') {
    throw new AwsApiError('ValidationException', 'TargetKeyId must be a key id or key ARN, not an alias.');
  }
  return ref;
}

const AliasWithTarget = z.object({ AliasName: z.string(), TargetKeyId: z.string() }).strict();

const createAlias: AwsOperation = async (services, caller, body) => {
  const req = parseBody(AliasWithTarget, body);
  const name = validAliasName(req.AliasName);
  const ref = targetKey(req.TargetKeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  await services.keys.createAlias(caller.projectId, name, ref).catch((err: unknown) => {
    if (err instanceof KmsError && err.code === 'AliasAlreadyExists') {
      throw new AwsApiError(
        'AlreadyExistsException',
        `An alias with the name ${aliasArn(name, caller)} already exists`,
      );
    }
    return pendingDeletion(before, caller)(err);
  });
  return {};
};

const updateAlias: AwsOperation = async (services, caller, body) => {
  const req = parseBody(AliasWithTarget, body);
  const name = validAliasName(req.AliasName);
  const ref = targetKey(req.TargetKeyId, caller);
  const before = await services.keys.get(caller.projectId, ref);
  await services.keys.retargetAlias(caller.projectId, name, ref).catch(pendingDeletion(before, caller));
  return {};
};

const DeleteAlias = z.object({ AliasName: z.string() }).strict();

const deleteAlias: AwsOperation = async (services, caller, body) => {
  const name = validAliasName(parseBody(DeleteAlias, body).AliasName);
  await services.keys.deleteAlias(caller.projectId, name);
  return {};
};

const ListAliases = z
  .object({
    KeyId: z.string().optional(),
    Limit: z.number().optional(),
    Marker: z.string().optional(),
  })
  .strict();

const listAliases: AwsOperation = async (services, caller, body) => {
  const req = parseBody(ListAliases, body);
  const limit = req.Limit === undefined ? 50 : integerInRange(req.Limit, 'limit', 1, 100);
  const offset = req.Marker === undefined ? 0 : Number(req.Marker);
  if (!/^\d+$/.test(req.Marker ?? '0') || !Number.isSafeInteger(offset)) {
    throw new AwsApiError('InvalidMarkerException', 'The marker that specifies where to start paginating is invalid.');
  }
  const of = req.KeyId === undefined ? undefined : keyRef(req.KeyId, caller);
  const aliases = await services.keys.aliases(caller.projectId, of);
  const page = aliases.slice(offset, offset + limit);
  const truncated = offset + page.length < aliases.length;
  return {
    Aliases: page.map((a) => ({
      AliasName: `alias/${a.name}`,
      AliasArn: aliasArn(`alias/${a.name}`, caller),
      TargetKeyId: a.keyId,
      CreationDate: a.createdAt / 1000,
      LastUpdatedDate: a.updatedAt / 1000,
    })),
    Truncated: truncated,
    ...(truncated ? { NextMarker: String(offset + page.length) } : {}),
  };
};

/** Every operation this service offers, by X-Amz-Target name. */
export const AWS_OPERATIONS = {
  GenerateRandom: generateRandom,
  CreateKey: createKey,
  DescribeKey: describeKey,
  ListKeys: listKeys,
  EnableKey: enableKey,
  DisableKey: disableKey,
  ScheduleKeyDeletion: scheduleKeyDeletion,
  CancelKeyDeletion: cancelKeyDeletion,
  UpdateKeyDescription: updateKeyDescription,
  GenerateDataKey: generateDataKey,
  GenerateDataKeyWithoutPlaintext: generateDataKeyWithoutPlaintext,
  Encrypt: encrypt,
  Decrypt: decrypt,
  ReEncrypt: reEncrypt,
  CreateAlias: createAlias,
  UpdateAlias: updateAlias,
  DeleteAlias: deleteAlias,
  ListAliases: listAliases,
  TagResource: tagResource,
  UntagResource: untagResource,
  ListResourceTags: listResourceTags,
  ...CUSTOM_KEY_STORE_OPERATIONS,
  ...KEY_ROTATION_OPERATIONS,
} satisfies Readonly<Record<string, AwsOperation>>;

export type AwsOperationName = keyof typeof AWS_OPERATIONS;
