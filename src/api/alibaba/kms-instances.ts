import type { ConnectionState, KeyStoreKeyScheme, KeyStoreRecord } from '../../core/key-stores.js';
import type { Services } from '../huawei/context.js';
import { invalidParameter, unsupportedOperation } from './errors.js';
import type { AlibabaOperation } from './operations.js';
import { type Caller, isoDate, type RpcParams } from './wire.js';

/**
 * Alibaba's KMS instances are the tenants' key stores (src/core/key-stores.ts): one record whichever dialect made it,
 * its id (`cks-…`) the KmsInstanceId. Alibaba sells instances in the console and has no call in our scope that
 * creates or connects one; a store is made and connected through the AWS or Huawei dialect (or the operator), and
 * is then listed, described and given keys here.
 */

/** GetKmsInstance's Status (Uninitialized, Connecting, Connected, Disconnected, Error) for each connection state. */
const INSTANCE_STATUS: Readonly<Record<ConnectionState, string>> = {
  CONNECTED: 'Connected',
  CONNECTING: 'Connecting',
  DISCONNECTED: 'Disconnected',
  // Closing the token takes no time here; what follows is Disconnected.
  DISCONNECTING: 'Disconnected',
  FAILED: 'Error',
};

/**
 * CreateKey's KeyStorageMechanism for the key scheme the operator chose for the store's connection: HsmInternal is a
 * key object in the HSM, HsmEncryptedDatabase a key wrapped by the HSM and kept in the database.
 */
const STORAGE_MECHANISM: Readonly<Record<KeyStoreKeyScheme, string>> = {
  'token-object': 'HsmInternal',
  wrapped: 'HsmEncryptedDatabase',
};

/** `acs:kms:<region>:<uid>:keystore/<id>`, the form of Alibaba's KmsInstanceArn; the uid is the project. */
const instanceArn = (store: KeyStoreRecord, caller: Caller) =>
  `acs:kms:${caller.region}:${store.projectId}:keystore/${store.id}`;

/** PageNumber from 1; PageSize 1–100, 20 by default (ListKmsInstances' default, where other List calls have 10). */
const listKmsInstances: AlibabaOperation = async (services, caller, params) => {
  // The SDK models Filters as a string whose syntax no API page documents: refused rather than guessed at.
  if (params.optional('Filters') !== undefined) throw unsupportedOperation('Filters on ListKmsInstances.');
  const pageNumber = params.integer('PageNumber', 1, 1_000_000_000, 1);
  const pageSize = params.integer('PageSize', 1, 100, 20);
  const { stores, total } = await services.keyStores.list(caller.projectId, (pageNumber - 1) * pageSize, pageSize);
  return {
    KmsInstances: {
      KmsInstance: stores.map((store) => ({ KmsInstanceId: store.id, KmsInstanceArn: instanceArn(store, caller) })),
    },
    TotalCount: total,
    PageNumber: pageNumber,
    PageSize: pageSize,
  };
};

/**
 * The fields that mean something for a store. KeyNum and SecretNum are, as Alibaba documents them, how many keys and
 * secrets the instance can hold: the project's key quota (which keys in and out of stores share) and 0, as a string
 * the way the API types SecretNum; how many keys it holds is GetKmsInstanceQuotaInfos' UsedQuantity. CreateTime and
 * StartDate are both when the store was created: nothing is bought and then started here.
 *
 * Absent, because nothing here answers to them: Spec, VpcNum, VpcId, VswitchIds, ZoneIds and BindVpcs (no
 * instance gateway or VPC), ChargeType, ProductType, ProductVersion, SaleStatus and EndDate (no billing), Log and
 * LogStorage, DeletionProtection, and CaCertificateChainPem (Alibaba's is the CA of the instance's own TLS endpoint;
 * the store's trust anchor is the tenant's HSM CA, another thing).
 */
const getKmsInstance: AlibabaOperation = async (services, caller, params) => {
  const store = await services.keyStores.get(caller.projectId, params.required('KmsInstanceId'));
  return {
    KmsInstance: {
      InstanceId: store.id,
      InstanceName: store.name,
      Status: INSTANCE_STATUS[store.connectionState],
      KeyNum: services.cmkQuota,
      SecretNum: '0',
      CreateTime: isoDate(store.createdAt),
      StartDate: isoDate(store.createdAt),
    },
  };
};

