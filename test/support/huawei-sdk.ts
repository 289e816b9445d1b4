import { createHash, createHmac } from 'node:crypto';
import { request } from 'node:http';
import { createRequire } from 'node:module';

/**
 * Huawei Cloud's own Node core SDK (@huaweicloud/huaweicloud-sdk-core), and requests signed the way its Python and Go
 * SDKs sign them (../shared/reference/huawei-sdk.md §B.4). The package is CommonJS and exports only the credential
 * classes from its index, so its ClientBuilder and AKSKSigner are required by path, as Huawei's service packages do.
 */
const require = createRequire(import.meta.url);
const CORE = '@huaweicloud/huaweicloud-sdk-core';

interface SdkCredential {
  withAk(ak: string): SdkCredential;
  withSk(sk: string): SdkCredential;
  withProjectId(projectId: string): SdkCredential;
  getAk(): string;
  getSk(): string;
}

interface HcClient {
  sendRequest(options: {
    method: string;
    url: string;
    contentType: string;
    queryParams: Record<string, string>;
    pathParams: Record<string, string>;
    headers: Record<string, string>;
    data?: object;
  }): Promise<Record<string, unknown>>;
}

const { BasicCredentials } = require(`${CORE}/auth/BasicCredentials`) as { BasicCredentials: new () => SdkCredential };
const { ClientBuilder } = require(`${CORE}/ClientBuilder`) as {
  ClientBuilder: new (
    init: (client: HcClient) => HcClient,
  ) => {
    withCredential(credential: SdkCredential): { withEndpoint(url: string): { build(): HcClient } };
    withEndpoint(url: string): { build(): HcClient };
  };
};

/** The SDK's own signer, as its credentials call it. */
export const AKSKSigner = (
  require(`${CORE}/auth/AKSKSigner`) as {
    AKSKSigner: {
      sign(
        request: {
          endpoint: string;
          method: string;
          headers: Record<string, string>;
          queryParams?: Record<string, string>;
          data?: object;
        },
        credential: SdkCredential,
      ): Record<string, string>;
    };
  }
).AKSKSigner;

export interface HuaweiCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly projectId: string;
}

export function sdkCredential(credentials: HuaweiCredentials): SdkCredential {
  return new BasicCredentials()
    .withAk(credentials.accessKeyId)
    .withSk(credentials.secretAccessKey)
    .withProjectId(credentials.projectId);
}

/**
 * A KMS client made as Huawei's generated Node service clients are: ClientBuilder → HcClient, which fills
 * `{project_id}`, signs and sends. Without `credentials` the SDK reads HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and
 * HUAWEICLOUD_SDK_PROJECT_ID itself. A failure is the SDK's ClientRequestException / ServerResponseException.
 */
export function huaweiKmsClient(endpoint: string, credentials?: HuaweiCredentials) {
  const builder = new ClientBuilder((client) => client);
  const client = (credentials ? builder.withCredential(sdkCredential(credentials)) : builder)
    .withEndpoint(endpoint)
    .build();
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
  return (action: string, body?: object, method: 'GET' | 'POST' = 'POST'): Promise<any> =>
    client.sendRequest({
      method,
      url: `/v1.0/{project_id}/kms/${action}`,
      contentType: 'application/json;charset=UTF-8',
      queryParams: {},
      pathParams: {},
      headers: {},
      ...(body ? { data: body } : {}),
    });
}

/**
 * The same client for the keystore paths (`/v1.0/{project_id}/keystores…`), which take the keystore id in the path and
 * list's limit and offset in the query, as Huawei's generated KmsClient sends them.
 */
export function huaweiKeystoreClient(endpoint: string, credentials: HuaweiCredentials) {
  const client = new ClientBuilder((c) => c).withCredential(sdkCredential(credentials)).withEndpoint(endpoint).build();
  return (
    method: 'GET' | 'POST' | 'DELETE',
    path: string,
    options: { query?: Record<string, string>; body?: object } = {},
    // biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
  ): Promise<any> =>
    client.sendRequest({
      method,
      url: `/v1.0/{project_id}/keystores${path}`,
      contentType: 'application/json',
      queryParams: options.query ?? {},
      pathParams: {},
      headers: {},
      ...(options.body ? { data: options.body } : {}),
    });
}

/** A request as it goes on the wire: headers in order, a repeated name repeated. */
export interface WireRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: Buffer;
}

export type SdkStyle = 'python' | 'node' | 'go';

export interface SdkRequestOptions {
  readonly url: string;
  readonly body?: object;
  readonly method?: string;
  readonly credentials: HuaweiCredentials;
  /** X-Sdk-Date; default now. */
  readonly at?: number;
  /** Headers sent besides the SDK's, before signing (so signed by the Python and Node styles). */
  readonly extraHeaders?: Readonly<Record<string, string>>;
}

/**
 * A request as each SDK sends it (huawei-sdk.md §A.2, §B.4), signed with SDK-HMAC-SHA256:
 * - python: Content-Type `application/json;charset=utf-8`, its User-Agent, X-Project-Id, X-Sdk-Date and Host, all
 *   signed; the body is `json.dumps` with `", "`/`": "` separators and `\uXXXX` escapes;
 * - node: signed by the npm package's own AKSKSigner (content-type;host;x-project-id;x-sdk-date), compact JSON;
 * - go: Content-Type `application/json;charset=UTF-8` and Host sent but not signed, so
 *   user-agent;x-project-id;x-sdk-date; compact JSON.
 */
