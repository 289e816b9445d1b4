import type { IncomingMessage, ServerResponse } from 'node:http';
import { KmsError } from '../core/errors.js';

/**
 * Requests whose client waits for `100 Continue` before it sends the body (`Expect: 100-continue`), with the response
 * that says it. The server registers them (src/http/bounded-server.ts) rather than let node:http say it at once, so
 * that `100 Continue` goes only to a request the service is about to read the body of: one refused from its head (an
 * unknown access key, a body too large) is answered without it, and its client never sends the body.
 */
const awaitingContinue = new WeakMap<IncomingMessage, ServerResponse>();

/** Defers `100 Continue` for `req` until readBody starts reading its body, if it ever does. */
export function deferContinue(req: IncomingMessage, res: ServerResponse): void {
  awaitingContinue.set(req, res);
}

/**
 * The raw request body, refused with `tooLarge()` past `maxBytes` — as soon as Content-Length says so, or as soon as
 * that many bytes have arrived. The server drains a refused body for a while (src/http/bounded-server.ts), so that the
 * client reads the error answer rather than a reset connection.
 *
 * The body's time is bounded by the server's request timeout (src/http/bounded-server.ts), not here: a body that
 * has not arrived when it runs out, like one whose client closes or resets the connection, ends the connection, and
 * the promise rejects with an InvalidParameter KmsError. No one is left to read that answer, and being a client's
 * error it is not logged as a failure of the service (the server logs the connection's end at debug level).
 *
 * The promise always settles: a client may have gone while the caller awaited something else (the access key's
 * look-up), and node:http destroys its request without an 'error' event for a listener that came too late. Once it
 * has settled, none of its listeners stays on the request.
 */
export function readBody(req: IncomingMessage, maxBytes: number, tooLarge: () => Error): Promise<Buffer> {
  if (req.destroyed || req.readableAborted) return Promise.reject(connectionEnded());
  if (Number(req.headers['content-length']) > maxBytes) return Promise.reject(tooLarge());
  const continuing = awaitingContinue.get(req);
  if (continuing !== undefined) {
    awaitingContinue.delete(req);
    continuing.writeContinue();
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const settle = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onEnded);
      req.off('close', onEnded);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes) {
        chunks.push(chunk);
      } else {
        settle();
        reject(tooLarge());
      }
    };
    const onEnd = () => {
      settle();
      resolve(Buffer.concat(chunks, size));
    };
    // 'close' before 'end' is a request destroyed without an error.
    const onEnded = (cause?: Error) => {
      settle();
      reject(connectionEnded(cause));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onEnded);
    req.on('close', onEnded);
  });
}

function connectionEnded(cause?: Error): KmsError {
  return new KmsError('InvalidParameter', 'The connection ended before the request body was complete.', { cause });
}
