import { mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  DecryptCommand,
  DescribeKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  KMSClient,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recordHash } from '../../src/audit/audit-chain.js';
import { $Kms, alibabaClient } from '../support/alibaba-sdk.js';
import { type AuditRecordLine, auditFilesOf, auditRecords, kmsAuditVerify } from '../support/audit-files.js';
import { huaweiKmsClient } from '../support/huawei-sdk.js';
import { createKey, startTestService, type TestService } from '../support/test-service.js';
import { signedXksRequest, xksKeyPath } from '../support/xks-request.js';

const REGION = 'eu-west-1';
const P = 'auditproject';
let kms: TestService;
let keyId: string;
let credentials: { accessKeyId: string; secretAccessKey: string };
let xksCredentials: { accessKeyId: string; secretAccessKey: string };
const scratch = mkdtempSync(path.join(tmpdir(), 'hsm-kms-audit-'));

const aws = () => new KMSClient({ endpoint: kms.url, region: REGION, credentials, maxAttempts: 1 });
const alibaba = () => alibabaClient(kms.url, credentials);

/** The record of the request the service answered with this request id (the test fails unless exactly one). */
function recordOf(requestId: string | undefined | null, dataDir = kms.dataDir): AuditRecordLine {
  const found = auditRecords(dataDir).filter((record) => record.requestId === requestId);
  expect(found, `one record for request ${requestId}`).toHaveLength(1);
  return found[0] as AuditRecordLine;
}

function xksMetadata(kmsRequestId: string, operation = 'Encrypt') {
  return { awsPrincipalArn: 'arn:aws:iam::111122223333:role/app', kmsOperation: operation, kmsRequestId };
}

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION });
  credentials = await kms.running.credentials.create(P);
  xksCredentials = await kms.running.credentials.create(P, 'xks');
  keyId = await createKey(kms, P, 'audited');
}, 120_000);

afterAll(async () => {
  await kms?.destroy();
  rmSync(scratch, { recursive: true, force: true });
});

