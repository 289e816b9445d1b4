import { z } from 'zod';
import {
  CONNECTION_ID_PATTERN,
  type KeyStoreRecord,
  MAX_KEY_STORE_NAME_LENGTH,
  MAX_PIN_LENGTH,
  MAX_TRUST_ANCHOR_LENGTH,
  MIN_PIN_LENGTH,
} from '../../core/key-stores.js';
import type { KeyRecord } from '../../core/keys.js';
import type { Services } from '../huawei/context.js';
import { AwsApiError, validationError } from './errors.js';
import type { AwsOperation } from './operations.js';
import { integerInRange, parseBody } from './wire.js';

/**
 * AWS's CloudHSM key stores (custom-key-stores.md §2.1–2.2) over the core's key stores: the CloudHsmClusterId is the
 * id of a connection the operator offers, KeyStorePassword the token user's PIN, and a store's keys are made and
 * used on that token. External key stores (XKS) are not offered: their members are refused, never ignored.
 */

/** AWS's CustomKeyStoreId bounds (the ids here are `cks-` and 17 hex digits, but any 1–64 is well-formed). */
const MAX_KEY_STORE_ID_LENGTH = 64;
/** AWS's pattern, as its messages show it (without anchors). */
const CLUSTER_ID_PATTERN = CONNECTION_ID_PATTERN.source.replace(/^\^|\$$/g, '');

/** The members of an external key store, in CreateCustomKeyStore and UpdateCustomKeyStore. */
const xksMembers = {
  XksProxyUriEndpoint: z.unknown().optional(),
  XksProxyUriPath: z.unknown().optional(),
  XksProxyVpcEndpointServiceName: z.unknown().optional(),
  XksProxyVpcEndpointServiceOwner: z.unknown().optional(),
  XksProxyAuthenticationCredential: z.unknown().optional(),
  XksProxyConnectivity: z.unknown().optional(),
};

/**
 * UnsupportedOperationException, AWS's answer for "a specified parameter is not supported": the request is
 * well-formed, this service just has no external key store (nor a proxy to reach one).
 */
function refuseXks(req: Partial<Record<keyof typeof xksMembers, unknown>>): void {
  const given = Object.keys(xksMembers).filter((m) => req[m as keyof typeof xksMembers] !== undefined);
  if (given.length > 0) {
    throw new AwsApiError(
      'UnsupportedOperationException',
      `External key stores are not supported by this service: ${given.join(', ')} cannot be used.`,
    );
  }
}

function lengthIn(value: string, member: string, min: number, max: number): string {
  if (value.length < min) {
    throw validationError(value, member, `Member must have length greater than or equal to ${min}`);
  }
  if (value.length > max) throw validationError(value, member, `Member must have length less than or equal to ${max}`);
  return value;
}

function keyStoreId(value: string): string {
  return lengthIn(value, 'customKeyStoreId', 1, MAX_KEY_STORE_ID_LENGTH);
}

function clusterId(value: string): string {
  const member = 'cloudHsmClusterId';
  lengthIn(value, member, 19, 24);
  if (!CONNECTION_ID_PATTERN.test(value)) {
    throw validationError(value, member, `Member must satisfy regular expression pattern: ${CLUSTER_ID_PATTERN}`);
  }
  return value;
}

/**
 * KeyStorePassword is a sensitive member: its value never appears in a message (AWS leaves sensitive values out of
 * its validation messages too). Returned as bytes, which the caller zeroes.
 */
function password(value: string): Buffer {
  if (value.length < MIN_PIN_LENGTH || value.length > MAX_PIN_LENGTH) {
    const bound =
      value.length < MIN_PIN_LENGTH
        ? `greater than or equal to ${MIN_PIN_LENGTH}`
        : `less than or equal to ${MAX_PIN_LENGTH}`;
    throw new AwsApiError(
      'ValidationException',
      `1 validation error detected: Value at 'keyStorePassword' failed to satisfy constraint: Member must have length ${bound}`,
    );
  }
  return Buffer.from(value, 'utf8');
}

function required<T>(value: T | undefined, member: string): T {
  if (value === undefined) throw validationError(undefined, member, 'Member must not be null');
  return value;
}

