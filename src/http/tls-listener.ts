import type { ServerOptions as HttpServerOptions, RequestListener } from 'node:http';
import { createServer, type Server } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../logger.js';
import { readTlsCredentials, subjectOf, type TlsSettings } from './tls-credentials.js';

/**
 * The cipher suites the XKS proxy API spec lists (AWS KMS offers only these), and TLS 1.3's third default,
 * TLS_AES_128_GCM_SHA256, which RFC 8446 §9.1 makes mandatory to implement. Every other TLS 1.2 suite is refused.
 */
export const TLS_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
].join(':');

/**
 * A node:https server: TLS 1.2 or 1.3, TLS_CIPHERS, HTTP/1.1 by ALPN. With a client CA, a client certificate is
 * required and must chain to it (OpenSSL checks the chain and the validity dates in the handshake); with a client
 * subject too, a connection whose certificate has another subject is closed once its handshake completes, before
 * node:http reads a byte of it. A handshake that does not complete within `handshakeTimeoutMs` is cut off.
 */
export function createTlsServer(
  settings: TlsSettings,
  httpOptions: HttpServerOptions,
  handshakeTimeoutMs: number,
  listener: RequestListener,
  logger: Logger,
): Server {
  const { cert, key, clientCa } = readTlsCredentials(settings);
  let server: Server;
  try {
    server = createServer(
      {
        ...httpOptions,
        cert,
        key,
        ...(clientCa === undefined ? {} : { ca: clientCa, requestCert: true, rejectUnauthorized: true }),
        minVersion: 'TLSv1.2',
        ciphers: TLS_CIPHERS,
        honorCipherOrder: true,
        ALPNProtocols: ['http/1.1'],
        handshakeTimeout: handshakeTimeoutMs,
      },
      listener,
    );
  } finally {
    // OpenSSL holds the key from here on.
    key.fill(0);
  }
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
    logger.debug('TLS handshake failed', { code: err.code, message: err.message, client: socket.remoteAddress });
  });
  const expected = settings.clientSubject;
  if (expected !== undefined) {
    // Before node:https's own listener, which hands the connection to the HTTP parser.
    server.prependListener('secureConnection', (socket: TLSSocket) => {
      const presented = socket.getPeerX509Certificate();
      const subject = presented === undefined ? undefined : subjectOf(presented);
      if (subject === expected) return;
      logger.debug('client certificate refused: its subject is not KMS_TLS_CLIENT_SUBJECT', {
        client: socket.remoteAddress,
        subject,
      });
      socket.destroy();
    });
  }
  return server;
}
