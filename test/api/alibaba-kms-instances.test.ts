import { createRequire } from 'node:module';
import type * as TeaUtil from '@alicloud/tea-util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeyStoreRecord } from '../../src/core/key-stores.js';
import { $Kms, type AlibabaKmsClient, alibabaClient } from '../support/alibaba-sdk.js';
import {
  callCount,
  type KeyStoreTestService,
  RESTRICTED_PROJECT,
  startKeyStoreTestService,
  type TenantConnection,
} from '../support/key-stores.js';

/**
 * KMS instances are the tenants' key stores, made and connected through the core here (Alibaba sells instances in
 * the console: no call of ours creates one). The real Alibaba SDK drives the service; its 1.x models predate KMS
 * instances, so those calls go through the SDK's own `doRequest`, which its generated methods call too.
 */
const require = createRequire(import.meta.url);
const { RuntimeOptions } = require('@alicloud/tea-util') as typeof TeaUtil;

const A = 'alibabainstancesa';
const ANCHOR = '-----BEGIN CERTIFICATE-----\nMIIBtenant\n-----END CERTIFICATE-----\n';
let ks: KeyStoreTestService;
let a: AlibabaKmsClient;
/** Project A's stores: `wrapped` on softhsmWrapped (connected), `idle` on softhsm (left disconnected). */
let wrapped: KeyStoreRecord;
let idle: KeyStoreRecord;
/** A store of another project (the restricted one). */
let foreign: KeyStoreRecord;

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = any;

/** An action the way the SDK sends its generated ones: a signed POST, the parameters in the query string. */
const call = (action: string, query: Record<string, string> = {}, client = a): Promise<Body> =>
  client.doRequest(action, 'HTTPS', 'POST', '2016-01-20', 'AK', query, {}, new RuntimeOptions({}));

async function expectError(promise: Promise<unknown>, code: string, status: number): Promise<Body> {
  try {
    await promise;
  } catch (err) {
    const e = err as { message: string; data?: Body };
    expect({ code: e.data?.Code, status: Number(/code: (\d+)/.exec(e.message)?.[1]) }).toEqual({ code, status });
    return e.data;
  }
  throw new Error(`expected ${code}`);
}

async function newStore(projectId: string, connection: TenantConnection, name: string): Promise<KeyStoreRecord> {
  const pin = Buffer.from(connection.pin, 'utf8');
  try {
    return await ks.kms.running.services.keyStores.create({
      projectId,
      name,
      connectionId: connection.id,
      trustAnchorCertificate: ANCHOR,
      pin,
    });
  } finally {
    pin.fill(0);
  }
}

async function connect(store: KeyStoreRecord): Promise<void> {
  const keyStores = ks.kms.running.services.keyStores;
  await keyStores.connect(store.projectId, store.id);
  await keyStores.settled();
  expect((await keyStores.get(store.projectId, store.id)).connectionState).toBe('CONNECTED');
}

const createInstanceKey = (instanceId: string, extra: Record<string, string> = {}): Promise<Body> =>
  call('CreateKey', { DKMSInstanceId: instanceId, ...extra });

const usedKeys = async (instanceId: string): Promise<number> =>
  (await call('GetKmsInstanceQuotaInfos', { KmsInstanceId: instanceId, ResourceType: 'key' })).KmsInstanceQuotaInfos[0]
    .UsedQuantity;

/** Encrypt, then Decrypt, then GenerateDataKey and Decrypt of its blob, with the SDK's typed calls. */
async function roundTrips(keyId: string): Promise<string> {
  const sealed = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'in the instance' }));
  expect(sealed.keyId).toBe(keyId);
  const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob }));
  expect({ keyId: opened.keyId, plaintext: opened.plaintext }).toEqual({ keyId, plaintext: 'in the instance' });
  const dataKey = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId }));
  const reopened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: dataKey.ciphertextBlob }));
  expect(reopened.plaintext).toBe(dataKey.plaintext);
  return sealed.ciphertextBlob;
}

beforeAll(async () => {
  ks = await startKeyStoreTestService();
  a = alibabaClient(ks.kms.url, await ks.kms.running.credentials.create(A));
  wrapped = await newStore(A, ks.softhsmWrapped, 'alibaba wrapped instance');
  idle = await newStore(A, ks.softhsm, 'alibaba idle instance');
  foreign = await newStore(RESTRICTED_PROJECT, ks.restricted, 'another project');
  await connect(wrapped);
}, 60_000);
afterAll(async () => {
  await ks?.destroy();
});

