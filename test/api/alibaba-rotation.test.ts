import { createRequire } from 'node:module';
import type * as TeaUtil from '@alicloud/tea-util';
import { DecryptCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keyVersionId } from '../../src/api/alibaba/wire.js';
import { decodeFrame } from '../../src/core/ciphertext-blob.js';
import type { KeyStoreRecord } from '../../src/core/key-stores.js';
import { $Kms, type AlibabaKmsClient, alibabaClient } from '../support/alibaba-sdk.js';
import { callCount, type KeyStoreTestService, startKeyStoreTestService } from '../support/key-stores.js';
import { makeDue } from '../support/test-service.js';

/**
 * Key rotation through the Alibaba dialect (issue 12 item 4), driven by the real Alibaba SDK: UpdateRotationPolicy,
 * CreateKeyVersion, ListKeyVersions, DescribeKeyVersion, the KeyVersionId of every Encrypt, GenerateDataKey and
 * Decrypt answer, DescribeKey's rotation fields, and which keys of KMS instances rotate. The SDK's 1.x models predate
 * KMS instances, so CreateKey with DKMSInstanceId goes through the SDK's own `doRequest`.
 */
const require = createRequire(import.meta.url);
const { RuntimeOptions } = require('@alicloud/tea-util') as typeof TeaUtil;

const A = 'alibabarotationa';
const ANCHOR = '-----BEGIN CERTIFICATE-----\nMIIBtenant\n-----END CERTIFICATE-----\n';
const DAY_MS = 86_400_000;
const ISO_SECOND = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
let ks: KeyStoreTestService;
let a: AlibabaKmsClient;
let credentials: { accessKeyId: string; secretAccessKey: string };
/** Project A's instances: `wrapped` keeps keys HsmEncryptedDatabase, `internal` HsmInternal; both connected. */
let wrapped: KeyStoreRecord;
let internal: KeyStoreRecord;

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
type Body = any;

/** An action the way the SDK sends its generated ones: a signed POST, the parameters in the query string. */
const call = (action: string, query: Record<string, string> = {}): Promise<Body> =>
  a.doRequest(action, 'HTTPS', 'POST', '2016-01-20', 'AK', query, {}, new RuntimeOptions({}));

/** The error body a call fails with, after checking its Code and HTTP status (the test fails if it succeeds). */
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

const newKey = async (extra: Record<string, string> = {}): Promise<string> =>
  (await call('CreateKey', extra)).KeyMetadata.KeyId;

const describeKey = async (keyId: string) => (await a.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata;

const createKeyVersion = async (keyId: string) =>
  (await a.createKeyVersion(new $Kms.CreateKeyVersionRequest({ keyId }))).keyVersion;

const updateRotationPolicy = (keyId: string, enableAutomaticRotation: boolean, rotationInterval?: string) =>
  a.updateRotationPolicy(
    new $Kms.UpdateRotationPolicyRequest({
      keyId,
      enableAutomaticRotation,
      ...(rotationInterval === undefined ? {} : { rotationInterval }),
    }),
  );

/** The key version a blob's frame names (src/core/ciphertext-blob.ts), read from the bytes themselves. */
const frameVersion = (blob: string) => decodeFrame(Buffer.from(blob, 'base64')).keyVersion;

/** Within a minute of `expected` (ms): dates are set by the service's clock, to the second. */
function expectAbout(iso: string, expected: number): void {
  expect(iso).toMatch(ISO_SECOND);
  expect(Math.abs(Date.parse(iso) - expected)).toBeLessThan(60_000);
}

async function newStore(connection: KeyStoreTestService['softhsm'], name: string): Promise<KeyStoreRecord> {
  const keyStores = ks.kms.running.services.keyStores;
  const pin = Buffer.from(connection.pin, 'utf8');
  let store: KeyStoreRecord;
  try {
    store = await keyStores.create({
      projectId: A,
      name,
      connectionId: connection.id,
      trustAnchorCertificate: ANCHOR,
      pin,
    });
  } finally {
    pin.fill(0);
  }
  await keyStores.connect(A, store.id);
  await keyStores.settled();
  expect((await keyStores.get(A, store.id)).connectionState).toBe('CONNECTED');
  return store;
}

beforeAll(async () => {
  ks = await startKeyStoreTestService();
  credentials = await ks.kms.running.credentials.create(A);
  a = alibabaClient(ks.kms.url, credentials);
  wrapped = await newStore(ks.softhsmWrapped, 'alibaba rotation wrapped');
  internal = await newStore(ks.softhsm, 'alibaba rotation internal');
}, 60_000);
afterAll(async () => {
  await ks?.destroy();
});

/** What one version of a key sealed: an Encrypt, a GenerateDataKey and a GenerateDataKeyWithoutPlaintext. */
interface Sealed {
  readonly version: number;
  readonly keyVersionId: string;
  readonly text: string;
  readonly textBlob: string;
  readonly dataKey: string;
  readonly dataKeyBlob: string;
  readonly withoutPlaintextBlob: string;
}

async function sealUnder(keyId: string, version: number): Promise<Sealed> {
  const text = `sealed under version ${version}`;
  const encrypted = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: text }));
  const dataKey = await a.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId }));
  const withoutPlaintext = await a.generateDataKeyWithoutPlaintext(
    new $Kms.GenerateDataKeyWithoutPlaintextRequest({ keyId }),
  );
  // Each answer names the version its blob was really made under: the key's newest.
  expect(encrypted.keyVersionId).toBe(keyVersionId(keyId, version));
  expect(dataKey.keyVersionId).toBe(encrypted.keyVersionId);
  expect(withoutPlaintext.keyVersionId).toBe(encrypted.keyVersionId);
  for (const blob of [encrypted.ciphertextBlob, dataKey.ciphertextBlob, withoutPlaintext.ciphertextBlob]) {
    expect(frameVersion(blob)).toBe(version);
  }
  return {
    version,
    keyVersionId: encrypted.keyVersionId,
    text,
    textBlob: encrypted.ciphertextBlob,
    dataKey: dataKey.plaintext,
    dataKeyBlob: dataKey.ciphertextBlob,
    withoutPlaintextBlob: withoutPlaintext.ciphertextBlob,
  };
}

