import { createHash } from 'node:crypto';
import {
  CancelKeyDeletionCommand,
  ConnectCustomKeyStoreCommand,
  CreateCustomKeyStoreCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeCustomKeyStoresCommand,
  DisabledException,
  DisableKeyCommand,
  DisableKeyRotationCommand,
  EnableKeyCommand,
  EnableKeyRotationCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetKeyRotationStatusCommand,
  InvalidCiphertextException,
  InvalidMarkerException,
  KMSClient,
  KMSInvalidStateException,
  LimitExceededException,
  ListKeyRotationsCommand,
  NotFoundException,
  ReEncryptCommand,
  RotateKeyOnDemandCommand,
  ScheduleKeyDeletionCommand,
  UnsupportedOperationException,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { decodeFrame } from '../../src/core/ciphertext-blob.js';
import { signedAwsRequest } from '../support/aws-request.js';
import {
  callCount,
  type KeyStoreTestService,
  startKeyStoreTestService,
  type TenantConnection,
} from '../support/key-stores.js';
import { makeDue } from '../support/test-service.js';

const REGION = 'eu-west-1';
const P = 'awsrotation';
const DAY_MS = 86_400_000;

let service: KeyStoreTestService;
let credentials: { accessKeyId: string; secretAccessKey: string };
let kms: KMSClient;

beforeAll(async () => {
  service = await startKeyStoreTestService({ KMS_REGION: REGION });
  credentials = await service.kms.running.credentials.create(P);
  kms = new KMSClient({ endpoint: service.kms.url, region: REGION, credentials, maxAttempts: 1 });
});
afterAll(async () => {
  kms.destroy();
  await service.destroy();
});

/** The error a command fails with (the test fails if it succeeds). */
async function failure(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the command to fail');
}

/** The request and its raw JSON answer, for what the SDK would hide (members absent or present). */
async function raw(operation: string, body: object) {
  return signedAwsRequest(service.kms.url, credentials, REGION, {
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${operation}` },
    body: JSON.stringify(body),
  });
}

async function newKey(input: { CustomKeyStoreId?: string } = {}): Promise<string> {
  const made = await kms.send(new CreateKeyCommand(input.CustomKeyStoreId ? { ...input, Origin: 'AWS_CLOUDHSM' } : {}));
  return made.KeyMetadata?.KeyId as string;
}

const arn = (keyId: string) => `arn:aws:kms:${REGION}:${P}:key/${keyId}`;

/** The key version a CiphertextBlob was sealed with, read from its frame. */
const versionOf = (blob: Uint8Array | undefined) => decodeFrame(Buffer.from(blob as Uint8Array)).keyVersion;

async function encrypt(keyId: string, text: string, context?: Record<string, string>) {
  const out = await kms.send(
    new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from(text), EncryptionContext: context }),
  );
  return out.CiphertextBlob as Uint8Array;
}

async function decryptText(blob: Uint8Array, context?: Record<string, string>): Promise<string> {
  const out = await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: context }));
  return Buffer.from(out.Plaintext as Uint8Array).toString();
}

describe('EnableKeyRotation, GetKeyRotationStatus and DisableKeyRotation', () => {
  it('when a key is new, then its rotation is off and the status has only KeyRotationEnabled and the key ARN', async () => {
    const keyId = await newKey();
    const res = await raw('GetKeyRotationStatus', { KeyId: keyId });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ KeyRotationEnabled: false, KeyId: arn(keyId) });
  });

  it('when rotation is enabled without a period, then it is 365 days and the next rotation is 365 days from now', async () => {
    const keyId = await newKey();
    const before = Date.now();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId }));
    const status = await kms.send(new GetKeyRotationStatusCommand({ KeyId: arn(keyId) }));
    expect(status).toMatchObject({ KeyRotationEnabled: true, KeyId: arn(keyId), RotationPeriodInDays: 365 });
    const next = status.NextRotationDate?.getTime() as number;
    expect(next).toBeGreaterThanOrEqual(before + 365 * DAY_MS - 1000);
    expect(next).toBeLessThanOrEqual(Date.now() + 365 * DAY_MS + 1000);
    // Our rotations are synchronous: there is never one in progress to report.
    expect(status.OnDemandRotationStartDate).toBeUndefined();
  });

  it('when the period is changed, then the next rotation is a period after the last scheduled start, and 90 and 2560 are the bounds', async () => {
    const keyId = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: 2560 }));
    const first = await kms.send(new GetKeyRotationStatusCommand({ KeyId: keyId }));
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: 90 }));
    const second = await kms.send(new GetKeyRotationStatusCommand({ KeyId: keyId }));
    expect(second.RotationPeriodInDays).toBe(90);
    expect((first.NextRotationDate as Date).getTime() - (second.NextRotationDate as Date).getTime()).toBe(
      (2560 - 90) * DAY_MS,
    );
    for (const [days, constraint] of [
      [89, 'Member must have value greater than or equal to 90'],
      [2561, 'Member must have value less than or equal to 2560'],
      [365.5, 'Member must have value greater than or equal to 90'],
    ] as const) {
      const err = await failure(kms.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: days })));
      expect(err.name).toBe('ValidationException');
      expect(err.message).toBe(
        `1 validation error detected: Value '${days}' at 'rotationPeriodInDays' failed to satisfy constraint: ${constraint}`,
      );
    }
    expect((await kms.send(new GetKeyRotationStatusCommand({ KeyId: keyId }))).RotationPeriodInDays).toBe(90);
  });

  it('when rotation is disabled, then the status is false again, without period or date', async () => {
    const keyId = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: 180 }));
    await kms.send(new DisableKeyRotationCommand({ KeyId: keyId }));
    expect((await raw('GetKeyRotationStatus', { KeyId: keyId })).body).toEqual({
      KeyRotationEnabled: false,
      KeyId: arn(keyId),
    });
  });

  it('when the key is disabled, then enabling, disabling or rotating it is DisabledException, and its status stays as it was', async () => {
    const keyId = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId }));
    await kms.send(new DisableKeyCommand({ KeyId: keyId }));
    for (const command of [
      new EnableKeyRotationCommand({ KeyId: keyId }),
      new DisableKeyRotationCommand({ KeyId: keyId }),
      new RotateKeyOnDemandCommand({ KeyId: keyId }),
    ]) {
      const err = await failure(kms.send(command as EnableKeyRotationCommand));
      expect(err).toBeInstanceOf(DisabledException);
      expect(err.message).toBe(`${arn(keyId)} is disabled.`);
    }
    expect((await kms.send(new GetKeyRotationStatusCommand({ KeyId: keyId }))).KeyRotationEnabled).toBe(true);
    await kms.send(new EnableKeyCommand({ KeyId: keyId }));
    await kms.send(new DisableKeyRotationCommand({ KeyId: keyId }));
  });

  it('when the key is pending deletion, then its status is false and changes are KMSInvalidStateException; cancelling brings its rotation back', async () => {
    const keyId = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId, RotationPeriodInDays: 400 }));
    await kms.send(new ScheduleKeyDeletionCommand({ KeyId: keyId, PendingWindowInDays: 7 }));
    expect((await raw('GetKeyRotationStatus', { KeyId: keyId })).body).toEqual({
      KeyRotationEnabled: false,
      KeyId: arn(keyId),
    });
    for (const command of [
      new EnableKeyRotationCommand({ KeyId: keyId }),
      new DisableKeyRotationCommand({ KeyId: keyId }),
      new RotateKeyOnDemandCommand({ KeyId: keyId }),
    ]) {
      const err = await failure(kms.send(command as EnableKeyRotationCommand));
      expect(err).toBeInstanceOf(KMSInvalidStateException);
      expect(err.message).toBe(`${arn(keyId)} is pending deletion.`);
    }
    await kms.send(new CancelKeyDeletionCommand({ KeyId: keyId }));
    const status = await kms.send(new GetKeyRotationStatusCommand({ KeyId: keyId }));
    expect(status).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 400 });
  });

  it('when the key does not exist or a member is unknown, then NotFoundException or ValidationException', async () => {
    const missing = '00000000-0000-4000-8000-000000000000';
    for (const command of [
      new EnableKeyRotationCommand({ KeyId: missing }),
      new GetKeyRotationStatusCommand({ KeyId: missing }),
      new RotateKeyOnDemandCommand({ KeyId: missing }),
      new ListKeyRotationsCommand({ KeyId: missing }),
    ]) {
      const err = await failure(kms.send(command as EnableKeyRotationCommand));
      expect(err).toBeInstanceOf(NotFoundException);
      expect(err.message).toBe(`Key '${arn(missing)}' does not exist`);
    }
    const keyId = await newKey();
    const unknown = await raw('RotateKeyOnDemand', { KeyId: keyId, Now: true });
    expect(unknown.type).toBe('ValidationException');
    expect(unknown.body.message).toContain("'Now'");
  });
});

describe('RotateKeyOnDemand and ListKeyRotations', () => {
  it('when a key is rotated 3 times, then ciphertexts of every version decrypt, and Encrypt and GenerateDataKey use the newest', async () => {
    const keyId = await newKey();
    const context = { purpose: 'rotation' };
    const blobs = [await encrypt(keyId, 'under version 0', context)];
    for (let n = 1; n <= 3; n++) {
      const out = await kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId }));
      expect(out.KeyId).toBe(arn(keyId));
      blobs.push(await encrypt(keyId, `under version ${n}`, context));
    }
    expect(blobs.map(versionOf)).toEqual([0, 1, 2, 3]);
    for (const [n, blob] of blobs.entries()) expect(await decryptText(blob, context)).toBe(`under version ${n}`);
    const dataKey = await kms.send(new GenerateDataKeyCommand({ KeyId: keyId, NumberOfBytes: 32 }));
    expect(versionOf(dataKey.CiphertextBlob)).toBe(3);
    // The frame's version is authenticated: a blob relabelled as another version does not decrypt.
    const relabelled = Buffer.from(blobs[1] as Uint8Array);
    const n = relabelled.readUInt16LE(2);
    relabelled.writeUInt32LE(2, n);
    createHash('sha256')
      .update(relabelled.subarray(0, n + 4))
      .digest()
      .copy(relabelled, n + 4);
    expect(versionOf(relabelled)).toBe(2);
    expect(
      await failure(kms.send(new DecryptCommand({ CiphertextBlob: relabelled, EncryptionContext: context }))),
    ).toBeInstanceOf(InvalidCiphertextException);
  });

  it('when a key was rotated, then ListKeyRotations shows each rotation oldest first, with its date and type, and pages with Limit and Marker', async () => {
    const keyId = await newKey();
    const before = Date.now();
    for (let n = 0; n < 3; n++) await kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId }));
    // A scheduled rotation, due now, as the sweep makes it (the same call the service's timer makes).
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId }));
    makeDue(service.kms.dataDir, keyId);
    expect(await service.kms.running.services.keys.rotateIfDue(P, { kind: 'id', id: keyId })).toBeDefined();
    const all = await kms.send(new ListKeyRotationsCommand({ KeyId: keyId }));
    expect(all.Truncated).toBe(false);
    expect(all.NextMarker).toBeUndefined();
    expect(all.Rotations?.map((r) => [r.KeyId, r.RotationType])).toEqual([
      [keyId, 'ON_DEMAND'],
      [keyId, 'ON_DEMAND'],
      [keyId, 'ON_DEMAND'],
      [keyId, 'AUTOMATIC'],
    ]);
    const dates = all.Rotations?.map((r) => r.RotationDate?.getTime() as number) ?? [];
    expect(dates[0]).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
    expect([...dates].sort((x, y) => x - y)).toEqual(dates);

    const first = await kms.send(new ListKeyRotationsCommand({ KeyId: keyId, Limit: 3 }));
    expect(first).toMatchObject({ Truncated: true, NextMarker: '3' });
    expect(first.Rotations).toHaveLength(3);
    const rest = await kms.send(new ListKeyRotationsCommand({ KeyId: keyId, Limit: 3, Marker: first.NextMarker }));
    expect(rest.Truncated).toBe(false);
    expect(rest.Rotations).toEqual(all.Rotations?.slice(3));

    const everything = await raw('ListKeyRotations', {
      KeyId: keyId,
      IncludeKeyMaterial: 'ALL_KEY_MATERIAL',
      Limit: 2,
    });
    expect(everything.body.Rotations[0]).toEqual({ KeyId: keyId });
    expect(everything.body.Rotations[1]).toMatchObject({ KeyId: keyId, RotationType: 'ON_DEMAND' });
    expect(everything.body).toMatchObject({ Truncated: true, NextMarker: '2' });

    const badMarker = await failure(kms.send(new ListKeyRotationsCommand({ KeyId: keyId, Marker: 'x' })));
    expect(badMarker).toBeInstanceOf(InvalidMarkerException);
    const badLimit = await failure(kms.send(new ListKeyRotationsCommand({ KeyId: keyId, Limit: 1001 })));
    expect(badLimit.name).toBe('ValidationException');
    const badInclude = await raw('ListKeyRotations', { KeyId: keyId, IncludeKeyMaterial: 'SOME' });
    expect(badInclude.type).toBe('ValidationException');
  });

  it('when a key was never rotated, then ListKeyRotations is empty', async () => {
    const keyId = await newKey();
    expect((await raw('ListKeyRotations', { KeyId: keyId })).body).toEqual({ Rotations: [], Truncated: false });
  });

  it('when a key has been rotated on demand 25 times, then the 26th is LimitExceededException, and scheduled rotations do not count', async () => {
    const keyId = await newKey();
    await kms.send(new EnableKeyRotationCommand({ KeyId: keyId }));
    makeDue(service.kms.dataDir, keyId);
    expect(await service.kms.running.services.keys.rotateIfDue(P, { kind: 'id', id: keyId })).toBeDefined();
    for (let n = 0; n < 25; n++) await kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId }));
    const err = await failure(kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId })));
    expect(err).toBeInstanceOf(LimitExceededException);
    expect(err.message).toBe(`${arn(keyId)} has been rotated on demand 25 times, the most a key can be.`);
    expect(versionOf(await encrypt(keyId, 'newest'))).toBe(26);
    expect((await kms.send(new ListKeyRotationsCommand({ KeyId: keyId }))).Rotations).toHaveLength(26);
  });
});

describe('ReEncrypt moves a ciphertext to the newest version inside the HSM layer', () => {
  it('when a version-0 blob is re-encrypted under its own rotated key, then it lands on the newest version, decrypts, and the plaintext never left the adapter', async () => {
    const keyId = await newKey();
    const blob = await encrypt(keyId, 'old ciphertext', { app: 'a' });
    await kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId }));
    await kms.send(new RotateKeyOnDemandCommand({ KeyId: keyId }));
    const hsm = service.kms.running.hsm;
    const reencrypt = vi.spyOn(hsm, 'reencrypt');
    const decrypt = vi.spyOn(hsm, 'decrypt');
    try {
      const moved = await kms.send(
        new ReEncryptCommand({
          CiphertextBlob: blob,
          SourceEncryptionContext: { app: 'a' },
          DestinationKeyId: keyId,
          DestinationEncryptionContext: { app: 'b' },
        }),
      );
      expect(moved).toMatchObject({ SourceKeyId: arn(keyId), KeyId: arn(keyId) });
      expect(versionOf(moved.CiphertextBlob)).toBe(2);
      expect(reencrypt).toHaveBeenCalledTimes(1);
      expect(decrypt).not.toHaveBeenCalled();
      expect(await decryptText(moved.CiphertextBlob as Uint8Array, { app: 'b' })).toBe('old ciphertext');
      const wrongContext = await failure(kms.send(new DecryptCommand({ CiphertextBlob: moved.CiphertextBlob })));
      expect(wrongContext).toBeInstanceOf(InvalidCiphertextException);
    } finally {
      reencrypt.mockRestore();
      decrypt.mockRestore();
    }
  });

  it('when the source context is wrong, then ReEncrypt is InvalidCiphertextException', async () => {
    const keyId = await newKey();
    const blob = await encrypt(keyId, 'bound', { app: 'a' });
    const err = await failure(
      kms.send(
        new ReEncryptCommand({ CiphertextBlob: blob, SourceEncryptionContext: { app: 'x' }, DestinationKeyId: keyId }),
      ),
    );
    expect(err).toBeInstanceOf(InvalidCiphertextException);
  });
});

describe('keys in a custom key store', () => {
  let wrapped: string;
  let tokenObjects: string;

  async function connectedStore(name: string, connection: TenantConnection): Promise<string> {
    const made = await kms.send(
      new CreateCustomKeyStoreCommand({
        CustomKeyStoreName: name,
        CloudHsmClusterId: connection.id,
        TrustAnchorCertificate: '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n',
        KeyStorePassword: connection.pin,
      }),
    );
    const id = made.CustomKeyStoreId as string;
    await kms.send(new ConnectCustomKeyStoreCommand({ CustomKeyStoreId: id }));
    for (let i = 0; i < 200; i++) {
      const out = await kms.send(new DescribeCustomKeyStoresCommand({ CustomKeyStoreId: id }));
      const state = out.CustomKeyStores?.[0]?.ConnectionState;
      if (state === 'CONNECTED') return id;
      if (state !== 'CONNECTING') throw new Error(`store ${name} is ${state}`);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    throw new Error(`store ${name} stayed CONNECTING`);
  }

  beforeAll(async () => {
    wrapped = await connectedStore('rotation-wrapped', service.softhsmWrapped);
    tokenObjects = await connectedStore('rotation-objects', service.softhsm);
  });

  it('when a store key is to be rotated or its rotation changed, then UnsupportedOperationException, for both kinds of store', async () => {
    for (const storeId of [wrapped, tokenObjects]) {
      const keyId = await newKey({ CustomKeyStoreId: storeId });
      for (const [command, operation] of [
        [new EnableKeyRotationCommand({ KeyId: keyId }), 'EnableKeyRotation'],
        [new DisableKeyRotationCommand({ KeyId: keyId }), 'DisableKeyRotation'],
        [new RotateKeyOnDemandCommand({ KeyId: keyId }), 'RotateKeyOnDemand'],
      ] as const) {
        const err = await failure(kms.send(command as EnableKeyRotationCommand));
        expect(err).toBeInstanceOf(UnsupportedOperationException);
        expect(err.message).toBe(
          `${arn(keyId)} is in custom key store ${storeId}: ${operation} is not supported for keys in a custom key store.`,
        );
      }
      expect((await raw('GetKeyRotationStatus', { KeyId: keyId })).body).toEqual({
        KeyRotationEnabled: false,
        KeyId: arn(keyId),
      });
      expect(await kms.send(new ListKeyRotationsCommand({ KeyId: keyId }))).toMatchObject({ Rotations: [] });
      expect(versionOf(await encrypt(keyId, 'still version 0'))).toBe(0);
    }
  });

  it('when a wrapped store key was rotated through the core (as Alibaba does), then ListKeyRotations shows it and old blobs still decrypt', async () => {
    const keyId = await newKey({ CustomKeyStoreId: wrapped });
    const old = await encrypt(keyId, 'before');
    await service.kms.running.services.keys.rotate(P, { kind: 'id', id: keyId }, 'ON_DEMAND');
    expect((await kms.send(new ListKeyRotationsCommand({ KeyId: keyId }))).Rotations).toHaveLength(1);
    expect(versionOf(await encrypt(keyId, 'after'))).toBe(1);
    expect(await decryptText(old)).toBe('before');
  });

  it('when ReEncrypt moves a blob between two keys of one store, then the store HSM re-encrypts it; across HSMs the core decrypts and encrypts', async () => {
    const { calls } = service;
    const id = service.softhsmWrapped.id;
    const [first, second] = [await newKey({ CustomKeyStoreId: wrapped }), await newKey({ CustomKeyStoreId: wrapped })];
    const blob = await encrypt(first, 'between store keys');
    const [reencrypts, decrypts] = [callCount(calls, id, 'reencrypt'), callCount(calls, id, 'decrypt')];
    const moved = await kms.send(new ReEncryptCommand({ CiphertextBlob: blob, DestinationKeyId: second }));
    expect(callCount(calls, id, 'reencrypt')).toBe(reencrypts + 1);
    expect(callCount(calls, id, 'decrypt')).toBe(decrypts);
    expect(await decryptText(moved.CiphertextBlob as Uint8Array)).toBe('between store keys');

    const outside = await newKey();
    const out = await kms.send(
      new ReEncryptCommand({ CiphertextBlob: moved.CiphertextBlob, DestinationKeyId: outside }),
    );
    expect(callCount(calls, id, 'reencrypt')).toBe(reencrypts + 1);
    expect(callCount(calls, id, 'decrypt')).toBe(decrypts + 2);
    expect(out.KeyId).toBe(arn(outside));
    expect(await decryptText(out.CiphertextBlob as Uint8Array)).toBe('between store keys');
  });
});
