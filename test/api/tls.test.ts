import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect as connectTcp } from 'node:net';
import { connect as connectTls, createServer as createTlsServer, type SecureVersion, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, spawnService, stopService } from '../support/child-service.js';
import { createTestToken, removeTestToken } from '../support/softhsm.js';
import { createTestPki, type IssuedCertificate, type TestPki } from '../support/test-pki.js';
import { startTestService, type TestService } from '../support/test-service.js';

/**
 * HTTPS and mutual TLS on the service's own listener (src/http/tls-listener.ts), with a throw-away PKI made by the
 * openssl command for each run. Requests are made with node:https, trusting that PKI's CA only.
 */
const P = 'tlsproject';
const HEADERS_TIMEOUT_MS = 500;
const HSTS = 'max-age=31536000';

let pki: TestPki;
let plain: TestService;
let https: TestService;
let mutual: TestService;
const clients: Record<'kms' | 'stranger' | 'expired' | 'impostor', IssuedCertificate> = {} as never;

beforeAll(async () => {
  pki = createTestPki();
  clients.kms = pki.client('kms');
  clients.stranger = pki.client('stranger', { issuer: pki.otherCa });
  clients.expired = pki.client('expired', { expired: true });
  clients.impostor = pki.client('impostor', { subject: '/CN=cks.kms.us-east-1.amazonaws.com' });
  plain = await startTestService();
  const tls = { KMS_TLS_CERT_FILE: pki.server.certFile, KMS_TLS_KEY_FILE: pki.server.keyFile };
  https = await startTestService(
    { ...tls, KMS_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS), KMS_MAX_CONNECTIONS_PER_CLIENT: '2' },
    { besides: plain },
  );
  mutual = await startTestService(
    {
      ...tls,
      KMS_TLS_CLIENT_CA_FILE: pki.ca.certFile,
      KMS_TLS_CLIENT_SUBJECT: 'CN=cks.kms.eu-west-1.amazonaws.com',
    },
    { besides: plain },
  );
});
afterAll(async () => {
  await mutual?.destroy();
  await https?.destroy();
  await plain?.destroy();
  pki?.remove();
});

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  // biome-ignore lint/suspicious/noExplicitAny: asserted field by field
  readonly body: any;
  readonly httpVersion: string;
  /** The TLS session: undefined over plain HTTP. */
  readonly tls: { protocol: string | null; cipher: string; alpn: string | false | null } | undefined;
}

interface ClientOptions {
  readonly method?: string;
  readonly body?: unknown;
  readonly token?: string;
  readonly client?: IssuedCertificate;
  readonly minVersion?: SecureVersion;
  readonly maxVersion?: SecureVersion;
  readonly ciphers?: string;
  readonly ALPNProtocols?: string[];
}

/** One request on a connection of its own, trusting the test CA only. */
function send(service: TestService, path: string, options: ClientOptions = {}): Promise<Answer> {
  const url = new URL(path, service.url);
  const body = options.body === undefined ? undefined : JSON.stringify(options.body);
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (options.token !== undefined) headers['x-auth-token'] = options.token;
  const common = { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, agent: false } as const;
  return new Promise((resolve, reject) => {
    const req =
      url.protocol === 'https:'
        ? httpsRequest(url, {
            ...common,
            ca: pki.ca.cert,
            ...(options.client ? { cert: options.client.cert, key: options.client.key } : {}),
            ...(options.minVersion ? { minVersion: options.minVersion } : {}),
            ...(options.maxVersion ? { maxVersion: options.maxVersion } : {}),
            ...(options.ciphers ? { ciphers: options.ciphers } : {}),
            ...(options.ALPNProtocols ? { ALPNProtocols: options.ALPNProtocols } : {}),
          })
        : httpRequest(url, common);
    req.once('error', reject);
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('error', reject);
      res.once('end', () => {
        const socket = res.socket as TLSSocket;
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: text.length > 0 ? JSON.parse(text) : undefined,
          httpVersion: res.httpVersion,
          tls: socket.encrypted
            ? { protocol: socket.getProtocol(), cipher: socket.getCipher().name, alpn: socket.alpnProtocol }
            : undefined,
        });
      });
    });
    req.end(body);
  });
}

