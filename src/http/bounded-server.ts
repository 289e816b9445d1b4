import { createServer, type RequestListener, type Server } from 'node:http';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';

/** How often, at most, the operator is told that connections were refused for the cap. */
const DROP_REPORT_INTERVAL_MS = 60_000;

/**
 * The node:http server, with every connection bounded (Config.http). node:http enforces the headers and request
 * timeouts itself, from a timer it runs anyway, so requests carry no timer of their own:
 *
 * - a request whose headers, or whose body, have not all arrived in time is answered `408 Request Timeout` by
 *   node:http and its connection closed; a handler waiting for that body sees it end early (src/http/read-body.ts);
 * - a connection idle between requests is closed after the keep-alive timeout;
 * - past `maxConnections` open connections, a new one is closed as soon as it is accepted.
 *
 * A client that resets or closes its connection mid-request, sends malformed HTTP or runs out of time is not the
 * service's failure: it is logged at debug level, with the error's code and no stack.
 */
export function createBoundedServer(listener: RequestListener, bounds: Config['http'], logger: Logger): Server {
  const server = createServer(
    {
      headersTimeout: bounds.headersTimeoutMs,
      requestTimeout: bounds.requestTimeoutMs,
      keepAliveTimeout: bounds.keepAliveTimeoutMs,
      // node:http checks the two timeouts every 30 s by default, which would let a 5 s bound run to 35 s.
      connectionsCheckingInterval: Math.min(1_000, Math.ceil(bounds.headersTimeoutMs / 10)),
    },
    listener,
  );
  server.maxConnections = bounds.maxConnections;
  server.on('connection', (socket) => {
    // node:http's own listener has already answered (400, 408, 431) or closed the connection; this one only reports.
    socket.on('error', (err: NodeJS.ErrnoException) => {
      logger.debug('client connection failed', { code: err.code, message: err.message });
    });
  });
  let dropped = 0;
  let lastReport = Number.NEGATIVE_INFINITY;
  server.on('drop', () => {
    dropped++;
    const now = Date.now();
    if (now - lastReport < DROP_REPORT_INTERVAL_MS) return;
    logger.warn('connections refused: the connection limit is reached', {
      dropped,
      maxConnections: bounds.maxConnections,
    });
    dropped = 0;
    lastReport = now;
  });
  return server;
}
