import {
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  GenerateRandomCommand,
  KMSClient,
  ListKeysCommand,
  ReEncryptCommand,
  TagResourceCommand,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKey, startTestService, type TestService } from '../support/test-service.js';

/**
 * Every documented request member of each offered AWS operation is honoured or refused with an AWS error, never
 * parsed and ignored; a member no operation documents is refused too.
 */
const REGION = 'eu-west-1';
const P = 'awsmembers';
let kms: TestService;
let aws: KMSClient;
let keyId: string;

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION });
  aws = new KMSClient({
    endpoint: kms.url,
    region: REGION,
    credentials: await kms.running.credentials.create(P),
    maxAttempts: 1,
  });
  keyId = await createKey(kms, P, 'aws-members');
});
afterAll(async () => {
  aws.destroy();
  await kms.destroy();
});

interface AwsFailure {
  readonly name: string;
  readonly message: string;
  readonly $metadata: { readonly httpStatusCode?: number };
}

async function failure(promise: Promise<unknown>): Promise<AwsFailure> {
  try {
    await promise;
  } catch (err) {
    return err as AwsFailure;
  }
  throw new Error('expected the command to fail');
}

async function expectFailure(promise: Promise<unknown>, name: string, message: string, status = 400) {
  const err = await failure(promise);
  expect({ name: err.name, message: err.message, status: err.$metadata.httpStatusCode }).toEqual({
    name,
    message,
    status,
  });
}

interface BuiltRequest {
  request: { body: Uint8Array | string; headers: Record<string, string> };
}

/** The command with members added to its JSON body before the SDK signs it: what a newer or older SDK might send. */
function withMembers<C extends { middlewareStack: { add: (...args: never[]) => void } }>(
  command: C,
  extra: Record<string, unknown>,
): C {
  const add = command.middlewareStack.add as unknown as (
    mw: (next: (args: BuiltRequest) => unknown) => (args: BuiltRequest) => unknown,
    options: { step: 'build' },
  ) => void;
  add(
    (next) => (args) => {
      const body = JSON.stringify({ ...JSON.parse(Buffer.from(args.request.body).toString('utf8')), ...extra });
      args.request.body = body;
      args.request.headers['content-length'] = String(Buffer.byteLength(body));
      return next(args);
    },
    { step: 'build' },
  );
  return command;
}

const DRY_RUN = [
  'DryRunOperationException',
  'The request would have succeeded, but the DryRun option is set.',
  412,
] as const;

describe('DryRun', () => {
  it('when Encrypt, Decrypt, ReEncrypt and both GenerateDataKeys are dry runs, then each answers DryRunOperationException (412)', async () => {
    const sealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('dry') }));
    const blob = sealed.CiphertextBlob as Uint8Array;
    const commands = [
      new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('dry'), DryRun: true }),
      new DecryptCommand({ CiphertextBlob: blob, DryRun: true }),
      new ReEncryptCommand({ CiphertextBlob: blob, DestinationKeyId: keyId, DryRun: true }),
      new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256', DryRun: true }),
      new GenerateDataKeyWithoutPlaintextCommand({ KeyId: keyId, KeySpec: 'AES_256', DryRun: true }),
    ];
    for (const command of commands) await expectFailure(aws.send(command as never), ...DRY_RUN);
  });

  it('when DryRun is false, then the operation runs as without it', async () => {
    const sealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('wet'), DryRun: false }));
    const opened = await aws.send(new DecryptCommand({ CiphertextBlob: sealed.CiphertextBlob, DryRun: false }));
    expect(Buffer.from(opened.Plaintext as Uint8Array).toString()).toBe('wet');
  });

  it('when a dry run would fail, then it fails as the real request would: a wrong context, a disabled key', async () => {
    const sealed = await aws.send(
      new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('x'), EncryptionContext: { a: 'b' } }),
    );
    const err = await failure(aws.send(new DecryptCommand({ CiphertextBlob: sealed.CiphertextBlob, DryRun: true })));
    expect(err.name).toBe('InvalidCiphertextException');
    const disabled = await createKey(kms, P, 'aws-members-disabled');
    await aws.send(new DisableKeyCommand({ KeyId: disabled }));
    const refused = await failure(
      aws.send(new GenerateDataKeyCommand({ KeyId: disabled, NumberOfBytes: 16, DryRun: true })),
    );
    expect(refused.name).toBe('DisabledException');
  });

  it('when DryRunModifiers is given, then Decrypt and ReEncrypt answer UnsupportedOperationException', async () => {
    const blob = (await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('m') }))).CiphertextBlob;
    const message = 'DryRunModifiers is not supported: a dry run here always checks the ciphertext.';
    await expectFailure(
      aws.send(new DecryptCommand({ CiphertextBlob: blob, DryRun: true, DryRunModifiers: ['IGNORE_CIPHERTEXT'] })),
      'UnsupportedOperationException',
      message,
    );
    await expectFailure(
      aws.send(new ReEncryptCommand({ CiphertextBlob: blob, DestinationKeyId: keyId, DryRunModifiers: [] })),
      'UnsupportedOperationException',
      message,
    );
  });
});

