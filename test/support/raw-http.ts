import { request } from 'node:http';

export interface RawResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly text: string;
}

/**
 * A request sent with node:http exactly as given, for what fetch cannot send: a header set to an array goes on the
 * wire as that many header lines (fetch would join them into one).
 */
export function rawRequest(
  serviceUrl: string,
  options: {
    readonly method?: string;
    readonly path: string;
    readonly headers: Readonly<Record<string, string | string[]>>;
    readonly body?: string;
  },
): Promise<RawResponse> {
  const url = new URL(serviceUrl);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        method: options.method ?? 'POST',
        path: options.path,
        headers: options.headers,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body ?? '');
  });
}
