import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signProjectToken } from '../../src/auth/local-issuer.js';
import { KeyService } from '../../src/core/key.service.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

const A = 'projectalpha';
const B = 'projectbravo';
let kms: TestService;

beforeAll(async () => {
  kms = await startTestService();
});
afterAll(async () => {
  await kms.destroy();
});

describe('authentication', () => {
  it('when X-Auth-Token is missing, then the answer is 403 KMS.0301', async () => {
    const res = await kms.call(A, 'gen-random', {}, { token: null });
    expect(res.status).toBe(403);
    expect(res.body).toEqual(huaweiErrorBody('KMS.0301', 'Invalid or null X-Auth-Token.'));
  });

  it('when the token is garbage or signed by another key, then the answer is 403 KMS.0302', async () => {
    expect((await kms.call(A, 'gen-random', {}, { token: 'not.a.jwt' })).body.error.error_code).toBe('KMS.0302');
    const { generateKeyPairSync } = await import('node:crypto');
    const foreign = generateKeyPairSync('ed25519');
    const forged = await signProjectToken(foreign, A, 3600);
    const res = await kms.call(A, 'gen-random', {}, { token: forged });
    expect(res.status).toBe(403);
    expect(res.body.error.error_code).toBe('KMS.0302');
  });

  it('when the token has expired, then the answer is 403 KMS.0303', async () => {
    const token = await kms.tokenFor(A, 1);
    await new Promise((r) => setTimeout(r, 2100));
    const res = await kms.call(A, 'gen-random', {}, { token });
    expect(res.status).toBe(403);
    expect(res.body.error.error_code).toBe('KMS.0303');
  });

  it('when the token is for another project than the path, then the answer is 403 KMS.0321', async () => {
    const res = await kms.call(A, 'gen-random', {}, { token: await kms.tokenFor(B) });
    expect(res.status).toBe(403);
    expect(res.body.error.error_code).toBe('KMS.0321');
  });
});

describe('project isolation', () => {
  it("when project B names project A's key or blob, then it is answered exactly as a key that does not exist", async () => {
    const keyId = await createKey(kms, A, 'alpha-secret');
    const made = await kms.call(A, 'create-datakey', { key_id: keyId });
    const encrypted = await kms.call(A, 'encrypt-data', { key_id: keyId, plain_text: 'alpha only' });
    const missing = huaweiErrorBody('KMS.0207', 'The key does not exist.');

    for (const [action, body] of [
      ['describe-key', { key_id: keyId }],
      ['describe-key', { key_id: 'alias/alpha-secret' }],
      ['create-datakey', { key_id: keyId }],
      ['encrypt-data', { key_id: keyId, plain_text: 'x' }],
      ['decrypt-datakey', { key_id: keyId, cipher_text: made.body.cipher_text, datakey_cipher_length: '64' }],
      ['decrypt-data', { cipher_text: encrypted.body.cipher_text }],
      ['disable-key', { key_id: keyId }],
      ['schedule-key-deletion', { key_id: keyId, pending_days: '7' }],
      ['update-key-alias', { key_id: keyId, key_alias: 'stolen' }],
      ['update-key-description', { key_id: keyId, key_description: 'stolen' }],
    ] as const) {
      const res = await kms.call(B, action, body);
      expect({ action, status: res.status, body: res.body }).toEqual({ action, status: 404, body: missing });
    }
    const listed = await kms.call(B, 'list-keys', {});
    expect(listed.body.keys).not.toContain(keyId);
    const described = await kms.call(A, 'describe-key', { key_id: keyId });
    expect(described.body.key_info).toMatchObject({ key_state: '2', key_alias: 'alpha-secret', key_description: '' });
  });

  it('when two projects use the same alias, then each resolves to its own key', async () => {
    const a = await createKey(kms, A, 'shared-name');
    const b = await createKey(kms, B, 'shared-name');
    expect(a).not.toBe(b);
    expect((await kms.call(A, 'describe-key', { key_id: 'alias/shared-name' })).body.key_info.key_id).toBe(a);
    expect((await kms.call(B, 'describe-key', { key_id: 'alias/shared-name' })).body.key_info.key_id).toBe(b);
  });
});

