import type { IncomingMessage } from 'node:http';
import { KmsError } from '../core/errors.js';

/**
 * The raw request body, refused with `tooLarge()` past `maxBytes` — as soon as Content-Length says so, or as soon as
 * that many bytes have arrived. A refused body is still drained, so that the client reads the error answer rather
 * than a reset connection.
 *
 * The body's time is bounded by the server's request timeout (src/http/bounded-server.ts), not here: a body that
 * has not arrived when it runs out, like one whose client closes or resets the connection, ends the connection, and
 * the promise rejects with an InvalidParameter KmsError. No one is left to read that answer, and being a client's
 * error it is not logged as a failure of the service (the server logs the connection's end at debug level).
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
    req.on('error', (cause) => {
      reject(new KmsError('InvalidParameter', 'The connection ended before the request body was complete.', { cause }));
    });
    req.on('end', () => {
      if (size <= maxBytes) resolve(Buffer.concat(chunks, size));
    });
  });
}
