/**
 * The body of scripts/smoke-huawei-sdk (not a vitest file: it drives a service someone started): Huawei's Node core
 * SDK against KMS_URL, signing with the access key in HUAWEICLOUD_SDK_AK / HUAWEICLOUD_SDK_SK for the project in
 * HUAWEICLOUD_SDK_PROJECT_ID, which the SDK reads itself. Prints one line per step; throws at the first thing that
 * does not work.
 */
import { huaweiKmsClient } from '../support/huawei-sdk.js';

const call = huaweiKmsClient(process.env.KMS_URL ?? 'http://127.0.0.1:8080');
const step = (line: string) => process.stderr.write(`${line}\n`);
function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`smoke-huawei-sdk: ${what}`);
}

const random = (await call('gen-random', { random_data_length: '256' })).random_data as string;
check(/^[0-9A-F]{64}$/.test(random), `gen-random gave ${JSON.stringify(random)}`);
step('gen-random: 256 bits');

const created = await call('create-key', {
  key_alias: `smoke-${Date.now()}`,
  key_description: `smoke test ${new Date().toISOString()}`,
});
const keyId = created.key_info.key_id as string;
check(/^[0-9a-f-]{36}$/.test(keyId), `create-key gave ${JSON.stringify(created)}`);
step(`create-key: ${keyId}`);

const dataKey = await call('create-datakey', { key_id: keyId, datakey_length: '512' });
const opened = await call('decrypt-datakey', {
  key_id: keyId,
  cipher_text: dataKey.cipher_text,
  datakey_cipher_length: '64',
});
check(dataKey.plain_text.length === 128, 'create-datakey: not 512 bits');
check(opened.data_key === dataKey.plain_text, 'decrypt-datakey: the data key differs');
step('create-datakey + decrypt-datakey: the same 512 bits');

const text = 'attack at dawn ✓';
const sealed = await call('encrypt-data', { key_id: keyId, plain_text: text });
const back = await call('decrypt-data', { cipher_text: sealed.cipher_text });
check(back.plain_text === text, `encrypt-data + decrypt-data: got ${JSON.stringify(back.plain_text)}`);
step('encrypt-data + decrypt-data: round trip');
step('smoke-huawei-sdk: ok');