/** ResourceType values: `key` and `secret` are answered; `qps` and `vpc` name limits this service does not have. */
const QUOTA_RESOURCE_TYPES = ['key', 'secret'] as const;

const getKmsInstanceQuotaInfos: AlibabaOperation = async (services, caller, params) => {
  const resourceType = params.optional('ResourceType');
  if (resourceType === 'qps' || resourceType === 'vpc') {
    throw unsupportedOperation(`ResourceType ${resourceType}: KMS instances here have no ${resourceType} quota.`);
  }
  if (resourceType !== undefined && !(QUOTA_RESOURCE_TYPES as readonly string[]).includes(resourceType)) {
    throw invalidParameter('ResourceType', 'use key or secret.');
  }
  const store = await services.keyStores.get(caller.projectId, params.required('KmsInstanceId'));
  const infos = [];
  if (resourceType !== 'secret') {
    infos.push({
      ResourceType: 'key',
      ResourceQuota: services.cmkQuota,
      UsedQuantity: await services.keyStores.countKeys(store.id),
    });
  }
  if (resourceType !== 'key') infos.push({ ResourceType: 'secret', ResourceQuota: 0, UsedQuantity: 0 });
  return { KmsInstanceId: store.id, KmsInstanceQuotaInfos: infos };
};

/**
 * The store CreateKey's DKMSInstanceId names, once its KeyStorageMechanism and ProtectionLevel are checked against
 * it; undefined for a key of the default HSM (no DKMSInstanceId).
 *
 * KeyStorageMechanism is the store's: the operator fixes it per connection. Absent, it is the store's own (Alibaba
 * defaults to HsmInternal, which a wrapped store could only refuse); given, it must match, or the key would be kept
 * otherwise than asked. ProtectionLevel, which Alibaba derives from the instance, may only say HSM.
 */
export async function keyStoreForNewKey(
  services: Services,
  caller: Caller,
  params: RpcParams,
): Promise<KeyStoreRecord | undefined> {
  const instanceId = params.optional('DKMSInstanceId');
  const mechanism = params.optional('KeyStorageMechanism');
  if (instanceId === undefined) {
    if (mechanism !== undefined) {
      throw invalidParameter('KeyStorageMechanism', 'it applies only to keys of a KMS instance (DKMSInstanceId).');
    }
    return undefined;
  }
  const protection = params.optional('ProtectionLevel');
  if (protection !== undefined && protection !== 'HSM') {
    throw invalidParameter('ProtectionLevel', 'the keys of a KMS instance are kept in its HSM: use HSM or omit it.');
  }
  const mechanisms = Object.values(STORAGE_MECHANISM);
  if (mechanism !== undefined && !mechanisms.includes(mechanism)) {
    throw invalidParameter('KeyStorageMechanism', `use ${mechanisms.join(' or ')}.`);
  }
  const store = await services.keyStores.get(caller.projectId, instanceId);
  const own = STORAGE_MECHANISM[store.keyScheme];
  if (mechanism !== undefined && mechanism !== own) {
    throw invalidParameter(
      'KeyStorageMechanism',
      `KMS instance ${store.id} keeps its keys as ${own}, not ${mechanism}: give ${own} or omit it.`,
    );
  }
  return store;
}

/** The KMS instance operations, registered with the others in ALIBABA_OPERATIONS. */
export const KMS_INSTANCE_OPERATIONS = {
  ListKmsInstances: { run: listKmsInstances, parameters: ['PageNumber', 'PageSize', 'Filters'] },
  GetKmsInstance: { run: getKmsInstance, parameters: ['KmsInstanceId'] },
  GetKmsInstanceQuotaInfos: { run: getKmsInstanceQuotaInfos, parameters: ['KmsInstanceId', 'ResourceType'] },
} as const satisfies Readonly<Record<string, { run: AlibabaOperation; parameters: readonly string[] }>>;
