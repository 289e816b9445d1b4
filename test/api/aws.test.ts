import {
  AlreadyExistsException,
  CancelKeyDeletionCommand,
  CreateAliasCommand,
  CreateKeyCommand,
  type CreateKeyCommandInput,
  DecryptCommand,
  DeleteAliasCommand,
  DescribeKeyCommand,
  DisabledException,
  DisableKeyCommand,
  EnableKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  GenerateRandomCommand,
  IncorrectKeyException,
  InvalidAliasNameException,
  InvalidCiphertextException,
  KMSClient,
  KMSInvalidStateException,
  KMSServiceException,
  LimitExceededException,
  ListAliasesCommand,
  ListKeysCommand,
  ListResourceTagsCommand,
  NotFoundException,
  ReEncryptCommand,
  ScheduleKeyDeletionCommand,
  TagException,
  TagResourceCommand,
  UnsupportedOperationException,
  UntagResourceCommand,
  UpdateAliasCommand,
  UpdateKeyDescriptionCommand,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedAwsRequest } from '../support/aws-request.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

const REGION = 'eu-west-1';
const A = 'awsprojecta';
const B = 'awsprojectb';
let kms: TestService;
let a: KMSClient;
let b: KMSClient;
let credentialsA: { accessKeyId: string; secretAccessKey: string };

function client(credentials: { accessKeyId: string; secretAccessKey: string }): KMSClient {
  return new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
}

/** The error a command fails with (the test fails if it succeeds). */
async function failure(promise: Promise<unknown>): Promise<Error & { $metadata?: { httpStatusCode?: number } }> {
  try {
    await promise;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the command to fail');
}

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION });
  credentialsA = await kms.running.credentials.create(A);
  a = client(credentialsA);
  b = client(await kms.running.credentials.create(B));
});
afterAll(async () => {
  a.destroy();
  b.destroy();
  await kms.destroy();
});

