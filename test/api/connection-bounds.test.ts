import { connect, type Socket } from 'node:net';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { sdkRequest } from '../support/huawei-sdk.js';
import { huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

/**
 * Connections are bounded (src/http/bounded-server.ts), shown through raw sockets against the real service. The
 * bounds are set small so that each test runs in about a second; node:http's defaults held a trickled body for
 * about 325 s and trickled headers for about 90 s.
 */
const HEADERS_TIMEOUT_MS = 500;
const REQUEST_TIMEOUT_MS = 1_500;
const REGION = 'local-1';
const P = 'boundsproject';
const BODY_60_KIB = 'x'.repeat(60 * 1024);

let kms: TestService;
let host: string;
let port: number;
let credentials: { accessKeyId: string; secretAccessKey: string };
const logs: string[] = [];

beforeAll(async () => {
  kms = await startTestService(
    {
      KMS_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      KMS_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      KMS_REGION: REGION,
      KMS_LOG_LEVEL: 'debug',
    },
    { onLog: (line) => logs.push(line) },
  );
  const url = new URL(kms.url);
  host = url.hostname;
  port = Number(url.port);
  credentials = await kms.running.credentials.create(P);
});
afterAll(() => kms.destroy());

/** A raw connection: what it received, and when it closed (milliseconds after it was opened). */
interface RawConnection {
  readonly socket: Socket;
  readonly received: () => string;
  readonly closed: Promise<number>;
}

function open(toPort = port, localAddress?: string): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let received = '';
    const socket = connect({ port: toPort, host, localAddress });
    const closed = new Promise<number>((done) => socket.once('close', () => done(performance.now() - started)));
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
    });
    socket.on('error', () => undefined); // a reset is what some tests expect; `closed` reports it
    socket.once('connect', () => resolve({ socket, received: () => received, closed }));
    socket.once('error', reject);
  });
}

/** How long after it was opened `connection` closed; a failure if it is still open `ms` from now. */
function closedWithin(connection: RawConnection, ms: number): Promise<number> {
  return Promise.race([
    connection.closed,
    new Promise<number>((_, reject) => setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms).unref()),
  ]);
}

/** Writes `text` one byte every `everyMs` while the socket is open. */
function trickle(socket: Socket, text: string, everyMs: number): void {
  let at = 0;
  const timer = setInterval(() => {
    if (at >= text.length || socket.destroyed || !socket.writable) return clearInterval(timer);
    socket.write(text[at++] as string);
  }, everyMs);
  socket.once('close', () => clearInterval(timer));
}

