import { z } from 'zod';
import { KmsError } from '../../core/errors.js';
import { KEY_ID_PATTERN } from '../../core/keys.js';
import type { HuaweiAction } from './context.js';
import { HuaweiApiError, invalid } from './errors.js';
import { KEY_STATE_CODES, keyInfo, stateForCode } from './key-info.js';
import {
  integerString,
  KeyOnly,
  keyRef,
  parseBody,
  sequence,
  validAlias,
  validDescription,
  validKeystoreId,
} from './wire.js';

/** Key management: create-key, describe-key, list-keys, state changes, alias and description. */

const CreateKey = z
  .object({
    key_alias: z.string(),
    key_description: z.string().optional(),
    key_spec: z.string().optional(),
    key_usage: z.string().optional(),
    origin: z.string().optional(),
    enterprise_project_id: z.string().optional(),
    keystore_id: z.string().optional(),
    vm_id: z.string().optional(),
    sequence,
  })
  .strict();

/** Huawei's default enterprise project, the only one here: every key of a project belongs to it. */
const DEFAULT_ENTERPRISE_PROJECT = '0';
/** Huawei's default key store ("0", KMS's own); "1" and "2" name its CDMS clusters, which are not offered here. */
const DEFAULT_KEYSTORE = '0';
const CDMS_KEYSTORES: readonly string[] = ['1', '2'];

/** The key store create-key names: undefined for the default one, or the id of one of the project's keystores. */
function keyStoreOf(keystoreId: string | undefined): string | undefined {
  if (keystoreId === undefined || keystoreId === DEFAULT_KEYSTORE) return undefined;
  if (CDMS_KEYSTORES.includes(keystoreId)) {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: keystore_id ${keystoreId} names a CDMS cluster, which is not offered; use 0 (the default key store) or the keystore_id of a dedicated keystore.`,
    );
  }
  return validKeystoreId(keystoreId);
}

export const createKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(CreateKey, body);
  if (req.enterprise_project_id !== undefined && req.enterprise_project_id !== DEFAULT_ENTERPRISE_PROJECT) {
    throw invalid(
      'KMS.0308',
      'Invalid parameter: enterprise_project_id must be 0, the default enterprise project (the only one this service has).',
    );
  }
  const keyStoreId = keyStoreOf(req.keystore_id);
  if (req.vm_id !== undefined) {
    throw invalid('KMS.0308', 'Invalid parameter: vm_id is not supported: HSM-cluster VMs are not offered.');
  }
  if (req.key_spec !== undefined && req.key_spec !== 'AES_256') {
    throw invalid('KMS.0308', 'Invalid parameter: key_spec must be AES_256 (the only key spec this service offers).');
  }
  if (req.key_usage !== undefined && req.key_usage !== 'ENCRYPT_DECRYPT') {
    throw invalid('KMS.0308', 'Invalid parameter: key_usage must be ENCRYPT_DECRYPT for an AES_256 key.');
  }
  if (req.origin !== undefined && req.origin !== 'kms') {
    throw invalid('KMS.0308', 'Invalid parameter: origin must be kms (importing key material is not supported).');
  }
  const key = await services.keys
    .create({
      projectId,
      alias: validAlias(req.key_alias),
      description: validDescription(req.key_description ?? ''),
      ...(keyStoreId === undefined ? {} : { keyStoreId }),
    })
    .catch((err: unknown) => {
      // The core names the state in AWS's terms; the Huawei caller enables a keystore.
      if (err instanceof KmsError && err.code === 'KeyStoreInvalidState') {
        throw new HuaweiApiError('KMS.0340', 400, `The keystore ${keyStoreId} is not enabled: enable it first.`);
      }
      throw err;
    });
  return { key_info: { key_id: key.id, domain_id: key.projectId } };
};

export const describeKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const key = await services.keys.get(projectId, keyRef(req.key_id, { region: services.region, domainId: projectId }));
  return { key_info: keyInfo(key, services.region) };
};

const ListKeys = z
  .object({
    limit: integerString.optional(),
    marker: integerString.optional(),
    key_state: z.string().optional(),
    key_spec: z.string().optional(),
    enterprise_project_id: z.string().optional(),
    sequence,
  })
  .strict();

const MAX_LIST_LIMIT = 1000;

/**
 * list-keys' key_spec filter, with the values Huawei's SDK model lists: every key here is AES_256, so AES_256 and
 * ALL select them all and the other specs select none.
 */
const LISTED_BY_KEY_SPEC: Readonly<Record<string, boolean>> = {
  AES_256: true,
  ALL: true,
  SM4: false,
  RSA_2048: false,
  RSA_3072: false,
  RSA_4096: false,
  EC_P256: false,
  EC_P384: false,
  SM2: false,
};

/**
 * list-keys' enterprise_project_id filter, as Huawei's SDK model documents it: "all", "0" (the default project, which
 * holds every key here), or the id of another enterprise project (which holds none). True when keys are selected.
 */
function listedByEnterpriseProject(id: string | undefined): boolean {
  if (id === undefined || id === 'all' || id === DEFAULT_ENTERPRISE_PROJECT) return true;
  // Huawei's enterprise project ids have the same pattern as key ids.
  if (KEY_ID_PATTERN.test(id)) return false;
  throw invalid('KMS.0308', 'Invalid parameter: enterprise_project_id must be all, 0 or an enterprise project id.');
}

function listedByKeySpec(spec: string | undefined): boolean {
  if (spec === undefined) return true;
  const listed = Object.hasOwn(LISTED_BY_KEY_SPEC, spec) ? LISTED_BY_KEY_SPEC[spec] : undefined;
  if (listed === undefined) {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: key_spec must be one of ${Object.keys(LISTED_BY_KEY_SPEC).join(', ')}.`,
    );
  }
  return listed;
}