/** Decrypt of everything sealed gives back its plaintext and names the version the blob was made under. */
async function expectAllDecrypt(keyId: string, sealed: readonly Sealed[]): Promise<void> {
  for (const s of sealed) {
    const text = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: s.textBlob }));
    expect({ keyId: text.keyId, keyVersionId: text.keyVersionId, plaintext: text.plaintext }).toEqual({
      keyId,
      keyVersionId: s.keyVersionId,
      plaintext: s.text,
    });
    const dataKey = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: s.dataKeyBlob }));
    expect({ keyVersionId: dataKey.keyVersionId, plaintext: dataKey.plaintext }).toEqual({
      keyVersionId: s.keyVersionId,
      plaintext: s.dataKey,
    });
    const withoutPlaintext = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: s.withoutPlaintextBlob }));
    expect(withoutPlaintext.keyVersionId).toBe(s.keyVersionId);
    expect(Buffer.from(withoutPlaintext.plaintext, 'base64')).toHaveLength(32);
  }
}

describe('CreateKeyVersion, and the KeyVersionId of every ciphertext', () => {
  it('when ciphertexts are made under versions 0..n around n CreateKeyVersion calls, then all decrypt, each naming its own version', async () => {
    const keyId = await newKey();
    const n = 4;
    const sealed = [await sealUnder(keyId, 0)];
    const ids = [sealed[0]?.keyVersionId];
    for (let version = 1; version <= n; version++) {
      const before = Date.now();
      const created = await createKeyVersion(keyId);
      expect(created.keyId).toBe(keyId);
      expect(created.keyVersionId).toBe(keyVersionId(keyId, version));
      expectAbout(created.creationDate, before);
      ids.push(created.keyVersionId);
      const meta = await describeKey(keyId);
      expect(meta.primaryKeyVersion).toBe(created.keyVersionId);
      expect(meta.lastRotationDate).toBe(created.creationDate);
      sealed.push(await sealUnder(keyId, version));
    }
    expect(new Set(ids).size).toBe(n + 1);
    await expectAllDecrypt(keyId, sealed);
  });

  it('when a key is named by alias or ARN, then CreateKeyVersion rotates it; an unknown alias or key is refused', async () => {
    const keyId = await newKey();
    await a.createAlias(new $Kms.CreateAliasRequest({ aliasName: 'alias/rotating', keyId }));
    expect((await createKeyVersion('alias/rotating')).keyVersionId).toBe(keyVersionId(keyId, 1));
    const arn = (await describeKey(keyId)).arn;
    expect((await createKeyVersion(arn)).keyVersionId).toBe(keyVersionId(keyId, 2));
    await expectError(createKeyVersion('alias/nothing-here'), 'Forbidden.AliasNotFound', 404);
    await expectError(createKeyVersion('00000000-0000-4000-8000-000000000000'), 'Forbidden.KeyNotFound', 404);
    await expectError(call('CreateKeyVersion'), 'MissingParameter', 400);
  });

  it('when the key is Disabled or PendingDeletion, then CreateKeyVersion is refused and the key keeps its version', async () => {
    const keyId = await newKey();
    await a.disableKey(new $Kms.DisableKeyRequest({ keyId }));
    await expectError(createKeyVersion(keyId), 'Rejected.Disabled', 409);
    await a.enableKey(new $Kms.EnableKeyRequest({ keyId }));
    await a.scheduleKeyDeletion(new $Kms.ScheduleKeyDeletionRequest({ keyId, pendingWindowInDays: 7 }));
    await expectError(createKeyVersion(keyId), 'Rejected.PendingDeletion', 409);
    expect((await describeKey(keyId)).primaryKeyVersion).toBe(keyVersionId(keyId, 0));
  });

  it('when a key is rotated through Alibaba, then an AWS Encrypt uses the new version and Alibaba Decrypt names it', async () => {
    const keyId = await newKey();
    const old = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'before' }));
    const created = await createKeyVersion(keyId);
    const aws = new KMSClient({ endpoint: ks.kms.url, region: 'local-1', credentials, maxAttempts: 1 });
    try {
      const sealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('from aws') }));
      const blob = Buffer.from(sealed.CiphertextBlob as Uint8Array).toString('base64');
      const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: blob }));
      expect(opened.keyVersionId).toBe(created.keyVersionId);
      const before = await aws.send(new DecryptCommand({ CiphertextBlob: Buffer.from(old.ciphertextBlob, 'base64') }));
      expect(Buffer.from(before.Plaintext as Uint8Array).toString()).toBe('before');
    } finally {
      aws.destroy();
    }
  });
});