/** What a refused request ends in: the error's code and message (a TLS alert, a reset), never a response. */
async function refusal(answer: Promise<Answer>): Promise<string> {
  return answer.then(
    (a) => expect.fail(`expected no answer, got ${a.status} ${JSON.stringify(a.body)}`),
    (err: NodeJS.ErrnoException) => `${err.code}: ${err.message}`,
  );
}

const genRandom = async (service: TestService, options: ClientOptions = {}) =>
  send(service, `/v1.0/${P}/kms/gen-random`, {
    body: { random_data_length: '256' },
    token: await service.tokenFor(P),
    ...options,
  });

/**
 * A TLS server that accepts every protocol version and cipher the client offers, with the same certificate: a
 * handshake the service refuses must succeed here, or the refusal would prove nothing about the service.
 */
async function acceptedByAnyServer(options: ClientOptions): Promise<{ protocol: string | null; cipher: string }> {
  const server = createTlsServer(
    {
      cert: pki.server.cert,
      key: pki.server.key,
      minVersion: 'TLSv1',
      ciphers: 'ALL:@SECLEVEL=0',
    },
    (socket) => socket.end(),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const port = (server.address() as { port: number }).port;
    return await new Promise((resolve, reject) => {
      const socket = connectTls({
        host: '127.0.0.1',
        port,
        ca: pki.ca.cert,
        ...(options.minVersion ? { minVersion: options.minVersion } : {}),
        ...(options.maxVersion ? { maxVersion: options.maxVersion } : {}),
        ...(options.ciphers ? { ciphers: options.ciphers } : {}),
      });
      socket.once('secureConnect', () => {
        resolve({ protocol: socket.getProtocol(), cipher: socket.getCipher().name });
        socket.destroy();
      });
      socket.once('error', reject);
    });
  } finally {
    server.close();
  }
}

