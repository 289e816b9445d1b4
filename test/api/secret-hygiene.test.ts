import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DecryptCommand, EncryptCommand, KMSClient } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { $Kms, alibabaClient } from '../support/alibaba-sdk.js';
import { auditRecords } from '../support/audit-files.js';
import { signedAwsRequest } from '../support/aws-request.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';
import { signedXksRequest, xksKeyPath } from '../support/xks-request.js';

/**
 * Secret hygiene (issue 13 item 8): a run with debug logging, a PIN and plaintexts that are canaries, requests in
 * every dialect (some of them failing), then every log line, every error body and the audit files are searched for
 * the canaries, as given and in the encodings the dialects carry them in.
 */
const REGION = 'eu-west-1';
const P = 'hygieneproject';
const CANARY_TEXT = 'canary-plaintext-Zq7Xw9';
const CANARY_BYTES = Buffer.from('canary-bytes-Kp4Vn2-0123456789', 'utf8');

let kms: TestService;
const logLines: string[] = [];
const errorBodies: string[] = [];
/** Every secret the run handled: the PIN, the plaintexts, the data keys drawn, the credentials. */
const canaries = new Set<string>();

/** A secret and the forms it travels in: as given, base64, base64url and hex (either case). */
function addCanary(secret: Buffer | string): void {
  const bytes = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  for (const form of [
    bytes.toString('utf8'),
    bytes.toString('base64'),
    bytes.toString('base64url'),
    bytes.toString('hex'),
    bytes.toString('hex').toUpperCase(),
  ]) {
    // Short forms would match by chance; every canary here is long.
    if (form.length >= 16) canaries.add(form.replace(/=+$/, ''));
  }
}

function leaksIn(where: string, text: string): string[] {
  // The text around the leak says where it came from.
  return [...canaries]
    .filter((canary) => text.includes(canary))
    .map((canary) => `${where}: ${text.slice(Math.max(0, text.indexOf(canary) - 120), text.indexOf(canary) + 40)}`);
}

beforeAll(async () => {
  kms = await startTestService(
    { KMS_REGION: REGION, KMS_LOG_LEVEL: 'debug' },
    { onLog: (line) => logLines.push(line) },
  );
}, 120_000);

afterAll(async () => {
  await kms?.destroy();
});