describe('ListKeyVersions and DescribeKeyVersion', () => {
  it('when a key was rotated twice, then ListKeyVersions pages its three versions oldest first and DescribeKeyVersion shows each', async () => {
    const keyId = await newKey();
    const created = await describeKey(keyId);
    const first = await createKeyVersion(keyId);
    const second = await createKeyVersion(keyId);
    const expected = [
      { keyId, keyVersionId: keyVersionId(keyId, 0), creationDate: created.creationDate },
      { keyId, keyVersionId: first.keyVersionId, creationDate: first.creationDate },
      { keyId, keyVersionId: second.keyVersionId, creationDate: second.creationDate },
    ];
    const all = await a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId }));
    expect(all).toMatchObject({ totalCount: 3, pageNumber: 1, pageSize: 10 });
    expect(all.keyVersions.keyVersion.map((v) => ({ ...v }))).toEqual(expected);
    const page2 = await a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId, pageNumber: 2, pageSize: 2 }));
    expect(page2).toMatchObject({ totalCount: 3, pageNumber: 2, pageSize: 2 });
    expect(page2.keyVersions.keyVersion.map((v) => v.keyVersionId)).toEqual([second.keyVersionId]);
    for (const version of expected) {
      const described = await a.describeKeyVersion(
        new $Kms.DescribeKeyVersionRequest({ keyId, keyVersionId: version.keyVersionId }),
      );
      expect({ ...described.keyVersion }).toEqual(version);
    }
  });

  it("when DescribeKeyVersion names another key's version or no version, then InvalidParameter; an unknown key is Forbidden.KeyNotFound", async () => {
    const keyId = await newKey();
    const other = await newKey();
    const describe = (key: string, id: string) =>
      a.describeKeyVersion(new $Kms.DescribeKeyVersionRequest({ keyId: key, keyVersionId: id }));
    const foreign = await expectError(describe(keyId, keyVersionId(other, 0)), 'InvalidParameter', 400);
    expect(foreign.Message).toBe(
      `The specified parameter "KeyVersionId" is not valid: it names no version of key ${keyId}.`,
    );
    await expectError(describe(keyId, keyVersionId(keyId, 1)), 'InvalidParameter', 400);
    await expectError(describe('00000000-0000-4000-8000-000000000000', 'x'), 'Forbidden.KeyNotFound', 404);
    await expectError(
      a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId: 'alias/none' })),
      'Forbidden.AliasNotFound',
      404,
    );
    await expectError(
      a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId, pageSize: 101 })),
      'InvalidParameter',
      400,
    );
  });
});

