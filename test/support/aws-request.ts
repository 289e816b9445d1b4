import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { rawRequest } from './raw-http.js';

export interface AwsRawResponse {
  readonly status: number;
  /** x-amzn-ErrorType, the exception's name on an error. */
  readonly type: string | undefined;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field in the tests
  readonly body: any;
}

export interface AwsRawRequest {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
  /** Headers sent but left out of SignedHeaders (the signer's own `unsignableHeaders`). */
  readonly unsigned?: readonly string[];
  /** Changes the signed headers before sending: a header set to an array goes on the wire as repeated lines. */
  readonly alter?: (headers: Record<string, string | string[]>) => void;
}

/**
 * `POST /` signed with @smithy/signature-v4, the AWS SDK's own signer, and sent as given (rawRequest), so that headers
 * can be anything, repeated lines included: for what the SDK never sends.
 */
export async function signedAwsRequest(
  serviceUrl: string,
  credentials: { readonly accessKeyId: string; readonly secretAccessKey: string },
  region: string,
  raw: AwsRawRequest,
): Promise<AwsRawResponse> {
  const url = new URL(serviceUrl);
  const signer = new SignatureV4({ service: 'kms', region, sha256: Sha256, credentials });
  const signed = await signer.sign(
    {
      method: 'POST',
      protocol: 'http:',
      hostname: url.hostname,
      port: Number(url.port),
      path: '/',
      headers: { host: url.host, ...raw.headers },
      body: raw.body,
    },
    { unsignableHeaders: new Set(raw.unsigned ?? []) },
  );
  const headers: Record<string, string | string[]> = { ...signed.headers };
  raw.alter?.(headers);
  const res = await rawRequest(serviceUrl, { path: '/', headers, body: raw.body });
  const type = res.headers['x-amzn-errortype'];
  return {
    status: res.status,
    type: Array.isArray(type) ? type.join(',') : type,
    headers: res.headers,
    body: res.text.length > 0 ? JSON.parse(res.text) : undefined,
  };
}