describe('HTTP edge', () => {
  it('when GET / and GET /v1.0 are read, then the version documents come back without a token', async () => {
    const root = await fetch(`${kms.url}/`);
    expect(root.status).toBe(200);
    // biome-ignore lint/suspicious/noExplicitAny: asserted field by field
    const body: any = await root.json();
    expect(body.versions[0]).toMatchObject({ id: 'v1.0', status: 'CURRENT', min_version: '', version: '' });
    expect(body.versions[0].links[0]).toEqual({ href: `${kms.url}/v1.0/`, rel: 'self' });
    // biome-ignore lint/suspicious/noExplicitAny: asserted field by field
    const v1: any = await (await fetch(`${kms.url}/v1.0`)).json();
    expect(v1.version.id).toBe('v1.0');
  });

  it('when the JSON is malformed, then the answer is KMS.0202', async () => {
    const res = await kms.call(A, 'gen-random', undefined, { rawBody: '{"random_data_length":' });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe('KMS.0202');
    for (const raw of ['[]', '"text"', '42']) {
      expect((await kms.call(A, 'gen-random', undefined, { rawBody: raw })).body.error.error_code).toBe('KMS.0202');
    }
  });

  it('when the body is over 64 KiB, then the answer is KMS.0203', async () => {
    const res = await kms.call(A, 'encrypt-data', undefined, {
      rawBody: JSON.stringify({ key_id: 'alias/x', plain_text: 'a'.repeat(70_000) }),
    });
    expect(res.status).toBe(400);
    expect(res.body.error.error_code).toBe('KMS.0203');
  });

  it('when an action is called with the wrong method, then the answer is 405 KMS.0215 with Allow', async () => {
    const get = await kms.call(A, 'create-datakey', undefined, { method: 'GET' });
    expect(get.status).toBe(405);
    expect(get.body.error.error_code).toBe('KMS.0215');
    expect(get.headers.get('allow')).toBe('POST');
    const post = await kms.call(A, 'user-quotas', {}, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET');
  });

  it('when the route is unknown, then the answer is KMS.0201 in the Huawei error body', async () => {
    const unknownAction = await kms.call(A, 'no-such-action', {});
    expect(unknownAction.body.error.error_code).toBe('KMS.0201');
    for (const path of ['/nothing', '/v1.0/p/other', '/v2/p/kms/gen-random']) {
      const res = await fetch(`${kms.url}${path}`, { method: 'POST' });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { error_code: string } }).error.error_code).toBe('KMS.0201');
    }
    const badProject = await fetch(`${kms.url}/v1.0/${'x'.repeat(65)}/kms/gen-random`, { method: 'POST' });
    expect(((await badProject.json()) as { error: { error_code: string } }).error.error_code).toBe('KMS.0201');
  });

  it('when an action is given query parameters, then KMS.0201 refuses them; an empty query is no parameter', async () => {
    const post = async (query: string) => {
      const res = await fetch(`${kms.url}/v1.0/${A}/kms/gen-random${query}`, {
        method: 'POST',
        headers: { 'x-auth-token': await kms.tokenFor(A), 'content-type': 'application/json' },
        body: JSON.stringify({ random_data_length: '256' }),
      });
      return { status: res.status, body: (await res.json()) as { random_data?: string } };
    };
    const refused = huaweiErrorBody('KMS.0201', 'Invalid request URL: the actions take no query parameters.');
    for (const query of ['?random_data_length=1024', '?foo', '?&x=1']) {
      expect(await post(query), query).toEqual({ status: 400, body: refused });
    }
    for (const query of ['', '?', '?&&']) {
      const res = await post(query);
      expect([res.status, res.body.random_data?.length], query).toEqual([200, 64]);
    }
  });

  it('when any response is sent, then it carries security headers and a request id, and never a stack trace', async () => {
    const res = await fetch(`${kms.url}/v1.0/${A}/kms/gen-random`, {
      method: 'POST',
      headers: { 'x-auth-token': await kms.tokenFor(A) },
      body: '{',
    });
    const text = await res.text();
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    expect(res.headers.get('x-powered-by')).toBeNull();
    expect(text).not.toMatch(/at .*\.(ts|js):\d+/);
  });
});

describe('scheduled deletion', () => {
  it('when the deletion date has passed, then the sweep deletes the key and its ciphertexts can never be decrypted', async () => {
    const keyId = await createKey(kms, A, 'to-be-deleted');
    const made = await kms.call(A, 'create-datakey', { key_id: keyId });
    await kms.call(A, 'schedule-key-deletion', { key_id: keyId, pending_days: '7' });

    const { hsm, store } = kms.running;
    const { keyStores } = kms.running.services;
    const inSixDays = new KeyService(hsm, store, { now: () => Date.now() + 6 * 86_400_000 }, 100, keyStores);
    expect(await inSixDays.purgeDueDeletions()).toBe(0);
    const inEightDays = new KeyService(hsm, store, { now: () => Date.now() + 8 * 86_400_000 }, 100, keyStores);
    expect(await inEightDays.purgeDueDeletions()).toBe(1);

    expect(await store.findKeyVersion(keyId, 0)).toBeUndefined();
    const described = await kms.call(A, 'describe-key', { key_id: keyId });
    expect(described.body.error.error_code).toBe('KMS.0207');
    const res = await kms.call(A, 'decrypt-datakey', {
      key_id: keyId,
      cipher_text: made.body.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(res.body.error.error_code).toBe('KMS.0207');
    expect((await kms.call(A, 'create-key', { key_alias: 'to-be-deleted' })).status).toBe(200);
  });
});

describe('request bodies', () => {
  it('when an oversized body arrives in chunks without a length, then the answer is still KMS.0203', async () => {
    const chunk = new TextEncoder().encode(`"${'a'.repeat(70 * 1024)}",`);
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"x":['));
        for (let i = 0; i < 8; i++) controller.enqueue(chunk);
        controller.enqueue(new TextEncoder().encode('"z"]}'));
        controller.close();
      },
    });
    const res = await fetch(`${kms.url}/v1.0/${A}/kms/gen-random`, {
      method: 'POST',
      headers: { 'x-auth-token': await kms.tokenFor(A) },
      body: stream,
      duplex: 'half',
    } as RequestInit);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { error_code: string } }).error.error_code).toBe('KMS.0203');
  });

  it('when the body is compressed, then the answer is KMS.0214', async () => {
    const res = await fetch(`${kms.url}/v1.0/${A}/kms/gen-random`, {
      method: 'POST',
      headers: { 'x-auth-token': await kms.tokenFor(A), 'content-encoding': 'gzip' },
      body: '{}',
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { error_code: string } }).error.error_code).toBe('KMS.0214');
  });
});