describe('UpdateRotationPolicy and the rotation fields of DescribeKey', () => {
  it('when automatic rotation is turned on, changed, suspended and turned off, then DescribeKey shows it as Alibaba does', async () => {
    const keyId = await newKey();
    const fresh = await describeKey(keyId);
    expect(fresh).toMatchObject({ automaticRotation: 'Disabled', lastRotationDate: fresh.creationDate });
    const raw = await call('DescribeKey', { KeyId: keyId });
    expect(raw.KeyMetadata).not.toHaveProperty('RotationInterval');
    expect(raw.KeyMetadata).not.toHaveProperty('NextRotationDate');

    const enabledAt = Date.now();
    await updateRotationPolicy(keyId, true, '30d');
    const on = await describeKey(keyId);
    expect(on).toMatchObject({ automaticRotation: 'Enabled', rotationInterval: '2592000s' });
    expectAbout(on.nextRotationDate, enabledAt + 30 * DAY_MS);
    expect((await ks.kms.running.services.keys.get(A, { kind: 'id', id: keyId })).rotationPeriodDays).toBe(30);

    // The period changes, counted from the same start; hours, minutes and seconds name whole days too.
    await updateRotationPolicy(keyId, true, '8760h');
    const changed = await describeKey(keyId);
    expect(changed.rotationInterval).toBe('31536000s');
    expectAbout(changed.nextRotationDate, enabledAt + 365 * DAY_MS);
    for (const [interval, seconds] of [
      ['43200m', '2592000s'],
      ['7776000s', '7776000s'],
    ]) {
      await updateRotationPolicy(keyId, true, interval);
      expect((await describeKey(keyId)).rotationInterval).toBe(seconds);
    }

    await a.disableKey(new $Kms.DisableKeyRequest({ keyId }));
    const suspended = await describeKey(keyId);
    expect(suspended).toMatchObject({ automaticRotation: 'Suspended', rotationInterval: '7776000s' });
    expect(suspended.nextRotationDate).toMatch(ISO_SECOND);
    await expectError(updateRotationPolicy(keyId, true, '30d'), 'Rejected.Disabled', 409);
    await a.enableKey(new $Kms.EnableKeyRequest({ keyId }));
    expect((await describeKey(keyId)).automaticRotation).toBe('Enabled');

    // With false, RotationInterval may be left out, and is ignored if given.
    await updateRotationPolicy(keyId, false, 'whatever');
    const off = await call('DescribeKey', { KeyId: keyId });
    expect(off.KeyMetadata.AutomaticRotation).toBe('Disabled');
    expect(off.KeyMetadata).not.toHaveProperty('RotationInterval');
    expect(off.KeyMetadata).not.toHaveProperty('NextRotationDate');
    await updateRotationPolicy(keyId, false);
  });

  it('when the sweep rotates a key automatically, then LastRotationDate is that rotation and NextRotationDate a period after it', async () => {
    const keyId = await newKey();
    await updateRotationPolicy(keyId, true, '90d');
    const before = await a.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'before' }));
    // Due now, and rotated as the primary's sweep does it (the scheduler's own tests move the clock instead).
    makeDue(ks.kms.dataDir, keyId);
    const rotated = await ks.kms.running.services.keys.rotateIfDue(A, { kind: 'id', id: keyId });
    expect(rotated?.currentVersion).toBe(1);
    const meta = await describeKey(keyId);
    expect(meta).toMatchObject({ automaticRotation: 'Enabled', primaryKeyVersion: keyVersionId(keyId, 1) });
    expectAbout(meta.lastRotationDate, Date.now());
    expect(Date.parse(meta.nextRotationDate) - Date.parse(meta.lastRotationDate)).toBe(90 * DAY_MS);
    const listed = await a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId }));
    expect(listed.keyVersions.keyVersion.map((v) => v.keyVersionId)).toEqual([
      keyVersionId(keyId, 0),
      keyVersionId(keyId, 1),
    ]);
    const opened = await a.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: before.ciphertextBlob }));
    expect({ plaintext: opened.plaintext, keyVersionId: opened.keyVersionId }).toEqual({
      plaintext: 'before',
      keyVersionId: keyVersionId(keyId, 0),
    });
  });

  it('when RotationInterval is malformed or out of range, then InvalidParameter names it and nothing changes', async () => {
    const keyId = await newKey();
    const range = 'an integer and a unit (d, h, m or s) from 7 to 365 days, e.g. 30d or 2592000s.';
    for (const [interval, valid] of [
      ['6d', range],
      ['366d', range],
      ['604799s', range],
      ['30', range],
      ['30D', range],
      ['-30d', range],
      ['30.5d', range],
      ['2592001s', 'a whole number of days: this service rotates keys on a period of days.'],
    ] as const) {
      const err = await expectError(updateRotationPolicy(keyId, true, interval), 'InvalidParameter', 400);
      expect(err.Message).toBe(`The specified parameter "RotationInterval" is not valid: ${valid}`);
    }
    await expectError(updateRotationPolicy(keyId, true), 'MissingParameter', 400);
    await expectError(call('UpdateRotationPolicy', { KeyId: keyId, RotationInterval: '30d' }), 'MissingParameter', 400);
    await expectError(
      call('UpdateRotationPolicy', { KeyId: keyId, EnableAutomaticRotation: 'yes', RotationInterval: '30d' }),
      'InvalidParameter',
      400,
    );
    await expectError(updateRotationPolicy('alias/none', true, '30d'), 'Forbidden.AliasNotFound', 404);
    expect((await describeKey(keyId)).automaticRotation).toBe('Disabled');
  });

  it('when CreateKey asks for automatic rotation, then the key is made with it; a bad interval makes no key', async () => {
    const createdAt = Date.now();
    const made = await call('CreateKey', { EnableAutomaticRotation: 'true', RotationInterval: '90d' });
    expect(made.KeyMetadata).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: '7776000s' });
    expectAbout(made.KeyMetadata.NextRotationDate, createdAt + 90 * DAY_MS);
    expect((await call('DescribeKey', { KeyId: made.KeyMetadata.KeyId })).KeyMetadata).toEqual(made.KeyMetadata);

    const count = () => ks.kms.running.services.keys.count(A);
    const before = await count();
    await expectError(call('CreateKey', { EnableAutomaticRotation: 'true' }), 'MissingParameter', 400);
    await expectError(
      call('CreateKey', { EnableAutomaticRotation: 'true', RotationInterval: '1000d' }),
      'InvalidParameter',
      400,
    );
    const off = await call('CreateKey', { EnableAutomaticRotation: 'false', RotationInterval: '90d' });
    expect(off.KeyMetadata.AutomaticRotation).toBe('Disabled');
    expect(await count()).toBe(before + 1);
  });
});