/** Resolves once `received()` holds a whole response (headers and a Content-Length body), or rejects after `ms`. */
async function response(
  connection: RawConnection,
  ms: number,
): Promise<{ status: number; head: string; body: string }> {
  const deadline = performance.now() + ms;
  for (;;) {
    const text = connection.received();
    const end = text.indexOf('\r\n\r\n');
    if (end !== -1) {
      const head = text.slice(0, end);
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
      if (text.length >= end + 4 + length) {
        return { status: Number(head.split(' ')[1]), head, body: text.slice(end + 4, end + 4 + length) };
      }
    }
    if (performance.now() > deadline) throw new Error(`no whole response within ${ms} ms: ${JSON.stringify(text)}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function requestHead(method: string, path: string, headers: Record<string, string>): string {
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  return `${method} ${path} HTTP/1.1\r\n${lines.join('')}\r\n`;
}

/** The head of an AWS request signed for `body` by `accessKeyId`, as the AWS SDK signs it. */
async function awsHead(target: string, body: string, signer = credentials): Promise<string> {
  const signed = await new SignatureV4({ service: 'kms', region: REGION, sha256: Sha256, credentials: signer }).sign({
    method: 'POST',
    protocol: 'http:',
    hostname: host,
    port,
    path: '/',
    headers: {
      host: `${host}:${port}`,
      'content-type': 'application/x-amz-json-1.1',
      'content-length': String(Buffer.byteLength(body)),
      'x-amz-target': `TrentService.${target}`,
    },
    body,
  });
  return requestHead('POST', '/', signed.headers);
}

async function huaweiHead(body: string): Promise<string> {
  return requestHead('POST', `/v1.0/${P}/kms/gen-random`, {
    host: `${host}:${port}`,
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(body)),
    'x-auth-token': await kms.tokenFor(P),
  });
}

/**
 * An Alibaba GetRandomPassword form POST, as the Alibaba SDK sends it: the signed common parameters in the query
 * string, `form` (signed too) in the body.
 */
function alibabaRequest(form: Record<string, string>, accessKeyId = credentials.accessKeyId) {
  const signed = signedRpcParams({ ...credentials, accessKeyId }, { Action: 'GetRandomPassword', ...form });
  const body = new URLSearchParams(form).toString();
  const query = new URLSearchParams(Object.entries(signed).filter(([name]) => !(name in form)));
  const head = requestHead('POST', `/?${query}`, {
    host: `${host}:${port}`,
    'content-type': 'application/x-www-form-urlencoded',
    'content-length': String(Buffer.byteLength(body)),
  });
  return { head, body };
}

const parsedLogs = () => logs.map((line) => JSON.parse(line) as Record<string, unknown>);

async function logged(predicate: (line: Record<string, unknown>) => boolean, ms = 2_000) {
  const deadline = performance.now() + ms;
  for (;;) {
    const line = parsedLogs().find(predicate);
    if (line) return line;
    if (performance.now() > deadline) throw new Error(`not logged within ${ms} ms:\n${logs.join('')}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('header and request timeouts', () => {
  it('when a client trickles its headers byte by byte, then the headers timeout answers 408 and closes the connection', async () => {
    const connection = await open();
    trickle(
      connection.socket,
      `POST /v1.0/${P}/kms/gen-random HTTP/1.1\r\nhost: x\r\nx-padding: ${'a'.repeat(200)}`,
      50,
    );
    const closedAfter = await connection.closed;
    expect(connection.received()).toBe('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n');
    expect(closedAfter).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
    expect(closedAfter).toBeLessThan(HEADERS_TIMEOUT_MS + 1_000);
  });

  it('when a client connects and sends nothing, then the headers timeout closes the connection', async () => {
    const connection = await open();
    expect(await connection.closed).toBeLessThan(HEADERS_TIMEOUT_MS + 1_000);
  });

  it.each([
    ['Huawei', () => huaweiHead('{"random_data_length":"512"}'), '{"random_data_length":"512"}'],
    ['AWS', () => awsHead('GenerateRandom', '{"NumberOfBytes":32}'), '{"NumberOfBytes":32}'],
  ])(
    'when a body for the %s dialect is trickled, then it is cut off within the request timeout while other requests are served',
    async (_dialect, head, body) => {
      const connection = await open();
      connection.socket.write(await head());
      trickle(connection.socket, body, 100);
      await new Promise((r) => setTimeout(r, 300));
      // The body being awaited holds neither the event loop nor an HSM session.
      const meanwhile = await kms.call(P, 'gen-random', { random_data_length: '512' });
      expect(meanwhile.status).toBe(200);
      const closedAfter = await connection.closed;
      expect(connection.received()).toBe('HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n');
      expect(closedAfter).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
      expect(closedAfter).toBeLessThan(REQUEST_TIMEOUT_MS + 1_000);
    },
  );
});

describe('signed requests: the access key is resolved before the body is read', () => {
  it('when an AWS request of an unknown or revoked access key announces 60 KiB it never sends, then UnrecognizedClientException comes at once', async () => {
    const revoked = await kms.running.credentials.create(P);
    await kms.running.credentials.revoke(revoked.accessKeyId);
    const unknown = { accessKeyId: 'AKIAUNKNOWNUNKNOWN00', secretAccessKey: 'x'.repeat(40) };
    for (const signer of [unknown, revoked]) {
      const connection = await open();
      const started = performance.now();
      connection.socket.write(await awsHead('Encrypt', BODY_60_KIB, signer));
      const answer = await response(connection, REQUEST_TIMEOUT_MS / 2);
      expect(performance.now() - started).toBeLessThan(REQUEST_TIMEOUT_MS / 2);
      expect(answer.status).toBe(400);
      expect(answer.head).toMatch(/\r\nx-amzn-ErrorType: UnrecognizedClientException\r\n/i);
      expect(JSON.parse(answer.body)).toEqual({
        __type: 'UnrecognizedClientException',
        message: 'The security token included in the request is invalid.',
      });
      connection.socket.destroy();
    }
  });

  it('when an Alibaba form POST names an unknown access key in its query and announces 60 KiB it never sends, then InvalidAccessKeyId.NotFound comes at once', async () => {
    const connection = await open();
    const started = performance.now();
    connection.socket.write(alibabaRequest({ Padding: BODY_60_KIB }, 'LTAIunknownunknown00').head);
    const answer = await response(connection, REQUEST_TIMEOUT_MS / 2);
    expect(performance.now() - started).toBeLessThan(REQUEST_TIMEOUT_MS / 2);
    expect(answer.status).toBe(404);
    expect(JSON.parse(answer.body)).toMatchObject({
      Code: 'InvalidAccessKeyId.NotFound',
      Message: 'The AccessKey ID provided does not exist in our records.',
    });
    connection.socket.destroy();
  });

  it('when an Alibaba form POST names a known access key in its query, then its form body is read and the request served', async () => {
    const connection = await open();
    const { head, body } = alibabaRequest({ PasswordLength: '17' });
    connection.socket.write(head);
    connection.socket.write(body);
    const answer = await response(connection, 2_000);
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body).RandomPassword).toHaveLength(17);
    connection.socket.destroy();
  });
});

describe('Expect: 100-continue', () => {
  /** `head` asking the server to say `100 Continue` before the client sends its body. */
  const expectingContinue = (head: string) => head.replace(/\r\n\r\n$/, '\r\nexpect: 100-continue\r\n\r\n');
  const unknownSigner = { accessKeyId: 'AKIAUNKNOWNUNKNOWN00', secretAccessKey: 'x'.repeat(40) };

  it('when an AWS request of an unknown access key expects 100-continue for 60 KiB, then it is refused without 100 Continue', async () => {
    const connection = await open();
    connection.socket.write(expectingContinue(await awsHead('Encrypt', BODY_60_KIB, unknownSigner)));
    const answer = await response(connection, REQUEST_TIMEOUT_MS / 2);
    expect(connection.received()).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    // Its client may still send the body: node:http closes the connection rather than read it as a next request.
    expect(answer.head).toMatch(/\r\nconnection: close(\r\n|$)/i);
    expect(JSON.parse(answer.body)).toEqual({
      __type: 'UnrecognizedClientException',
      message: 'The security token included in the request is invalid.',
    });
    connection.socket.destroy();
  });

  it('when a Huawei request signed by an unknown access key expects 100-continue for 60 KiB, then it is refused without 100 Continue', async () => {
    const wire = sdkRequest('python', {
      url: `${kms.url}/v1.0/${P}/kms/gen-random`,
      body: { random_data_length: '32' },
      credentials: { ...unknownSigner, projectId: P },
    });
    const headers = Object.fromEntries([...wire.headers, ['content-length', String(BODY_60_KIB.length)]]);
    const connection = await open();
    connection.socket.write(expectingContinue(requestHead('POST', `/v1.0/${P}/kms/gen-random`, headers)));
    const answer = await response(connection, REQUEST_TIMEOUT_MS / 2);
    expect(connection.received()).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(JSON.parse(answer.body)).toEqual(
      huaweiErrorBody('KMS.0302', `The access key '${unknownSigner.accessKeyId}' is unknown or revoked.`),
    );
    connection.socket.destroy();
  });

  it.each([
    ['AWS', () => awsHead('GenerateRandom', '{"NumberOfBytes":32}'), '{"NumberOfBytes":32}'],
    ['Huawei', () => huaweiHead('{"random_data_length":"512"}'), '{"random_data_length":"512"}'],
  ])(
    'when a valid %s request expects 100-continue, then 100 Continue comes first, and once the body is sent, the answer',
    async (_dialect, head, body) => {
      const connection = await open();
      connection.socket.write(expectingContinue(await head()));
      const deadline = performance.now() + 2_000;
      while (!connection.received().includes('\r\n\r\n') && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(connection.received()).toBe('HTTP/1.1 100 Continue\r\n\r\n');
      connection.socket.write(body);
      const deadline2 = performance.now() + 2_000;
      while (!/\r\n\r\nHTTP\/1\.1 200 OK\r\n/.test(connection.received()) && performance.now() < deadline2) {
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(connection.received()).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
      connection.socket.destroy();
    },
  );
});

describe('a body the service does not read', () => {
  /** `head` with its Content-Length replaced by chunked transfer coding, for a body of no announced end. */
  const chunked = (head: string) =>
    head.replace(/\r\ncontent-length: \d+\r\n/i, '\r\n').replace(/\r\n\r\n$/, '\r\ntransfer-encoding: chunked\r\n\r\n');

  /** Sends 16 KiB chunks as fast as the connection takes them, until it closes. */
  function flood(socket: Socket): void {
    const chunk = Buffer.from(`4000\r\n${'x'.repeat(0x4000)}\r\n`);
    const write = () => {
      while (!socket.destroyed && socket.write(chunk));
      if (!socket.destroyed) socket.once('drain', write);
    };
    write();
  }

  it.each([
    [
      'an AWS request of an unknown access key',
      () => awsHead('Encrypt', BODY_60_KIB, { accessKeyId: 'AKIAUNKNOWNUNKNOWN00', secretAccessKey: 'x'.repeat(40) }),
      {
        __type: 'UnrecognizedClientException',
        message: 'The security token included in the request is invalid.',
      },
    ],
    [
      'a Huawei request whose body outgrows 64 KiB',
      () => huaweiHead(BODY_60_KIB),
      huaweiErrorBody('KMS.0203', 'Request message too long.'),
    ],
  ])(
    'when %s sends an endless body, then the client reads the refusal and the connection is closed long before the request timeout',
    async (_case, head, refusal) => {
      const connection = await open();
      connection.socket.write(chunked(await head()));
      flood(connection.socket);
      const answer = await response(connection, REQUEST_TIMEOUT_MS / 2);
      expect(JSON.parse(answer.body)).toEqual(refusal);
      // Without a bound, the body is drained at line rate until the request timeout.
      expect(await closedWithin(connection, REQUEST_TIMEOUT_MS / 2)).toBeLessThan(REQUEST_TIMEOUT_MS / 2);
    },
  );

  it('when a Huawei request sends a 100 KiB body whole, then the client reads the refusal and its connection serves the next request', async () => {
    const body = 'x'.repeat(100 * 1024);
    const connection = await open();
    connection.socket.write((await huaweiHead(body)) + body);
    const answer = await response(connection, 2_000);
    expect(answer.status).toBe(400);
    expect(JSON.parse(answer.body)).toEqual(huaweiErrorBody('KMS.0203', 'Request message too long.'));
    const refusalLength = connection.received().length;
    const next = '{"random_data_length":"512"}';
    connection.socket.write((await huaweiHead(next)) + next);
    const deadline = performance.now() + 2_000;
    while (!connection.received().slice(refusalLength).includes('"random_data"') && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(connection.received().slice(refusalLength)).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(connection.socket.destroyed).toBe(false);
    connection.socket.destroy();
  });
});

describe('a client that aborts mid-request', () => {
  it.each([
    ['Huawei', 'FIN', () => huaweiHead('{"random_data_length":"512"}')],
    ['AWS', 'RST', () => awsHead('GenerateRandom', '{"NumberOfBytes":32}')],
    ['Alibaba', 'FIN', async () => alibabaRequest({ PasswordLength: '17' }).head],
  ])(
    'when a client of the %s dialect closes (%s) before its body is complete, then a debug line without stack is logged and no error',
    async (_dialect, how, head) => {
      logs.length = 0;
      const connection = await open();
      connection.socket.write(await head());
      connection.socket.write('{"');
      await new Promise((r) => setTimeout(r, 100));
      if (how === 'RST') connection.socket.resetAndDestroy();
      else connection.socket.end();
      await connection.closed;
      const line = await logged((l) => l.msg === 'client connection failed');
      expect(line).toMatchObject({ level: 'debug', code: how === 'RST' ? 'ECONNRESET' : 'HPE_INVALID_EOF_STATE' });
      await new Promise((r) => setTimeout(r, 200));
      for (const l of parsedLogs()) {
        expect(l).not.toHaveProperty('stack');
        expect(l.level).toBe('debug');
      }
    },
  );
});

describe('the connection cap', () => {
  let capped: TestService;
  let cappedPort: number;
  const versions = requestHead('GET', '/v1.0', { host: 'kms' });
  beforeAll(async () => {
    capped = await startTestService(
      { KMS_MAX_CONNECTIONS: '2', KMS_LOG_LEVEL: 'warn' },
      { onLog: (l) => logs.push(l), besides: kms },
    );
    cappedPort = Number(new URL(capped.url).port);
  });
  afterAll(() => capped.destroy());

  /** A connection answered once and kept alive, idle. */
  async function heldOpen(toPort: number): Promise<RawConnection> {
    const connection = await open(toPort);
    connection.socket.write(versions);
    expect((await response(connection, 2_000)).status).toBe(200);
    return connection;
  }

  it('when as many connections as the cap are busy, then the next one is closed at once and a later one is served', async () => {
    // Two connections that have each begun a request: busy, not idle, so nothing closes them.
    const busy = [await open(cappedPort), await open(cappedPort)];
    for (const connection of busy) connection.socket.write('GET /v1.0 HTTP/1.1\r\nhost: kms\r\n');
    await new Promise((r) => setTimeout(r, 100));
    logs.length = 0;
    const refused = await open(cappedPort);
    refused.socket.write(versions);
    expect(await refused.closed).toBeLessThan(1_000);
    expect(refused.received()).toBe('');
    expect(parsedLogs()).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        msg: 'connections refused: the connection limit is reached',
        dropped: 1,
        maxConnections: 2,
      }),
    );
    expect(busy.filter((connection) => connection.socket.destroyed)).toEqual([]);

    busy[0]?.socket.destroy();
    await busy[0]?.closed;
    await new Promise((r) => setTimeout(r, 50));
    const later = await open(cappedPort);
    later.socket.write(versions);
    expect((await response(later, 2_000)).status).toBe(200);
    for (const connection of [later, ...busy]) connection.socket.destroy();
    // The server frees their slots once it has seen them close.
    await new Promise((r) => setTimeout(r, 100));
  });

  it('when the cap is filled with idle keep-alive connections, then a refused newcomer makes them give way and its retry is served', async () => {
    const idle = [await heldOpen(cappedPort), await heldOpen(cappedPort)];
    const refused = await open(cappedPort);
    await closedWithin(refused, 1_000);
    // The idle connections are closed at once, not after the 65 s keep-alive timeout.
    for (const connection of idle) await closedWithin(connection, 1_000);
    const retry = await open(cappedPort);
    retry.socket.write(versions);
    expect((await response(retry, 2_000)).status).toBe(200);
    retry.socket.destroy();
  });
});

describe('the connection limit of one client address', () => {
  let limited: TestService;
  let limitedPort: number;
  const versions = requestHead('GET', '/v1.0', { host: 'kms' });
  beforeAll(async () => {
    limited = await startTestService(
      { KMS_MAX_CONNECTIONS: '10', KMS_MAX_CONNECTIONS_PER_CLIENT: '2', KMS_LOG_LEVEL: 'warn' },
      { onLog: (l) => logs.push(l), besides: kms },
    );
    limitedPort = Number(new URL(limited.url).port);
  });
  afterAll(() => limited.destroy());

  it('when one address holds its limit of connections, then its next one is closed at once while another address is served', async () => {
    const held = [await open(limitedPort), await open(limitedPort)];
    for (const connection of held) {
      connection.socket.write(versions);
      expect((await response(connection, 2_000)).status).toBe(200);
    }
    logs.length = 0;
    const refused = await open(limitedPort);
    refused.socket.write(versions);
    await closedWithin(refused, 1_000);
    expect(refused.received()).toBe('');
    expect(parsedLogs()).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        msg: 'connections refused: a client address reached its connection limit',
        dropped: 1,
        maxConnectionsPerClient: 2,
        client: '127.0.0.1',
      }),
    );
    // The held connections stay open: a client's limit takes nothing from its connections or anyone else's.
    expect(held.filter((connection) => connection.socket.destroyed)).toEqual([]);

    // Any 127.x.y.z reaches the service on 127.0.0.1: another client address on the same host.
    const neighbour = await open(limitedPort, '127.0.0.2');
    neighbour.socket.write(versions);
    expect((await response(neighbour, 2_000)).status).toBe(200);

    held[0]?.socket.destroy();
    await held[0]?.closed;
    await new Promise((r) => setTimeout(r, 50));
    const later = await open(limitedPort);
    later.socket.write(versions);
    expect((await response(later, 2_000)).status).toBe(200);
    for (const connection of [later, neighbour, ...held]) connection.socket.destroy();
  });
});