describe('AWS KMS through @aws-sdk/client-kms', () => {
  it('when GenerateRandom asks for 1 to 1024 bytes, then that many random bytes come back', async () => {
    for (const n of [1, 32, 1024]) {
      const out = await a.send(new GenerateRandomCommand({ NumberOfBytes: n }));
      expect(out.Plaintext).toHaveLength(n);
    }
    const x = await a.send(new GenerateRandomCommand({ NumberOfBytes: 32 }));
    const y = await a.send(new GenerateRandomCommand({ NumberOfBytes: 32 }));
    expect(Buffer.from(x.Plaintext as Uint8Array).equals(Buffer.from(y.Plaintext as Uint8Array))).toBe(false);
  });

  it.each([
    [
      0,
      "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1",
    ],
    [
      1025,
      "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy constraint: Member must have value less than or equal to 1024",
    ],
    [
      undefined,
      "1 validation error detected: Value null at 'numberOfBytes' failed to satisfy constraint: Member must not be null",
    ],
  ])('when GenerateRandom asks for %s bytes, then a ValidationException says so in AWS words', async (n, message) => {
    const err = await failure(a.send(new GenerateRandomCommand({ NumberOfBytes: n })));
    expect(err.name).toBe('ValidationException');
    expect(err.message).toBe(message);
    expect(err.$metadata?.httpStatusCode).toBe(400);
  });

  it('when a key is created, then DescribeKey by id or ARN returns its metadata', async () => {
    const created = await a.send(new CreateKeyCommand({ Description: 'for the SDK' }));
    const meta = created.KeyMetadata;
    expect(meta?.Arn).toBe(`arn:aws:kms:${REGION}:${A}:key/${meta?.KeyId}`);
    expect(meta).toMatchObject({
      AWSAccountId: A,
      Enabled: true,
      KeyState: 'Enabled',
      KeyUsage: 'ENCRYPT_DECRYPT',
      KeySpec: 'SYMMETRIC_DEFAULT',
      Description: 'for the SDK',
      Origin: 'AWS_KMS',
    });
    expect(meta?.CreationDate).toBeInstanceOf(Date);
    for (const keyId of [meta?.KeyId, meta?.Arn]) {
      const described = await a.send(new DescribeKeyCommand({ KeyId: keyId }));
      expect(described.KeyMetadata?.KeyId).toBe(meta?.KeyId);
    }
    const second = await a.send(new CreateKeyCommand({}));
    expect(second.KeyMetadata?.KeyId).not.toBe(meta?.KeyId);
  });

  it('when a key does not exist or belongs to another project, then NotFoundException names it by ARN, as AWS does', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const missing = '0d0466b0-e727-4d9c-b35d-f84bb474a37f';
    for (const [c, id, message] of [
      [a, missing, `Key 'arn:aws:kms:${REGION}:${A}:key/${missing}' does not exist`],
      [a, 'alias/never', `Alias arn:aws:kms:${REGION}:${A}:alias/never is not found.`],
      [a, 'not a key', "Invalid keyId 'not a key'"],
      [b, keyId, `Key 'arn:aws:kms:${REGION}:${B}:key/${keyId}' does not exist`],
      [b, `arn:aws:kms:${REGION}:${A}:key/${keyId}`, `Key 'arn:aws:kms:${REGION}:${A}:key/${keyId}' does not exist`],
    ] as const) {
      const err = await failure(c.send(new DescribeKeyCommand({ KeyId: id })));
      expect(err, id).toBeInstanceOf(NotFoundException);
      expect(err.message, id).toBe(message);
    }
  });

  it('when a missing key or alias is used by any operation, then the NotFoundException names it the same way', async () => {
    const missing = '0d0466b0-e727-4d9c-b35d-f84bb474a37f';
    const keyMessage = `Key 'arn:aws:kms:${REGION}:${A}:key/${missing}' does not exist`;
    const aliasMessage = `Alias arn:aws:kms:${REGION}:${A}:alias/nowhere is not found.`;
    for (const [command, message] of [
      [new EncryptCommand({ KeyId: missing, Plaintext: Buffer.from('x') }), keyMessage],
      [new GenerateDataKeyCommand({ KeyId: missing, KeySpec: 'AES_256' }), keyMessage],
      [new DisableKeyCommand({ KeyId: missing }), keyMessage],
      [new ScheduleKeyDeletionCommand({ KeyId: missing }), keyMessage],
      [new CreateAliasCommand({ AliasName: 'alias/to-nothing', TargetKeyId: missing }), keyMessage],
      [new EncryptCommand({ KeyId: 'alias/nowhere', Plaintext: Buffer.from('x') }), aliasMessage],
      [new DeleteAliasCommand({ AliasName: 'alias/nowhere' }), aliasMessage],
    ] as const) {
      // biome-ignore lint/suspicious/noExplicitAny: one loop over commands of different input types
      const err = await failure(a.send(command as any));
      expect(err, command.constructor.name).toBeInstanceOf(NotFoundException);
      expect(err.message, command.constructor.name).toBe(message);
    }
  });

  it('when keys are listed with a limit, then the pages cover every key once', async () => {
    const client3 = client(await kms.running.credentials.create('awslisting'));
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await client3.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string);
    const seen: string[] = [];
    let marker: string | undefined;
    do {
      const page = await client3.send(new ListKeysCommand({ Limit: 2, Marker: marker }));
      seen.push(...(page.Keys ?? []).map((k) => k.KeyId as string));
      marker = page.Truncated ? page.NextMarker : undefined;
    } while (marker);
    expect(seen).toEqual(ids);
    client3.destroy();
  });

  it('when a key is disabled, then data keys are refused with DisabledException until it is enabled again', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    await a.send(new DisableKeyCommand({ KeyId: keyId }));
    await a.send(new DisableKeyCommand({ KeyId: keyId }));
    const err = await failure(a.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256' })));
    expect(err).toBeInstanceOf(DisabledException);
    await a.send(new EnableKeyCommand({ KeyId: keyId }));
    await a.send(new EnableKeyCommand({ KeyId: keyId }));
    expect((await a.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256' }))).Plaintext).toHaveLength(32);
  });

  it('when deletion is scheduled, then the key is unusable, and cancelling leaves it disabled', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const tooShort = await failure(a.send(new ScheduleKeyDeletionCommand({ KeyId: keyId, PendingWindowInDays: 6 })));
    expect(tooShort.name).toBe('ValidationException');
    const scheduled = await a.send(new ScheduleKeyDeletionCommand({ KeyId: keyId }));
    expect(scheduled).toMatchObject({ KeyState: 'PendingDeletion', PendingWindowInDays: 30 });
    const inDays = ((scheduled.DeletionDate as Date).getTime() - Date.now()) / 86_400_000;
    expect(inDays).toBeGreaterThan(29.9);
    const refused = await failure(a.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x') })));
    expect(refused).toBeInstanceOf(KMSInvalidStateException);
    const again = await failure(a.send(new ScheduleKeyDeletionCommand({ KeyId: keyId })));
    expect(again).toBeInstanceOf(KMSInvalidStateException);
    await a.send(new CancelKeyDeletionCommand({ KeyId: keyId }));
    expect((await a.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.KeyState).toBe('Disabled');
    const notPending = await failure(a.send(new CancelKeyDeletionCommand({ KeyId: keyId })));
    expect(notPending).toBeInstanceOf(KMSInvalidStateException);
  });

  it('when a key is tagged and untagged, then ListResourceTags shows the tags, page by page', async () => {
    const keyId = (await a.send(new CreateKeyCommand({ Tags: [{ TagKey: 'team', TagValue: 'payments' }] }))).KeyMetadata
      ?.KeyId as string;
    await a.send(
      new TagResourceCommand({
        KeyId: keyId,
        Tags: [
          { TagKey: 'env', TagValue: 'prod' },
          { TagKey: 'team', TagValue: 'billing' },
        ],
      }),
    );
    const first = await a.send(new ListResourceTagsCommand({ KeyId: keyId, Limit: 1 }));
    expect(first).toMatchObject({ Tags: [{ TagKey: 'env', TagValue: 'prod' }], Truncated: true });
    const rest = await a.send(new ListResourceTagsCommand({ KeyId: keyId, Marker: first.NextMarker }));
    expect(rest).toMatchObject({ Tags: [{ TagKey: 'team', TagValue: 'billing' }], Truncated: false });
    await a.send(new UntagResourceCommand({ KeyId: keyId, TagKeys: ['env'] }));
    expect((await a.send(new ListResourceTagsCommand({ KeyId: keyId }))).Tags).toEqual([
      { TagKey: 'team', TagValue: 'billing' },
    ]);
    const reserved = await failure(
      a.send(new TagResourceCommand({ KeyId: keyId, Tags: [{ TagKey: 'aws:owner', TagValue: 'x' }] })),
    );
    expect(reserved).toBeInstanceOf(TagException);
    const many = Array.from({ length: 50 }, (_, i) => ({ TagKey: `k${i}`, TagValue: 'v' }));
    const tooMany = await failure(a.send(new TagResourceCommand({ KeyId: keyId, Tags: many })));
    expect(tooMany).toBeInstanceOf(LimitExceededException);
    const foreign = await failure(b.send(new ListResourceTagsCommand({ KeyId: keyId })));
    expect(foreign).toBeInstanceOf(NotFoundException);
  });

  it('when the description is updated, then DescribeKey shows it', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    await a.send(new UpdateKeyDescriptionCommand({ KeyId: keyId, Description: 'renamed' }));
    expect((await a.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.Description).toBe('renamed');
  });

  it('when a data key is generated, then Decrypt without a KeyId returns it, and only under the same context', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const context = { tenant: 'acme' };
    const made = await a.send(
      new GenerateDataKeyCommand({ KeyId: keyId, NumberOfBytes: 64, EncryptionContext: context }),
    );
    expect(made.KeyId).toBe(`arn:aws:kms:${REGION}:${A}:key/${keyId}`);
    const opened = await a.send(
      new DecryptCommand({ CiphertextBlob: made.CiphertextBlob, EncryptionContext: context }),
    );
    expect(Buffer.from(opened.Plaintext as Uint8Array)).toEqual(Buffer.from(made.Plaintext as Uint8Array));
    expect(opened.KeyId).toBe(made.KeyId);
    const wrongContext = await failure(a.send(new DecryptCommand({ CiphertextBlob: made.CiphertextBlob })));
    expect(wrongContext).toBeInstanceOf(InvalidCiphertextException);
    const otherKey = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const wrongKey = await failure(
      a.send(new DecryptCommand({ CiphertextBlob: made.CiphertextBlob, EncryptionContext: context, KeyId: otherKey })),
    );
    expect(wrongKey).toBeInstanceOf(IncorrectKeyException);
    const tampered = Buffer.from(made.CiphertextBlob as Uint8Array);
    tampered[20] = (tampered[20] as number) ^ 1;
    const bad = await failure(a.send(new DecryptCommand({ CiphertextBlob: tampered, EncryptionContext: context })));
    expect(bad).toBeInstanceOf(InvalidCiphertextException);
    const blind = await a.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: keyId, KeySpec: 'AES_128' }));
    expect(blind).not.toHaveProperty('Plaintext');
    expect((await a.send(new DecryptCommand({ CiphertextBlob: blind.CiphertextBlob }))).Plaintext).toHaveLength(16);
  });

  it('when GenerateDataKey gets neither or both of NumberOfBytes and KeySpec, then ValidationException', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    for (const input of [{}, { NumberOfBytes: 32, KeySpec: 'AES_256' as const }, { NumberOfBytes: 1025 }]) {
      const err = await failure(a.send(new GenerateDataKeyCommand({ KeyId: keyId, ...input })));
      expect(err.name).toBe('ValidationException');
    }
  });

  it('when data is encrypted and re-encrypted under another key, then it decrypts to the same bytes', async () => {
    const first = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const second = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const plaintext = Buffer.alloc(4096, 7);
    const sealed = await a.send(new EncryptCommand({ KeyId: first, Plaintext: plaintext }));
    expect(sealed.EncryptionAlgorithm).toBe('SYMMETRIC_DEFAULT');
    const moved = await a.send(
      new ReEncryptCommand({
        CiphertextBlob: sealed.CiphertextBlob,
        DestinationKeyId: second,
        DestinationEncryptionContext: { moved: 'yes' },
      }),
    );
    expect(moved.SourceKeyId).toContain(first);
    expect(moved.KeyId).toContain(second);
    const opened = await a.send(
      new DecryptCommand({ CiphertextBlob: moved.CiphertextBlob, EncryptionContext: { moved: 'yes' } }),
    );
    expect(Buffer.from(opened.Plaintext as Uint8Array)).toEqual(plaintext);
    const tooBig = await failure(a.send(new EncryptCommand({ KeyId: first, Plaintext: Buffer.alloc(4097) })));
    expect(tooBig.name).toBe('ValidationException');
  });
});

