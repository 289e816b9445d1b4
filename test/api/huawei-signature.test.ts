import { randomUUID } from 'node:crypto';
import { request } from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type HuaweiCredentials,
  huaweiKmsClient,
  type SdkStyle,
  sdkDate,
  sdkRequest,
  send,
  type WireRequest,
} from '../support/huawei-sdk.js';
import { createKey, huaweiErrorBody, startTestService, type TestService } from '../support/test-service.js';

const A = 'hwsigned-a';
const B = 'hwsigned-b';
const MINUTE = 60_000;
let kms: TestService;
let keysA: HuaweiCredentials;
let keysB: HuaweiCredentials;

beforeAll(async () => {
  kms = await startTestService();
  const credentials = kms.running.credentials;
  keysA = { ...(await credentials.create(A)), projectId: A };
  keysB = { ...(await credentials.create(B)), projectId: B };
});
afterAll(async () => {
  await kms.destroy();
});

const actionUrl = (projectId: string, action: string) => `${kms.url}/v1.0/${projectId}/kms/${action}`;

/** A request signed in `style`, for `action` of the credentials' project unless `projectId` says otherwise. */
function signed(
  style: SdkStyle,
  action: string,
  body: object | undefined,
  options: {
    credentials?: HuaweiCredentials;
    projectId?: string;
    at?: number;
    extraHeaders?: Record<string, string>;
  } = {},
): WireRequest {
  const credentials = options.credentials ?? keysA;
  return sdkRequest(style, {
    url: actionUrl(options.projectId ?? credentials.projectId, action),
    ...(body ? { body } : {}),
    credentials,
    ...(options.at !== undefined ? { at: options.at } : {}),
    ...(options.extraHeaders ? { extraHeaders: options.extraHeaders } : {}),
  });
}

/** The same request with headers replaced, removed (undefined) or added, after signing. */
function altered(wire: WireRequest, changes: Record<string, string | string[] | undefined>): WireRequest {
  const lower = Object.fromEntries(Object.entries(changes).map(([name, value]) => [name.toLowerCase(), value]));
  const headers: Array<readonly [string, string]> = wire.headers.filter(([name]) => !(name.toLowerCase() in lower));
  for (const [name, value] of Object.entries(changes)) {
    for (const v of value === undefined ? [] : Array.isArray(value) ? value : [value]) headers.push([name, v]);
  }
  return { ...wire, headers };
}

const refused = (status: number, code: string, message: string) => ({
  status,
  body: huaweiErrorBody(code, message),
});