/** A Marker of a List* or Describe* operation here: the offset of the next item, as NextMarker gave it. */
function markerOffset(marker: string | undefined): number {
  const offset = marker === undefined ? 0 : Number(marker);
  if (!/^\d+$/.test(marker ?? '0') || !Number.isSafeInteger(offset)) {
    throw new AwsApiError('InvalidMarkerException', 'The marker that specifies where to start paginating is invalid.');
  }
  return offset;
}

/** A CustomKeyStoresListEntry. Never the password, which the service keeps sealed and never gives back. */
function listEntry(store: KeyStoreRecord) {
  return {
    CustomKeyStoreId: store.id,
    CustomKeyStoreName: store.name,
    CustomKeyStoreType: 'AWS_CLOUDHSM',
    CloudHsmClusterId: store.connectionId,
    TrustAnchorCertificate: store.trustAnchorCertificate,
    ConnectionState: store.connectionState,
    ...(store.connectionState === 'FAILED' && store.connectionErrorCode !== null
      ? { ConnectionErrorCode: store.connectionErrorCode }
      : {}),
    CreationDate: store.createdAt / 1000,
  };
}

const CreateCustomKeyStore = z
  .object({
    CustomKeyStoreName: z.string(),
    CustomKeyStoreType: z.string().optional(),
    CloudHsmClusterId: z.string().optional(),
    TrustAnchorCertificate: z.string().optional(),
    KeyStorePassword: z.string().optional(),
    ...xksMembers,
  })
  .strict();

const createCustomKeyStore: AwsOperation = async (services, caller, body) => {
  const req = parseBody(CreateCustomKeyStore, body);
  const name = lengthIn(req.CustomKeyStoreName, 'customKeyStoreName', 1, MAX_KEY_STORE_NAME_LENGTH);
  const type = req.CustomKeyStoreType ?? 'AWS_CLOUDHSM';
  if (type !== 'AWS_CLOUDHSM' && type !== 'EXTERNAL_KEY_STORE') {
    throw validationError(
      type,
      'customKeyStoreType',
      'Member must satisfy enum value set: [AWS_CLOUDHSM, EXTERNAL_KEY_STORE]',
    );
  }
  if (type === 'EXTERNAL_KEY_STORE') {
    throw new AwsApiError(
      'UnsupportedOperationException',
      'External key stores (CustomKeyStoreType EXTERNAL_KEY_STORE) are not supported by this service.',
    );
  }
  refuseXks(req);
  const connectionId = clusterId(required(req.CloudHsmClusterId, 'cloudHsmClusterId'));
  const trustAnchor = lengthIn(
    required(req.TrustAnchorCertificate, 'trustAnchorCertificate'),
    'trustAnchorCertificate',
    1,
    MAX_TRUST_ANCHOR_LENGTH,
  );
  const pin = password(required(req.KeyStorePassword, 'keyStorePassword'));
  try {
    const store = await services.keyStores.create({
      projectId: caller.projectId,
      name,
      connectionId,
      trustAnchorCertificate: trustAnchor,
      pin,
    });
    return { CustomKeyStoreId: store.id };
  } finally {
    pin.fill(0);
  }
};

const DescribeCustomKeyStores = z
  .object({
    CustomKeyStoreId: z.string().optional(),
    CustomKeyStoreName: z.string().optional(),
    Limit: z.number().optional(),
    Marker: z.string().optional(),
  })
  .strict();

