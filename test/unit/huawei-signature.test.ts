import { createHash, createHmac, hkdfSync } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  type HuaweiSignedHead,
  huaweiCanonicalRequest,
  huaweiStringToSign,
  openHuaweiSignature,
} from '../../src/auth/huawei-signature.js';
import type { SecretLookup } from '../../src/auth/sigv4.js';
import { KmsError } from '../../src/core/errors.js';
import { AKSKSigner, pythonJson, sdkCredential, sdkDate, sdkHmacSha256 } from '../support/huawei-sdk.js';

/** huawei-sdk.md §B.2, the worked example. */
const EXAMPLE = {
  accessKeyId: 'AKIDEXAMPLE',
  secret: 'SECRETEXAMPLE',
  url: 'http://127.0.0.1:8080/v1.0/my-project/kms/gen-random',
  date: '20261202T054553Z',
  headers: {
    'User-Agent': 'huaweicloud-usdk-python/3.0',
    'Content-Type': 'application/json;charset=utf-8',
    'X-Project-Id': 'my-project',
    'X-Sdk-Date': '20261202T054553Z',
    Host: '127.0.0.1:8080',
  },
  body: '{"random_data_length": "512"}',
  canonicalRequest: [
    'POST',
    '/v1.0/my-project/kms/gen-random/',
    '',
    'content-type:application/json;charset=utf-8',
    'host:127.0.0.1:8080',
    'user-agent:huaweicloud-usdk-python/3.0',
    'x-project-id:my-project',
    'x-sdk-date:20261202T054553Z',
    '',
    'content-type;host;user-agent;x-project-id;x-sdk-date',
    'c34e3d752074c3a3c3c94528e96a738921e588f13cc862e1b901ee3fd4a61215',
  ].join('\n'),
  stringToSign: 'SDK-HMAC-SHA256\n20261202T054553Z\n9a776a212f5d6e2073ae9efb0e759627d71bf7ee5d9706143c3342d4bc02ca6a',
  authorization:
    'SDK-HMAC-SHA256 Access=AKIDEXAMPLE, SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, ' +
    'Signature=0022be080767739dbb4bbf2650aa4af638a3db880047d90aa622793d356286b8',
} as const;

/** huawei-sdk.md §B.2, the SDK's own test vectors (the document gives their first and last eight characters). */
const SDK_VECTORS = {
  accessKeyId: 'AccessKey',
  secret: 'SecretKey',
  url: 'https://service.endpoint.myhuaweicloud.com/resources?size=1',
  date: '20200608T023900Z',
  get: ['cfb4171a', 'e12cd842'],
  post: ['436b1ac0', '199323a1f'],
  postBody: '{"name":"test","id":1}',
  v11Get: ['f7dfee05', '4455b98e'],
  v11Post: ['8e2d91ea', 'ccfb3cf'],
} as const;

const PROJECT = 'my-project';
const MINUTE = 60_000;
const at = (date: string) =>
  Date.UTC(
    +date.slice(0, 4),
    +date.slice(4, 6) - 1,
    +date.slice(6, 8),
    +date.slice(9, 11),
    +date.slice(11, 13),
    +date.slice(13, 15),
  );

function lookupOf(secrets: Record<string, string>): SecretLookup {
  return async (accessKeyId) => {
    const secret = secrets[accessKeyId];
    if (secret === undefined) {
      throw new KmsError('AuthUnknownCredential', 'The security token included in the request is invalid.');
    }
    return { projectId: PROJECT, secretAccessKey: secret };
  };
}

/** A request as the server receives it: lower-case names, every value kept (req.headersDistinct). */
function received(method: string, url: string, headers: Record<string, string | string[]>): HuaweiSignedHead {
  const parsed = new URL(url);
  const distinct: Record<string, string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    distinct[name.toLowerCase()] = [
      ...(distinct[name.toLowerCase()] ?? []),
      ...(Array.isArray(value) ? value : [value]),
    ];
  }
  return { method, path: parsed.pathname, query: parsed.search.slice(1), headers: distinct };
}

async function verify(
  head: HuaweiSignedHead,
  body: string | Buffer,
  options: { secrets?: Record<string, string>; now?: number } = {},
) {
  const pending = await openHuaweiSignature(
    head,
    lookupOf(options.secrets ?? { [EXAMPLE.accessKeyId]: EXAMPLE.secret }),
    {
      now: () => options.now ?? at(EXAMPLE.date),
    },
  );
  pending.verify(Buffer.from(body));
  return pending;
}