describe('secret hygiene', () => {
  it('when every dialect handles canary secrets, failing or not, then no log line, error body or audit record holds one', async () => {
    const pin = kms.env.KMS_PIN as string;
    expect(pin.length).toBeGreaterThanOrEqual(16);
    addCanary(pin);
    addCanary(CANARY_TEXT);
    addCanary(CANARY_BYTES);
    const credentials = await kms.running.credentials.create(P);
    const xksCredentials = await kms.running.credentials.create(P, 'xks');
    addCanary(credentials.secretAccessKey);
    addCanary(xksCredentials.secretAccessKey);
    const token = await kms.tokenFor(P);
    addCanary(token);
    const keyId = await createKey(kms, P, 'hygiene');
    const otherKey = await createKey(kms, P, 'hygiene-other');
    const failed = (status: number, text: string) => {
      if (status >= 400) errorBodies.push(text);
    };

    // Huawei: plaintexts in, a data key out; a wrong key, a bad ciphertext, an unknown key with a plaintext.
    const sealed = await kms.call(P, 'encrypt-data', { key_id: keyId, plain_text: CANARY_TEXT });
    expect(sealed.status).toBe(200);
    const dataKey = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256' });
    addCanary(Buffer.from(dataKey.body.plain_text, 'hex'));
    for (const [action, body] of [
      ['decrypt-data', { key_id: otherKey, cipher_text: sealed.body.cipher_text }],
      ['decrypt-data', { cipher_text: `${sealed.body.cipher_text.slice(0, -8)}AAAAAAAA` }],
      ['encrypt-data', { key_id: '7c1f2a5e-0000-4000-8000-000000000000', plain_text: CANARY_TEXT }],
      ['encrypt-data', { key_id: keyId, plain_text: CANARY_TEXT.repeat(200) }],
      ['encrypt-datakey', { key_id: keyId, plain_text: CANARY_BYTES.toString('hex'), datakey_plain_length: '7' }],
    ] as const) {
      const res = await kms.call(P, action, body);
      expect(res.status, `${action} ${JSON.stringify(res.body)}`).toBeGreaterThanOrEqual(400);
      failed(res.status, JSON.stringify(res.body));
    }
    const badJson = await kms.call(P, 'encrypt-data', undefined, { rawBody: `{"plain_text":"${CANARY_TEXT}"` });
    failed(badJson.status, JSON.stringify(badJson.body));

    // AWS: the SDK base64-encodes the plaintext; a bad signature, an oversized plaintext, a tampered ciphertext.
    const aws = new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
    const awsSealed = await aws.send(new EncryptCommand({ KeyId: keyId, Plaintext: CANARY_BYTES }));
    const awsBlob = Buffer.from(awsSealed.CiphertextBlob as Uint8Array);
    awsBlob[awsBlob.length - 1] = (awsBlob[awsBlob.length - 1] as number) ^ 1;
    for (const [creds, body] of [
      [
        { ...credentials, secretAccessKey: `${credentials.secretAccessKey.slice(0, -4)}AAAA` },
        { KeyId: keyId, Plaintext: CANARY_BYTES.toString('base64') },
      ],
      [credentials, { KeyId: keyId, Plaintext: Buffer.alloc(5000, CANARY_TEXT).toString('base64') }],
      [credentials, { KeyId: 'alias/none', Plaintext: CANARY_BYTES.toString('base64') }],
      [credentials, { KeyId: keyId, Plaintext: CANARY_BYTES.toString('base64'), Unexpected: CANARY_TEXT }],
    ] as const) {
      const res = await signedAwsRequest(kms.url, creds, REGION, {
        headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Encrypt' },
        body: JSON.stringify(body),
      });
      expect(res.status).toBeGreaterThanOrEqual(400);
      failed(res.status, JSON.stringify(res.body));
    }
    const awsRefused = await aws.send(new DecryptCommand({ CiphertextBlob: awsBlob })).catch((err: Error) => err);
    expect(awsRefused).toMatchObject({ name: 'InvalidCiphertextException' });
    errorBodies.push(JSON.stringify(awsRefused));

    // Alibaba: a text plaintext; a tampered ciphertext, an unknown key.
    const alibaba = alibabaClient(kms.url, credentials);
    const aliSealed = await alibaba.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: CANARY_TEXT }));
    const aliBlob = Buffer.from(aliSealed.ciphertextBlob, 'base64');
    aliBlob[aliBlob.length - 1] = (aliBlob[aliBlob.length - 1] as number) ^ 1;
    for (const attempt of [
      alibaba.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: aliBlob.toString('base64') })),
      alibaba.encrypt(new $Kms.EncryptRequest({ keyId: 'alias/none', plaintext: CANARY_TEXT })),
      alibabaClient(kms.url, { ...credentials, secretAccessKey: 'wrong-secret-0000000000' }).encrypt(
        new $Kms.EncryptRequest({ keyId, plaintext: CANARY_TEXT }),
      ),
    ]) {
      const err = await attempt.then(
        () => undefined,
        (e: { data?: unknown; message?: string }) => e,
      );
      expect(err).toBeDefined();
      errorBodies.push(JSON.stringify(err?.data ?? {}), err?.message ?? '');
    }

    // XKS: AWS KMS's plaintext in base64; a tampered tag.
    const xksSealed = await signedXksRequest(kms.url, xksCredentials, REGION, xksKeyPath(P, keyId, 'encrypt'), {
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::1:role/a', kmsOperation: 'Encrypt', kmsRequestId: 'h-1' },
      plaintext: CANARY_BYTES.toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(xksSealed.status).toBe(200);
    const xksRefused = await signedXksRequest(kms.url, xksCredentials, REGION, xksKeyPath(P, keyId, 'decrypt'), {
      requestMetadata: { awsPrincipalArn: 'arn:aws:iam::1:role/a', kmsOperation: 'Decrypt', kmsRequestId: 'h-2' },
      encryptionAlgorithm: 'AES_GCM',
      ciphertext: xksSealed.body.ciphertext,
      initializationVector: xksSealed.body.initializationVector,
      authenticationTag: Buffer.alloc(16).toString('base64'),
      ciphertextMetadata: xksSealed.body.ciphertextMetadata,
    });
    expect(xksRefused.status).toBe(400);
    failed(xksRefused.status, JSON.stringify(xksRefused.body));

    // The run did go through every dialect, and was logged and audited.
    const records = auditRecords(kms.dataDir);
    expect(new Set(records.map((r) => r.dialect))).toEqual(new Set(['huawei', 'aws', 'alibaba', 'xks']));
    expect(records.filter((r) => r.outcome === 'error').length).toBeGreaterThanOrEqual(12);
    expect(logLines.length).toBeGreaterThan(0);
    expect(errorBodies.length).toBeGreaterThanOrEqual(12);

    const auditDir = path.join(kms.dataDir, 'audit');
    const leaks = [
      ...logLines.flatMap((line) => leaksIn('log', line)),
      ...errorBodies.flatMap((body) => leaksIn('error body', body)),
      ...readdirSync(auditDir).flatMap((name) =>
        leaksIn(`audit ${name}`, readFileSync(path.join(auditDir, name), 'utf8')),
      ),
    ];
    expect(leaks).toEqual([]);
  }, 60_000);
});
