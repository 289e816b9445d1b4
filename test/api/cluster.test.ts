import { execFileSync } from 'node:child_process';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { signedRpcParams } from '../support/alibaba-sdk.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

const P = 'projectcluster';
const CAP_PER_WORKER = 4;
let token: TestToken;
let service: ChildService;
let authToken: string;
let accessKey: { id: string; secret: string };

beforeAll(async () => {
  token = createTestToken();
  const dataDir = path.join(token.dir, 'data');
  const env = {
    KMS_DATA_DIR: dataDir,
    KMS_PIN: token.pin,
    KMS_TOKEN_LABEL: token.tokenLabel,
    KMS_PKCS11_LIBRARY: token.library,
    SOFTHSM2_CONF: token.softhsmConf,
  };
  const printed = execFileSync(
    fileURLToPath(new URL('../../scripts/kms', import.meta.url)),
    ['credentials', 'create', '--project', P, '--format', 'alibaba'],
    {
      env: { ...process.env, ...env },
      encoding: 'utf8',
    },
  );
  accessKey = {
    id: /ALIBABA_CLOUD_ACCESS_KEY_ID=(\S+)/.exec(printed)?.[1] as string,
    secret: /ALIBABA_CLOUD_ACCESS_KEY_SECRET=(\S+)/.exec(printed)?.[1] as string,
  };
  // A small cap per worker, for the test of the cap; the other tests hold one connection at a time.
  service = await spawnService(
    { ...env, KMS_PORT: String(await freePort()), KMS_WORKERS: '2', KMS_MAX_CONNECTIONS: String(CAP_PER_WORKER) },
    2,
  );
  authToken = await signProjectToken(loadOrCreateIssuerKeys(dataDir), P, 3600);
}, 60_000);
afterAll(async () => {
  await stopService(service);
  removeTestToken(token.dir);
});

/** One request on a fresh connection, so that the primary hands successive requests to different workers. */
function call(action: string, body: unknown): Promise<{ status: number; body: { error?: { error_code: string } } }> {
  return post(`/v1.0/${P}/kms/${action}`, JSON.stringify(body), {
    'x-auth-token': authToken,
    'content-type': 'application/json',
  });
}

// biome-ignore lint/suspicious/noExplicitAny: response bodies are asserted field by field
function post(path: string, body: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
  const url = new URL(`${service.url}${path}`);
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent: false, headers }, (res) => {
      let text = '';
      res.on('data', (chunk) => {
        text += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('two node:cluster workers', () => {
  it('when a key is disabled through one worker, then every worker refuses it at once, and accepts it once enabled', async () => {
    expect(service.log().match(/"msg":"listening"/g)).toHaveLength(2);
    const created = await call('create-key', { key_alias: 'clustered' });
    const keyId = (created.body as unknown as { key_info: { key_id: string } }).key_info.key_id;
    for (let i = 0; i < 6; i++) expect((await call('create-datakey', { key_id: keyId })).status).toBe(200);

    expect((await call('disable-key', { key_id: keyId })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 6; i++) {
      const res = await call('create-datakey', { key_id: keyId });
      expect(res.body.error?.error_code).toBe('KMS.0209');
    }

    expect((await call('enable-key', { key_id: keyId })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 6; i++) expect((await call('create-datakey', { key_id: keyId })).status).toBe(200);
  });

  it('when a signed Alibaba request is replayed to both workers, then only its first delivery is served', async () => {
    const params = signedRpcParams(
      { accessKeyId: accessKey.id, secretAccessKey: accessKey.secret },
      {
        Action: 'GetRandomPassword',
      },
    );
    const form = new URLSearchParams(params).toString();
    const deliveries = [];
    for (let i = 0; i < 6; i++) {
      deliveries.push(await post('/', form, { 'content-type': 'application/x-www-form-urlencoded' }));
    }
    expect(deliveries[0]?.status).toBe(200);
    expect(deliveries.slice(1).map((d) => [d.status, d.body.Code])).toEqual(
      Array.from({ length: 5 }, () => [400, 'SignatureNonceUsed']),
    );
  });

  it('when every worker holds its cap of idle keep-alive connections, then a newcomer is refused at once and a retry is served', async () => {
    const url = new URL(service.url);
    /** A connection that sent GET /v1.0: 'served' (and kept alive), or 'refused' (closed without an answer). */
    const attempt = () =>
      new Promise<{ socket: Socket; outcome: 'served' | 'refused' }>((resolve, reject) => {
        const socket = connect(Number(url.port), url.hostname);
        let received = '';
        socket.on('error', () => undefined);
        socket.on('data', (chunk: Buffer) => {
          received += chunk.toString('latin1');
          if (received.includes('\r\n\r\n')) resolve({ socket, outcome: 'served' });
        });
        socket.once('close', () => resolve({ socket, outcome: received === '' ? 'refused' : 'served' }));
        socket.once('connect', () => socket.write('GET /v1.0 HTTP/1.1\r\nhost: kms\r\n\r\n'));
        setTimeout(() => reject(new Error('neither answered nor closed within 1 s')), 1_000).unref();
      });
    const held: Socket[] = [];
    try {
      let refused = false;
      for (let i = 0; i <= 2 * CAP_PER_WORKER && !refused; i++) {
        const { socket, outcome } = await attempt();
        held.push(socket);
        refused = outcome === 'refused';
      }
      expect(refused).toBe(true);
      // A refusal closes the idle connections of the worker that refused; the retry may reach the other one first.
      const retries: string[] = [];
      for (let i = 0; i < 3 && !retries.includes('served'); i++) {
        const { socket, outcome } = await attempt();
        held.push(socket);
        retries.push(outcome);
      }
      expect(retries).toContain('served');
    } finally {
      for (const socket of held) socket.destroy();
    }
  });
});