describe('Recipient, GrantTokens and the CreateKey members of absent features', () => {
  it('when Recipient is given, then GenerateRandom, GenerateDataKey and Decrypt answer UnsupportedOperationException', async () => {
    const Recipient = {
      KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256' as const,
      AttestationDocument: Buffer.from('doc'),
    };
    const blob = (await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('r') }))).CiphertextBlob;
    const message = 'Recipient is not supported: this service does not serve AWS Nitro Enclaves.';
    for (const command of [
      new GenerateRandomCommand({ NumberOfBytes: 8, Recipient }),
      new GenerateDataKeyCommand({ KeyId: keyId, NumberOfBytes: 8, Recipient }),
      new DecryptCommand({ CiphertextBlob: blob, Recipient }),
    ]) {
      await expectFailure(aws.send(command as never), 'UnsupportedOperationException', message);
    }
  });

  it('when GrantTokens are given, then they are accepted and change nothing (there are no grants)', async () => {
    const GrantTokens = ['token-1', 'token-2'];
    const described = await aws.send(new DescribeKeyCommand({ KeyId: keyId, GrantTokens }));
    expect(described.KeyMetadata?.KeyId).toBe(keyId);
    const sealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('g'), GrantTokens }));
    const opened = await aws.send(new DecryptCommand({ CiphertextBlob: sealed.CiphertextBlob, GrantTokens }));
    expect(Buffer.from(opened.Plaintext as Uint8Array).toString()).toBe('g');
  });

  it('when CreateKey names a policy, an unknown custom key store or an external key, then it is refused and no key is made', async () => {
    const before = (await aws.send(new ListKeysCommand({}))).Keys?.length;
    await expectFailure(
      aws.send(new CreateKeyCommand({ Policy: '{"Version":"2012-10-17","Statement":[]}' })),
      'UnsupportedOperationException',
      "Key policies are not offered: access to a key is by its project's access keys.",
    );
    await expectFailure(
      aws.send(new CreateKeyCommand({ BypassPolicyLockoutSafetyCheck: true })),
      'UnsupportedOperationException',
      "Key policies are not offered: access to a key is by its project's access keys.",
    );
    await expectFailure(
      aws.send(new CreateKeyCommand({ CustomKeyStoreId: 'cks-1234567890abcdef0', Origin: 'AWS_CLOUDHSM' })),
      'CustomKeyStoreNotFoundException',
      'Custom key store cks-1234567890abcdef0 does not exist.',
    );
    await expectFailure(
      aws.send(new CreateKeyCommand({ XksKeyId: 'external-1' })),
      'UnsupportedOperationException',
      'External key stores (XksKeyId) are not offered.',
    );
    expect((await aws.send(new ListKeysCommand({}))).Keys?.length).toBe(before);
    const made = await aws.send(new CreateKeyCommand({ BypassPolicyLockoutSafetyCheck: false }));
    expect(made.KeyMetadata?.KeyState).toBe('Enabled');
  });
});

describe('members no operation documents', () => {
  it.each([
    ['GenerateRandom', () => new GenerateRandomCommand({ NumberOfBytes: 8 })],
    ['Encrypt', () => new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('u') })],
    ['GenerateDataKey', () => new GenerateDataKeyCommand({ KeyId: keyId, NumberOfBytes: 8 })],
    ['DescribeKey', () => new DescribeKeyCommand({ KeyId: keyId })],
    ['ListKeys', () => new ListKeysCommand({})],
  ])('when %s carries an unknown member, then ValidationException names it', async (_name, command) => {
    await expectFailure(
      aws.send(withMembers(command(), { AdditionalAuthenticatedData: 'x' }) as never),
      'ValidationException',
      "Unknown member 'AdditionalAuthenticatedData': this service refuses members it does not understand.",
    );
  });

  it('when a tag carries an unknown member, then ValidationException says where', async () => {
    const command = withMembers(new TagResourceCommand({ KeyId: keyId, Tags: [] }), {
      Tags: [{ TagKey: 'a', TagValue: 'b', Color: 'red' }],
    });
    await expectFailure(
      aws.send(command as never),
      'ValidationException',
      "Unknown member 'Color' in Tags.0: this service refuses members it does not understand.",
    );
  });
});