const describeCustomKeyStores: AwsOperation = async (services, caller, body) => {
  const req = parseBody(DescribeCustomKeyStores, body);
  if (req.CustomKeyStoreId !== undefined && req.CustomKeyStoreName !== undefined) {
    throw new AwsApiError('ValidationException', 'Specify either CustomKeyStoreId or CustomKeyStoreName, not both.');
  }
  const limit = req.Limit === undefined ? 100 : integerInRange(req.Limit, 'limit', 1, 1000);
  const offset = markerOffset(req.Marker);
  const one = (store: KeyStoreRecord) => ({ CustomKeyStores: [listEntry(store)], Truncated: false });
  if (req.CustomKeyStoreId !== undefined) {
    return one(await services.keyStores.get(caller.projectId, keyStoreId(req.CustomKeyStoreId)));
  }
  if (req.CustomKeyStoreName !== undefined) {
    const name = lengthIn(req.CustomKeyStoreName, 'customKeyStoreName', 1, MAX_KEY_STORE_NAME_LENGTH);
    return one(await services.keyStores.getByName(caller.projectId, name));
  }
  const { stores, total } = await services.keyStores.list(caller.projectId, offset, limit);
  const truncated = offset + stores.length < total;
  return {
    CustomKeyStores: stores.map(listEntry),
    Truncated: truncated,
    ...(truncated ? { NextMarker: String(offset + stores.length) } : {}),
  };
};

const StoreOnly = z.object({ CustomKeyStoreId: z.string() }).strict();

/** Returns at once, as on AWS: DescribeCustomKeyStores shows CONNECTING, then CONNECTED or FAILED. */
const connectCustomKeyStore: AwsOperation = async (services, caller, body) => {
  const id = keyStoreId(parseBody(StoreOnly, body).CustomKeyStoreId);
  await services.keyStores.connect(caller.projectId, id);
  return {};
};

const disconnectCustomKeyStore: AwsOperation = async (services, caller, body) => {
  const id = keyStoreId(parseBody(StoreOnly, body).CustomKeyStoreId);
  await services.keyStores.disconnect(caller.projectId, id);
  return {};
};

const deleteCustomKeyStore: AwsOperation = async (services, caller, body) => {
  const id = keyStoreId(parseBody(StoreOnly, body).CustomKeyStoreId);
  await services.keyStores.delete(caller.projectId, id);
  return {};
};

const UpdateCustomKeyStore = z
  .object({
    CustomKeyStoreId: z.string(),
    NewCustomKeyStoreName: z.string().optional(),
    KeyStorePassword: z.string().optional(),
    CloudHsmClusterId: z.string().optional(),
    ...xksMembers,
  })
  .strict();

/** The core enforces AWS's states: a new name in any state, a new password or cluster only while DISCONNECTED. */
const updateCustomKeyStore: AwsOperation = async (services, caller, body) => {
  const req = parseBody(UpdateCustomKeyStore, body);
  const id = keyStoreId(req.CustomKeyStoreId);
  refuseXks(req);
  const name =
    req.NewCustomKeyStoreName === undefined
      ? undefined
      : lengthIn(req.NewCustomKeyStoreName, 'newCustomKeyStoreName', 1, MAX_KEY_STORE_NAME_LENGTH);
  const connectionId = req.CloudHsmClusterId === undefined ? undefined : clusterId(req.CloudHsmClusterId);
  const pin = req.KeyStorePassword === undefined ? undefined : password(req.KeyStorePassword);
  try {
    await services.keyStores.update(caller.projectId, id, {
      ...(name === undefined ? {} : { name }),
      ...(connectionId === undefined ? {} : { connectionId }),
      ...(pin === undefined ? {} : { pin }),
    });
    return {};
  } finally {
    pin?.fill(0);
  }
};

/** The CreateKey and GenerateRandom member that names a store, checked as AWS's model bounds it. */
export function customKeyStoreId(value: string | undefined): string | undefined {
  return value === undefined ? undefined : keyStoreId(value);
}

/** The store a key lives in, for its KeyMetadata; undefined for a key of the default HSM. */
export async function keyStoreOf(services: Services, key: KeyRecord): Promise<KeyStoreRecord | undefined> {
  return key.keyStoreId === null ? undefined : services.keyStores.get(key.projectId, key.keyStoreId);
}

export const CUSTOM_KEY_STORE_OPERATIONS = {
  CreateCustomKeyStore: createCustomKeyStore,
  DescribeCustomKeyStores: describeCustomKeyStores,
  ConnectCustomKeyStore: connectCustomKeyStore,
  DisconnectCustomKeyStore: disconnectCustomKeyStore,
  UpdateCustomKeyStore: updateCustomKeyStore,
  DeleteCustomKeyStore: deleteCustomKeyStore,
} as const satisfies Record<string, AwsOperation>;