export function sdkRequest(style: SdkStyle, options: SdkRequestOptions): WireRequest {
  const url = new URL(options.url);
  const method = options.method ?? 'POST';
  const date = sdkDate(options.at ?? Date.now());
  const { accessKeyId, secretAccessKey, projectId } = options.credentials;
  const extra = options.extraHeaders ?? {};
  if (style === 'node') {
    const headers = AKSKSigner.sign(
      {
        endpoint: `${url.origin}${url.pathname}`,
        method,
        headers: { 'content-type': 'application/json', 'X-Project-Id': projectId, 'X-Sdk-Date': date, ...extra },
        queryParams: Object.fromEntries(url.searchParams),
        ...(options.body ? { data: options.body } : {}),
      },
      sdkCredential(options.credentials),
    );
    const body = Buffer.from(options.body ? JSON.stringify(options.body) : '');
    return {
      method,
      url: url.href,
      headers: [...Object.entries(headers), ['User-Agent', 'huaweicloud-usdk-nodejs/3.0']],
      body,
    };
  }
  const body = Buffer.from(
    options.body === undefined ? '' : style === 'python' ? pythonJson(options.body) : JSON.stringify(options.body),
  );
  const common: Record<string, string> = { 'X-Project-Id': projectId, 'X-Sdk-Date': date, ...extra };
  const [signed, unsigned]: [Record<string, string>, Record<string, string>] =
    style === 'python'
      ? [
          {
            'User-Agent': 'huaweicloud-usdk-python/3.0',
            'Content-Type': 'application/json;charset=utf-8',
            Host: url.host,
            ...common,
          },
          {},
        ]
      : [
          { 'User-Agent': 'huaweicloud-usdk-go/3.0', ...common },
          { 'Content-Type': 'application/json;charset=UTF-8', Host: url.host },
        ];
  const authorization = sdkHmacSha256({ method, url, headers: signed, body, accessKeyId, secret: secretAccessKey });
  return {
    method,
    url: url.href,
    headers: [...Object.entries(signed), ...Object.entries(unsigned), ['Authorization', authorization]],
    body,
  };
}

/**
 * The Authorization value for a request, computed from huawei-sdk.md §B.1 alone (not from src/, so that the verifier
 * is checked against a second implementation, itself checked against §B.2's vectors in test/unit): every header given
 * is signed unless its name contains '_', as the Python SDK does.
 */
export function sdkHmacSha256(input: {
  readonly method: string;
  readonly url: URL;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer | string;
  readonly accessKeyId: string;
  readonly secret: string;
}): string {
  const rfc3986 = (text: string) =>
    encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
  const path = input.url.pathname
    .split('/')
    .map((segment) => rfc3986(decodeURIComponent(segment)))
    .join('/');
  const query = [...input.url.searchParams]
    .sort(([a, av], [b, bv]) => (a === b ? (av < bv ? -1 : 1) : a < b ? -1 : 1))
    .map(([name, value]) => `${rfc3986(name)}=${rfc3986(value)}`)
    .join('&');
  const signed = Object.entries(input.headers)
    .filter(([name]) => !name.includes('_'))
    .map(([name, value]) => [name.toLowerCase(), value.trim()] as const)
    .sort(([a], [b]) => (a < b ? -1 : 1));
  const names = signed.map(([name]) => name).join(';');
  const canonical = [
    input.method,
    path.endsWith('/') ? path : `${path}/`,
    query,
    signed.map(([name, value]) => `${name}:${value}\n`).join(''),
    names,
    sha256Hex(input.body),
  ].join('\n');
  const date = signed.find(([name]) => name === 'x-sdk-date')?.[1] ?? '';
  const signature = createHmac('sha256', input.secret)
    .update(`SDK-HMAC-SHA256\n${date}\n${sha256Hex(canonical)}`)
    .digest('hex');
  return `SDK-HMAC-SHA256 Access=${input.accessKeyId}, SignedHeaders=${names}, Signature=${signature}`;
}

/** Python's `json.dumps(obj)`: `", "` and `": "` separators, every non-ASCII character as `\uXXXX`. */
export function pythonJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.entries(value)
      .map(([k, v]) => `${pythonJson(k)}: ${pythonJson(v)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value).replace(
    /[\u0080-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** `YYYYMMDDTHHMMSSZ`, the X-Sdk-Date format. */
export function sdkDate(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/** Sends a request with its headers exactly as listed (node:http, so that a repeated header stays two lines). */
// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
export function send(wire: WireRequest): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request(wire.url, { method: wire.method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text.length > 0 ? JSON.parse(text) : undefined });
      });
    });
    req.on('error', reject);
    // setHeader is case-insensitive and replaces: repeated names go in one call, as several lines.
    const grouped = new Map<string, { name: string; values: string[] }>();
    for (const [name, value] of wire.headers) {
      const entry = grouped.get(name.toLowerCase()) ?? { name, values: [] };
      entry.values.push(value);
      grouped.set(name.toLowerCase(), entry);
    }
    for (const { name, values } of grouped.values()) {
      req.setHeader(name, values.length === 1 ? (values[0] as string) : values);
    }
    req.end(wire.body);
  });
}

function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}
