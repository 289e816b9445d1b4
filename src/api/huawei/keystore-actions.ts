import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import {
  CONNECTION_ID_PATTERN,
  type ConnectionErrorCode,
  type ConnectionState,
  type KeyStoreRecord,
  MAX_PIN_LENGTH,
  MAX_TRUST_ANCHOR_LENGTH,
  MIN_PIN_LENGTH,
} from '../../core/key-stores.js';
import { ownEntry } from '../own-entry.js';
import type { Services } from './context.js';
import { type HuaweiApiError, invalid } from './errors.js';
import { parseBody, validKeystoreId } from './wire.js';

/**
 * Huawei's dedicated keystores, `/v1.0/{project_id}/keystores…`: each is one of the project's key stores
 * (src/core/key-stores.ts), whichever dialect made it. Shapes follow the KMS v2 SDK models (CreateKeyStoreRequestBody,
 * KeystoreInfo, KeystoreDetails, KeyStoreStateInfo); the decisions Huawei's documentation leaves open are in
 * docs/custom-key-stores.md, section Huawei.
 */

/** What a keystore route receives besides the project: the path's keystore id, the query and the JSON body. */
export interface KeystoreRequest {
  readonly keystoreId: string;
  readonly query: URLSearchParams;
  readonly body: unknown;
}

/** One keystore route; undefined is an empty 200 answer (DeleteKeyStore documents no body). */
export type KeystoreAction = (
  services: Services,
  projectId: string,
  request: KeystoreRequest,
) => Promise<object | undefined>;

/**
 * keystore_state values. Huawei types the field as a string and documents no values (its console shows a keystore
 * as enabled or disabled); these are this service's, one per ConnectionState.
 */
export const KEYSTORE_STATES = {
  CONNECTED: 'ENABLED',
  CONNECTING: 'ENABLING',
  DISCONNECTED: 'DISABLED',
  DISCONNECTING: 'DISABLING',
  FAILED: 'FAILED',
} as const satisfies Record<ConnectionState, string>;

/** Every keystore here is a tenant's own token: Huawei's dedicated HSM (DHSM) kind. */
const KEYSTORE_TYPE = 'DHSM';
/** keystore_type as the international API reference spells it: 0 DEFAULT, 1 DHSM, 2 CDMS. */
const KEYSTORE_TYPE_NAMES: Readonly<Record<string, string>> = { '0': 'DEFAULT', '1': 'DHSM', '2': 'CDMS' };

const ALIAS_PATTERN = /^[a-zA-Z0-9:/_-]{1,255}$/;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----/;

const CreateKeyStore = z
  .object({
    keystore_alias: z.string(),
    hsm_cluster_id: z.string(),
    hsm_ca_cert: z.string(),
    cluster_id: z.string().optional(),
    keystore_type: z.string().optional(),
    // Not in Huawei's API, which has no credential field (docs/custom-key-stores.md): the token user's PIN.
    hsm_user_pin: z.string(),
  })
  .strict();