async function refusal(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof KmsError) return { code: err.code, message: err.message };
    throw err;
  }
  throw new Error('expected a refusal');
}

const exampleHead = (headers: Record<string, string | string[]> = {}) =>
  received('POST', EXAMPLE.url, { ...EXAMPLE.headers, Authorization: EXAMPLE.authorization, ...headers });

describe('the SDK-HMAC-SHA256 worked example (huawei-sdk.md §B.2)', () => {
  it('when the canonical request is built, then it is the document’s, line for line', () => {
    const canonical = huaweiCanonicalRequest({
      method: 'post',
      path: '/v1.0/my-project/kms/gen-random',
      query: '',
      headers: [
        ['content-type', 'application/json;charset=utf-8'],
        ['host', '127.0.0.1:8080'],
        ['user-agent', 'huaweicloud-usdk-python/3.0'],
        ['x-project-id', 'my-project'],
        ['x-sdk-date', '20261202T054553Z'],
      ],
      bodyHash: 'c34e3d752074c3a3c3c94528e96a738921e588f13cc862e1b901ee3fd4a61215',
    });
    expect(canonical).toBe(EXAMPLE.canonicalRequest);
    expect(huaweiStringToSign(EXAMPLE.date, canonical)).toBe(EXAMPLE.stringToSign);
  });

  it('when the test-side signer signs the example, then it gives the document’s Authorization exactly', () => {
    expect(
      sdkHmacSha256({
        method: 'POST',
        url: new URL(EXAMPLE.url),
        headers: EXAMPLE.headers,
        body: EXAMPLE.body,
        accessKeyId: EXAMPLE.accessKeyId,
        secret: EXAMPLE.secret,
      }),
    ).toBe(EXAMPLE.authorization);
  });

  it('when the example request arrives, then it is verified as signed by AKIDEXAMPLE of the project', async () => {
    const pending = await verify(exampleHead(), EXAMPLE.body);
    expect({ accessKeyId: pending.accessKeyId, projectId: pending.projectId }).toEqual({
      accessKeyId: 'AKIDEXAMPLE',
      projectId: PROJECT,
    });
  });

  it('when the example arrives with SECRETEXAMPLE replaced, then the signature does not match', async () => {
    expect(await refusal(verify(exampleHead(), EXAMPLE.body, { secrets: { AKIDEXAMPLE: 'SECRETEXAMPLF' } }))).toEqual({
      code: 'AuthSignatureMismatch',
      message:
        'The request signature does not match: check the SK, and that the method, path, query, signed headers and ' +
        'body are sent exactly as they were signed.',
    });
  });
});

describe("the Python SDK's own signer tests (huawei-sdk.md §B.2)", () => {
  const secrets = { [SDK_VECTORS.accessKeyId]: SDK_VECTORS.secret };
  const now = at(SDK_VECTORS.date);
  // TEST_UNDERSCORE is sent but not signed: its name contains '_'.
  const headers = {
    Host: 'service.endpoint.myhuaweicloud.com',
    'X-Sdk-Date': SDK_VECTORS.date,
    TEST_UNDERSCORE: 'TEST_VALUE',
  };

  it.each([
    ['GET', '', SDK_VECTORS.get],
    ['POST', SDK_VECTORS.postBody, SDK_VECTORS.post],
  ] as const)(
    'when the %s vector is signed and verified, then its signature has the documented ends',
    async (method, body, [head, tail]) => {
      const authorization = sdkHmacSha256({
        method,
        url: new URL(SDK_VECTORS.url),
        headers,
        body,
        accessKeyId: SDK_VECTORS.accessKeyId,
        secret: SDK_VECTORS.secret,
      });
      const signature = /Signature=([0-9a-f]{64})$/.exec(authorization)?.[1] ?? '';
      expect(signature.startsWith(head) && signature.endsWith(tail)).toBe(true);
      expect(authorization).toContain('SignedHeaders=host;x-sdk-date,');
      await verify(received(method, SDK_VECTORS.url, { ...headers, Authorization: authorization }), body, {
        secrets,
        now,
      });
    },
  );

  it.each([
    ['GET', '', SDK_VECTORS.v11Get],
    ['POST', SDK_VECTORS.postBody, SDK_VECTORS.v11Post],
  ] as const)(
    'when the derived V11 %s vector is sent, then it is refused as an unsupported algorithm',
    async (method, body, [head, tail]) => {
      // §B.5: the same canonical request, an HKDF-derived key used as its hex text, and the scope in the string to sign.
      const info = `${SDK_VECTORS.date.slice(0, 8)}/test-region-1/demo`;
      const key = Buffer.from(hkdfSync('sha256', SDK_VECTORS.secret, SDK_VECTORS.accessKeyId, info, 32)).toString(
        'hex',
      );
      const canonical = huaweiCanonicalRequest({
        method,
        path: '/resources',
        query: 'size=1',
        headers: [
          ['host', headers.Host],
          ['x-sdk-date', SDK_VECTORS.date],
        ],
        bodyHash: sha256(body),
      });
      const stringToSign = `V11-HMAC-SHA256\n${SDK_VECTORS.date}\n${info}\n${sha256(canonical)}`;
      const signature = createHmac('sha256', key).update(stringToSign).digest('hex');
      expect(signature.startsWith(head) && signature.endsWith(tail)).toBe(true);

      const authorization = `V11-HMAC-SHA256 Credential=AccessKey/${info}, SignedHeaders=host;x-sdk-date, Signature=${signature}`;
      expect(
        await refusal(
          verify(received(method, SDK_VECTORS.url, { ...headers, Authorization: authorization }), body, {
            secrets,
            now,
          }),
        ),
      ).toEqual({
        code: 'AuthIncomplete',
        message: "Unsupported signing algorithm 'V11-HMAC-SHA256': only SDK-HMAC-SHA256 is accepted.",
      });
    },
  );
});