describe("requests signed as each of Huawei's SDKs signs them", () => {
  it.each([
    ['python', 'content-type;host;user-agent;x-project-id;x-sdk-date'],
    ['node', 'content-type;host;x-project-id;x-sdk-date'],
    ['go', 'user-agent;x-project-id;x-sdk-date'],
  ] as const)('when a %s-style request signs %s, then gen-random answers 200', async (style, signedHeaders) => {
    const wire = signed(style, 'gen-random', { random_data_length: '256' });
    expect(wire.headers.find(([name]) => name === 'Authorization')?.[1]).toContain(`SignedHeaders=${signedHeaders},`);
    const res = await send(wire);
    expect(res.status).toBe(200);
    expect(res.body.random_data).toMatch(/^[0-9A-F]{64}$/);
  });

  it('when a Python-style body has ", " separators and \\u escapes, then its raw bytes are what is verified', async () => {
    const keyId = await createKey(kms, A, 'python-bytes');
    const text = 'h\u00e9llo \u2713 "quoted" \ud83d\udd11';
    const wire = signed('python', 'encrypt-data', {
      key_id: keyId,
      plain_text: text,
    });
    expect(wire.body.toString()).toBe(
      `{"key_id": "${keyId}", "plain_text": "h\\u00e9llo \\u2713 \\"quoted\\" \\ud83d\\udd11"}`,
    );
    const sealed = await send(wire);
    expect(sealed.status).toBe(200);
    const opened = await send(signed('python', 'decrypt-data', { cipher_text: sealed.body.cipher_text }));
    expect(opened).toMatchObject({ status: 200, body: { key_id: keyId, plain_text: text } });
  });

  it("when Huawei's Node SDK drives a key's life, then every call succeeds with the project's access key", async () => {
    const call = huaweiKmsClient(kms.url, keysA);
    const random = await call('gen-random', { random_data_length: '512' });
    expect(random.random_data).toMatch(/^[0-9A-F]{128}$/);
    const keyId = (await call('create-key', { key_alias: 'node-sdk-key' })).key_info.key_id as string;
    const dataKey = await call('create-datakey', { key_id: keyId, datakey_length: '512' });
    const opened = await call('decrypt-datakey', {
      key_id: keyId,
      cipher_text: dataKey.cipher_text,
      datakey_cipher_length: '64',
    });
    expect(opened.data_key).toBe(dataKey.plain_text);
    const sealed = await call('encrypt-data', { key_id: keyId, plain_text: 'node sdk' });
    expect((await call('decrypt-data', { cipher_text: sealed.cipher_text })).plain_text).toBe('node sdk');
    const quotas = await call('user-quotas', undefined, 'GET');
    expect(quotas.quotas.resources).toContainEqual(
      expect.objectContaining({ type: 'CMK', quota: kms.running.services.cmkQuota }),
    );
    // The token holder of the project sees the key the access key made: one project, two credentials.
    expect((await kms.call(A, 'describe-key', { key_id: keyId })).body.key_info.key_alias).toBe('node-sdk-key');
  });

  it("when Huawei's Node SDK is refused, then it surfaces a ClientRequestException with the status, code and message", async () => {
    type SdkError = { constructor: { name: string }; httpStatusCode: number; errorCode: string; errorMsg: string };
    const failure = (e: unknown) => {
      const err = e as SdkError;
      return { type: err.constructor.name, status: err.httpStatusCode, code: err.errorCode, message: err.errorMsg };
    };
    const forged = huaweiKmsClient(kms.url, { ...keysA, secretAccessKey: 'not-the-secret' });
    const refusedSignature = await forged('gen-random', { random_data_length: '32' }).then(() => undefined, failure);
    expect(refusedSignature).toMatchObject({ type: 'ClientRequestException', status: 403, code: 'KMS.0302' });
    const call = huaweiKmsClient(kms.url, keysA);
    const missingKey = await call('describe-key', { key_id: randomUUID() }).then(() => undefined, failure);
    expect(missingKey).toEqual({
      type: 'ClientRequestException',
      status: 404,
      code: 'KMS.0207',
      message: 'The key does not exist.',
    });
  });

  it('when X-Sdk-Date is 14 minutes off either way, then the request is still accepted', async () => {
    for (const offset of [-14 * MINUTE, 14 * MINUTE]) {
      const res = await send(signed('go', 'gen-random', { random_data_length: '32' }, { at: Date.now() + offset }));
      expect(res.status).toBe(200);
    }
  });

  it('when a request carries an X-Auth-Token only, then it is served as before', async () => {
    const res = await kms.call(A, 'gen-random', { random_data_length: '32' });
    expect(res.status).toBe(200);
  });
});