describe('the audit trail of each dialect', () => {
  it('when Huawei actions are called with a token, then each has a record with the caller, key, version and outcome', async () => {
    const made = await kms.call(P, 'create-datakey', { key_id: keyId, datakey_length: '256' });
    expect(made.status).toBe(200);
    expect(recordOf(made.headers.get('x-request-id'))).toMatchObject({
      dialect: 'huawei',
      caller: `token:local-user@${P}`,
      projectId: P,
      operation: 'create-datakey',
      keyId,
      keyVersion: 0,
      outcome: 'ok',
      status: 200,
      errorCode: null,
      source: '127.0.0.1',
    });
    const opened = await kms.call(P, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: made.body.cipher_text,
      datakey_cipher_length: '32',
    });
    expect(opened.status).toBe(200);
    expect(recordOf(opened.headers.get('x-request-id'))).toMatchObject({ operation: 'decrypt-datakey', keyId });

    const missing = '0d0466b0-e727-4d9c-b35d-f84bb474a37f';
    const refused = await kms.call(P, 'describe-key', { key_id: missing });
    expect(refused.status).toBe(404);
    expect(recordOf(refused.headers.get('x-request-id'))).toMatchObject({
      operation: 'describe-key',
      keyId: missing,
      outcome: 'error',
      status: 404,
      errorCode: refused.body.error.error_code,
      keyVersion: null,
    });
  });

  it('when a Huawei SDK signs with an access key, then the record names the access key, never a secret', async () => {
    const call = huaweiKmsClient(kms.url, { ...credentials, projectId: P });
    await call('describe-key', { key_id: keyId });
    const record = auditRecords(kms.dataDir).findLast((r) => r.operation === 'describe-key' && r.outcome === 'ok');
    expect(record).toMatchObject({ caller: `access-key:${credentials.accessKeyId}`, keyId, projectId: P });
    expect(readFileSync(auditFilesOf(kms.dataDir)[0] as string, 'utf8')).not.toContain(credentials.secretAccessKey);
  });

  it('when an AWS SDK encrypts and decrypts, then the records name the key the ciphertext was sealed under', async () => {
    const client = aws();
    const sealed = await client.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('audited text') }));
    expect(recordOf(sealed.$metadata.requestId)).toMatchObject({
      dialect: 'aws',
      caller: `access-key:${credentials.accessKeyId}`,
      projectId: P,
      operation: 'Encrypt',
      keyId,
      keyVersion: 0,
      outcome: 'ok',
    });
    // No KeyId: the key comes from the ciphertext, and so does the record's.
    const opened = await client.send(new DecryptCommand({ CiphertextBlob: sealed.CiphertextBlob }));
    expect(recordOf(opened.$metadata.requestId)).toMatchObject({ operation: 'Decrypt', keyId, keyVersion: 0 });
    const dataKey = await client.send(new GenerateDataKeyCommand({ KeyId: 'alias/audited', KeySpec: 'AES_256' }));
    expect(recordOf(dataKey.$metadata.requestId)).toMatchObject({ operation: 'GenerateDataKey', keyId, keyVersion: 0 });

    const refused = await client
      .send(new DescribeKeyCommand({ KeyId: 'alias/nothing-here' }))
      .catch((err: { name: string; $metadata: { requestId?: string } }) => err);
    expect(refused).toMatchObject({ name: 'NotFoundException' });
    expect(recordOf((refused as { $metadata: { requestId?: string } }).$metadata.requestId)).toMatchObject({
      operation: 'DescribeKey',
      keyId: 'alias/nothing-here',
      outcome: 'error',
      status: 400,
      errorCode: 'NotFoundException',
    });
  });

  it('when an Alibaba SDK encrypts and decrypts, then the records carry its RequestId and the key version', async () => {
    const client = alibaba();
    const sealed = await client.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: 'audited text' }));
    expect(recordOf(sealed.requestId)).toMatchObject({
      dialect: 'alibaba',
      caller: `access-key:${credentials.accessKeyId}`,
      projectId: P,
      operation: 'Encrypt',
      keyId,
      keyVersion: 0,
      outcome: 'ok',
    });
    const opened = await client.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob }));
    expect(recordOf(opened.requestId)).toMatchObject({ operation: 'Decrypt', keyId, keyVersion: 0 });

    const refused = await client
      .decrypt(new $Kms.DecryptRequest({ ciphertextBlob: Buffer.alloc(80, 7).toString('base64') }))
      .catch((err: { data?: { RequestId?: string; Code?: string } }) => err);
    const data = (refused as { data?: { RequestId?: string; Code?: string } }).data;
    expect(recordOf(data?.RequestId)).toMatchObject({
      operation: 'Decrypt',
      outcome: 'error',
      errorCode: data?.Code,
      keyId: null,
    });
  });

  it('when AWS KMS calls the XKS proxy, then the records carry its kmsRequestId and the XKS access key', async () => {
    const sealed = await signedXksRequest(kms.url, xksCredentials, REGION, xksKeyPath(P, keyId, 'encrypt'), {
      requestMetadata: xksMetadata('xks-audit-1'),
      plaintext: Buffer.from('xks text').toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(sealed.status).toBe(200);
    expect(recordOf('xks-audit-1')).toMatchObject({
      dialect: 'xks',
      caller: `xks-access-key:${xksCredentials.accessKeyId}`,
      projectId: P,
      operation: 'encrypt',
      keyId,
      keyVersion: 0,
      outcome: 'ok',
    });
    const opened = await signedXksRequest(kms.url, xksCredentials, REGION, xksKeyPath(P, keyId, 'decrypt'), {
      requestMetadata: xksMetadata('xks-audit-2', 'Decrypt'),
      encryptionAlgorithm: 'AES_GCM',
      ciphertext: sealed.body.ciphertext,
      initializationVector: sealed.body.initializationVector,
      authenticationTag: Buffer.alloc(16).toString('base64'),
      ciphertextMetadata: sealed.body.ciphertextMetadata,
    });
    expect(opened.status).toBe(400);
    expect(recordOf('xks-audit-2')).toMatchObject({
      operation: 'decrypt',
      keyId,
      keyVersion: null,
      outcome: 'error',
      errorCode: 'InvalidCiphertextException',
    });
  });
});