describe('CreateKey validates as AWS does: ValidationException first, then UnsupportedOperationException', () => {
  const ENUMS = {
    keyUsage: '[SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]',
    customerMasterKeySpec:
      '[RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, SYMMETRIC_DEFAULT, HMAC_224, HMAC_256, HMAC_384, HMAC_512, SM2]',
    keySpec:
      '[RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, SYMMETRIC_DEFAULT, HMAC_224, HMAC_256, HMAC_384, HMAC_512, SM2, ECC_NIST_EDWARDS25519, ML_DSA_44, ML_DSA_65, ML_DSA_87]',
    origin: '[AWS_KMS, EXTERNAL, AWS_CLOUDHSM, EXTERNAL_KEY_STORE]',
  };
  const enumMessage = (value: string, member: keyof typeof ENUMS) =>
    `1 validation error detected: Value '${value}' at '${member}' failed to satisfy constraint: Member must satisfy enum value set: ${ENUMS[member]}`;
  let c: KMSClient;
  beforeAll(async () => {
    c = client(await kms.running.credentials.create('awscreatekey'));
  });
  afterAll(() => c.destroy());
  const keyCount = async () => (await c.send(new ListKeysCommand({}))).Keys?.length ?? 0;

  /** Sends a CreateKey that must fail, and checks that it created no key. */
  async function refused(input: Record<string, unknown>) {
    const before = await keyCount();
    const err = await failure(c.send(new CreateKeyCommand(input as CreateKeyCommandInput)));
    expect(await keyCount(), JSON.stringify(input)).toBe(before);
    expect(err.$metadata?.httpStatusCode).toBe(400);
    return err;
  }

  it("when KeyUsage is SIGN_VERIFY with no key spec, then ValidationException in AWS's words", async () => {
    for (const KeyUsage of ['SIGN_VERIFY', 'GENERATE_VERIFY_MAC']) {
      const err = await refused({ KeyUsage });
      expect(err).toBeInstanceOf(KMSServiceException);
      expect([err.name, err.message]).toEqual([
        'ValidationException',
        `The operation failed because the KeyUsage value of the CMK is ${KeyUsage}. To perform this operation, the KeyUsage value must be ENCRYPT_DECRYPT.`,
      ]);
    }
  });

  it('when KeySpec and CustomerMasterKeySpec are both given, then ValidationException, and no key is created', async () => {
    for (const spec of ['SYMMETRIC_DEFAULT', 'RSA_2048']) {
      const err = await refused({ KeySpec: spec, CustomerMasterKeySpec: spec });
      expect([err.name, err.message]).toEqual([
        'ValidationException',
        'You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.',
      ]);
    }
  });

  it.each([
    [{ KeyUsage: 'ENCRYPT' }, enumMessage('ENCRYPT', 'keyUsage')],
    [{ KeySpec: 'AES_256' }, enumMessage('AES_256', 'keySpec')],
    [{ CustomerMasterKeySpec: 'ML_DSA_44' }, enumMessage('ML_DSA_44', 'customerMasterKeySpec')],
    [{ Origin: 'HSM' }, enumMessage('HSM', 'origin')],
    // Invalid beats unoffered: the enum error comes first, whatever else the request asks for.
    [{ KeySpec: 'RSA_2048', KeyUsage: 'SIGNING' }, enumMessage('SIGNING', 'keyUsage')],
    [{ Policy: '{}', CustomKeyStoreId: 'cks-1', Origin: 'HSM' }, enumMessage('HSM', 'origin')],
    [
      { Origin: 'EXTERNAL', KeySpec: 'RSA_2048', CustomerMasterKeySpec: 'RSA_2048' },
      'You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated.',
    ],
  ])('when CreateKey gets %j, then ValidationException: %s', async (input, message) => {
    const err = await refused(input);
    expect([err.name, err.message]).toEqual(['ValidationException', message]);
  });

  it.each([
    [{ KeySpec: 'RSA_2048', KeyUsage: 'SIGN_VERIFY' }, 'KeySpec RSA_2048 is not offered by this service.'],
    [
      { CustomerMasterKeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' },
      'KeySpec ECC_NIST_P256 is not offered by this service.',
    ],
    [{ KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }, 'KeySpec HMAC_256 is not offered by this service.'],
    [{ Origin: 'EXTERNAL' }, 'Origin EXTERNAL is not offered by this service.'],
    [{ MultiRegion: true }, 'Multi-Region keys are not offered.'],
  ])(
    'when CreateKey asks for %j, valid but not offered, then UnsupportedOperationException',
    async (input, message) => {
      const err = await refused(input);
      expect(err).toBeInstanceOf(UnsupportedOperationException);
      expect(err.message).toBe(message);
    },
  );

  it('when CreateKey names the symmetric default by either member, then the key is created', async () => {
    for (const input of [
      { KeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'ENCRYPT_DECRYPT', Origin: 'AWS_KMS' },
      { CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT' },
    ] as const) {
      const before = await keyCount();
      const meta = (await c.send(new CreateKeyCommand(input))).KeyMetadata;
      expect(meta).toMatchObject({ KeySpec: 'SYMMETRIC_DEFAULT', KeyUsage: 'ENCRYPT_DECRYPT' });
      expect(await keyCount()).toBe(before + 1);
    }
  });
});

describe('aliases', () => {
  it('when aliases are created, moved and deleted, then ListAliases and KeyId look-ups follow', async () => {
    const k1 = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    const k2 = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    await a.send(new CreateAliasCommand({ AliasName: 'alias/app/primary', TargetKeyId: k1 }));
    await a.send(new CreateAliasCommand({ AliasName: 'alias/app/secondary', TargetKeyId: k1 }));
    const ofK1 = await a.send(new ListAliasesCommand({ KeyId: k1 }));
    expect(ofK1.Aliases?.map((x) => x.AliasName)).toEqual(['alias/app/primary', 'alias/app/secondary']);
    expect(ofK1.Aliases?.[0]).toMatchObject({
      AliasArn: `arn:aws:kms:${REGION}:${A}:alias/app/primary`,
      TargetKeyId: k1,
    });
    expect(ofK1.Aliases?.[0]?.CreationDate).toBeInstanceOf(Date);

    const dup = await failure(a.send(new CreateAliasCommand({ AliasName: 'alias/app/primary', TargetKeyId: k2 })));
    expect(dup).toBeInstanceOf(AlreadyExistsException);
    for (const bad of ['app/no-prefix', 'alias/aws/reserved', 'alias/white space']) {
      const err = await failure(a.send(new CreateAliasCommand({ AliasName: bad, TargetKeyId: k2 })));
      expect(err).toBeInstanceOf(InvalidAliasNameException);
    }

    await a.send(new UpdateAliasCommand({ AliasName: 'alias/app/primary', TargetKeyId: k2 }));
    const described = await a.send(new DescribeKeyCommand({ KeyId: 'alias/app/primary' }));
    expect(described.KeyMetadata?.KeyId).toBe(k2);
    const sealed = await a.send(new EncryptCommand({ KeyId: 'alias/app/secondary', Plaintext: Buffer.from('hi') }));
    expect(sealed.KeyId).toContain(k1);

    await a.send(new DeleteAliasCommand({ AliasName: 'alias/app/secondary' }));
    const gone = await failure(a.send(new DescribeKeyCommand({ KeyId: 'alias/app/secondary' })));
    expect(gone).toBeInstanceOf(NotFoundException);
    const again = await failure(a.send(new DeleteAliasCommand({ AliasName: 'alias/app/secondary' })));
    expect(again).toBeInstanceOf(NotFoundException);
    const missing = await failure(a.send(new UpdateAliasCommand({ AliasName: 'alias/app/none', TargetKeyId: k1 })));
    expect(missing).toBeInstanceOf(NotFoundException);
    const foreign = await failure(b.send(new CreateAliasCommand({ AliasName: 'alias/steal', TargetKeyId: k1 })));
    expect(foreign).toBeInstanceOf(NotFoundException);
  });

  it('when an AWS alias is created for a key, then the Huawei dialect sees it as key_alias, and the other way round', async () => {
    const keyId = (await a.send(new CreateKeyCommand({}))).KeyMetadata?.KeyId as string;
    expect((await kms.call(A, 'describe-key', { key_id: keyId })).body.key_info.key_alias).toBe('');
    await a.send(new CreateAliasCommand({ AliasName: 'alias/from-aws', TargetKeyId: keyId }));
    const viaHuawei = await kms.call(A, 'describe-key', { key_id: 'alias/from-aws' });
    expect(viaHuawei.body.key_info).toMatchObject({ key_id: keyId, key_alias: 'from-aws' });
    const clash = await kms.call(A, 'create-key', { key_alias: 'from-aws' });
    expect(clash.body.error.error_code).toBe('KMS.1104');

    await kms.call(A, 'update-key-alias', { key_id: keyId, key_alias: 'renamed-in-huawei' });
    const listed = await a.send(new ListAliasesCommand({ KeyId: keyId }));
    expect(listed.Aliases?.map((x) => x.AliasName)).toEqual(['alias/renamed-in-huawei']);
    await a.send(new DeleteAliasCommand({ AliasName: 'alias/renamed-in-huawei' }));
    expect((await kms.call(A, 'describe-key', { key_id: keyId })).body.key_info.key_alias).toBe('');
  });
});

describe('one key, every dialect', () => {
  it('when Huawei create-datakey makes a DEK, then AWS Decrypt returns the same bytes, and the other way round', async () => {
    const keyId = await createKey(kms, A, 'shared-orders');
    const context = { table: 'orders' };
    const huawei = await kms.call(A, 'create-datakey', { key_id: keyId, encryption_context: context });
    const opened = await a.send(
      new DecryptCommand({ CiphertextBlob: Buffer.from(huawei.body.cipher_text, 'hex'), EncryptionContext: context }),
    );
    expect(
      Buffer.from(opened.Plaintext as Uint8Array)
        .toString('hex')
        .toUpperCase(),
    ).toBe(huawei.body.plain_text);

    const aws = await a.send(
      new GenerateDataKeyCommand({ KeyId: 'alias/shared-orders', KeySpec: 'AES_256', EncryptionContext: context }),
    );
    const back = await kms.call(A, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: Buffer.from(aws.CiphertextBlob as Uint8Array).toString('hex'),
      datakey_cipher_length: '32',
      encryption_context: context,
    });
    expect(back.body.data_key).toBe(
      Buffer.from(aws.Plaintext as Uint8Array)
        .toString('hex')
        .toUpperCase(),
    );
    const described = await a.send(new DescribeKeyCommand({ KeyId: `arn:aws:kms:${REGION}:${A}:alias/shared-orders` }));
    expect(described.KeyMetadata?.KeyId).toBe(keyId);
  });
});

describe('SigV4 and the protocol', () => {
  /** Signs a raw request as the SDK would, so that the body and headers can be anything. */
  const signedFetch = (headers: Record<string, string>, body: string) =>
    signedAwsRequest(kms.url, credentialsA, REGION, { headers, body });

  it('when the secret is wrong, then InvalidSignatureException', async () => {
    const wrong = client({ ...credentialsA, secretAccessKey: `${credentialsA.secretAccessKey.slice(0, -1)}A` });
    const err = await failure(wrong.send(new GenerateRandomCommand({ NumberOfBytes: 8 })));
    expect(err.name).toBe('InvalidSignatureException');
    wrong.destroy();
  });

  it('when the access key is unknown, then UnrecognizedClientException', async () => {
    const stranger = client({ accessKeyId: 'AKIAAAAAAAAAAAAAAAAA', secretAccessKey: credentialsA.secretAccessKey });
    const err = await failure(stranger.send(new GenerateRandomCommand({ NumberOfBytes: 8 })));
    expect(err.name).toBe('UnrecognizedClientException');
    stranger.destroy();
  });

  it('when a request is not signed, then MissingAuthenticationTokenException', async () => {
    const res = await fetch(`${kms.url}/`, {
      method: 'POST',
      headers: { 'x-amz-target': 'TrentService.GenerateRandom', 'content-type': 'application/x-amz-json-1.1' },
      body: '{"NumberOfBytes":8}',
    });
    expect(res.status).toBe(400);
    expect(res.headers.get('x-amzn-errortype')).toBe('MissingAuthenticationTokenException');
    expect(res.headers.get('x-amzn-requestid')).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('when the target is unknown, the JSON is bad or the content type is wrong, then AWS protocol errors, never a 500', async () => {
    const json = { 'content-type': 'application/x-amz-json-1.1' };
    const unknown = await signedFetch({ ...json, 'x-amz-target': 'TrentService.NoSuchThing' }, '{}');
    expect([unknown.status, unknown.type]).toEqual([400, 'UnknownOperationException']);
    const badJson = await signedFetch({ ...json, 'x-amz-target': 'TrentService.GenerateRandom' }, '{"NumberOf');
    expect([badJson.status, badJson.type]).toEqual([400, 'SerializationException']);
    const wrongType = await signedFetch(
      { 'content-type': 'text/plain', 'x-amz-target': 'TrentService.GenerateRandom' },
      '{"NumberOfBytes":8}',
    );
    expect([wrongType.status, wrongType.type]).toEqual([400, 'UnknownOperationException']);
    const ok = await signedFetch({ ...json, 'x-amz-target': 'TrentService.GenerateRandom' }, '{"NumberOfBytes":8}');
    expect(ok.status).toBe(200);
  });

  it('when an access key is revoked, then its next request is refused', async () => {
    const creds = await kms.running.credentials.create(A);
    const c = client(creds);
    await c.send(new GenerateRandomCommand({ NumberOfBytes: 8 }));
    expect(await kms.running.credentials.revoke(creds.accessKeyId)).toBe(true);
    const err = await failure(c.send(new GenerateRandomCommand({ NumberOfBytes: 8 })));
    expect(err.name).toBe('UnrecognizedClientException');
    c.destroy();
  });
});