export const listKeys: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(ListKeys, body);
  const limit = req.limit ?? MAX_LIST_LIMIT;
  if (limit < 1 || limit > MAX_LIST_LIMIT) throw invalid('KMS.1601', 'Invalid limit.');
  const offset = req.marker ?? 0;
  if (req.key_state !== undefined && !/^[1-5]$/.test(req.key_state)) {
    throw invalid('KMS.0308', 'Invalid parameter: key_state must be one of 1, 2, 3, 4, 5.');
  }
  const state = req.key_state === undefined ? undefined : stateForCode(req.key_state);
  const selected = listedByKeySpec(req.key_spec) && listedByEnterpriseProject(req.enterprise_project_id);
  const { keys, total } =
    state === 'none' || !selected
      ? { keys: [], total: 0 }
      : await services.keys.list(projectId, { offset, limit, ...(state ? { state } : {}) });
  const truncated = offset + keys.length < total;
  return {
    keys: keys.map((k) => k.id),
    key_details: keys.map((k) => keyInfo(k, services.region)),
    next_marker: truncated ? String(offset + keys.length) : '',
    truncated: String(truncated),
    total,
  };
};

export const enableKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const key = await services.keys.enable(projectId, keyRef(req.key_id, false));
  return { key_info: { key_id: key.id, key_state: KEY_STATE_CODES[key.state] } };
};

export const disableKey: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const key = await services.keys.disable(projectId, keyRef(req.key_id, false));
  return { key_info: { key_id: key.id, key_state: KEY_STATE_CODES[key.state] } };
};

const ScheduleDeletion = z.object({ key_id: z.string(), pending_days: integerString, sequence }).strict();

export const scheduleKeyDeletion: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(ScheduleDeletion, body);
  if (req.pending_days < 7 || req.pending_days > 1096) {
    throw invalid('KMS.1401', 'Set the pending deletion period between 7 to 1096 days.');
  }
  const key = await services.keys.scheduleDeletion(projectId, keyRef(req.key_id, false), req.pending_days);
  // Flat, without key_info, as Huawei documents it.
  return { key_id: key.id, key_state: KEY_STATE_CODES[key.state] };
};

export const cancelKeyDeletion: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(KeyOnly, body);
  const key = await services.keys.cancelDeletion(projectId, keyRef(req.key_id, false));
  return { key_id: key.id, key_state: KEY_STATE_CODES[key.state] };
};

const UpdateAlias = z.object({ key_id: z.string(), key_alias: z.string(), sequence }).strict();

export const updateKeyAlias: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(UpdateAlias, body);
  const ref = keyRef(req.key_id, false);
  const key = await services.keys.updateAlias(projectId, ref, validAlias(req.key_alias));
  return { key_info: { key_id: key.id, key_alias: key.alias } };
};

const UpdateDescription = z.object({ key_id: z.string(), key_description: z.string(), sequence }).strict();

export const updateKeyDescription: HuaweiAction = async (services, projectId, body) => {
  const req = parseBody(UpdateDescription, body);
  const ref = keyRef(req.key_id, false);
  const key = await services.keys.updateDescription(projectId, ref, validDescription(req.key_description));
  return { key_info: { key_id: key.id, key_description: key.description } };
};

export const userInstances: HuaweiAction = async (services, projectId) => {
  return { instance_num: await services.keys.count(projectId) };
};

export const userQuotas: HuaweiAction = async (services, projectId) => {
  const used = await services.keys.count(projectId);
  return {
    quotas: {
      resources: [
        { type: 'CMK', used, quota: services.cmkQuota },
        // Grants are not offered yet: none used, Huawei's default quota shown.
        { type: 'grant_per_CMK', used: 0, quota: 100 },
      ],
    },
  };
};