describe("requests signed by the npm package's own AKSKSigner", () => {
  const credentials = {
    accessKeyId: 'AKIAEXAMPLEEXAMPLE12',
    secretAccessKey: 'c2VjcmV0L3dpdGgrYmFzZTY0Y2hhcnM9PT09',
    projectId: PROJECT,
  };
  const secrets = { [credentials.accessKeyId]: credentials.secretAccessKey };

  it.each([
    ['gen-random', { random_data_length: '512' }],
    ['encrypt-data', { key_id: '0d0466b0-e727-4d9c-b35d-f84bb474a37f', plain_text: 'héllo ✓ "quoted"' }],
    ['list-keys', {}],
  ])('when %s is signed by AKSKSigner, then it verifies over the bytes it sends', async (action, data) => {
    const url = `http://127.0.0.1:8080/v1.0/${PROJECT}/kms/${action}`;
    const headers = AKSKSigner.sign(
      {
        endpoint: url,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'X-Project-Id': PROJECT, 'X-Sdk-Date': EXAMPLE.date },
        queryParams: {},
        data,
      },
      sdkCredential(credentials),
    );
    expect(headers.Authorization).toMatch(
      /^SDK-HMAC-SHA256 Access=AKIAEXAMPLEEXAMPLE12, SignedHeaders=content-type;host;x-project-id;x-sdk-date, Signature=[0-9a-f]{64}$/,
    );
    await verify(received('POST', url, headers), JSON.stringify(data), { secrets });
  });

  it('when AKSKSigner signs a query string, then the verifier builds the same sorted canonical query', async () => {
    const url = 'http://127.0.0.1:8080/v1.0/p/kms/user-quotas';
    const queryParams = { zeta: 'a b', alpha: '/tmp/1 (&=?!#%.*)', mid: '一' };
    const headers = AKSKSigner.sign(
      { endpoint: url, method: 'GET', headers: { 'X-Sdk-Date': EXAMPLE.date }, queryParams },
      sdkCredential(credentials),
    );
    const wire = `${url}?${new URLSearchParams(queryParams)}`; // as a client puts it on the wire: spaces as '+'
    await verify(received('GET', wire, headers), '', { secrets });
  });
});