describe('keys of KMS instances', () => {
  it('when a key of an HsmEncryptedDatabase instance is rotated, then the version is made in its HSM and old ciphertexts decrypt', async () => {
    const made = await call('CreateKey', {
      DKMSInstanceId: wrapped.id,
      EnableAutomaticRotation: 'true',
      RotationInterval: '30d',
    });
    expect(made.KeyMetadata).toMatchObject({ DKMSInstanceId: wrapped.id, AutomaticRotation: 'Enabled' });
    const keyId: string = made.KeyMetadata.KeyId;
    const sealed = [await sealUnder(keyId, 0)];
    const versionsMade = callCount(ks.calls, ks.softhsmWrapped.id, 'createKeyVersion');
    const created = await createKeyVersion(keyId);
    expect(created.keyVersionId).toBe(keyVersionId(keyId, 1));
    expect(callCount(ks.calls, ks.softhsmWrapped.id, 'createKeyVersion')).toBe(versionsMade + 1);
    sealed.push(await sealUnder(keyId, 1));
    await expectAllDecrypt(keyId, sealed);
  });

  it('when a key of an HsmInternal instance is to rotate, then Rejected.UnsupportedOperation and nothing is made', async () => {
    const keyId = await newKey({ DKMSInstanceId: internal.id });
    const objects = callCount(ks.calls, ks.softhsm.id, 'createTokenKeyVersion');
    const refused = await expectError(createKeyVersion(keyId), 'Rejected.UnsupportedOperation', 400);
    expect(refused.Message).toBe('Unsupported operation.');
    expect(refused.Recommend).toContain('HsmInternal');
    await expectError(updateRotationPolicy(keyId, true, '30d'), 'Rejected.UnsupportedOperation', 400);
    // Turning off what is not on is no rotation: it succeeds, as for any key.
    await updateRotationPolicy(keyId, false);
    expect(await describeKey(keyId)).toMatchObject({
      automaticRotation: 'Disabled',
      primaryKeyVersion: keyVersionId(keyId, 0),
    });
    expect((await a.listKeyVersions(new $Kms.ListKeyVersionsRequest({ keyId }))).totalCount).toBe(1);

    const inInstance = () => ks.kms.running.services.keyStores.countKeys(internal.id);
    const before = await inInstance();
    await expectError(
      call('CreateKey', { DKMSInstanceId: internal.id, EnableAutomaticRotation: 'true', RotationInterval: '30d' }),
      'Rejected.UnsupportedOperation',
      400,
    );
    expect(await inInstance()).toBe(before);
    expect(callCount(ks.calls, ks.softhsm.id, 'createTokenKeyVersion')).toBe(objects);
  });
});
