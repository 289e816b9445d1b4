import type { AuditDraft } from '../../core/audit.js';
import { MAX_PLAINTEXT_LENGTH } from '../../core/ciphertext-blob.js';
import { KmsError } from '../../core/errors.js';
import type { KeyRecord, KeyRef } from '../../core/keys.js';
import {
  DEFAULT_PASSWORD_LENGTH,
  MAX_PASSWORD_LENGTH,
  MIN_PASSWORD_LENGTH,
  type PasswordCharacterType,
} from '../../core/password.service.js';
import type { Services } from '../huawei/context.js';
import { ownEntry } from '../own-entry.js';
import { invalidParameter, missingParameter, unsupportedOperation as unsupported } from './errors.js';
import { aliasAware, getKey } from './key-lookup.js';
import { automaticRotationDays, KEY_VERSION_OPERATIONS } from './key-versions.js';
import { KMS_INSTANCE_OPERATIONS, keyStoreForNewKey } from './kms-instances.js';
import {
  aliasArn,
  base64Param,
  type Caller,
  encryptionContext,
  keyArn,
  keyMetadata,
  keyRef,
  keyVersionId,
  page,
  type RpcParams,
} from './wire.js';

/** One Alibaba KMS operation: the request's parameters in, the response body (without RequestId) out. */
/** `audit` is the request's audit draft: an operation that uses a key version says which (`usedKey`). */
export type AlibabaOperation = (
  services: Services,
  caller: Caller,
  params: RpcParams,
  audit: AuditDraft,
) => Promise<object>;

/** A blob of 4096 bytes of plaintext is 4157 bytes long; anything much longer is not ours. */
const MAX_CIPHERTEXT = 6144;
const MAX_DESCRIPTION = 8192;
const KEY_SPEC_BYTES: Readonly<Record<string, number>> = { AES_256: 32, AES_128: 16 };
/** Alibaba: "alias/" then letters, digits, `_`, `-` and `/`, 255 characters at most; `alias/acs` is reserved. */
const ALIAS_NAME = /^alias\/[a-zA-Z0-9_/-]{1,249}$/;
const EXISTING_ALIAS_NAME = /^alias\/[a-zA-Z0-9:_/-]{1,249}$/;

const PASSWORD_TYPE_FLAGS: Readonly<Record<string, PasswordCharacterType>> = {
  ExcludeLowercase: 'lowercase',
  ExcludeUppercase: 'uppercase',
  ExcludeNumbers: 'numbers',
  ExcludePunctuation: 'punctuation',
};

const getRandomPassword: AlibabaOperation = async (services, _caller, params) => {
  const excludedTypes = new Set<PasswordCharacterType>();
  for (const [flag, type] of Object.entries(PASSWORD_TYPE_FLAGS)) {
    if (params.boolean(flag, false)) excludedTypes.add(type);
  }
  const password = await services.passwords.generate({
    length: params.integer('PasswordLength', MIN_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH, DEFAULT_PASSWORD_LENGTH),
    excludeCharacters: params.optional('ExcludeCharacters') ?? '',
    excludedTypes,
    requireEachIncludedType: params.boolean('RequireEachIncludedType', true),
  });
  return { RandomPassword: password };
};

/** NumberOfBytes (1–1024), else KeySpec (AES_256, AES_128), else a 256-bit key; with both, KeySpec is ignored. */
function dataKeyLength(params: RpcParams): number {
  const bytes = params.integer('NumberOfBytes', 1, 1024);
  if (bytes !== undefined) return bytes;
  // Trimmed: the API's own model lists " AES_128" with a leading space, and SDKs generated from it may send it so.
  const spec = params.optional('KeySpec')?.trim();
  if (spec === undefined) return 32;
  const length = ownEntry(KEY_SPEC_BYTES, spec);
  if (length === undefined) throw invalidParameter('KeySpec', 'use AES_256 or AES_128.');
  return length;
}

/** DryRun ("true" or "false", newer API versions): a dry run is refused rather than performed for real. */
function refuseDryRun(params: RpcParams): void {
  if (params.boolean('DryRun', false)) throw unsupported('DryRun mode.');
}

async function newDataKey(services: Services, caller: Caller, params: RpcParams, audit: AuditDraft) {
  refuseDryRun(params);
  const ref = keyRef(params.required('KeyId'), caller);
  const length = dataKeyLength(params);
  const binding = { context: encryptionContext(params) };
  const sealed = await services.dataKeys.generateDataKey(caller.projectId, ref, length, binding).catch(aliasAware(ref));
  audit.usedKey(sealed.key.id, sealed.keyVersion);
  return sealed;
}

