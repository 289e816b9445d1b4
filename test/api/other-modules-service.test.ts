import path from 'node:path';
import {
  DecryptCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  InvalidCiphertextException,
  KMSClient,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { type AnyTestToken, createTestToken, removeTestToken } from '../support/softhsm.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';
import { withRecomputedChecksum } from '../unit/blob-test-kit.js';

/**
 * The whole service on the modules beside SoftHSM: NSS softokn, a second PKCS#11 implementation, and SoftHSM behind
 * the CloudHSM-rules shim (the module writes every GCM IV, no derivation, RFC 5649 under CloudHSM's vendor number,
 * 16 KB per GCM call, CKA_MODIFIABLE at its default). For each: the Huawei and AWS round trips, a tampered blob
 * refused in each dialect's own words (each module reports a bad tag with its own code), and a restart on the same
 * token, database and data directory. Then src/main.ts as its own process on each, and refusing to start on a
 * module without AES-GCM.
 */

const P = 'projectmodules';
const REGION = 'eu-west-1';
const MODULES = [
  { provider: 'nss', profile: 'nss' },
  { provider: 'cloudhsm-shim', profile: 'cloudhsm' },
] as const;

function awsClient(service: TestService, credentials: { accessKeyId: string; secretAccessKey: string }): KMSClient {
  return new KMSClient({ endpoint: service.url, region: REGION, credentials, maxAttempts: 1 });
}

/** The blob with one ciphertext byte flipped and its SHA-256 tail recomputed: only the GCM tag check can catch it. */
function tampered(blob: Buffer): Buffer {
  const copy = Buffer.from(blob);
  // Header (4) + payload format (1) + IV (12): the first ciphertext byte.
  copy[17] = (copy[17] as number) ^ 0x01;
  return withRecomputedChecksum(copy);
}

describe.each(MODULES)('the service on $provider', ({ provider, profile }) => {
  let kms: TestService;
  let credentials: { accessKeyId: string; secretAccessKey: string };
  /** Blobs made before the restart, with what they must decrypt to after it. */
  const made: {
    keyId?: string;
    datakey?: { cipher_text: string; plain_text: string };
    data?: { cipher_text: string; plain_text: string };
    aws?: { blob: Uint8Array; plaintext: Buffer };
  } = {};

  beforeAll(async () => {
    kms = await startTestService({ KMS_REGION: REGION }, { provider });
    credentials = await kms.running.credentials.create(P);
  });
  afterAll(async () => {
    await kms?.destroy();
  });

  it('when it starts, then the profile of the module was chosen from what the module says it is', () => {
    expect(kms.running.hsm.profile.name).toBe(profile);
  });

  it('when a key is created, then Huawei data keys and data round-trip through it', async () => {
    const keyId = await createKey(kms, P, `on-${provider}`);
    made.keyId = keyId;

    const created = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256' });
    expect(created.status).toBe(200);
    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: created.body.cipher_text,
      datakey_cipher_length: '32',
    });
    expect(opened.status).toBe(200);
    expect(opened.body.data_key).toBe(created.body.plain_text);
    made.datakey = { cipher_text: created.body.cipher_text, plain_text: created.body.plain_text };

    const sealed = await kms.call(P, 'encrypt-data', {
      key_id: keyId,
      plain_text: 'kept in the module',
      encryption_context: { a: 'b' },
    });
    expect(sealed.status).toBe(200);
    const unsealed = await kms.call(P, 'decrypt-data', {
      cipher_text: sealed.body.cipher_text,
      encryption_context: { a: 'b' },
    });
    expect(unsealed.status).toBe(200);
    expect(unsealed.body.plain_text).toBe('kept in the module');
    made.data = { cipher_text: sealed.body.cipher_text, plain_text: 'kept in the module' };
  });

  it('when the AWS SDK generates a data key and encrypts, then Decrypt gives both plaintexts back', async () => {
    const aws = awsClient(kms, credentials);
    try {
      const dataKey = await aws.send(new GenerateDataKeyCommand({ KeyId: made.keyId, KeySpec: 'AES_256' }));
      expect(dataKey.Plaintext).toHaveLength(32);
      const back = await aws.send(new DecryptCommand({ CiphertextBlob: dataKey.CiphertextBlob }));
      expect(Buffer.from(back.Plaintext as Uint8Array).equals(Buffer.from(dataKey.Plaintext as Uint8Array))).toBe(true);

      const plaintext = Buffer.from('aws on nss');
      const sealed = await aws.send(new EncryptCommand({ KeyId: made.keyId, Plaintext: plaintext }));
      const opened = await aws.send(new DecryptCommand({ CiphertextBlob: sealed.CiphertextBlob }));
      expect(Buffer.from(opened.Plaintext as Uint8Array).equals(plaintext)).toBe(true);
      made.aws = { blob: sealed.CiphertextBlob as Uint8Array, plaintext };
    } finally {
      aws.destroy();
    }
  });

  it('when a blob fails the GCM tag check in the module, then each dialect answers its invalid-ciphertext error and nothing is logged', async () => {
    const datakeyBlob = tampered(Buffer.from(made.datakey?.cipher_text as string, 'hex'));
    const res = await kms.call(P, 'decrypt-datakey', {
      key_id: made.keyId,
      cipher_text: datakeyBlob.toString('hex'),
      datakey_cipher_length: '32',
    });
    expect([res.status, res.body]).toEqual([400, huaweiErrorBody('KMS.2201', 'Invalid cipher_text.')]);

    const dataBlob = tampered(Buffer.from(made.data?.cipher_text as string, 'base64'));
    const res2 = await kms.call(P, 'decrypt-data', {
      cipher_text: dataBlob.toString('base64'),
      encryption_context: { a: 'b' },
    });
    expect([res2.status, res2.body]).toEqual([400, huaweiErrorBody('KMS.2201', 'Invalid cipher_text.')]);

    const aws = awsClient(kms, credentials);
    try {
      const err = await aws
        .send(new DecryptCommand({ CiphertextBlob: tampered(Buffer.from(made.aws?.blob as Uint8Array)) }))
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(InvalidCiphertextException);
      expect((err as InvalidCiphertextException).$metadata.httpStatusCode).toBe(400);
    } finally {
      aws.destroy();
    }
    // An HSM error would be logged at error level (and answered 500): a bad tag is the caller's fault, not ours.
    expect(kms.log()).toBe('');
  });

  it('when the service restarts on the same token and data directory, then every blob made before decrypts', async () => {
    await kms.stop();
    kms = await kms.restart();

    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: made.keyId,
      cipher_text: made.datakey?.cipher_text,
      datakey_cipher_length: '32',
    });
    expect(opened.body.data_key).toBe(made.datakey?.plain_text);
    const unsealed = await kms.call(P, 'decrypt-data', {
      cipher_text: made.data?.cipher_text,
      encryption_context: { a: 'b' },
    });
    expect(unsealed.body.plain_text).toBe(made.data?.plain_text);
    const aws = awsClient(kms, credentials);
    try {
      const back = await aws.send(new DecryptCommand({ CiphertextBlob: made.aws?.blob }));
      expect(Buffer.from(back.Plaintext as Uint8Array).equals(made.aws?.plaintext as Buffer)).toBe(true);
    } finally {
      aws.destroy();
    }
  });
});

