import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import type KmsModule from '@alicloud/kms20160120';
import * as $RPC from '@alicloud/rpc-client';

/**
 * The Alibaba Cloud SDK pieces the tests drive the service with. The packages are CommonJS with
 * `exports.default = Client`: an ESM default import is `module.exports` for TypeScript and Node but the class itself
 * under vitest, so they are required, the same everywhere.
 */
const require = createRequire(import.meta.url);

export const AlibabaKmsClient = (require('@alicloud/kms20160120') as typeof KmsModule).default;
export type AlibabaKmsClient = InstanceType<typeof AlibabaKmsClient>;
export * as $Kms from '@alicloud/kms20160120';

/** The SDK's own RPC signer (what @alicloud/kms20160120 signs with). */
export const RPCUtil = (
  require('@alicloud/rpc-util') as {
    readonly default: { getSignatureV1(query: Record<string, string>, method: string, secret: string): string };
  }
).default;

/** The SDK configured as a user would: endpoint, protocol and the access key, nothing else. */
export function alibabaClient(
  serviceUrl: string,
  credentials: { readonly accessKeyId: string; readonly secretAccessKey: string },
): AlibabaKmsClient {
  return new AlibabaKmsClient(
    new $RPC.Config({
      endpoint: new URL(serviceUrl).host,
      protocol: 'http',
      accessKeyId: credentials.accessKeyId,
      accessKeySecret: credentials.secretAccessKey,
    }),
  );
}

/**
 * A request's parameters as an Alibaba SDK sends them: the common ones (Format, Version, AccessKeyId, HMAC-SHA1
 * 1.0, a fresh SignatureNonce, Timestamp now), then `params` (a value '\0' drops a common parameter), signed with the
 * SDK's signer for `method` unless `params` brings its own Signature. `secret` signs instead of the access key's.
 */
export function signedRpcParams(
  credentials: { readonly accessKeyId: string; readonly secretAccessKey: string },
  params: Record<string, string>,
  options: { method?: 'GET' | 'POST'; secret?: string } = {},
): Record<string, string> {
  const all: Record<string, string> = {
    Format: 'JSON',
    Version: '2016-01-20',
    AccessKeyId: credentials.accessKeyId,
    SignatureMethod: 'HMAC-SHA1',
    SignatureVersion: '1.0',
    SignatureNonce: randomUUID(),
    Timestamp: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    ...params,
  };
  for (const [name, value] of Object.entries(all)) if (value === '\0') delete all[name];
  if (all.Signature === undefined) {
    all.Signature = RPCUtil.getSignatureV1(
      all,
      options.method ?? 'POST',
      options.secret ?? credentials.secretAccessKey,
    );
  }
  return all;
}