describe('ListKmsInstances and GetKmsInstance', () => {
  it("when the project lists its KMS instances, then it gets its key stores' ids and ARNs, and only its own", async () => {
    const listed = await call('ListKmsInstances');
    const region = ks.kms.running.services.region;
    expect(listed).toMatchObject({ TotalCount: 2, PageNumber: 1, PageSize: 20 });
    expect(new Set(listed.KmsInstances.KmsInstance)).toEqual(
      new Set(
        [wrapped, idle].map((s) => ({
          KmsInstanceId: s.id,
          KmsInstanceArn: `acs:kms:${region}:${A}:keystore/${s.id}`,
        })),
      ),
    );
    const second = await call('ListKmsInstances', { PageNumber: '2', PageSize: '1' });
    expect(second).toMatchObject({ TotalCount: 2, PageNumber: 2, PageSize: 1 });
    expect(second.KmsInstances.KmsInstance).toHaveLength(1);
    expect(second.KmsInstances.KmsInstance[0].KmsInstanceId).not.toBe(listed.KmsInstances.KmsInstance[0].KmsInstanceId);
  });

  it('when an instance is described, then it shows its name, status, quotas and creation, and no field it lacks', async () => {
    const got = (await call('GetKmsInstance', { KmsInstanceId: wrapped.id })).KmsInstance;
    const created = new Date(wrapped.createdAt).toISOString().replace(/\.\d{3}Z$/, 'Z');
    expect(got).toEqual({
      InstanceId: wrapped.id,
      InstanceName: 'alibaba wrapped instance',
      Status: 'Connected',
      KeyNum: ks.kms.running.services.cmkQuota,
      SecretNum: '0',
      CreateTime: created,
      StartDate: created,
    });
    expect((await call('GetKmsInstance', { KmsInstanceId: idle.id })).KmsInstance.Status).toBe('Disconnected');
  });

  it('when an instance failed to connect, then its Status is Error, and Disconnected once it is disconnected', async () => {
    const keyStores = ks.kms.running.services.keyStores;
    const wrongPin = Buffer.from('not-the-pin-0', 'utf8');
    await keyStores.update(A, idle.id, { pin: wrongPin });
    await keyStores.connect(A, idle.id);
    await keyStores.settled();
    expect((await keyStores.get(A, idle.id)).connectionState).toBe('FAILED');
    expect((await call('GetKmsInstance', { KmsInstanceId: idle.id })).KmsInstance.Status).toBe('Error');
    await keyStores.disconnect(A, idle.id);
    const pin = Buffer.from(ks.softhsm.pin, 'utf8');
    await keyStores.update(A, idle.id, { pin });
    pin.fill(0);
    expect((await call('GetKmsInstance', { KmsInstanceId: idle.id })).KmsInstance.Status).toBe('Disconnected');
  });

  it('when ListKmsInstances is given Filters, whose syntax is undocumented, then it is refused, not ignored', async () => {
    await expectError(call('ListKmsInstances', { Filters: '[]' }), 'UnsupportedOperation', 400);
  });

  it("when another project's instance is named, then it is not found, exactly like an instance that never existed", async () => {
    const unknown = 'cks-0123456789abcdef0';
    for (const id of [foreign.id, unknown]) {
      const body = await expectError(call('GetKmsInstance', { KmsInstanceId: id }), 'Forbidden.ResourceNotFound', 404);
      expect(body.Message).toBe('The specified KMS instance is not found.');
      await expectError(call('GetKmsInstanceQuotaInfos', { KmsInstanceId: id }), 'Forbidden.ResourceNotFound', 404);
      await expectError(createInstanceKey(id), 'Forbidden.ResourceNotFound', 404);
    }
    expect(await ks.kms.running.services.keyStores.countKeys(foreign.id)).toBe(0);
  });
});

