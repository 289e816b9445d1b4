import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { $Kms, alibabaClient } from '../support/alibaba-sdk.js';
import { startTestService, type TestService } from '../support/test-service.js';

const KMS = fileURLToPath(new URL('../../scripts/kms', import.meta.url));
let kms: TestService;

beforeAll(async () => {
  kms = await startTestService();
});
afterAll(async () => {
  await kms.destroy();
});

describe('the Alibaba SDK with the credentials the CLI prints', () => {
  it('when `kms credentials create --format alibaba` runs beside the service, then the SDK works with its two lines alone', async () => {
    // The CLI opens the service's token and database itself, as an operator's shell would, while the service runs.
    const printed = execFileSync(KMS, ['credentials', 'create', '--project', 'alibabaprinted', '--format', 'alibaba'], {
      env: { ...process.env, ...kms.env },
      encoding: 'utf8',
      timeout: 120_000,
    });
    const variables = Object.fromEntries(
      printed
        .trim()
        .split('\n')
        .map((line) => line.split(/=(.*)/s).slice(0, 2)),
    );
    expect(Object.keys(variables).sort()).toEqual(['ALIBABA_CLOUD_ACCESS_KEY_ID', 'ALIBABA_CLOUD_ACCESS_KEY_SECRET']);

    const client = alibabaClient(kms.url, {
      accessKeyId: variables.ALIBABA_CLOUD_ACCESS_KEY_ID as string,
      secretAccessKey: variables.ALIBABA_CLOUD_ACCESS_KEY_SECRET as string,
    });
    const password = await client.getRandomPassword(new $Kms.GetRandomPasswordRequest({}));
    expect(password.randomPassword).toHaveLength(32);
    const keyId = (await client.createKey(new $Kms.CreateKeyRequest({}))).keyMetadata.keyId;
    const made = await client.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId }));
    const opened = await client.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: made.ciphertextBlob }));
    expect(opened.plaintext).toBe(made.plaintext);
    expect((await client.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata.creator).toBe(
      'alibabaprinted',
    );
  });
});
