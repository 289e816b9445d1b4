import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { huaweiKmsClient } from '../support/huawei-sdk.js';
import { startTestService, type TestService } from '../support/test-service.js';

const KMS = fileURLToPath(new URL('../../scripts/kms', import.meta.url));
const VARIABLES = ['HUAWEICLOUD_SDK_AK', 'HUAWEICLOUD_SDK_PROJECT_ID', 'HUAWEICLOUD_SDK_SK'];
let kms: TestService;

beforeAll(async () => {
  kms = await startTestService();
});
afterAll(async () => {
  for (const name of VARIABLES) delete process.env[name];
  await kms.destroy();
});

describe("Huawei's Node SDK with the credentials the CLI prints", () => {
  it('when `kms credentials create --format huawei` runs beside the service, then the SDK works from its three lines in the environment', async () => {
    const printed = execFileSync(KMS, ['credentials', 'create', '--project', 'huaweiprinted', '--format', 'huawei'], {
      env: { ...process.env, ...kms.env },
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(printed).toMatch(
      /^HUAWEICLOUD_SDK_AK=AKIA[A-Z2-7]{16}\nHUAWEICLOUD_SDK_SK=[A-Za-z0-9+/]{40}\nHUAWEICLOUD_SDK_PROJECT_ID=huaweiprinted\n$/,
    );
    // As `eval "$(kms credentials create …)"` would: the SDK's ClientBuilder reads these variables itself.
    for (const line of printed.trim().split('\n')) {
      const [name, value] = line.split(/=(.*)/s) as [string, string];
      process.env[name] = value;
    }
    const call = huaweiKmsClient(kms.url);
    expect((await call('gen-random', { random_data_length: '128' })).random_data).toMatch(/^[0-9A-F]{32}$/);
    const keyId = (await call('create-key', { key_alias: 'printed' })).key_info.key_id as string;
    const made = await call('create-datakey', { key_id: keyId });
    const opened = await call('decrypt-datakey', {
      key_id: keyId,
      cipher_text: made.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(opened.data_key).toBe(made.plain_text);
    expect((await kms.call('huaweiprinted', 'list-keys', {})).body.keys).toEqual([keyId]);
  });
});
