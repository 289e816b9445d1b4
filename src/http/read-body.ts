import type { IncomingMessage } from 'node:http';

/**
 * The raw request body, refused with `tooLarge()` past `maxBytes` — as soon as Content-Length says so, or as soon as
 * that many bytes have arrived. A refused body is still drained, so that the client reads the error answer rather
 * than a reset connection.
 */
export function readBody(req: IncomingMessage, maxBytes: number, tooLarge: () => Error): Promise<Buffer> {
  if (Number(req.headers['content-length']) > maxBytes) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      if (size > maxBytes) return;
      size += chunk.length;
      if (size <= maxBytes) chunks.push(chunk);
      else reject(tooLarge());
    });
    req.on('error', reject);
    req.on('end', () => {
      if (size <= maxBytes) resolve(Buffer.concat(chunks, size));
    });
  });
}