describe('refusals the head of a request earns before any lookup', () => {
  const noLookup: SecretLookup = async () => {
    throw new Error('the access key must not be looked up');
  };
  const open = (headers: Record<string, string | string[]>, now = at(EXAMPLE.date)) =>
    refusal(openHuaweiSignature(exampleHead(headers), noLookup, { now: () => now }));
  const signature = EXAMPLE.authorization.slice(EXAMPLE.authorization.indexOf('Signature='));

  it.each([
    [
      'Authorization is given twice',
      { Authorization: [EXAMPLE.authorization, EXAMPLE.authorization] },
      'The Authorization header is given more than once.',
    ],
    [
      'X-Sdk-Date is given twice',
      { 'X-Sdk-Date': [EXAMPLE.date, EXAMPLE.date] },
      'The X-Sdk-Date header is given more than once.',
    ],
    [
      'X-Project-Id is given twice',
      { 'X-Project-Id': ['my-project', 'other'] },
      'The X-Project-Id header is given more than once.',
    ],
    [
      'the algorithm is SDK-HMAC-SM3',
      { Authorization: EXAMPLE.authorization.replace('SHA256', 'SM3') },
      "Unsupported signing algorithm 'SDK-HMAC-SM3': only SDK-HMAC-SHA256 is accepted.",
    ],
    [
      'the header is a bearer token',
      { Authorization: 'Bearer eyJhbGciOi.secret/part+x=' },
      "Unsupported signing algorithm 'Bearer': only SDK-HMAC-SHA256 is accepted.",
    ],
    [
      'a part is unknown',
      { Authorization: `SDK-HMAC-SHA256 Access=AKIDEXAMPLE, Region=x, SignedHeaders=x-sdk-date, ${signature}` },
      "The Authorization header is malformed: expected 'SDK-HMAC-SHA256 Access=<AK>, SignedHeaders=<names>, Signature=<hex>', got a part 'Region'.",
    ],
    [
      'Access is missing',
      { Authorization: `SDK-HMAC-SHA256 SignedHeaders=x-sdk-date, ${signature}` },
      'The Authorization header lacks Access.',
    ],
    [
      'Signature is given twice',
      { Authorization: `${EXAMPLE.authorization}, ${signature}` },
      'The Authorization header gives Signature more than once.',
    ],
    [
      'the signature is upper-case hex',
      {
        Authorization: EXAMPLE.authorization.replace(
          /Signature=(.*)$/,
          (_, s: string) => `Signature=${s.toUpperCase()}`,
        ),
      },
      'The Signature must be 64 lower-case hexadecimal characters.',
    ],
    [
      'the signed headers are not sorted',
      { Authorization: EXAMPLE.authorization.replace('content-type;host', 'host;content-type') },
      'SignedHeaders must list lower-case header names, sorted, each once, separated by ";".',
    ],
    [
      'x-sdk-date is not signed',
      { Authorization: EXAMPLE.authorization.replace(';x-sdk-date', '') },
      'X-Sdk-Date must be signed: SignedHeaders does not name x-sdk-date.',
    ],
    [
      'a signed header is absent',
      { Authorization: EXAMPLE.authorization.replace('x-project-id', 'x-project-ie') },
      "The signed header 'x-project-ie' is not in the request.",
    ],
    [
      'a signed header is named after an inherited property of the headers object',
      { Authorization: EXAMPLE.authorization.replace('content-type;', 'constructor;content-type;') },
      "The signed header 'constructor' is not in the request.",
    ],
    [
      'a signed header is named __proto__',
      { Authorization: EXAMPLE.authorization.replace('content-type;', '__proto__;content-type;') },
      "The signed header '__proto__' is not in the request.",
    ],
    [
      'the date is not a calendar date',
      { 'X-Sdk-Date': '20260230T054553Z' },
      'X-Sdk-Date must be a UTC time written YYYYMMDDTHHMMSSZ, e.g. 20261202T054553Z.',
    ],
    [
      'a payload hash says UNSIGNED-PAYLOAD',
      { 'X-Sdk-Content-Sha256': 'UNSIGNED-PAYLOAD' },
      "The body must be signed: X-Sdk-Content-Sha256 'UNSIGNED-PAYLOAD' is not accepted.",
    ],
  ])('when %s, then it is refused with a message that says so', async (_, headers, message) => {
    expect(await open(headers)).toEqual({ code: 'AuthIncomplete', message });
  });

  it('when X-Sdk-Date is more than 15 minutes old, then the request has expired; more than 15 ahead, the clock is off', async () => {
    expect(await open({}, at(EXAMPLE.date) + 15 * MINUTE + 1000)).toEqual({
      code: 'AuthExpired',
      message:
        'The request has expired: X-Sdk-Date 20261202T054553Z is more than 15 minutes before the server time 20261202T060054Z.',
    });
    expect(await open({}, at(EXAMPLE.date) - 15 * MINUTE - 1000)).toEqual({
      code: 'AuthSignatureMismatch',
      message:
        "X-Sdk-Date 20261202T054553Z is more than 15 minutes after the server time 20261202T053052Z: check the client's clock.",
    });
  });

  it('when the access key is unknown, then the message names it without echoing anything else', async () => {
    expect(await refusal(verify(exampleHead(), EXAMPLE.body, { secrets: {} }))).toEqual({
      code: 'AuthUnknownCredential',
      message: "The access key 'AKIDEXAMPLE' is unknown or revoked.",
    });
  });
});