const generateDataKey: AlibabaOperation = async (services, caller, params, audit) => {
  const sealed = await newDataKey(services, caller, params, audit);
  try {
    return {
      KeyId: sealed.key.id,
      KeyVersionId: keyVersionId(sealed.key.id, sealed.keyVersion),
      CiphertextBlob: sealed.ciphertextBlob.toString('base64'),
      Plaintext: sealed.plaintext.toString('base64'),
    };
  } finally {
    sealed.plaintext.fill(0);
  }
};

const generateDataKeyWithoutPlaintext: AlibabaOperation = async (services, caller, params, audit) => {
  const sealed = await newDataKey(services, caller, params, audit);
  sealed.plaintext.fill(0);
  return {
    KeyId: sealed.key.id,
    KeyVersionId: keyVersionId(sealed.key.id, sealed.keyVersion),
    CiphertextBlob: sealed.ciphertextBlob.toString('base64'),
  };
};

/**
 * Plaintext is any text (Alibaba's samples encrypt "Hello World"), sealed as text so that Decrypt gives back exactly
 * the string Encrypt was given, whether or not it happens to look like Base64.
 */
const encrypt: AlibabaOperation = async (services, caller, params, audit) => {
  refuseDryRun(params);
  const ref = keyRef(params.required('KeyId'), caller);
  const binding = { context: encryptionContext(params) };
  const plaintext = Buffer.from(params.required('Plaintext'), 'utf8');
  try {
    // The ciphertext frame every dialect shares holds at most 4096 bytes of plaintext; Alibaba documents 6 KB.
    if (plaintext.length > MAX_PLAINTEXT_LENGTH) {
      throw invalidParameter('Plaintext', `at most ${MAX_PLAINTEXT_LENGTH} bytes of UTF-8 text.`);
    }
    const sealed = await services.dataKeys
      .encrypt(caller.projectId, ref, plaintext, binding, 'text')
      .catch(aliasAware(ref));
    audit.usedKey(sealed.key.id, sealed.keyVersion);
    return {
      KeyId: sealed.key.id,
      KeyVersionId: keyVersionId(sealed.key.id, sealed.keyVersion),
      CiphertextBlob: sealed.ciphertextBlob.toString('base64'),
    };
  } finally {
    plaintext.fill(0);
  }
};

/**
 * The key comes from the blob, so Decrypt takes no KeyId. Plaintext is the text of a text blob (Encrypt, Huawei
 * encrypt-data) and the Base64 of a bytes blob (data keys, AWS Encrypt), as Alibaba returns a data key.
 */
const decrypt: AlibabaOperation = async (services, caller, params, audit) => {
  refuseDryRun(params);
  const ciphertext = base64Param(params, 'CiphertextBlob', 1, MAX_CIPHERTEXT);
  const binding = { context: encryptionContext(params) };
  const opened = await services.dataKeys.decrypt(caller.projectId, ciphertext, binding);
  audit.usedKey(opened.key.id, opened.keyVersion);
  try {
    return {
      KeyId: opened.key.id,
      KeyVersionId: keyVersionId(opened.key.id, opened.keyVersion),
      Plaintext: opened.plaintext.toString(opened.kind === 'text' ? 'utf8' : 'base64'),
    };
  } finally {
    opened.plaintext.fill(0);
  }
};

/**
 * Only what this service makes: symmetric AES-256 keys, generated in the HSM; with DKMSInstanceId, in that KMS
 * instance (a tenant's key store), which must be connected. Automatic rotation (EnableAutomaticRotation and
 * RotationInterval) is set once the key is made; a key kept HsmInternal cannot rotate, so asking for it there is
 * refused before any key is made.
 */