describe('HTTPS on the service listener', () => {
  it('when a certificate is configured, then the service URL is https and a Huawei gen-random is served over TLS 1.3 and HTTP/1.1', async () => {
    expect(https.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(plain.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const answer = await genRandom(https, { ALPNProtocols: ['h2', 'http/1.1'] });
    expect(answer.status).toBe(200);
    expect(answer.body.random_data).toMatch(/^[0-9A-F]{64}$/);
    expect(answer.httpVersion).toBe('1.1');
    expect(answer.tls).toEqual({ protocol: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', alpn: 'http/1.1' });
  });

  it('when TLS is on, then Express answers too (the version document names https), and it is served on localhost', async () => {
    const answer = await send(https, '/');
    expect(answer.status).toBe(200);
    expect(answer.body.versions[0].links[0].href).toBe(`https://${new URL(https.url).host}/v1.0/`);
    const byName = await send(https, https.url.replace('127.0.0.1', 'localhost'));
    expect(byName.status).toBe(200);
  });

  it('when a TLS 1.2 client offers a suite the XKS spec lists, then it is served with that suite', async () => {
    const answer = await genRandom(https, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' });
    expect(answer.status).toBe(200);
    expect(answer.tls).toMatchObject({ protocol: 'TLSv1.2', cipher: 'ECDHE-ECDSA-AES256-GCM-SHA384' });
  });

  it('when a client offers only TLS 1.1, or only a TLS 1.2 suite the XKS spec does not list, then the handshake is refused', async () => {
    const tls11 = { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' } as const;
    expect(await acceptedByAnyServer(tls11)).toMatchObject({ protocol: 'TLSv1.1' });
    expect(await refusal(genRandom(https, tls11))).toMatch(/unsupported protocol|protocol version/i);

    for (const cipher of [
      'ECDHE-ECDSA-AES128-GCM-SHA256',
      'ECDHE-ECDSA-CHACHA20-POLY1305',
      'ECDHE-ECDSA-AES256-SHA384',
    ]) {
      const unlisted = { maxVersion: 'TLSv1.2', ciphers: cipher } as const;
      expect(await acceptedByAnyServer(unlisted)).toEqual({ protocol: 'TLSv1.2', cipher });
      expect(await refusal(genRandom(https, unlisted))).toMatch(/handshake failure/);
    }
  });

  it('when TLS is on, then every response carries Strict-Transport-Security; over plain HTTP none does', async () => {
    for (const service of [https, plain]) {
      const expected = service === https ? HSTS : undefined;
      const random = await genRandom(service);
      expect(random.status).toBe(200);
      expect(random.headers['strict-transport-security']).toBe(expected);
      const versions = await send(service, '/');
      expect(versions.status).toBe(200);
      expect(versions.headers['strict-transport-security']).toBe(expected);
      const unknown = await send(service, '/nowhere');
      expect(unknown.body.error_code).toBe('KMS.0201');
      expect(unknown.headers['strict-transport-security']).toBe(expected);
      // The AWS dialect's own listener refuses this unsigned request.
      const aws = await send(service, '/', { body: {}, method: 'POST' });
      expect(aws.headers['strict-transport-security']).toBe(expected);
      expect(random.headers['x-content-type-options']).toBe('nosniff');
    }
  });

  it('when a client speaks plain HTTP to the TLS listener, then nothing is served', async () => {
    const answer = await send(
      { ...https, url: https.url.replace('https:', 'http:') } as TestService,
      `/v1.0/${P}/kms/gen-random`,
      {
        body: { random_data_length: '256' },
        token: await https.tokenFor(P),
      },
    ).catch((err: NodeJS.ErrnoException) => err.code);
    expect(answer).toMatch(/ECONNRESET|HPE_/);
  });

  it('when a client never completes its handshake, then its connection is closed after the headers timeout; per-client caps hold before the handshake', async () => {
    const { port } = new URL(https.url);
    const opened = () =>
      new Promise<{ closed: Promise<number> }>((resolve, reject) => {
        const started = performance.now();
        const socket = connectTcp({ host: '127.0.0.1', port: Number(port), localAddress: '127.0.0.2' });
        const closed = new Promise<number>((done) => socket.once('close', () => done(performance.now() - started)));
        socket.on('error', () => undefined);
        socket.once('connect', () => resolve({ closed }));
        socket.once('error', reject);
      });
    const [first, second] = [await opened(), await opened()];
    const third = await opened();
    expect(await third.closed).toBeLessThan(HEADERS_TIMEOUT_MS / 2);
    const [a, b] = await Promise.all([first.closed, second.closed]);
    for (const ms of [a, b]) {
      expect(ms).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
      expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + 1_500);
    }
  });
});

describe('mutual TLS (KMS_TLS_CLIENT_CA_FILE, KMS_TLS_CLIENT_SUBJECT)', () => {
  const createKeyAs = async (client: IssuedCertificate | undefined, alias: string, version: SecureVersion) =>
    send(mutual, `/v1.0/${P}/kms/create-key`, {
      body: { key_alias: alias },
      token: await mutual.tokenFor(P),
      minVersion: version,
      maxVersion: version,
      ...(client ? { client } : {}),
    });

  it('when the client presents a certificate from the CA with the configured subject, then it is served', async () => {
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      const answer = await createKeyAs(clients.kms, `served-${version.replace('.', '')}`, version);
      expect(answer.status).toBe(200);
      expect(answer.tls?.protocol).toBe(version);
      expect(answer.headers['strict-transport-security']).toBe(HSTS);
    }
  });

  it('when the client presents no certificate, one from another CA, an expired one or one with another subject, then no request is served', async () => {
    // Without a certificate OpenSSL ends the handshake with an alert (`handshake failure` in TLS 1.2, `certificate
    // required` in 1.3); otherwise node:tls closes the connection once the handshake has checked the certificate
    // (in TLS 1.3 the client has finished its side by then).
    const refused: [string, IssuedCertificate | undefined, RegExp][] = [
      ['none', undefined, /^EPROTO: .*alert handshake failure|^ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED/],
      ['stranger', clients.stranger, /^ECONNRESET/],
      ['expired', clients.expired, /^ECONNRESET/],
      ['impostor', clients.impostor, /^ECONNRESET/],
    ];
    for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
      for (const [name, client, expected] of refused) {
        expect(
          await refusal(createKeyAs(client, `refused-${name}-${version.replace('.', '')}`, version)),
          `${name} ${version}`,
        ).toMatch(expected);
      }
    }
    // No request was served: only the keys of the served clients exist.
    const list = await send(mutual, `/v1.0/${P}/kms/list-keys`, {
      body: {},
      token: await mutual.tokenFor(P),
      client: clients.kms,
    });
    expect(list.status).toBe(200);
    const aliases = await Promise.all(
      (list.body.keys as string[]).map(async (id) => {
        const described = await send(mutual, `/v1.0/${P}/kms/describe-key`, {
          body: { key_id: id },
          token: await mutual.tokenFor(P),
          client: clients.kms,
        });
        return described.body.key_info.key_alias as string;
      }),
    );
    expect(aliases.every((alias) => alias.startsWith('served-'))).toBe(true);
  });
});

describe('src/main.ts with TLS', () => {
  it('when KMS_HOST is not loopback and no certificate is configured, then the service exits naming both ways out', async () => {
    const started = spawnService({ KMS_HOST: '0.0.0.0', KMS_PORT: '0', KMS_PIN: 'unused', KMS_DATA_DIR: pki.dir });
    const refusal = await started.then(
      () => expect.fail('expected the service to refuse to start'),
      (err: Error) => err.message,
    );
    expect(refusal).toMatch(/^service exited with 1 before listening/);
    expect(refusal).toContain(
      'KMS_HOST 0.0.0.0 is not a loopback address, and plain HTTP beyond this host would carry tokens and keys in ' +
        'the clear: set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE to serve HTTPS, or set KMS_ALLOW_PLAINTEXT_HTTP=true',
    );
  });

  it('when two workers listen on 0.0.0.0 with mutual TLS, then each reads the files and serves HTTPS', async () => {
    const token = createTestToken();
    try {
      const child = await spawnService(
        {
          KMS_DATA_DIR: `${token.dir}/data`,
          KMS_PIN: token.pin,
          KMS_TOKEN_LABEL: token.tokenLabel,
          KMS_PKCS11_LIBRARY: token.library,
          SOFTHSM2_CONF: token.softhsmConf,
          KMS_HOST: '0.0.0.0',
          KMS_PORT: String(await freePort()),
          KMS_WORKERS: '2',
          KMS_TLS_CERT_FILE: pki.server.certFile,
          KMS_TLS_KEY_FILE: pki.server.keyFile,
          KMS_TLS_CLIENT_CA_FILE: pki.ca.certFile,
        },
        2,
      );
      try {
        expect(child.url).toMatch(/^https:\/\/0\.0\.0\.0:\d+$/);
        const service = { url: child.url.replace('0.0.0.0', '127.0.0.1') } as TestService;
        for (let i = 0; i < 4; i++) {
          const answer = await send(service, '/', { client: clients.kms });
          expect(answer.status).toBe(200);
          expect(answer.headers['strict-transport-security']).toBe(HSTS);
        }
        expect(await refusal(send(service, '/'))).toMatch(/^ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED/);
      } finally {
        await stopService(child);
      }
    } finally {
      removeTestToken(token.dir);
    }
  }, 60_000);
});