describe('the chain', () => {
  it('when the log is verified, then the real command line counts every record and prints the last hash', () => {
    const records = auditRecords(kms.dataDir);
    const run = kmsAuditVerify(auditFilesOf(kms.dataDir));
    expect(run.stdout).toBe(`ok: ${records.length} records, last hash ${records.at(-1)?.hash}\n`);
    expect(run.status).toBe(0);
  });

  /** A copy of the log with its lines changed by `edit`; the service's own file stays as it is. */
  function tampered(name: string, edit: (lines: string[]) => string[]): string {
    const lines = readFileSync(auditFilesOf(kms.dataDir)[0] as string, 'utf8')
      .split('\n')
      .slice(0, -1);
    expect(lines.length).toBeGreaterThan(5);
    const file = path.join(scratch, name);
    writeFileSync(file, `${edit(lines).join('\n')}\n`);
    return file;
  }

  /** A record as a forger would rewrite it: its hash made anew over its new bytes (the next record still names the old). */
  function rehashed(line: string): string {
    const canonical = `${line.slice(0, line.lastIndexOf(',"hash":'))}}`;
    const { prev } = JSON.parse(canonical) as { prev: string };
    return `${canonical.slice(0, -1)},"hash":"${recordHash(prev, canonical)}"}`;
  }

  it.each([
    [
      'one byte of a record changed',
      (lines: string[]) => lines.map((line, i) => (i === 3 ? line.replace('"time":"2', '"time":"3') : line)),
      4,
      'altered',
    ],
    ['a record deleted', (lines: string[]) => lines.filter((_, i) => i !== 3), 4, 'sequence 5 where 4 was due'],
    [
      'two records swapped',
      (lines: string[]) => [...lines.slice(0, 2), lines[3] as string, lines[2] as string, ...lines.slice(4)],
      3,
      'sequence 4 where 3 was due',
    ],
    ['the first record deleted', (lines: string[]) => lines.slice(1), 1, 'sequence 2 where 1 was due'],
    [
      'a record rewritten with its own hash recomputed',
      (lines: string[]) => lines.map((line, i) => (i === 3 ? rehashed(line.replace('"time":"2', '"time":"3')) : line)),
      5,
      'prev is not the hash of the record before it',
    ],
  ])('when %s, then verify names that line and exits 1', (name, edit, line, reason) => {
    const file = tampered(name.replaceAll(' ', '-'), edit);
    const run = kmsAuditVerify([file]);
    expect(run.stdout).toContain(`broken: ${file} line ${line} (record ${line} due): `);
    expect(run.stdout).toContain(reason);
    expect(run.status).toBe(1);
  });
});