export const createKeyStore: KeystoreAction = async (services, projectId, { body }) => {
  const req = parseBody(CreateKeyStore, body);
  if (!ALIAS_PATTERN.test(req.keystore_alias)) {
    throw invalid('KMS.0308', 'Invalid parameter: keystore_alias must match ^[a-zA-Z0-9:/_-]{1,255}$.');
  }
  checkKeystoreType(req.keystore_type);
  if (!CONNECTION_ID_PATTERN.test(req.hsm_cluster_id)) throw invalid('KMS.0308', 'Invalid parameter: hsm_cluster_id.');
  if (req.cluster_id !== undefined && req.cluster_id !== req.hsm_cluster_id) {
    throw invalid('KMS.0308', 'Invalid parameter: cluster_id must equal hsm_cluster_id for a DHSM keystore.');
  }
  if (req.hsm_ca_cert.length > MAX_TRUST_ANCHOR_LENGTH || !PEM_CERTIFICATE.test(req.hsm_ca_cert)) {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: hsm_ca_cert must be a PEM certificate of at most ${MAX_TRUST_ANCHOR_LENGTH} characters.`,
    );
  }
  if (req.hsm_user_pin.length < MIN_PIN_LENGTH || req.hsm_user_pin.length > MAX_PIN_LENGTH) {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: hsm_user_pin must be ${MIN_PIN_LENGTH} to ${MAX_PIN_LENGTH} characters.`,
    );
  }
  const pin = Buffer.from(req.hsm_user_pin, 'utf8');
  try {
    const store = await services.keyStores.create({
      projectId,
      name: req.keystore_alias,
      connectionId: req.hsm_cluster_id,
      trustAnchorCertificate: req.hsm_ca_cert,
      pin,
    });
    return { keystore: { keystore_id: store.id, domain_id: store.projectId } };
  } finally {
    pin.fill(0);
  }
};

/** DHSM (the SDK's spelling) or 1 (the international reference's); the other kinds are not offered. */
function checkKeystoreType(type: string | undefined): void {
  if (type === undefined) return;
  const name = ownEntry(KEYSTORE_TYPE_NAMES, type) ?? type;
  if (name === KEYSTORE_TYPE) return;
  if (name === 'DEFAULT' || name === 'CDMS') {
    throw invalid(
      'KMS.0308',
      `Invalid parameter: keystore_type ${type} (${name}) is not offered; a keystore here is a dedicated HSM cluster (DHSM).`,
    );
  }
  throw invalid('KMS.0308', 'Invalid parameter: keystore_type must be DHSM.');
}

/** Huawei's default page size for ListKeyStores. */
const DEFAULT_LIST_LIMIT = 10;
const MAX_LIST_LIMIT = 1000;

export const listKeyStores: KeystoreAction = async (services, projectId, { query }) => {
  for (const name of query.keys()) {
    if (name !== 'limit' && name !== 'offset') {
      throw invalid('KMS.0201', `Invalid request URL: unknown query parameter '${name.slice(0, 64)}'.`);
    }
  }
  const limit = queryInteger(query, 'limit', DEFAULT_LIST_LIMIT, 'KMS.1601', 'Invalid limit.');
  if (limit < 1 || limit > MAX_LIST_LIMIT) throw invalid('KMS.1601', 'Invalid limit.');
  const offset = queryInteger(query, 'offset', 0, 'KMS.1603', 'Invalid offset.');
  const { stores, total } = await services.keyStores.list(projectId, offset, limit);
  return { total, keystores: stores.map(keystoreDetails) };
};

function queryInteger(query: URLSearchParams, name: string, fallback: number, code: string, message: string): number {
  const values = query.getAll(name);
  if (values.length === 0) return fallback;
  const value = values[0] as string;
  if (values.length > 1 || !/^\d{1,9}$/.test(value)) throw invalid(code, message);
  return Number(value);
}

export const showKeyStore: KeystoreAction = async (services, projectId, { keystoreId }) => {
  return { keystore: keystoreDetails(await services.keyStores.get(projectId, validKeystoreId(keystoreId))) };
};

export const deleteKeyStore: KeystoreAction = async (services, projectId, { keystoreId }) => {
  const store = await services.keyStores.get(projectId, validKeystoreId(keystoreId));
  if (store.connectionState !== 'DISCONNECTED') {
    throw stateError(store, 'Disable the keystore before deleting it.');
  }
  await services.keyStores.delete(projectId, store.id);
  return undefined;
};

/**
 * How long enable waits for the token to open before answering ENABLING: Huawei's EnableKeyStore answers with the
 * state, and the core connects asynchronously (AWS's model). A caller that gets ENABLING calls enable again.
 */
const ENABLE_WAIT_MS = 10_000;
const ENABLE_POLL_MS = 20;