const createKey: AlibabaOperation = async (services, caller, params) => {
  const description = params.optional('Description') ?? '';
  if (description.length > MAX_DESCRIPTION) {
    throw invalidParameter('Description', `at most ${MAX_DESCRIPTION} characters.`);
  }
  const usage = params.optional('KeyUsage');
  if (usage !== undefined && usage !== 'ENCRYPT/DECRYPT') throw unsupported(`KeyUsage ${usage}.`);
  const spec = params.optional('KeySpec');
  if (spec !== undefined && spec !== 'Aliyun_AES_256') throw unsupported(`KeySpec ${spec}.`);
  const origin = params.optional('Origin');
  if (origin !== undefined && origin !== 'Aliyun_KMS') throw unsupported(`Origin ${origin}.`);
  const protection = params.optional('ProtectionLevel');
  // Every key of this service lives in the HSM: SOFTWARE is met by something stronger.
  if (protection !== undefined && protection !== 'HSM' && protection !== 'SOFTWARE') {
    throw invalidParameter('ProtectionLevel', 'use SOFTWARE or HSM.');
  }
  const rotationDays = automaticRotationDays(params, params.boolean('EnableAutomaticRotation', false));
  if (params.optional('Policy') !== undefined)
    throw unsupported("key policies: access is by the project's access keys.");
  if (params.optional('Tags') !== undefined) throw unsupported('tags.');
  const store = await keyStoreForNewKey(services, caller, params);
  if (rotationDays !== null && store?.keyScheme === 'token-object') {
    throw new KmsError('RotationNotSupported', 'A key kept HsmInternal cannot be rotated.');
  }
  const created = await services.keys.create({
    projectId: caller.projectId,
    alias: '',
    description,
    ...(store === undefined ? {} : { keyStoreId: store.id }),
  });
  // Two steps, as the core makes a key without a schedule: should the second fail, the key stays, without one.
  const key =
    rotationDays === null
      ? created
      : await services.keys.enableRotation(caller.projectId, { kind: 'id', id: created.id }, rotationDays);
  return { KeyMetadata: keyMetadata(key, caller) };
};

const describeKey: AlibabaOperation = async (services, caller, params) => {
  const key = await getKey(services, caller, keyRef(params.required('KeyId'), caller));
  return { KeyMetadata: keyMetadata(key, caller) };
};

type ListedState = 'Enabled' | 'Disabled' | 'PendingDeletion';
const LISTED_STATES: readonly ListedState[] = ['Enabled', 'Disabled', 'PendingDeletion'];

/**
 * What each ListKeys filter value means for this service's keys: the states it admits. Every key here is a
 * symmetric Aliyun_AES_256 ENCRYPT/DECRYPT key in an HSM (KMS instances' keys too), made by a user, so the other
 * filters admit all of them or none. DKMSInstanceId names instances, not states: see `listFilters`.
 */
const FILTER_VALUES: Readonly<Record<string, Readonly<Record<string, readonly ListedState[]>>>> = {
  KeyState: { Enabled: ['Enabled'], Disabled: ['Disabled'], PendingDeletion: ['PendingDeletion'], PendingImport: [] },
  KeySpec: { Aliyun_AES_256: LISTED_STATES },
  KeyUsage: { 'ENCRYPT/DECRYPT': LISTED_STATES, 'SIGN/VERIFY': [] },
  ProtectionLevel: { HSM: LISTED_STATES, SOFTWARE: [] },
  CreatorType: { User: LISTED_STATES, Service: [] },
};
const INSTANCE_FILTER = 'DKMSInstanceId';

/** The keys a ListKeys call asks for: in these states and, if `instanceIds` is set, in one of those KMS instances. */
interface ListFilters {
  readonly states: readonly ListedState[];
  readonly instanceIds: ReadonlySet<string> | undefined;
}

/**
 * ListKeys' Filters, `[{"Key":"KeyState","Values":["Enabled","Disabled"]}, ...]` (at most 10 filters of at most 10
 * values): the values of one filter are alternatives, the filters all apply.
 */
function listFilters(params: RpcParams): ListFilters {
  const json = params.optional('Filters');
  if (json === undefined) return { states: LISTED_STATES, instanceIds: undefined };
  const invalid = () =>
    invalidParameter(
      'Filters',
      'a JSON array of at most 10 {"Key": ..., "Values": [...]} objects, Key one of ' +
        `${[...Object.keys(FILTER_VALUES), INSTANCE_FILTER].join(', ')}, at most 10 string Values each.`,
    );
  let filters: unknown;
  try {
    filters = JSON.parse(json);
  } catch {
    throw invalid();
  }
  if (!Array.isArray(filters) || filters.length > 10) throw invalid();
  let states = LISTED_STATES;
  let instanceIds: Set<string> | undefined;
  for (const filter of filters as unknown[]) {
    const { Key: key, Values: values } = (filter ?? {}) as { Key?: unknown; Values?: unknown };
    if (!Array.isArray(values) || values.length > 10 || values.some((v) => typeof v !== 'string')) throw invalid();
    if (key === INSTANCE_FILTER) {
      const named = new Set(values as string[]);
      instanceIds = instanceIds ? new Set([...instanceIds].filter((id) => named.has(id))) : named;
      continue;
    }
    const meanings = typeof key === 'string' ? ownEntry(FILTER_VALUES, key) : undefined;
    if (!meanings) throw invalid();
    const admitted = new Set((values as string[]).flatMap((v) => ownEntry(meanings, v) ?? []));
    states = states.filter((state) => admitted.has(state));
  }
  return { states, instanceIds };
}

