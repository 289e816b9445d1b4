import { execFile, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NewCredential } from '../../src/core/credential.service.js';
import type { Hsm } from '../../src/core/ports.js';
import { XKS_HEALTH_MAX_AGE_MS, XksService } from '../../src/core/xks.service.js';
import { signedAwsRequest } from '../support/aws-request.js';
import { type KeyStoreTestService, startKeyStoreTestService } from '../support/key-stores.js';
import { rawRequest } from '../support/raw-http.js';
import { createKey } from '../support/test-service.js';

const REGION = 'eu-west-1';
const A = 'xksprojecta';
const B = 'xksprojectb';

let ks: KeyStoreTestService;
const logLines: string[] = [];
let credsA: NewCredential;
let credsB: NewCredential;
let keyA: string;
let keyB: string;

interface XksResponse {
  readonly status: number;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field in the tests
  readonly body: any;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
}

interface XksRequestOptions {
  readonly credentials?: NewCredential | null;
  readonly method?: string;
  readonly region?: string;
  readonly service?: string;
  readonly rawBody?: string;
}

/** A request signed as AWS KMS signs it for an external key store: SigV4, service kms-xks-proxy, the full path. */
async function xks(path: string, body: unknown, options: XksRequestOptions = {}): Promise<XksResponse> {
  const url = new URL(ks.kms.url);
  const method = options.method ?? 'POST';
  const payload = options.rawBody ?? (body === undefined ? '' : JSON.stringify(body));
  let headers: Record<string, string> = { host: url.host, 'content-type': 'application/json' };
  const credentials = options.credentials === undefined ? credsA : options.credentials;
  if (credentials !== null) {
    const signer = new SignatureV4({
      service: options.service ?? 'kms-xks-proxy',
      region: options.region ?? REGION,
      sha256: Sha256,
      credentials,
    });
    const signed = await signer.sign({
      method,
      protocol: 'http:',
      hostname: url.hostname,
      port: Number(url.port),
      path,
      headers,
      body: payload,
    });
    headers = signed.headers as Record<string, string>;
  }
  const res = await rawRequest(ks.kms.url, { method, path, headers, body: payload });
  return { status: res.status, body: res.text.length > 0 ? parseJson(res.text) : undefined, headers: res.headers };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

const keyPath = (projectId: string, keyId: string, operation: string) =>
  `/xks/${projectId}/kms/xks/v1/keys/${keyId}/${operation}`;
const healthPath = (projectId: string) => `/xks/${projectId}/kms/xks/v1/health`;

function metadataOf(operation = 'Encrypt') {
  return {
    awsPrincipalArn: 'arn:aws:iam::111122223333:role/app',
    kmsOperation: operation,
    kmsRequestId: `req-${randomBytes(6).toString('hex')}`,
    kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab',
  };
}

const b64 = (bytes: Buffer) => bytes.toString('base64');

async function encrypt(keyId: string, plaintext: Buffer, aad?: Buffer, extra: Record<string, unknown> = {}) {
  return xks(keyPath(A, keyId, 'encrypt'), {
    requestMetadata: metadataOf(),
    plaintext: b64(plaintext),
    encryptionAlgorithm: 'AES_GCM',
    ...(aad ? { additionalAuthenticatedData: b64(aad) } : {}),
    ...extra,
  });
}

interface Sealed {
  ciphertext: string;
  initializationVector: string;
  authenticationTag: string;
  ciphertextMetadata?: string;
  additionalAuthenticatedData?: string;
}

async function decrypt(keyId: string, sealed: Sealed, projectId = A, options: XksRequestOptions = {}) {
  return xks(
    keyPath(projectId, keyId, 'decrypt'),
    { requestMetadata: metadataOf('Decrypt'), encryptionAlgorithm: 'AES_GCM', ...sealed },
    options,
  );
}

function error(res: XksResponse) {
  return { status: res.status, errorName: res.body?.errorName };
}

/** The same bytes with one bit flipped. */
function flipped(base64: string, bit = 0): string {
  const bytes = Buffer.from(base64, 'base64');
  bytes[bit >> 3] = (bytes[bit >> 3] as number) ^ (1 << (bit & 7));
  return b64(bytes);
}

beforeAll(async () => {
  ks = await startKeyStoreTestService(
    { KMS_REGION: REGION, KMS_LOG_LEVEL: 'info' },
    { onLog: (line) => logLines.push(line) },
  );
  credsA = await ks.kms.running.credentials.create(A, 'xks');
  credsB = await ks.kms.running.credentials.create(B, 'xks');
  keyA = await createKey(ks.kms, A, 'xks-a');
  keyB = await createKey(ks.kms, B, 'xks-b');
}, 120_000);

afterAll(async () => {
  await ks?.destroy();
});

describe('XKS credentials', () => {
  it('when an XKS access key is created, then its id and secret have the shapes AWS requires for XKS', () => {
    expect(credsA.accessKeyId).toMatch(/^[A-Z2-7]{20,30}$/);
    expect(credsA.accessKeyId).toMatch(/^XKSA/);
    expect(credsA.secretAccessKey).toMatch(/^[A-Za-z0-9/+=]{43,64}$/);
    // The whole 32-byte MAC: 256 bits.
    expect(Buffer.from(credsA.secretAccessKey, 'base64')).toHaveLength(32);
  });

  it('when an XKS key signs an AWS KMS request, then it is refused, and an AWS key cannot sign for XKS', async () => {
    const aws = await signedAwsRequest(ks.kms.url, credsA, REGION, {
      headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.ListKeys' },
      body: '{}',
    });
    expect(aws).toMatchObject({ status: 400, type: 'UnrecognizedClientException' });

    const awsKey = await ks.kms.running.credentials.create(A);
    const res = await xks(healthPath(A), { requestMetadata: metadataOf('KmsHealthCheck') }, { credentials: awsKey });
    expect(error(res)).toEqual({ status: 401, errorName: 'AuthenticationFailedException' });
  });

  const curlSignsSigV4 = spawnSync('curl', ['--help', 'all'], { encoding: 'utf8' }).stdout?.includes('--aws-sigv4');
  it.skipIf(!curlSignsSigV4)(
    "when curl signs the request, as AWS's XKS test client does, then it is accepted, and with a wrong secret refused",
    async () => {
      const curl = (secret: string) =>
        promisify(execFile)('curl', [
          '-sS',
          '-X',
          'POST',
          `${ks.kms.url}${healthPath(A)}`,
          '--aws-sigv4',
          `aws:amz:${REGION}:kms-xks-proxy`,
          '--user',
          `${credsA.accessKeyId}:${secret}`,
          '-H',
          'Content-Type: application/json',
          '-d',
          JSON.stringify({ requestMetadata: { kmsRequestId: 'curl-1', kmsOperation: 'KmsHealthCheck' } }),
        ]);
      expect(JSON.parse((await curl(credsA.secretAccessKey)).stdout)).toMatchObject({ xksProxyVendor: 'hsm-kms' });
      expect(JSON.parse((await curl('x'.repeat(44))).stdout)).toMatchObject({
        errorName: 'AuthenticationFailedException',
      });
    },
  );

  it('when two XKS keys of the project are active, then both are accepted, and a revoked one is refused', async () => {
    const next = await ks.kms.running.credentials.create(A, 'xks');
    const body = { requestMetadata: metadataOf('KmsHealthCheck') };
    expect((await xks(healthPath(A), body, { credentials: credsA })).status).toBe(200);
    expect((await xks(healthPath(A), body, { credentials: next })).status).toBe(200);

    expect(await ks.kms.running.credentials.revoke(next.accessKeyId)).toBe(true);
    expect(error(await xks(healthPath(A), body, { credentials: next }))).toEqual({
      status: 401,
      errorName: 'AuthenticationFailedException',
    });
    expect((await xks(healthPath(A), body, { credentials: credsA })).status).toBe(200);
  });

  it("when another project's XKS key signs for this project's URI path, then it is refused", async () => {
    const res = await xks(keyPath(A, keyA, 'metadata'), { requestMetadata: metadataOf() }, { credentials: credsB });
    expect(error(res)).toEqual({ status: 401, errorName: 'AuthenticationFailedException' });
  });

  it.each([
    ['no signature', (): XksRequestOptions => ({ credentials: null })],
    ['a signature for another service', (): XksRequestOptions => ({ service: 'kms' })],
    ['a signature for another region', (): XksRequestOptions => ({ region: 'us-east-1' })],
    [
      'a wrong secret',
      (): XksRequestOptions => ({ credentials: { accessKeyId: credsA.accessKeyId, secretAccessKey: 'x'.repeat(44) } }),
    ],
    [
      'an unknown access key',
      (): XksRequestOptions => ({
        credentials: { accessKeyId: 'XKSAAAAAAAAAAAAAAAAA', secretAccessKey: 'x'.repeat(44) },
      }),
    ],
  ])('when a request has %s, then it is AuthenticationFailedException', async (_, options) => {
    const opts = options();
    const res = await xks(healthPath(A), { requestMetadata: metadataOf('KmsHealthCheck') }, opts);
    expect(error(res)).toEqual({ status: 401, errorName: 'AuthenticationFailedException' });
    expect(typeof res.body.errorMessage).toBe('string');
  });
});

describe('the XKS URIs', () => {
  it('when a load balancer asks GET /ping, then it gets 200 without any authentication', async () => {
    const res = await rawRequest(ks.kms.url, { method: 'GET', path: '/ping', headers: {} });
    expect(res).toMatchObject({ status: 200, text: 'pong' });
  });

  it.each([
    '/xks/',
    `/xks/${A}`,
    `/xks/${A}/kms/xks/v2/health`,
    `/xks/${A}/kms/xks/v1/keys/${'k'.repeat(3)}/sign`,
    `/xks/${A}/kms/xks/v1/keys/bad%20id/encrypt`,
    `/xks/${A}/kms/xks/v1/health/extra`,
    `/xks/bad.project/kms/xks/v1/health`,
  ])(
    'when %s is asked without any signature, then it is InvalidUriPathException, not an authentication error',
    async (path) => {
      const res = await xks(path, { requestMetadata: metadataOf() }, { credentials: null });
      expect(error(res)).toEqual({ status: 404, errorName: 'InvalidUriPathException' });
    },
  );

  it('when an API URI is asked with GET, then the answer is 405 before any authentication', async () => {
    const res = await xks(healthPath(A), undefined, { method: 'GET', credentials: null });
    expect(res.status).toBe(405);
    expect(res.headers.allow).toBe('POST');
    const signed = await xks(keyPath(A, keyA, 'metadata'), undefined, { method: 'GET' });
    expect(signed.status).toBe(405);
  });
});

describe('GetHealthStatus', () => {
  it('when asked, then it reports the fleet and an ACTIVE HSM, and accepts any kmsOperation', async () => {
    for (const operation of ['KmsHealthCheck', 'CreateCustomKeyStore', 'SomethingNew']) {
      const res = await xks(healthPath(A), { requestMetadata: { kmsRequestId: 'x', kmsOperation: operation } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({
        xksProxyFleetSize: 1,
        xksProxyVendor: 'hsm-kms',
        xksProxyModel: expect.any(String),
        ekmVendor: 'softhsm2',
        ekmFleetDetails: [{ id: expect.any(String), model: expect.any(String), healthStatus: 'ACTIVE' }],
      });
    }
  });

  it.each([
    ['an empty body', {}],
    ['empty requestMetadata', { requestMetadata: {} }],
    ['requestMetadata without kmsOperation', { requestMetadata: { kmsRequestId: 'x' } }],
    ['a body that is not an object', []],
  ])('when it gets %s, then it is ValidationException', async (_, body) => {
    expect(error(await xks(healthPath(A), body))).toEqual({ status: 400, errorName: 'ValidationException' });
  });

  it('when the body is not JSON, then it is ValidationException', async () => {
    expect(error(await xks(healthPath(A), undefined, { rawBody: '{"requestMetadata":' }))).toEqual({
      status: 400,
      errorName: 'ValidationException',
    });
  });

  it('when asked again within a minute, then the HSM round trip is not repeated; after, it is', async () => {
    const { running } = ks.kms;
    let now = 1_000_000;
    let seals = 0;
    let failing = false;
    const hsm = new Proxy(running.hsm as Hsm, {
      get(target, property, receiver) {
        const value = Reflect.get(target, property, receiver);
        if (property !== 'sealSecret') return typeof value === 'function' ? value.bind(target) : value;
        return (...args: Parameters<Hsm['sealSecret']>) => {
          seals++;
          if (failing) return Promise.reject(new Error('injected device failure'));
          return target.sealSecret(...args);
        };
      },
    });
    const service = new XksService(running.store, running.services.keys, hsm, { now: () => now });
    expect(await Promise.all([service.health(), service.health()])).toEqual(['ACTIVE', 'ACTIVE']);
    expect(seals).toBe(1);
    now += XKS_HEALTH_MAX_AGE_MS - 1;
    failing = true;
    expect(await service.health()).toBe('ACTIVE');
    expect(seals).toBe(1);
    now += 1;
    expect(await service.health()).toBe('UNAVAILABLE');
    expect(seals).toBe(2);
  });
});

describe('GetKeyMetadata', () => {
  it('when the key is enabled, then it is an ENABLED AES-256 key that encrypts and decrypts', async () => {
    const res = await xks(keyPath(A, keyA, 'metadata'), { requestMetadata: metadataOf('DescribeKey') });
    expect(res).toMatchObject({
      status: 200,
      body: { keySpec: 'AES_256', keyUsage: ['ENCRYPT', 'DECRYPT'], keyStatus: 'ENABLED' },
    });
  });

  it('when the key is unknown or of another project, then it is KeyNotFoundException', async () => {
    for (const keyId of [keyB, '00000000-0000-0000-0000-000000000000', 'not-a-key']) {
      const res = await xks(keyPath(A, keyId, 'metadata'), { requestMetadata: metadataOf('CreateKey') });
      expect(error(res)).toEqual({ status: 404, errorName: 'KeyNotFoundException' });
    }
  });

  it.each([
    ['no requestMetadata', {}],
    [
      'requestMetadata without awsPrincipalArn',
      { requestMetadata: { kmsRequestId: 'x', kmsOperation: 'DescribeKey' } },
    ],
  ])('when it gets %s, then it is ValidationException', async (_, body) => {
    expect(error(await xks(keyPath(A, keyA, 'metadata'), body))).toEqual({
      status: 400,
      errorName: 'ValidationException',
    });
  });
});

describe('Encrypt and Decrypt', () => {
  it('when a plaintext is encrypted with AAD, then the parts have the spec sizes and decrypt back', async () => {
    const plaintext = randomBytes(100);
    const aad = randomBytes(40);
    const res = await encrypt(keyA, plaintext, aad);
    expect(res.status).toBe(200);
    const { ciphertext, initializationVector, authenticationTag, ciphertextMetadata } = res.body;
    expect(Buffer.from(ciphertext, 'base64')).toHaveLength(100);
    expect(Buffer.from(initializationVector, 'base64')).toHaveLength(12);
    expect(Buffer.from(authenticationTag, 'base64')).toHaveLength(16);
    expect(Buffer.from(ciphertextMetadata, 'base64').length).toBeLessThanOrEqual(20);
    expect(res.body.ciphertextDataIntegrityValue).toBeUndefined();

    const opened = await decrypt(keyA, { ...res.body, additionalAuthenticatedData: b64(aad) });
    expect(opened).toMatchObject({ status: 200, body: { plaintext: b64(plaintext) } });
  });

  it('when the HSM is asked directly with the AAD built as the spec says, then it opens the ciphertext', async () => {
    const plaintext = randomBytes(64);
    const aad = randomBytes(300);
    const { body } = await encrypt(keyA, plaintext, aad);
    const metadata = Buffer.from(body.ciphertextMetadata, 'base64');
    // len16_be(AAD) ‖ AAD ‖ len8(ciphertextMetadata) ‖ ciphertextMetadata, built here independently.
    const hsmAad = Buffer.concat([
      Buffer.from([aad.length >> 8, aad.length & 0xff]),
      aad,
      Buffer.from([metadata.length]),
      metadata,
    ]);
    const { running } = ks.kms;
    const version = await running.store.findKeyVersion(keyA, 0);
    if (!version) throw new Error('no version 0');
    const opened = await running.hsm.decrypt(
      version,
      Buffer.from(body.initializationVector, 'base64'),
      Buffer.concat([Buffer.from(body.ciphertext, 'base64'), Buffer.from(body.authenticationTag, 'base64')]),
      hsmAad,
    );
    expect(opened.equals(plaintext)).toBe(true);
  });

  it.each([
    ['with AAD', randomBytes(33)],
    ['without AAD', undefined],
  ])(
    'when SHA_256 is asked %s, then the integrity value is SHA-256 over AAD, metadata, IV, ciphertext and tag',
    async (_, aad) => {
      const res = await encrypt(keyA, randomBytes(48), aad, { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
      expect(res.status).toBe(200);
      const part = (name: string) => Buffer.from(res.body[name], 'base64');
      const expected = createHash('sha256')
        .update(aad ?? Buffer.alloc(0))
        .update(part('ciphertextMetadata'))
        .update(part('initializationVector'))
        .update(part('ciphertext'))
        .update(part('authenticationTag'))
        .digest('base64');
      expect(res.body.ciphertextDataIntegrityValue).toBe(expected);
    },
  );

  it('when the plaintext is 4,300 bytes and the AAD 8,192 (or both 16 KiB), then they round-trip', async () => {
    for (const [plaintextLength, aadLength] of [
      [4300, 8192],
      [16_384, 16_384],
    ] as const) {
      const plaintext = randomBytes(plaintextLength);
      const aad = randomBytes(aadLength);
      const res = await encrypt(keyA, plaintext, aad, { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
      expect(res.status).toBe(200);
      const opened = await decrypt(keyA, { ...res.body, additionalAuthenticatedData: b64(aad) });
      expect(opened.body.plaintext).toBe(b64(plaintext));
    }
  });

  describe('when one bit of a part changes, then Decrypt is InvalidCiphertextException', async () => {
    const aad = randomBytes(20);
    let sealed: Sealed & { additionalAuthenticatedData: string };
    beforeAll(async () => {
      const res = await encrypt(keyA, randomBytes(32), aad);
      sealed = { ...res.body, additionalAuthenticatedData: b64(aad) };
      delete (sealed as { ciphertextDataIntegrityValue?: string }).ciphertextDataIntegrityValue;
    });

    it.each([
      'additionalAuthenticatedData',
      'ciphertextMetadata',
      'authenticationTag',
      'initializationVector',
      'ciphertext',
    ] as const)('%s', async (part) => {
      expect((await decrypt(keyA, sealed)).status).toBe(200);
      for (const bit of [0, 7, 13]) {
        const res = await decrypt(keyA, { ...sealed, [part]: flipped(sealed[part] as string, bit) });
        expect({ bit, ...error(res) }).toEqual({ bit, status: 400, errorName: 'InvalidCiphertextException' });
        expect(res.body.errorMessage).not.toContain(sealed.ciphertext);
      }
    });

    it('or the AAD or the metadata is left out, or the IV has 16 bytes', async () => {
      const { additionalAuthenticatedData: _, ...withoutAad } = sealed;
      const { ciphertextMetadata: __, ...withoutMetadata } = sealed;
      for (const variant of [
        withoutAad,
        withoutMetadata,
        { ...sealed, additionalAuthenticatedData: b64(randomBytes(20)) },
        { ...sealed, initializationVector: b64(randomBytes(16)) },
      ]) {
        expect(error(await decrypt(keyA, variant))).toEqual({ status: 400, errorName: 'InvalidCiphertextException' });
      }
    });

    it('or it is sent to another key of the project', async () => {
      const other = await createKey(ks.kms, A, 'xks-other');
      expect(error(await decrypt(other, sealed))).toEqual({ status: 400, errorName: 'InvalidCiphertextException' });
    });
  });

  it.each([
    ['no plaintext', { plaintext: undefined }, 400, 'ValidationException'],
    ['an empty plaintext', { plaintext: '' }, 400, 'ValidationException'],
    ['a plaintext that is not base64', { plaintext: 'not base64!' }, 400, 'ValidationException'],
    ['no requestMetadata', { requestMetadata: undefined }, 400, 'ValidationException'],
    ['another algorithm', { encryptionAlgorithm: 'AES_CBC' }, 501, 'UnsupportedOperationException'],
    [
      'another integrity algorithm',
      { ciphertextDataIntegrityValueAlgorithm: 'MD5' },
      501,
      'UnsupportedOperationException',
    ],
    ['a plaintext over 16 KiB', { plaintext: b64(Buffer.alloc(16_385)) }, 400, 'ValidationException'],
  ])('when Encrypt gets %s, then it is %3$i %4$s', async (_, change, status, errorName) => {
    const body = {
      requestMetadata: metadataOf(),
      plaintext: b64(randomBytes(8)),
      encryptionAlgorithm: 'AES_GCM',
      ...change,
    };
    expect(error(await xks(keyPath(A, keyA, 'encrypt'), body))).toEqual({ status, errorName });
  });

  it.each([
    ['a 15-byte tag', { authenticationTag: b64(Buffer.alloc(15)) }],
    ['an 11-byte IV', { initializationVector: b64(Buffer.alloc(11)) }],
    ['21 bytes of metadata', { ciphertextMetadata: b64(Buffer.alloc(21)) }],
    ['no ciphertext', { ciphertext: undefined }],
  ])('when Decrypt gets %s, then it is ValidationException', async (_, change) => {
    const { body } = await encrypt(keyA, randomBytes(8));
    expect(error(await decrypt(keyA, { ...body, ...change }))).toEqual({
      status: 400,
      errorName: 'ValidationException',
    });
  });

  it("when another project's key is named, then it is KeyNotFoundException", async () => {
    expect(error(await encrypt(keyB, randomBytes(8)))).toEqual({ status: 404, errorName: 'KeyNotFoundException' });
  });
});

describe('key states', () => {
  it('when the key is disabled, then metadata says DISABLED and Encrypt and Decrypt are InvalidStateException; enabled again, it works', async () => {
    const keyId = await createKey(ks.kms, A, 'xks-disabled');
    const { body: sealed } = await encrypt(keyId, randomBytes(8));
    const { keys } = ks.kms.running.services;
    await keys.disable(A, { kind: 'id', id: keyId });

    const metadata = await xks(keyPath(A, keyId, 'metadata'), { requestMetadata: metadataOf('DescribeKey') });
    expect(metadata.body.keyStatus).toBe('DISABLED');
    expect(error(await encrypt(keyId, randomBytes(8)))).toEqual({ status: 400, errorName: 'InvalidStateException' });
    expect(error(await decrypt(keyId, sealed))).toEqual({ status: 400, errorName: 'InvalidStateException' });

    await keys.enable(A, { kind: 'id', id: keyId });
    expect((await decrypt(keyId, sealed)).status).toBe(200);
  });

  it('when the key is pending deletion, then metadata says DISABLED and Encrypt is InvalidStateException', async () => {
    const keyId = await createKey(ks.kms, A, 'xks-deleting');
    await ks.kms.running.services.keys.scheduleDeletion(A, { kind: 'id', id: keyId }, 7);
    const metadata = await xks(keyPath(A, keyId, 'metadata'), { requestMetadata: metadataOf('DescribeKey') });
    expect(metadata.body.keyStatus).toBe('DISABLED');
    expect(error(await encrypt(keyId, randomBytes(8)))).toEqual({ status: 400, errorName: 'InvalidStateException' });
  });

  it('when the metadata names a version the key does not have, then Decrypt is InvalidCiphertextException', async () => {
    // Keys have only version 0 until rotation is offered.
    const { body } = await encrypt(keyA, randomBytes(8));
    const metadata = Buffer.from(body.ciphertextMetadata, 'base64');
    expect(metadata.readUInt32BE(1)).toBe(0);
    metadata.writeUInt32BE(1, 1);
    const res = await decrypt(keyA, { ...body, ciphertextMetadata: b64(metadata) });
    expect(error(res)).toEqual({ status: 400, errorName: 'InvalidCiphertextException' });
  });
});

describe('a key in a tenant key store', () => {
  it('when the key lives in a connected key store of the project, then it encrypts and decrypts there', async () => {
    const { keyStores, keys } = ks.kms.running.services;
    const pin = Buffer.from(ks.softhsm.pin, 'utf8');
    const store = await keyStores.create({
      projectId: A,
      name: 'xks-store',
      connectionId: ks.softhsm.id,
      trustAnchorCertificate: '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n',
      pin,
    });
    pin.fill(0);
    await keyStores.connect(A, store.id);
    await keyStores.settled();
    const key = await keys.create({ projectId: A, alias: 'xks-in-store', description: '', keyStoreId: store.id });
    const before = ks.calls.get(ks.softhsm.id)?.get('encrypt') ?? 0;

    const plaintext = randomBytes(24);
    const res = await encrypt(key.id, plaintext, undefined, { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
    expect(res.status).toBe(200);
    expect(ks.calls.get(ks.softhsm.id)?.get('encrypt')).toBe(before + 1);
    expect((await decrypt(key.id, res.body)).body.plaintext).toBe(b64(plaintext));

    await keyStores.disconnect(A, store.id);
    expect(error(await decrypt(key.id, res.body))).toEqual({ status: 400, errorName: 'InvalidStateException' });
  });
});

describe('the log', () => {
  it('when requests are served, then each logs its kmsRequestId, operation, key, outcome and duration, and no data', async () => {
    const plaintext = randomBytes(40);
    const aad = randomBytes(40);
    const requestMetadata = { ...metadataOf(), kmsRequestId: 'logged-request-id-1' };
    const res = await xks(keyPath(A, keyA, 'encrypt'), {
      requestMetadata,
      plaintext: b64(plaintext),
      additionalAuthenticatedData: b64(aad),
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(res.status).toBe(200);
    const refused = await decrypt(keyA, { ...res.body, additionalAuthenticatedData: b64(randomBytes(4)) });
    expect(refused.status).toBe(400);

    const entries = logLines.map((line) => JSON.parse(line)).filter((entry) => entry.msg === 'xks request');
    expect(entries.find((entry) => entry.kmsRequestId === 'logged-request-id-1')).toMatchObject({
      level: 'info',
      operation: 'encrypt',
      projectId: A,
      keyId: keyA,
      status: 200,
      outcome: 'ok',
      durationMs: expect.any(Number),
    });
    expect(entries.at(-1)).toMatchObject({ operation: 'decrypt', status: 400, outcome: 'InvalidCiphertextException' });
    const all = logLines.join('');
    for (const secret of [plaintext, aad, Buffer.from(res.body.ciphertext, 'base64')]) {
      expect(all).not.toContain(b64(secret));
      expect(all).not.toContain(secret.toString('hex'));
    }
    expect(all).not.toContain(credsA.secretAccessKey);
  });
});