/**
 * Connects the store and waits (bounded) for the outcome. A store whose last attempt failed is disconnected and tried
 * again: Huawei has no failed state to clear first. A failure is answered as an error naming the reason.
 */
export const enableKeyStore: KeystoreAction = async (services, projectId, { keystoreId, body }) => {
  parseBody(NoFields, body);
  const id = validKeystoreId(keystoreId);
  const before = await services.keyStores.get(projectId, id);
  if (before.connectionState === 'DISCONNECTING') throw stateError(before, 'Try again when it is disabled.');
  if (before.connectionState === 'FAILED') await services.keyStores.disconnect(projectId, id);
  await services.keyStores.connect(projectId, id);
  const deadline = Date.now() + ENABLE_WAIT_MS;
  let store = await services.keyStores.get(projectId, id);
  while (store.connectionState === 'CONNECTING' && Date.now() < deadline) {
    await sleep(ENABLE_POLL_MS);
    store = await services.keyStores.get(projectId, id);
  }
  if (store.connectionState === 'FAILED') {
    throw invalid('KMS.0308', `The keystore ${store.id} could not be enabled: ${failureReason(store)}.`);
  }
  return stateInfo(store);
};

export const disableKeyStore: KeystoreAction = async (services, projectId, { keystoreId, body }) => {
  parseBody(NoFields, body);
  const store = await services.keyStores.get(projectId, validKeystoreId(keystoreId));
  if (store.connectionState === 'DISCONNECTED' || store.connectionState === 'DISCONNECTING') {
    throw stateError(store, 'It is already disabled.');
  }
  await services.keyStores.disconnect(projectId, store.id);
  return stateInfo(await services.keyStores.get(projectId, store.id));
};

/** Enable and disable take no body; the SDKs send none, a caller may send `{}`. */
const NoFields = z.object({}).strict();

/** ShowKeyStore's and ListKeyStores' KeystoreDetails. Times are milliseconds as strings, as on describe-key. */
function keystoreDetails(store: KeyStoreRecord) {
  return {
    keystore_id: store.id,
    domain_id: store.projectId,
    keystore_alias: store.name,
    keystore_type: KEYSTORE_TYPE,
    hsm_cluster_id: store.connectionId,
    // Huawei's SDK: for a DHSM keystore, cluster_id is the hsm_cluster_id.
    cluster_id: store.connectionId,
    create_time: String(store.createdAt),
  };
}

function stateInfo(store: KeyStoreRecord) {
  return { keystore: { keystore_id: store.id, keystore_state: KEYSTORE_STATES[store.connectionState] } };
}

function stateError(store: KeyStoreRecord, advice: string): HuaweiApiError {
  return invalid('KMS.0308', `The keystore ${store.id} is ${KEYSTORE_STATES[store.connectionState]}. ${advice}`);
}

/** The connection error, in words a Huawei caller can act on (the PIN itself is never named). */
const FAILURE_REASONS = {
  INVALID_CREDENTIALS:
    'the HSM refused hsm_user_pin (INVALID_CREDENTIALS); delete the keystore and create it again with the right PIN',
  USER_LOCKED_OUT: 'the HSM user is locked out (USER_LOCKED_OUT)',
  USER_LOGGED_IN: 'the HSM user is logged in elsewhere (USER_LOGGED_IN)',
  CLUSTER_NOT_FOUND: 'the HSM cluster cannot be found (CLUSTER_NOT_FOUND)',
  NETWORK_ERRORS: 'the HSM cannot be reached (NETWORK_ERRORS); try again later',
  INTERNAL_ERROR: 'an internal error occurred (INTERNAL_ERROR); try again later',
} as const satisfies Record<ConnectionErrorCode, string>;

function failureReason(store: KeyStoreRecord): string {
  return FAILURE_REASONS[store.connectionErrorCode ?? 'INTERNAL_ERROR'];
}