describe('refusals, each in the Huawei error body with its own code and message', () => {
  const genRandom = { random_data_length: '32' };
  const signedBy = (style: SdkStyle = 'python') => signed(style, 'gen-random', genRandom);
  const authorizationOf = (wire: WireRequest) => wire.headers.find(([name]) => name === 'Authorization')?.[1] as string;

  it.each([
    [
      'X-Sdk-Date is missing (go style)',
      () => {
        const wire = signedBy('go');
        return altered(wire, {
          'X-Sdk-Date': undefined,
          Authorization: authorizationOf(wire).replace(';x-sdk-date', ''),
        });
      },
      refused(403, 'KMS.0301', 'The X-Sdk-Date header is missing: it must be sent and signed.'),
    ],
    [
      'X-Sdk-Date is sent but not signed',
      () => {
        const wire = signed('python', 'gen-random', genRandom);
        return altered(wire, { Authorization: authorizationOf(wire).replace(';x-sdk-date', '') });
      },
      refused(403, 'KMS.0301', 'X-Sdk-Date must be signed: SignedHeaders does not name x-sdk-date.'),
    ],
    [
      'X-Sdk-Date is malformed',
      () => altered(signedBy(), { 'X-Sdk-Date': '2026-12-02T05:45:53Z' }),
      refused(403, 'KMS.0301', 'X-Sdk-Date must be a UTC time written YYYYMMDDTHHMMSSZ, e.g. 20261202T054553Z.'),
    ],
    [
      'the algorithm is V11-HMAC-SHA256',
      () => {
        const wire = signedBy();
        return altered(wire, { Authorization: authorizationOf(wire).replace('SDK-HMAC-SHA256', 'V11-HMAC-SHA256') });
      },
      refused(403, 'KMS.0301', "Unsupported signing algorithm 'V11-HMAC-SHA256': only SDK-HMAC-SHA256 is accepted."),
    ],
    [
      'the header is malformed',
      () => {
        const wire = signedBy();
        return altered(wire, { Authorization: authorizationOf(wire).replace(', Signature=', ', Signature = ') });
      },
      refused(
        403,
        'KMS.0301',
        "The Authorization header is malformed: expected 'SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<names>, Signature=<hex>'.",
      ),
    ],
    [
      'the Authorization header is sent twice',
      () => {
        const wire = signedBy();
        return altered(wire, { Authorization: [authorizationOf(wire), authorizationOf(signedBy())] });
      },
      refused(403, 'KMS.0301', 'The Authorization header is given more than once.'),
    ],
    [
      'an X-Auth-Token comes with the signature',
      () => altered(signedBy(), { 'X-Auth-Token': 'whatever' }),
      refused(403, 'KMS.0301', 'Send either X-Auth-Token or an Authorization signature, not both.'),
    ],
    [
      'X-Project-Id names another project than the path',
      () => signed('go', 'gen-random', genRandom, { extraHeaders: { 'X-Project-Id': B } }),
      refused(403, 'KMS.0321', 'X-Project-Id does not match the project_id in the URL.'),
    ],
    [
      'the SK is wrong',
      () =>
        signed('node', 'gen-random', genRandom, {
          credentials: { ...keysA, secretAccessKey: `${keysA.secretAccessKey}x` },
        }),
      refused(
        403,
        'KMS.0302',
        'The request signature does not match: check the SK, and that the method, path, query, signed headers and body are sent exactly as they were signed.',
      ),
    ],
    [
      'the body is changed after signing',
      () => ({ ...signedBy(), body: Buffer.from('{"random_data_length": "64"}') }),
      refused(
        403,
        'KMS.0302',
        'The request signature does not match: check the SK, and that the method, path, query, signed headers and body are sent exactly as they were signed.',
      ),
    ],
    [
      'the access key is unknown',
      () =>
        signed('python', 'gen-random', genRandom, { credentials: { ...keysA, accessKeyId: 'AKIAAAAAAAAAAAAAAAAA' } }),
      refused(403, 'KMS.0302', "The access key 'AKIAAAAAAAAAAAAAAAAA' is unknown or revoked."),
    ],
    [
      'X-Sdk-Date is 16 minutes old',
      () => signed('python', 'gen-random', genRandom, { at: Date.now() - 16 * MINUTE }),
      refused(
        403,
        'KMS.0303',
        expect.stringMatching(
          /^The request has expired: X-Sdk-Date \d{8}T\d{6}Z is more than 15 minutes before the server time \d{8}T\d{6}Z\.$/,
        ) as unknown as string,
      ),
    ],
    [
      'X-Sdk-Date is 16 minutes ahead',
      () => signed('python', 'gen-random', genRandom, { at: Date.now() + 16 * MINUTE }),
      refused(
        403,
        'KMS.0302',
        expect.stringMatching(
          /^X-Sdk-Date \d{8}T\d{6}Z is more than 15 minutes after the server time \d{8}T\d{6}Z: check the client's clock\.$/,
        ) as unknown as string,
      ),
    ],
  ])('when %s, then the answer says so', async (_, make, expected) => {
    expect(await send(make())).toEqual(expected);
  });

  it('when an access key is revoked, then its next signed request is refused at once', async () => {
    const keys = { ...(await kms.running.credentials.create(A)), projectId: A };
    expect((await send(signed('node', 'gen-random', genRandom, { credentials: keys }))).status).toBe(200);
    await kms.running.credentials.revoke(keys.accessKeyId);
    expect(await send(signed('node', 'gen-random', genRandom, { credentials: keys }))).toEqual(
      refused(403, 'KMS.0302', `The access key '${keys.accessKeyId}' is unknown or revoked.`),
    );
  });

  it("when project B's access key signs for project A's path, then it is refused and A's keys stay out of reach", async () => {
    const keyOfA = await createKey(kms, A, 'a-only');
    for (const action of ['describe-key', 'disable-key', 'encrypt-data']) {
      const res = await send(
        signed(
          'python',
          action,
          { key_id: keyOfA, plain_text: 'x' },
          // X-Project-Id as the path says: only the key's own project gives it away.
          { credentials: keysB, projectId: A, extraHeaders: { 'X-Project-Id': A } },
        ),
      );
      expect(res).toEqual(
        refused(403, 'KMS.0321', 'The access key belongs to another project than the project_id in the URL.'),
      );
    }
    // On its own path, B's key finds nothing of A's.
    expect(await send(signed('python', 'describe-key', { key_id: keyOfA }, { credentials: keysB }))).toEqual(
      refused(404, 'KMS.0207', 'The key does not exist.'),
    );
    expect((await kms.call(A, 'describe-key', { key_id: keyOfA })).body.key_info.key_state).toBe('2');
  });

  it('when an unknown access key announces a large body, then it is refused before the body is sent', async () => {
    const wire = signed('python', 'gen-random', genRandom, {
      credentials: { ...keysA, accessKeyId: 'AKIAAAAAAAAAAAAAAAAB' },
    });
    const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(wire.url, { method: 'POST' }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => {
          text += chunk.toString();
        });
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, text });
          req.destroy();
        });
      });
      req.on('error', reject);
      for (const [name, value] of wire.headers) req.setHeader(name, value);
      req.setHeader('Content-Length', 60_000);
      req.flushHeaders(); // the head goes out; not one byte of the body ever does
    });
    expect({ status: answer.status, body: JSON.parse(answer.text) }).toEqual(
      refused(403, 'KMS.0302', "The access key 'AKIAAAAAAAAAAAAAAAAB' is unknown or revoked."),
    );
  });
});

