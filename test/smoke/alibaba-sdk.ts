/**
 * The body of scripts/smoke-alibaba-sdk (not a vitest file: it drives a service someone started): the Alibaba Cloud SDK against KMS_URL, with the access key in
 * ALIBABA_CLOUD_ACCESS_KEY_ID / ALIBABA_CLOUD_ACCESS_KEY_SECRET. Prints one line per step; throws at the first
 * thing that does not work.
 */
import { $Kms, alibabaClient, signedRpcParams } from '../support/alibaba-sdk.js';

const url = process.env.KMS_URL ?? 'http://127.0.0.1:8080';
const credentials = {
  accessKeyId: process.env.ALIBABA_CLOUD_ACCESS_KEY_ID ?? '',
  secretAccessKey: process.env.ALIBABA_CLOUD_ACCESS_KEY_SECRET ?? '',
};
const kms = alibabaClient(url, credentials);
const step = (line: string) => process.stderr.write(`${line}\n`);
function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`smoke-alibaba-sdk: ${what}`);
}

const password = (
  await kms.getRandomPassword(new $Kms.GetRandomPasswordRequest({ passwordLength: '24', excludePunctuation: 'true' }))
).randomPassword;
check(/^[A-Za-z0-9]{24}$/.test(password), `GetRandomPassword gave ${JSON.stringify(password)}`);
step('GetRandomPassword: 24 letters and digits');

const created = await kms.createKey(
  new $Kms.CreateKeyRequest({ description: `smoke test ${new Date().toISOString()}` }),
);
const keyId = created.keyMetadata.keyId;
check(created.keyMetadata.keyState === 'Enabled', 'CreateKey: the key is not Enabled');
step(`CreateKey: ${keyId} (${created.keyMetadata.arn})`);

const encryptionContext = { purpose: 'smoke' };
const dataKey = await kms.generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, encryptionContext }));
const opened = await kms.decrypt(
  new $Kms.DecryptRequest({ ciphertextBlob: dataKey.ciphertextBlob, encryptionContext }),
);
check(opened.plaintext === dataKey.plaintext, 'Decrypt: the data key differs');
check(Buffer.from(dataKey.plaintext, 'base64').length === 32, 'GenerateDataKey: not 32 bytes');
step('GenerateDataKey + Decrypt: the same 32 bytes');

// Any text, as in Alibaba's own samples.
const message = 'Hello World';
const sealed = await kms.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: message }));
const back = await kms.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: sealed.ciphertextBlob }));
check(back.plaintext === message, 'Encrypt + Decrypt: the text differs');
step('Encrypt + Decrypt: round trip');

// The SDK never sends a request twice; a replay is made by hand, signed with the SDK's own signer.
const params = signedRpcParams(credentials, { Action: 'GetRandomPassword' }, { method: 'GET' });
const replayed = `${url}/?${new URLSearchParams(params)}`;
check((await fetch(replayed)).status === 200, 'the first delivery was refused');
const again = (await (await fetch(replayed)).json()) as { Code?: string };
check(again.Code === 'SignatureNonceUsed', `the replay was answered ${JSON.stringify(again)}`);
step('replayed request: SignatureNonceUsed');
step('smoke-alibaba-sdk: ok');