describe('keys in a KMS instance (HsmEncryptedDatabase: the wrapped scheme)', () => {
  it('when a key is created with DKMSInstanceId, then it is made in that store and Encrypt, Decrypt and GenerateDataKey work', async () => {
    const made = callCount(ks.calls, ks.softhsmWrapped.id, 'createKeyVersion');
    const created = await createInstanceKey(wrapped.id, {
      KeyStorageMechanism: 'HsmEncryptedDatabase',
      ProtectionLevel: 'HSM',
    });
    expect(created.KeyMetadata).toMatchObject({
      DKMSInstanceId: wrapped.id,
      ProtectionLevel: 'HSM',
      KeyState: 'Enabled',
    });
    expect(callCount(ks.calls, ks.softhsmWrapped.id, 'createKeyVersion')).toBe(made + 1);
    const keyId: string = created.KeyMetadata.KeyId;
    const described = await call('DescribeKey', { KeyId: keyId });
    expect(described.KeyMetadata).toEqual(created.KeyMetadata);
    const sealing = callCount(ks.calls, ks.softhsmWrapped.id, 'encrypt');
    await roundTrips(keyId);
    expect(callCount(ks.calls, ks.softhsmWrapped.id, 'encrypt')).toBeGreaterThan(sealing);
  });

  it("when KeyStorageMechanism is left out, then the key is kept the instance's way", async () => {
    const created = await createInstanceKey(wrapped.id);
    expect(created.KeyMetadata.DKMSInstanceId).toBe(wrapped.id);
    await roundTrips(created.KeyMetadata.KeyId);
  });

  it('when a default key is described, then it is an HSM key with no DKMSInstanceId', async () => {
    const created = await call('CreateKey');
    expect(created.KeyMetadata.ProtectionLevel).toBe('HSM');
    expect(created.KeyMetadata).not.toHaveProperty('DKMSInstanceId');
    const described = await call('DescribeKey', { KeyId: created.KeyMetadata.KeyId });
    expect(described.KeyMetadata).not.toHaveProperty('DKMSInstanceId');
  });

  it('when a KeyStorageMechanism or ProtectionLevel does not match the instance, then InvalidParameter says so and no key is made', async () => {
    const before = await usedKeys(wrapped.id);
    const refused = await expectError(
      createInstanceKey(wrapped.id, { KeyStorageMechanism: 'HsmInternal' }),
      'InvalidParameter',
      400,
    );
    expect(refused.Message).toBe(
      `The specified parameter "KeyStorageMechanism" is not valid: KMS instance ${wrapped.id} keeps its keys as HsmEncryptedDatabase, not HsmInternal: give HsmEncryptedDatabase or omit it.`,
    );
    await expectError(createInstanceKey(wrapped.id, { KeyStorageMechanism: 'Database' }), 'InvalidParameter', 400);
    const software = await expectError(
      createInstanceKey(wrapped.id, { ProtectionLevel: 'SOFTWARE' }),
      'InvalidParameter',
      400,
    );
    expect(software.Message).toContain('"ProtectionLevel"');
    const withoutInstance = await expectError(
      call('CreateKey', { KeyStorageMechanism: 'HsmEncryptedDatabase' }),
      'InvalidParameter',
      400,
    );
    expect(withoutInstance.Message).toContain('DKMSInstanceId');
    expect(await usedKeys(wrapped.id)).toBe(before);
  });

  it('when keys are made in an instance, then its key UsedQuantity counts them in any state, and ListKeys filters by it', async () => {
    const before = await usedKeys(wrapped.id);
    const first: string = (await createInstanceKey(wrapped.id)).KeyMetadata.KeyId;
    const second: string = (await createInstanceKey(wrapped.id)).KeyMetadata.KeyId;
    await call('ScheduleKeyDeletion', { KeyId: second, PendingWindowInDays: '7' });
    expect(await usedKeys(wrapped.id)).toBe(before + 2);
    expect(await usedKeys(idle.id)).toBe(0);
    const quotas = await call('GetKmsInstanceQuotaInfos', { KmsInstanceId: wrapped.id });
    expect(quotas).toMatchObject({
      KmsInstanceId: wrapped.id,
      KmsInstanceQuotaInfos: [
        { ResourceType: 'key', ResourceQuota: ks.kms.running.services.cmkQuota, UsedQuantity: before + 2 },
        { ResourceType: 'secret', ResourceQuota: 0, UsedQuantity: 0 },
      ],
    });
    await expectError(
      call('GetKmsInstanceQuotaInfos', { KmsInstanceId: wrapped.id, ResourceType: 'qps' }),
      'UnsupportedOperation',
      400,
    );
    await expectError(
      call('GetKmsInstanceQuotaInfos', { KmsInstanceId: wrapped.id, ResourceType: 'keys' }),
      'InvalidParameter',
      400,
    );

    const filter = (ids: string[]) => JSON.stringify([{ Key: 'DKMSInstanceId', Values: ids }]);
    const inStore = await call('ListKeys', { Filters: filter([wrapped.id]), PageSize: '100' });
    const ids = inStore.Keys.Key.map((k: { KeyId: string }) => k.KeyId);
    expect(ids).toEqual(expect.arrayContaining([first, second]));
    expect(inStore.TotalCount).toBe(before + 2);
    expect((await call('ListKeys', { Filters: filter([idle.id]) })).TotalCount).toBe(0);
    const enabledOnly = await call('ListKeys', {
      Filters: JSON.stringify([
        { Key: 'DKMSInstanceId', Values: [wrapped.id] },
        { Key: 'KeyState', Values: ['PendingDeletion'] },
      ]),
    });
    expect(enabledOnly.Keys.Key.map((k: { KeyId: string }) => k.KeyId)).toContain(second);
    expect(enabledOnly.Keys.Key.map((k: { KeyId: string }) => k.KeyId)).not.toContain(first);
  });

  it('when the instance is disconnected, then CreateKey and its keys are refused with Forbidden.DKMSInstanceStateInvalid while default keys work', async () => {
    const keyId: string = (await createInstanceKey(wrapped.id)).KeyMetadata.KeyId;
    const blob = await roundTrips(keyId);
    const defaultKey: string = (await call('CreateKey')).KeyMetadata.KeyId;
    const keyStores = ks.kms.running.services.keyStores;
    await keyStores.disconnect(A, wrapped.id);
    try {
      expect((await call('GetKmsInstance', { KmsInstanceId: wrapped.id })).KmsInstance.Status).toBe('Disconnected');
      const created = await expectError(createInstanceKey(wrapped.id), 'Forbidden.DKMSInstanceStateInvalid', 403);
      expect(created.Message).toBe('The KMS instance is not Connected: keys can be created in it only while it is.');
      const refused = await expectError(
        a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'x' })),
        'Forbidden.DKMSInstanceStateInvalid',
        403,
      );
      expect(refused.Message).toBe(
        'The KMS instance of the key is not Connected: its keys cannot be used until it is connected again.',
      );
      await expectError(
        a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: blob })),
        'Forbidden.DKMSInstanceStateInvalid',
        403,
      );
      await expectError(
        a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId })),
        'Forbidden.DKMSInstanceStateInvalid',
        403,
      );
      await roundTrips(defaultKey);
      expect((await call('DescribeKey', { KeyId: keyId })).KeyMetadata.DKMSInstanceId).toBe(wrapped.id);
    } finally {
      await connect(wrapped);
    }
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: blob }));
    expect(opened.plaintext).toBe('in the instance');
  });
});

