import type { IncomingMessage, Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import { createBoundedServer } from '../../src/http/bounded-server.js';
import { readBody } from '../../src/http/read-body.js';
import { createLogger } from '../../src/logger.js';

/**
 * readBody (src/http/read-body.ts) on a real node:http server and raw sockets: its promise settles whatever the
 * client does, and once settled it leaves nothing attached to the request.
 */
const MAX_BYTES = 1024;
const tooLarge = () => new KmsError('InvalidParameter', 'too large');

/** What the next request's handler does with its request; settles with readBody's outcome. */
let handle: (req: IncomingMessage) => Promise<unknown>;
let server: Server;
let port: number;

beforeAll(async () => {
  server = createBoundedServer(
    (req, res) => {
      handle(req).finally(() => res.end());
    },
    {
      headersTimeoutMs: 1_000,
      requestTimeoutMs: 2_000,
      keepAliveTimeoutMs: 1_000,
      maxConnections: 16,
      maxConnectionsPerClient: 16,
    },
    createLogger('error', () => undefined),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});
afterAll(() => {
  server.closeAllConnections();
  server.close();
});

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** readBody's outcome for a request of the next connection, as `{ body }` or `{ error }`, or 'pending' after `ms`. */
function outcome(read: (req: IncomingMessage) => Promise<Buffer>, ms = 1_000) {
  return new Promise<{ body?: string; error?: unknown } | 'pending'>((resolve) => {
    const timer = setTimeout(() => resolve('pending'), ms);
    handle = (req) =>
      read(req).then(
        (body) => {
          clearTimeout(timer);
          resolve({ body: body.toString('latin1') });
        },
        (error: unknown) => {
          clearTimeout(timer);
          resolve({ error });
        },
      );
  });
}

const listeners = (req: IncomingMessage) =>
  ['data', 'end', 'error', 'close'].map((event) => [event, req.listenerCount(event)]);

describe('readBody', () => {
  it('when the client has gone before the body is asked for, then it rejects at once: the connection ended', async () => {
    const settled = outcome((req) =>
      // As if the handler were still awaiting the credential look-up when the client left.
      new Promise((resolve) => req.socket.once('close', resolve)).then(() => readBody(req, MAX_BYTES, tooLarge)),
    );
    const socket = await open();
    socket.write('POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"a"');
    setTimeout(() => socket.destroy(), 50);
    const result = await settled;
    expect(result).not.toBe('pending');
    const error = (result as { error: KmsError }).error;
    expect(error).toBeInstanceOf(KmsError);
    expect(error).toMatchObject({
      code: 'InvalidParameter',
      message: 'The connection ended before the request body was complete.',
    });
  });

  it.each([
    ['resolved with the body', 'content-length: 5\r\n\r\nhello', { body: 'hello' }],
    ['refused as too large', `content-length: ${MAX_BYTES + 1}\r\n\r\n`, { error: tooLarge() }],
    ['refused as too large while it streams', 'transfer-encoding: chunked\r\n\r\n401\r\n', { error: tooLarge() }],
  ])('when it has %s, then none of its listeners is left on the request', async (_case, rest, expected) => {
    let before: unknown[] = [];
    let request: IncomingMessage | undefined;
    const settled = outcome((req) => {
      request = req;
      before = listeners(req);
      return readBody(req, MAX_BYTES, tooLarge);
    });
    const socket = await open();
    socket.write(`POST / HTTP/1.1\r\nhost: x\r\n${rest}`);
    if (rest.startsWith('transfer-encoding')) socket.write(`${'x'.repeat(MAX_BYTES + 1)}\r\n`);
    expect(await settled).toEqual(expected);
    expect(listeners(request as IncomingMessage)).toEqual(before);
    socket.destroy();
  });
});
