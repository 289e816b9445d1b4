import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { rawRequest } from './raw-http.js';

export interface XksResponse {
  readonly status: number;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field in the tests
  readonly body: any;
}

/** A POST to the XKS proxy API signed as AWS KMS signs it for an external key store: SigV4, kms-xks-proxy. */
export async function signedXksRequest(
  serviceUrl: string,
  credentials: { readonly accessKeyId: string; readonly secretAccessKey: string },
  region: string,
  path: string,
  body: unknown,
): Promise<XksResponse> {
  const url = new URL(serviceUrl);
  const payload = JSON.stringify(body);
  const signer = new SignatureV4({ service: 'kms-xks-proxy', region, sha256: Sha256, credentials });
  const signed = await signer.sign({
    method: 'POST',
    protocol: 'http:',
    hostname: url.hostname,
    port: Number(url.port),
    path,
    headers: { host: url.host, 'content-type': 'application/json' },
    body: payload,
  });
  const res = await rawRequest(serviceUrl, { path, headers: signed.headers as Record<string, string>, body: payload });
  return { status: res.status, body: res.text.length > 0 ? JSON.parse(res.text) : undefined };
}

/** The path of an XKS key operation (`encrypt`, `decrypt`, `metadata`) under the project's XksProxyUriPath. */
export const xksKeyPath = (projectId: string, keyId: string, operation: string) =>
  `/xks/${projectId}/kms/xks/v1/keys/${keyId}/${operation}`;