/**
 * The same on token-object stores (HsmInternal), SoftHSM and NSS softokn: these need the token-object scheme's HSM
 * code, which lands separately.
 */
describe('keys in a KMS instance (HsmInternal: token-object stores)', () => {
  for (const which of ['softhsm', 'nss'] as const) {
    it(`when a key is created with DKMSInstanceId in a ${which} store, then it is an HsmInternal key there and works`, async () => {
      const connection = ks[which];
      const store = which === 'softhsm' ? idle : await newStore(A, connection, `alibaba ${which} instance`);
      await connect(store);
      try {
        const refused = await expectError(
          createInstanceKey(store.id, { KeyStorageMechanism: 'HsmEncryptedDatabase' }),
          'InvalidParameter',
          400,
        );
        expect(refused.Message).toContain(`keeps its keys as HsmInternal, not HsmEncryptedDatabase`);
        const made = callCount(ks.calls, connection.id, 'createTokenKeyVersion');
        const created = await createInstanceKey(store.id, { KeyStorageMechanism: 'HsmInternal' });
        expect(created.KeyMetadata).toMatchObject({ DKMSInstanceId: store.id, ProtectionLevel: 'HSM' });
        expect(callCount(ks.calls, connection.id, 'createTokenKeyVersion')).toBe(made + 1);
        await roundTrips(created.KeyMetadata.KeyId);
        expect(await usedKeys(store.id)).toBe(1);
        const plain = await createInstanceKey(store.id);
        expect(plain.KeyMetadata.DKMSInstanceId).toBe(store.id);
      } finally {
        await ks.kms.running.services.keyStores.disconnect(A, store.id);
      }
    });
  }
});