describe('rotation, restart and failure', () => {
  let small: TestService | undefined;
  afterAll(async () => {
    await small?.destroy();
  });

  it('when files rotate by size and the service restarts, then the files verify as one chain that goes on', async () => {
    small = await startTestService({ KMS_REGION: REGION, KMS_AUDIT_MAX_BYTES: '1500' }, { besides: kms });
    const client = new KMSClient({
      endpoint: small.url,
      region: REGION,
      credentials: await small.running.credentials.create(P),
      maxAttempts: 1,
    });
    const key = await createKey(small, P, 'rotated');
    for (let i = 0; i < 8; i++) await client.send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') }));
    const files = auditFilesOf(small.dataDir);
    expect(files.length).toBeGreaterThan(2);
    for (const file of files.slice(0, -1)) expect(statSync(file).size).toBeLessThanOrEqual(1500);
    expect(statSync(files[0] as string).mode & 0o777).toBe(0o600);
    const before = auditRecords(small.dataDir);
    expect(kmsAuditVerify(files).stdout).toBe(`ok: ${before.length} records, last hash ${before.at(-1)?.hash}\n`);
    // A later file alone does not start the chain: its first record is not record 1.
    expect(kmsAuditVerify(files.slice(1)).status).toBe(1);

    await small.stop();
    small = await small.restart();
    const after = await new KMSClient({ endpoint: small.url, region: REGION, credentials, maxAttempts: 1 })
      .send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') }))
      .catch((err: Error) => err);
    // `credentials` belong to the first service's database: refused, and recorded all the same.
    expect(after).toMatchObject({ name: 'UnrecognizedClientException' });
    const records = auditRecords(small.dataDir);
    expect(records.at(-1)).toMatchObject({
      seq: before.length + 1,
      prev: before.at(-1)?.hash,
      outcome: 'error',
      // What the refused caller tried is recorded; who it claimed to be is not, as it proved nothing.
      operation: 'Encrypt',
      caller: null,
      errorCode: 'UnrecognizedClientException',
    });
    const run = kmsAuditVerify(auditFilesOf(small.dataDir));
    expect(run.stdout).toBe(`ok: ${records.length} records, last hash ${records.at(-1)?.hash}\n`);
  });

  it('when the audit file cannot be written, then every dialect answers its internal error and no success', async () => {
    await small?.destroy();
    small = undefined;
    const full = await startTestService(
      { KMS_REGION: REGION, KMS_AUDIT_MAX_BYTES: '1' },
      { besides: kms, onLog: () => undefined },
    );
    small = full;
    const creds = await full.running.credentials.create(P);
    const xksCreds = await full.running.credentials.create(P, 'xks');
    const key = await createKey(full, P, 'unrecorded');
    // The next record rotates into a file that is a full device: every write fails with ENOSPC.
    const [first] = auditFilesOf(full.dataDir);
    symlinkSync('/dev/full', (first as string).replace(/-000001\.jsonl$/, '-000002.jsonl'));

    const huawei = await full.call(P, 'create-datakey', { key_id: key });
    expect(huawei.status).toBe(500);
    expect(huawei.body.error.error_code).toBe('KMS.0101');
    const awsFailure = await new KMSClient({ endpoint: full.url, region: REGION, credentials: creds, maxAttempts: 1 })
      .send(new EncryptCommand({ KeyId: key, Plaintext: Buffer.from('x') }))
      .catch((err: Error & { $metadata: { httpStatusCode?: number } }) => err);
    expect(awsFailure).toMatchObject({ name: 'KMSInternalException', $metadata: { httpStatusCode: 500 } });
    const alibabaFailure = await alibabaClient(full.url, creds)
      .encrypt(new $Kms.EncryptRequest({ keyId: key, plaintext: 'x' }))
      .catch((err: Error & { data?: { Code?: string } }) => err);
    expect(alibabaFailure).toMatchObject({
      data: { Code: 'InternalFailure' },
      message: expect.stringContaining('code: 500'),
    });
    const xks = await signedXksRequest(full.url, xksCreds, REGION, xksKeyPath(P, key, 'encrypt'), {
      requestMetadata: xksMetadata('xks-unrecorded'),
      plaintext: Buffer.from('x').toString('base64'),
      encryptionAlgorithm: 'AES_GCM',
    });
    expect(xks).toMatchObject({ status: 500, body: { errorName: 'InternalException' } });
    // Failures of our own, logged as such; the chain on disk is still whole.
    expect(full.log()).toContain('the audit record could not be written');
    expect(kmsAuditVerify(auditFilesOf(full.dataDir).slice(0, 1)).status).toBe(0);
  });
});

describe('configuration', () => {
  it('when KMS_AUDIT_ENABLED is false, then requests are served and no audit file is written', async () => {
    const off = await startTestService({ KMS_AUDIT_ENABLED: 'false' }, { besides: kms });
    try {
      const key = await createKey(off, P, 'unaudited');
      expect((await off.call(P, 'create-datakey', { key_id: key })).status).toBe(200);
      expect(() => auditFilesOf(off.dataDir)).toThrow(/ENOENT/);
    } finally {
      await off.destroy();
    }
  });
});
