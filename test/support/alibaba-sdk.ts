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