const listKeys: AlibabaOperation = async (services, caller, params) => {
  const { pageNumber, pageSize, offset } = page(params);
  const { states, instanceIds } = listFilters(params);
  let listed: { keys: KeyRecord[]; total: number };
  if (states.length === 0 || instanceIds?.size === 0) {
    listed = { keys: [], total: 0 };
  } else if (instanceIds === undefined && (states.length === 1 || states.length === LISTED_STATES.length)) {
    const state = states.length === 1 ? states[0] : undefined;
    listed = await services.keys.list(caller.projectId, { ...(state ? { state } : {}), offset, limit: pageSize });
  } else {
    // Two states of three, or KMS instances: the store filters by one state only, so the page is cut from the whole
    // list here (at most the key quota).
    const all = await services.keys.list(caller.projectId, { offset: 0, limit: services.cmkQuota });
    const matching = all.keys.filter(
      (k) =>
        (states as readonly string[]).includes(k.state) &&
        (instanceIds === undefined || (k.keyStoreId !== null && instanceIds.has(k.keyStoreId))),
    );
    listed = { keys: matching.slice(offset, offset + pageSize), total: matching.length };
  }
  return {
    Keys: { Key: listed.keys.map((k) => ({ KeyId: k.id, KeyArn: keyArn(k, caller) })) },
    TotalCount: listed.total,
    PageNumber: pageNumber,
    PageSize: pageSize,
  };
};

/** Enabling an enabled key (or disabling a disabled one) succeeds and changes nothing. */
const enableKey: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  const key = await getKey(services, caller, ref);
  if (key.state !== 'Enabled') await services.keys.enable(caller.projectId, ref);
  return {};
};

const disableKey: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  const key = await getKey(services, caller, ref);
  if (key.state !== 'Disabled') await services.keys.disable(caller.projectId, ref);
  return {};
};

/** Alibaba requires the window: 7 to 366 days. */
const scheduleKeyDeletion: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  const days = params.integer('PendingWindowInDays', 7, 366);
  if (days === undefined) throw missingParameter('PendingWindowInDays');
  await services.keys.scheduleDeletion(caller.projectId, ref, days).catch(aliasAware(ref));
  return {};
};

/** Alibaba returns a key whose deletion is cancelled to Enabled (Huawei and AWS to Disabled). */
const cancelKeyDeletion: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  await services.keys.cancelDeletion(caller.projectId, ref, 'Enabled').catch(aliasAware(ref));
  return {};
};

const updateKeyDescription: AlibabaOperation = async (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  const description = params.required('Description');
  if (description.length > MAX_DESCRIPTION) {
    throw invalidParameter('Description', `at most ${MAX_DESCRIPTION} characters.`);
  }
  await services.keys.updateDescription(caller.projectId, ref, description).catch(aliasAware(ref));
  return {};
};

/**
 * An alias to create: Alibaba's rules. An alias to update or delete may also have been made through the AWS dialect,
 * whose names may hold ':' too.
 */
function aliasNameParam(params: RpcParams, creating: boolean): string {
  const name = params.required('AliasName');
  if (creating ? !ALIAS_NAME.test(name) || name.startsWith('alias/acs') : !EXISTING_ALIAS_NAME.test(name)) {
    throw invalidParameter(
      'AliasName',
      'it must start with "alias/", be at most 255 characters of letters, digits, "_", "-" and "/", and not start with "alias/acs".',
    );
  }
  return name;
}

/** An alias points at a key named by id or ARN, never by another alias. */
function targetKey(params: RpcParams, caller: Caller): KeyRef {
  const ref = keyRef(params.required('KeyId'), caller);
  if (ref.kind === 'alias') throw invalidParameter('KeyId', 'an alias must point at a key id or key ARN.');
  return ref;
}

const createAlias: AlibabaOperation = async (services, caller, params) => {
  const name = aliasNameParam(params, true);
  await services.keys.createAlias(caller.projectId, name, targetKey(params, caller));
  return {};
};

const updateAlias: AlibabaOperation = async (services, caller, params) => {
  const name = aliasNameParam(params, false);
  const target = targetKey(params, caller);
  await getKey(services, caller, target);
  await services.keys.retargetAlias(caller.projectId, name, target).catch(aliasAware({ kind: 'alias', alias: name }));
  return {};
};