describe.each(MODULES)('src/main.ts as its own process on $provider', ({ provider }) => {
  let token: AnyTestToken;
  let child: ChildService | undefined;

  beforeAll(() => {
    token = createTestToken(provider);
  });
  afterAll(async () => {
    if (child) await stopService(child);
    removeTestToken(token.dir);
  });

  it('when given the library (and its parameters), the token label, PIN, data dir and port, then it starts and serves', async () => {
    const dataDir = path.join(token.dir, 'data');
    const port = await freePort();
    // serviceEnv: KMS_PKCS11_LIBRARY, KMS_TOKEN_LABEL, KMS_PIN, and KMS_PKCS11_INIT_PARAMS (NSS) or the shim's target.
    child = await spawnService({ ...token.serviceEnv, KMS_DATA_DIR: dataDir, KMS_PORT: String(port) });
    expect(child.url).toBe(`http://127.0.0.1:${port}`);
    const authToken = await signProjectToken(loadOrCreateIssuerKeys(dataDir), P, 3600);
    const res = await fetch(`${child.url}/v1.0/${P}/kms/gen-random`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-auth-token': authToken },
      body: JSON.stringify({ random_data_length: '256' }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { random_data: string }).random_data).toMatch(/^[0-9A-F]{64}$/);
    // The parameters name paths: the log does not repeat them, nor the PIN.
    expect(child.log()).not.toContain(token.dir);
    expect(child.log()).not.toContain(token.pin);
  });
});

describe('a module that cannot serve', () => {
  let token: AnyTestToken;

  beforeAll(() => {
    token = createTestToken('cloudhsm-shim');
  });
  afterAll(() => {
    removeTestToken(token.dir);
  });

  it('when the module has no AES-GCM, then the service refuses to start, exits non-zero and names the capability', async () => {
    const port = await freePort();
    const env = { ...token.serviceEnv, KMS_DATA_DIR: path.join(token.dir, 'data'), KMS_PORT: String(port) };
    const failure = await spawnService({ ...env, HSM_KMS_SHIM_HIDE: '0x1087' }).then(
      (child) => stopService(child).then(() => 'it started'),
      (err: unknown) => (err as Error).message,
    );
    expect(failure).toMatch(/^service exited with [1-9]\d* before listening/);
    expect(failure).toContain('cannot do AES-GCM (CKM_AES_GCM, IV mode module-writes-piv)');
    expect(failure).toContain('CKR_MECHANISM_INVALID');
    expect(failure).not.toContain(token.pin);
    // Nothing was made on the token or in the database before the refusal: the same module without the flaw starts.
    const child = await spawnService(env);
    await stopService(child);
  });
});