describe('tampering after signing (fast-check)', () => {
  const base = { method: 'POST', path: '/v1.0/my-project/kms/encrypt-data', query: 'a=1&b=two' };
  const signedHeaders = {
    'Content-Type': 'application/json;charset=utf-8',
    'User-Agent': 'huaweicloud-usdk-python/3.0',
    'X-Project-Id': 'my-project',
  };

  async function accepted(
    signedAs: { path: string; query: string; headers: Record<string, string>; body: string },
    sent: { path: string; query: string; headers: Record<string, string>; body: string },
  ): Promise<boolean> {
    const url = (r: { path: string; query: string }) => `http://127.0.0.1:8080${r.path}${r.query ? `?${r.query}` : ''}`;
    const authorization = sdkHmacSha256({
      method: base.method,
      url: new URL(url(signedAs)),
      headers: signedAs.headers,
      body: signedAs.body,
      accessKeyId: EXAMPLE.accessKeyId,
      secret: EXAMPLE.secret,
    });
    return verify(received(base.method, url(sent), { ...sent.headers, Authorization: authorization }), sent.body).then(
      () => true,
      (err: unknown) => {
        if (err instanceof KmsError) return false;
        throw err;
      },
    );
  }

  const request = fc.record({
    body: fc.string({ unit: 'grapheme', maxLength: 40 }).map((text) => pythonJson({ plain_text: text })),
    value: fc.string({ minLength: 1, maxLength: 20 }).filter((v) => /^[\x21-\x7e]+$/.test(v)),
    date: fc.integer({ min: -14 * 60, max: 14 * 60 }).map((s) => sdkDate(at(EXAMPLE.date) + s * 1000)),
  });

  it('when nothing changes, then every such request verifies', async () => {
    await fc.assert(
      fc.asyncProperty(request, async ({ body, value, date }) => {
        const r = {
          ...base,
          headers: { ...signedHeaders, 'X-Project-Id': value, 'X-Sdk-Date': date, Host: '127.0.0.1:8080' },
          body,
        };
        expect(await accepted(r, r)).toBe(true);
      }),
      { numRuns: 100 },
    );
  });

  it('when a signed header, the path, the query, the body or the date changes after signing, then it is refused', async () => {
    const change = fc.oneof(
      fc.record({
        what: fc.constant('header' as const),
        name: fc.constantFrom('Content-Type', 'User-Agent', 'X-Project-Id', 'Host'),
      }),
      fc.record({
        what: fc.constant('path' as const),
        segment: fc.constantFrom('decrypt-data', 'encrypt-datakey', 'encrypt%2Ddata2'),
      }),
      fc.record({
        what: fc.constant('query' as const),
        query: fc.constantFrom('a=1', 'a=1&b=two&c', 'a=2&b=two', 'b=two&a=1&a=1'),
      }),
      fc.record({ what: fc.constant('body' as const), suffix: fc.constantFrom(' ', '\n', 'x') }),
      fc.record({ what: fc.constant('date' as const), seconds: fc.integer({ min: 1, max: 600 }) }),
    );
    await fc.assert(
      fc.asyncProperty(request, change, async ({ body, value, date }, c) => {
        const signedAs = {
          ...base,
          headers: { ...signedHeaders, 'X-Project-Id': value, 'X-Sdk-Date': date, Host: '127.0.0.1:8080' },
          body,
        };
        const sent = { ...signedAs, headers: { ...signedAs.headers } };
        if (c.what === 'header') sent.headers[c.name] = `${signedAs.headers[c.name]}x`;
        if (c.what === 'path') sent.path = base.path.replace('encrypt-data', c.segment);
        if (c.what === 'query') sent.query = c.query;
        if (c.what === 'body') sent.body = body.slice(0, -1) + c.suffix + body.slice(-1);
        if (c.what === 'date') sent.headers['X-Sdk-Date'] = sdkDate(at(date) + c.seconds * 1000);
        expect(await accepted(signedAs, sent)).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

function sha256(data: string): string {
  return createHash('sha256').update(data).digest('hex');
}