const deleteAlias: AlibabaOperation = async (services, caller, params) => {
  const name = aliasNameParam(params, false);
  await services.keys.deleteAlias(caller.projectId, name).catch(aliasAware({ kind: 'alias', alias: name }));
  return {};
};

async function aliasPage(services: Services, caller: Caller, params: RpcParams, of?: KeyRef) {
  const { pageNumber, pageSize, offset } = page(params);
  const aliases = await services.keys.aliases(caller.projectId, of);
  return {
    Aliases: {
      Alias: aliases.slice(offset, offset + pageSize).map((a) => ({
        KeyId: a.keyId,
        AliasName: `alias/${a.name}`,
        AliasArn: aliasArn(`alias/${a.name}`, caller),
      })),
    },
    TotalCount: aliases.length,
    PageNumber: pageNumber,
    PageSize: pageSize,
  };
}

const listAliases: AlibabaOperation = (services, caller, params) => aliasPage(services, caller, params);

const listAliasesByKeyId: AlibabaOperation = (services, caller, params) => {
  const ref = keyRef(params.required('KeyId'), caller);
  return aliasPage(services, caller, params, ref).catch(aliasAware(ref));
};

const describeRegions: AlibabaOperation = async (services) => ({
  Regions: { Region: [{ RegionId: services.region }] },
});

/**
 * Every operation this service offers, by Action name, with the parameters it takes (beyond the common ones): those
 * of the API reference, version 2016-01-20. Each is honoured or refused with an error; any other is refused.
 */
export const ALIBABA_OPERATIONS = {
  GetRandomPassword: {
    run: getRandomPassword,
    parameters: ['PasswordLength', 'ExcludeCharacters', ...Object.keys(PASSWORD_TYPE_FLAGS), 'RequireEachIncludedType'],
  },
  GenerateDataKey: {
    run: generateDataKey,
    parameters: ['KeyId', 'KeySpec', 'NumberOfBytes', 'EncryptionContext', 'DryRun'],
  },
  GenerateDataKeyWithoutPlaintext: {
    run: generateDataKeyWithoutPlaintext,
    parameters: ['KeyId', 'KeySpec', 'NumberOfBytes', 'EncryptionContext', 'DryRun'],
  },
  Encrypt: { run: encrypt, parameters: ['KeyId', 'Plaintext', 'EncryptionContext', 'DryRun'] },
  Decrypt: { run: decrypt, parameters: ['CiphertextBlob', 'EncryptionContext', 'DryRun'] },
  CreateKey: {
    run: createKey,
    parameters: [
      'Description',
      'KeyUsage',
      'Origin',
      'ProtectionLevel',
      'EnableAutomaticRotation',
      'RotationInterval',
      'KeySpec',
      'DKMSInstanceId',
      'KeyStorageMechanism',
      'Tags',
      'Policy',
    ],
  },
  DescribeKey: { run: describeKey, parameters: ['KeyId'] },
  ListKeys: { run: listKeys, parameters: ['PageNumber', 'PageSize', 'Filters'] },
  EnableKey: { run: enableKey, parameters: ['KeyId'] },
  DisableKey: { run: disableKey, parameters: ['KeyId'] },
  ScheduleKeyDeletion: { run: scheduleKeyDeletion, parameters: ['KeyId', 'PendingWindowInDays'] },
  CancelKeyDeletion: { run: cancelKeyDeletion, parameters: ['KeyId'] },
  UpdateKeyDescription: { run: updateKeyDescription, parameters: ['KeyId', 'Description'] },
  CreateAlias: { run: createAlias, parameters: ['AliasName', 'KeyId'] },
  UpdateAlias: { run: updateAlias, parameters: ['AliasName', 'KeyId'] },
  DeleteAlias: { run: deleteAlias, parameters: ['AliasName'] },
  ListAliases: { run: listAliases, parameters: ['PageNumber', 'PageSize'] },
  ListAliasesByKeyId: { run: listAliasesByKeyId, parameters: ['KeyId', 'PageNumber', 'PageSize'] },
  DescribeRegions: { run: describeRegions, parameters: [] },
  ...KEY_VERSION_OPERATIONS,
  ...KMS_INSTANCE_OPERATIONS,
} satisfies Readonly<Record<string, { run: AlibabaOperation; parameters: readonly string[] }>>;

export type AlibabaOperationName = keyof typeof ALIBABA_OPERATIONS;
