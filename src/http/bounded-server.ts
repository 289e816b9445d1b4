import { createServer, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { deferContinue } from './read-body.js';
import type { TlsSettings } from './tls-credentials.js';
import { createTlsServer } from './tls-listener.js';

/**
 * How much of a request body left unread (the request was refused before its body, or for its size) is still drained
 * once the answer is sent, so that a client still sending it reads that answer rather than a reset connection: twice
 * the largest body a dialect takes (64 KiB). Past it the connection is closed, where an endless body would otherwise
 * be read at line rate until the request timeout.
 */
const UNREAD_BODY_DRAIN_BYTES = 128 * 1024;

/** How often, at most, the operator is told that connections were refused for a limit. */
const REFUSAL_REPORT_INTERVAL_MS = 60_000;

/**
 * The node:http server, with every connection bounded (Config.http). node:http enforces the headers and request
 * timeouts itself, from a timer it runs anyway, so requests carry no timer of their own:
 *
 * - a request whose headers, or whose body, have not all arrived in time is answered `408 Request Timeout` by
 *   node:http and its connection closed; a handler waiting for that body sees it end early (src/http/read-body.ts);
 * - a connection idle between requests is closed after the keep-alive timeout;
 * - past `maxConnections` open connections, a new one is closed as soon as it is accepted, and every idle
 *   connection is closed too: the slots are shared by all clients, and a connection that holds one without a request
 *   in progress gives way to the clients being turned away (a client of a keep-alive pool reconnects);
 * - one client address holds at most `maxConnectionsPerClient` of them: its next connection is closed as soon as it
 *   is accepted, so that one client alone cannot take every slot;
 * - a request body the service did not read is drained after the answer for at most UNREAD_BODY_DRAIN_BYTES;
 * - a client that sends `Expect: 100-continue` gets `100 Continue` only once its body is read (src/http/read-body.ts):
 *   a request refused from its head is answered without it, and node:http then closes the connection.
 *
 * A client that resets or closes its connection mid-request, sends malformed HTTP or runs out of time is not the
 * service's failure: it is logged at debug level, with the error's code and no stack.
 *
 * With `tls`, the server is node:https (src/http/tls-listener.ts) under the same bounds: connections are counted
 * and refused as they are accepted, before their handshake, and a handshake gets the headers timeout (the HTTP
 * timeouts only start once it is done).
 */
export function createBoundedServer(
  listener: RequestListener,
  bounds: Config['http'],
  logger: Logger,
  tls?: TlsSettings,
): Server | HttpsServer {
  const serve: RequestListener = (req, res) => {
    res.prependListener('finish', drainUnreadBody);
    listener(req, res);
  };
  const options = {
    headersTimeout: bounds.headersTimeoutMs,
    requestTimeout: bounds.requestTimeoutMs,
    keepAliveTimeout: bounds.keepAliveTimeoutMs,
    // node:http checks the two timeouts every 30 s by default, which would let a 5 s bound run to 35 s.
    connectionsCheckingInterval: Math.min(1_000, Math.ceil(bounds.headersTimeoutMs / 10)),
  };
  const server =
    tls === undefined
      ? createServer(options, serve)
      : createTlsServer(tls, options, bounds.headersTimeoutMs, serve, logger);
  // node:http would answer `Expect: 100-continue` before anyone has looked at the request; readBody says it instead.
  server.on('checkContinue', (req, res) => {
    deferContinue(req, res);
    serve(req, res);
  });
  const refusedForCap = refusalReport(logger, 'connections refused: the connection limit is reached', {
    maxConnections: bounds.maxConnections,
  });
  const refusedForClient = refusalReport(logger, 'connections refused: a client address reached its connection limit', {
    maxConnectionsPerClient: bounds.maxConnectionsPerClient,
  });
  // The cap is counted here rather than left to net.Server's maxConnections: a node:cluster worker at that limit
  // neither closes a connection nor emits 'drop', and the connection hangs unanswered in the primary.
  let open = 0;
  /** Open connections by client address; an address leaves the map with its last connection. */
  const openByClient = new Map<string, number>();
  server.on('connection', (socket) => {
    // node:http's own listener has already answered (400, 408, 431) or closed the connection; this one only reports.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      logger.debug('client connection failed', { code: err.code, message: err.message });
    });
    const client = socket.remoteAddress;
    if (client === undefined) return; // already closed
    if (open >= bounds.maxConnections) {
      refusedForCap({});
      socket.destroy();
      // Node counts a connection accepted but not yet sent a request as idle too; its client retries like this one.
      server.closeIdleConnections();
      return;
    }
    const fromClient = (openByClient.get(client) ?? 0) + 1;
    if (fromClient > bounds.maxConnectionsPerClient) {
      refusedForClient({ client });
      socket.destroy();
      return;
    }
    open++;
    openByClient.set(client, fromClient);
    socket.once('close', () => {
      open--;
      const left = (openByClient.get(client) ?? 1) - 1;
      if (left === 0) openByClient.delete(client);
      else openByClient.set(client, left);
    });
  });
  return server;
}

/**
 * Reads what is left of the request's body once its answer is sent, and closes the connection past
 * UNREAD_BODY_DRAIN_BYTES. It runs before node:http's own 'finish' listener, which would otherwise discard an unread
 * body, uncounted, until the request timeout (it leaves a body that someone reads alone).
 */
function drainUnreadBody(this: ServerResponse): void {
  const req = this.req;
  if (req.complete || req.destroyed) return;
  let drained = 0;
  req.on('data', (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > UNREAD_BODY_DRAIN_BYTES) req.socket.destroy();
  });
}

/**
 * Counts refused connections and warns the operator at once, then at most every REFUSAL_REPORT_INTERVAL_MS, with
 * how many were refused since the last warning: a flood of refusals must not become a flood of log lines.
 */
function refusalReport(logger: Logger, message: string, limit: Record<string, number>) {
  let dropped = 0;
  let lastReport = Number.NEGATIVE_INFINITY;
  return (fields: Record<string, string>): void => {
    dropped++;
    const now = Date.now();
    if (now - lastReport < REFUSAL_REPORT_INTERVAL_MS) return;
    logger.warn(message, { dropped, ...limit, ...fields });
    dropped = 0;
    lastReport = now;
  };
}