describe('tampering on the wire (fast-check)', () => {
  it('when a signed header, the path, the query, the body or the date changes after signing, then the service refuses it', async () => {
    const keyId = await createKey(kms, A, 'tamper-target');
    const tampering = fc.oneof(
      fc.constantFrom('User-Agent', 'Content-Type', 'X-Project-Id', 'Host').map((name) => ({ header: name })),
      fc.constantFrom('schedule-key-deletion', 'disable-key', 'list-keys').map((action) => ({ action })),
      fc.constantFrom('key_id=x', 'sequence=1&x=2').map((query) => ({ query })),
      fc.constantFrom(' ', '\t', '"').map((byte) => ({ byte })),
      fc.integer({ min: 1, max: 120 }).map((seconds) => ({ seconds })),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom<SdkStyle>('python', 'node', 'go'), tampering, async (style, change) => {
        const signedAt = Date.now();
        const wire = signed(style, 'describe-key', { key_id: keyId }, { at: signedAt });
        const header = (name: string) => wire.headers.find(([n]) => n.toLowerCase() === name.toLowerCase())?.[1] ?? '';
        let sent: WireRequest = wire;
        if ('header' in change) sent = altered(wire, { [change.header]: `${header(change.header)}x` });
        if ('action' in change) sent = { ...wire, url: wire.url.replace('describe-key', change.action) };
        if ('query' in change) sent = { ...wire, url: `${wire.url}?${change.query}` };
        if ('byte' in change)
          sent = {
            ...wire,
            body: Buffer.concat([wire.body.subarray(0, 1), Buffer.from(change.byte), wire.body.subarray(1)]),
          };
        if ('seconds' in change) sent = altered(wire, { 'X-Sdk-Date': sdkDate(signedAt + change.seconds * 1000) });
        const res = await send(sent);
        // Each SDK leaves some headers unsigned (Go: Host, Content-Type; Node: User-Agent): changing those is harmless.
        const signedNames = /SignedHeaders=([^,]*)/.exec(header('Authorization'))?.[1]?.split(';') ?? [];
        if ('header' in change && !signedNames.includes(change.header.toLowerCase())) return;
        expect({ status: res.status, code: res.body.error.error_code }).toEqual({
          status: 403,
          // X-Project-Id is checked against the path before the signature.
          code: 'header' in change && change.header === 'X-Project-Id' ? 'KMS.0321' : 'KMS.0302',
        });
      }),
      { numRuns: 60 },
    );
    expect((await kms.call(A, 'describe-key', { key_id: keyId })).body.key_info.key_state).toBe('2');
  });
});
