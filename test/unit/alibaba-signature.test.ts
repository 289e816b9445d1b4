import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AlibabaApiError } from '../../src/api/alibaba/errors.js';
import {
  API_VERSION,
  echoedStringToSign,
  type NonceClaim,
  percentEncode,
  rpcSignature,
  rpcStringToSign,
  TIMESTAMP_WINDOW_MS,
  verifyRpcSignature,
} from '../../src/api/alibaba/signature.js';
import type { SecretLookup } from '../../src/auth/sigv4.js';
import { KmsError } from '../../src/core/errors.js';
import { RPCUtil } from '../support/alibaba-sdk.js';

const METHODS = ['GET', 'POST'] as const;

/** Our signer, end to end, for a parameter object. */
function ourSignature(method: string, params: Record<string, string>, secret: string): string {
  return rpcSignature(rpcStringToSign(method, new Map(Object.entries(params))), secret);
}

describe('known-answer vectors', () => {
  /**
   * Alibaba Cloud's worked example of the RPC signature (signature version 1.0): DescribeRegions signed by AccessKey
   * `testid` / secret `testsecret`, HMAC key `testsecret&`, published signature `OLeaidS1JvxuMvnyHOwuJ+uX5qY=`
   * (Alibaba Cloud "Request signature" page, section Example).
   */
  const DOC_PARAMS = {
    Timestamp: '2016-02-23T12:46:24Z',
    Format: 'XML',
    AccessKeyId: 'testid',
    Action: 'DescribeRegions',
    SignatureMethod: 'HMAC-SHA1',
    SignatureNonce: '3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf',
    Version: '2014-05-26',
    SignatureVersion: '1.0',
  };
  /** Sorted, encoded, then encoded again as a whole: the colons of the Timestamp end up as %253A. */
  const DOC_STRING_TO_SIGN =
    'GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1' +
    '%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0' +
    '%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26';

  it("when Alibaba's documented DescribeRegions example is signed, then the string to sign is the canonical one", () => {
    expect(rpcStringToSign('GET', new Map(Object.entries(DOC_PARAMS)))).toBe(DOC_STRING_TO_SIGN);
  });

  it("when Alibaba's documented DescribeRegions example is signed, then the signature is the documented one", () => {
    expect(rpcSignature(DOC_STRING_TO_SIGN, 'testsecret')).toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
    expect(RPCUtil.getSignatureV1(DOC_PARAMS, 'GET', 'testsecret')).toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
  });

  it('when the example is spelled with `TimeStamp`, as the older ECS page has it, then that page signature results', () => {
    // developer.aliyun.com/ask/210168 ("API 签名机制（示例）") signs the same request with the parameter named TimeStamp.
    const { Timestamp, ...rest } = DOC_PARAMS;
    expect(ourSignature('GET', { ...rest, TimeStamp: Timestamp }, 'testsecret')).toBe('CT9X0VtwR86fNWSnsc6v8YGOjuE=');
  });

  it('when the key is the secret followed by "&", then the signature is plain HMAC-SHA1 over the UTF-8 string', () => {
    const stringToSign = 'POST&%2F&Plaintext%3D%25C3%25A9';
    const expected = createHmac('sha1', Buffer.from('sécret&', 'utf8')).update(Buffer.from(stringToSign, 'utf8'));
    expect(rpcSignature(stringToSign, 'sécret')).toBe(expected.digest('base64'));
  });

  it('when the parameters include Signature, then the string to sign leaves it out', () => {
    const params = new Map(Object.entries(DOC_PARAMS));
    params.set('Signature', 'OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
    expect(rpcStringToSign('GET', params)).toBe(DOC_STRING_TO_SIGN);
  });

  it('when the same request is sent by POST, then only the method at the head of the string to sign changes', () => {
    expect(rpcStringToSign('POST', new Map(Object.entries(DOC_PARAMS)))).toBe(`POST${DOC_STRING_TO_SIGN.slice(3)}`);
    expect(ourSignature('POST', DOC_PARAMS, 'testsecret')).toBe(
      RPCUtil.getSignatureV1(DOC_PARAMS, 'POST', 'testsecret'),
    );
  });
});

describe('percentEncode', () => {
  it.each([
    ['a space', 'a b', 'a%20b'],
    ['a plus sign', 'a+b', 'a%2Bb'],
    ['an asterisk', 'a*b', 'a%2Ab'],
    ['a tilde', 'a~b', 'a~b'],
    ['the unreserved characters', 'AZaz09-_.~', 'AZaz09-_.~'],
    ["the characters encodeURIComponent leaves (!'())", "!'()", '%21%27%28%29'],
    ['a slash', '/', '%2F'],
    ['the separators of a query', '&=?#%', '%26%3D%3F%23%25'],
    ['a colon', '12:46:24', '12%3A46%3A24'],
    ['an accented letter', 'é', '%C3%A9'],
    ['Chinese', '中文', '%E4%B8%AD%E6%96%87'],
    ['an emoji', '😀', '%F0%9F%98%80'],
    ['nothing', '', ''],
  ])('when the text has %s, then it is RFC 3986 encoded with upper-case hex', (_what, text, encoded) => {
    expect(percentEncode(text)).toBe(encoded);
  });
});

describe('rpcSignature against the @alicloud/rpc-util signer', () => {
  const COMMON = {
    AccessKeyId: 'testid',
    Action: 'Encrypt',
    Format: 'JSON',
    SignatureMethod: 'HMAC-SHA1',
    SignatureNonce: 'c5f0b3a8-5b1e-4d4f-9d5e-1f2a3b4c5d6e',
    SignatureVersion: '1.0',
    Timestamp: '2026-11-24T12:00:00Z',
    Version: API_VERSION,
  };

  it.each<[string, Record<string, string>]>([
    ['spaces', { Plaintext: 'hello  world ', KeyId: ' alias/app' }],
    ['an asterisk, a tilde, a plus and slashes', { Plaintext: 'a*b~c+d', KeyId: 'alias/a/b', 'x*~': '*' }],
    ["the characters encodeURIComponent leaves (!'())", { Plaintext: "it's (fine)!", "n!'()": 'v' }],
    ['non-ASCII values and names', { Plaintext: 'café 中文 🔑', 'EncryptionContext.clé': '值', 名前: 'é' }],
    ['empty values', { Plaintext: '', EncryptionContext: '', KeyId: 'k' }],
    ['names that sort differently by case', { a: '1', B: '2', Z: '3', _x: '4', A: '5', b: '6', z: '7', '0': '8' }],
    ['a JSON encryption context', { EncryptionContext: '{"k":"v é","a":"b&c=d%20"}', KeyId: 'key-1' }],
    ['reserved characters of a query', { Plaintext: 'a&b=c?d#e%f', 'x&y': '=' }],
  ])('when the parameters have %s, then our signature equals the SDK signature for GET and POST', (_what, extra) => {
    const params = { ...COMMON, ...extra };
    for (const method of METHODS) {
      for (const secret of ['secret', 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY', 'sécret&中']) {
        expect(ourSignature(method, params, secret)).toBe(RPCUtil.getSignatureV1(params, method, secret));
      }
    }
  });

  /** Any code point but a lone surrogate; built by hand, as fast-check's 'binary' unit takes over a second to set up. */
  const codePointsArb = (minLength: number, maxLength: number) =>
    fc
      .array(fc.oneof(fc.integer({ min: 0, max: 0xd7ff }), fc.integer({ min: 0xe000, max: 0x10ffff })), {
        minLength,
        maxLength,
      })
      .map((codePoints) => String.fromCodePoint(...codePoints));
  // '__proto__' would become the SDK's object prototype rather than a parameter; 'Signature' is never signed by us.
  const nameArb = fc
    .oneof(
      fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 12 }),
      fc.string({ unit: 'grapheme', minLength: 1, maxLength: 6 }),
      codePointsArb(1, 6),
    )
    .filter((name) => name !== '__proto__' && name !== 'Signature');
  const valueArb = fc.oneof(
    fc.string({ unit: 'grapheme-ascii', maxLength: 24 }),
    fc.string({ unit: 'grapheme', maxLength: 12 }),
    codePointsArb(0, 12),
  );

  it('when the parameters, method and secret are arbitrary printable or unicode text, then both signers agree', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(nameArb, valueArb), { selector: ([name]) => name, maxLength: 10 }),
        fc.constantFrom(...METHODS),
        fc.string({ unit: 'grapheme', minLength: 1, maxLength: 40 }),
        (entries, method, secret) => {
          const params = Object.fromEntries(entries);
          expect(ourSignature(method, params, secret)).toBe(RPCUtil.getSignatureV1(params, method, secret));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('verifyRpcSignature', () => {
  const ACCESS_KEY_ID = 'AKIAALIBABAEXAMPLE23';
  const SECRET = 'secret';
  const MINUTE = 60_000;
  /** 2026-11-24T12:00:00Z, the server's clock in every test. */
  const NOW = Date.UTC(2026, 10, 24, 12, 0, 0);
  const NONCE = 'f3c1d0e2-6a4b-4c1d-9e8f-0123456789ab';

  const lookupSecret: SecretLookup = async (accessKeyId) => {
    if (accessKeyId !== ACCESS_KEY_ID) {
      throw new KmsError('AuthUnknownCredential', `The access key ${accessKeyId} is unknown.`);
    }
    return { projectId: 'p1', secretAccessKey: SECRET };
  };

  interface Claim {
    readonly accessKeyId: string;
    readonly nonce: string;
    readonly expiresAt: number;
    readonly now: number;
  }

  /**
   * The nonce ledger's contract, in memory: a nonce of an access key is refused while an earlier claim of it has not
   * expired. (The store's contract tests hold the SQLite ledger to the same.)
   */
  function nonceLedger() {
    const recorded = new Map<string, number>();
    const claims: Claim[] = [];
    const claimNonce: NonceClaim = async (accessKeyId, nonce, expiresAt, now) => {
      claims.push({ accessKeyId, nonce, expiresAt, now });
      const key = JSON.stringify([accessKeyId, nonce]);
      const until = recorded.get(key);
      if (until !== undefined && until > now) return false;
      recorded.set(key, expiresAt);
      return true;
    };
    return { claimNonce, claims, recorded };
  }
  type Ledger = ReturnType<typeof nonceLedger>;

  /** ISO 8601 UTC without milliseconds, as the SDKs send it. */
  const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

  interface Signing {
    readonly method?: string;
    readonly secret?: string;
    /** Added to, or (undefined) removed from, the parameters before signing. */
    readonly params?: Readonly<Record<string, string | undefined>>;
  }

  /** An Encrypt request, signed by the SDK's signer. */
  function signed({ method = 'POST', secret = SECRET, params = {} }: Signing = {}): Map<string, string> {
    const query: Record<string, string> = {
      AccessKeyId: ACCESS_KEY_ID,
      Action: 'Encrypt',
      Format: 'JSON',
      KeyId: 'alias/app',
      Plaintext: 'aGVsbG8=',
      SignatureMethod: 'HMAC-SHA1',
      SignatureNonce: NONCE,
      SignatureVersion: '1.0',
      Timestamp: iso(NOW),
      Version: API_VERSION,
    };
    for (const [name, value] of Object.entries(params)) {
      if (value === undefined) delete query[name];
      else query[name] = value;
    }
    const signature = RPCUtil.getSignatureV1(query, method, secret);
    return new Map(Object.entries({ ...query, Signature: signature }));
  }

  function verify(
    params: ReadonlyMap<string, string>,
    { method = 'POST', ledger = nonceLedger(), now = NOW }: { method?: string; ledger?: Ledger; now?: number } = {},
  ) {
    return verifyRpcSignature(method, params, { lookupSecret, claimNonce: ledger.claimNonce, now: () => now });
  }

  async function rejection(promise: Promise<unknown>): Promise<AlibabaApiError> {
    const outcome = await promise.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    );
    if (!('error' in outcome)) throw new Error(`expected a rejection, got ${JSON.stringify(outcome.value)}`);
    expect(outcome.error).toBeInstanceOf(AlibabaApiError);
    return outcome.error as AlibabaApiError;
  }

  async function expectApiError(
    promise: Promise<unknown>,
    expected: { code: string; status: number; message: string },
  ): Promise<void> {
    const { code, status, message } = await rejection(promise);
    expect({ code, status, message }).toEqual(expected);
  }

  const mismatch = (method: string, params: ReadonlyMap<string, string>) => ({
    code: 'SignatureDoesNotMatch',
    status: 400,
    message: `Specified signature is not matched with our calculation. server string to sign is:${echoedStringToSign(method, params)}`,
  });
  const expired = {
    code: 'InvalidTimeStamp.Expired',
    status: 400,
    message: 'Specified time stamp or date value is expired.',
  };

  describe('when the request is signed correctly', () => {
    it.each(METHODS)(
      'when a %s request is signed by the SDK, then it returns the access key and its project',
      async (method) => {
        await expect(verify(signed({ method }), { method })).resolves.toEqual({
          accessKeyId: ACCESS_KEY_ID,
          projectId: 'p1',
        });
      },
    );

    it('when a request is signed by our own signer, then it is accepted too', async () => {
      const params = signed();
      params.set('Signature', rpcSignature(rpcStringToSign('POST', params), SECRET));
      await expect(verify(params)).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
    });

    it('when a request is accepted, then its nonce is claimed once, until Timestamp + 15 minutes', async () => {
      const ledger = nonceLedger();
      const signedAt = NOW - 5 * MINUTE;
      await verify(signed({ params: { Timestamp: iso(signedAt) } }), { ledger });
      expect(ledger.claims).toEqual([
        { accessKeyId: ACCESS_KEY_ID, nonce: NONCE, expiresAt: signedAt + 15 * MINUTE, now: NOW },
      ]);
      expect(TIMESTAMP_WINDOW_MS).toBe(15 * MINUTE);
    });

    it('when the values are unicode, empty or full of reserved characters, then the SDK-signed request is accepted', async () => {
      const params = signed({
        method: 'GET',
        params: { Plaintext: "a b*c~d+e/f!'()&=%", EncryptionContext: '{"clé":"中文 😀"}', Empty: '', a: '1', B: '2' },
      });
      await expect(verify(params, { method: 'GET' })).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
    });

    it('when arbitrary extra parameters are signed by the SDK, then the request is accepted', async () => {
      const COMMON_PARAMETERS = new Set(
        [...signed().keys()].filter((name) => name !== 'Plaintext' && name !== 'KeyId'),
      );
      const nameArb = fc
        .string({ unit: 'grapheme', minLength: 1, maxLength: 8 })
        .filter((name) => name !== '__proto__' && !COMMON_PARAMETERS.has(name));
      await fc.assert(
        fc.asyncProperty(
          fc.dictionary(nameArb, fc.string({ unit: 'grapheme', maxLength: 12 }), { maxKeys: 6 }),
          fc.constantFrom(...METHODS),
          async (extra, method) => {
            const params = signed({ method, params: extra });
            await expect(verify(params, { method })).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
          },
        ),
        { numRuns: 100 },
      );
    });
  });

  describe('when a common parameter is missing', () => {
    const COMMON = ['AccessKeyId', 'SignatureMethod', 'SignatureVersion', 'SignatureNonce', 'Signature'];

    it.each(COMMON)('when %s is absent, then MissingParameter 400 names it and no nonce is claimed', async (name) => {
      const ledger = nonceLedger();
      const params = signed({ params: { [name]: undefined } });
      params.delete(name);
      await expectApiError(verify(params, { ledger }), {
        code: 'MissingParameter',
        status: 400,
        message: `The input parameter "${name}" that is mandatory for processing this request is not supplied.`,
      });
      expect(ledger.claims).toEqual([]);
    });

    it.each(COMMON)('when %s is the empty string, then it counts as missing', async (name) => {
      const params = signed({ params: { [name]: '' } });
      params.set(name, '');
      await expectApiError(verify(params), {
        code: 'MissingParameter',
        status: 400,
        message: `The input parameter "${name}" that is mandatory for processing this request is not supplied.`,
      });
    });

    it.each([
      ['absent', undefined],
      ['the empty string', ''],
    ])('when Timestamp is %s, then IllegalTimestamp 400', async (_what, value) => {
      await expectApiError(verify(signed({ params: { Timestamp: value } })), {
        code: 'IllegalTimestamp',
        status: 400,
        message: 'The input parameter "Timestamp" that is mandatory for processing this request is not supplied.',
      });
    });

    it('when no parameter is given at all, then AccessKeyId is the one named missing', async () => {
      await expectApiError(verify(new Map()), {
        code: 'MissingParameter',
        status: 400,
        message: 'The input parameter "AccessKeyId" that is mandatory for processing this request is not supplied.',
      });
    });
  });

  describe('when the signature method or version is not 1.0 HMAC-SHA1', () => {
    it.each([
      ['SignatureMethod', 'HMAC-SHA256', 'only HMAC-SHA1 is supported.'],
      ['SignatureMethod', 'hmac-sha1', 'only HMAC-SHA1 is supported.'],
      ['SignatureVersion', '2.0', 'only 1.0 is supported.'],
      ['SignatureVersion', '1', 'only 1.0 is supported.'],
    ])('when %s is %s, then InvalidParameter 400 says what is supported', async (name, value, valid) => {
      await expectApiError(verify(signed({ params: { [name]: value } })), {
        code: 'InvalidParameter',
        status: 400,
        message: `The specified parameter "${name}" is not valid: ${valid}`,
      });
    });
  });

  describe('when the Timestamp is checked', () => {
    it.each([
      '2026-11-24 12:00:00',
      '2026-11-24T12:00:00',
      '2026-02-31T00:00:00Z',
      '2026-11-24T12:00:00+08:00',
      '2026-11-24T04:00:00-08:00',
      '2026-11-24T24:00:00Z',
      '2026-11-24T12:00:60Z',
      '2026-11-24T12:00Z',
      '2026-11-24T12:00:00.1234Z',
      '2026-11-24t12:00:00z',
      '1795521600',
      'Tue, 24 Nov 2026 12:00:00 GMT',
    ])('when Timestamp is %j, then InvalidTimeStamp.Format 400', async (timestamp) => {
      await expectApiError(verify(signed({ params: { Timestamp: timestamp } })), {
        code: 'InvalidTimeStamp.Format',
        status: 400,
        message: 'Specified time stamp or date value is not well formatted.',
      });
    });

    it.each(['2026-11-24T12:00:00.123Z', '2026-11-24T12:00:00.5Z'])(
      'when Timestamp %s has milliseconds, then it is accepted',
      async (timestamp) => {
        await expect(verify(signed({ params: { Timestamp: timestamp } }))).resolves.toEqual({
          accessKeyId: ACCESS_KEY_ID,
          projectId: 'p1',
        });
      },
    );

    it.each([
      ['in the past', -1],
      ['in the future', 1],
    ])(
      'when Timestamp is 15 minutes and 1 second %s, then InvalidTimeStamp.Expired 400 and no nonce is claimed',
      async (_what, sign) => {
        const ledger = nonceLedger();
        const params = signed({ params: { Timestamp: iso(NOW + sign * (15 * MINUTE + 1000)) } });
        await expectApiError(verify(params, { ledger }), expired);
        expect(ledger.claims).toEqual([]);
      },
    );

    it('when Timestamp is 15 minutes and 1 millisecond in the past, then it is expired', async () => {
      await expectApiError(verify(signed({ params: { Timestamp: '2026-11-24T11:44:59.999Z' } })), expired);
    });

    it.each([
      ['in the past', -1],
      ['in the future', 1],
    ])('when Timestamp is exactly 15 minutes %s, then it is accepted', async (_what, sign) => {
      const params = signed({ params: { Timestamp: iso(NOW + sign * 15 * MINUTE) } });
      await expect(verify(params)).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
    });
  });

  describe('when the access key is not known', () => {
    it('when the AccessKeyId is unknown, then InvalidAccessKeyId.NotFound 404 and no nonce is claimed', async () => {
      const ledger = nonceLedger();
      await expectApiError(verify(signed({ params: { AccessKeyId: 'AKIAUNKNOWNEXAMPLE23' } }), { ledger }), {
        code: 'InvalidAccessKeyId.NotFound',
        status: 404,
        message: 'The AccessKey ID provided does not exist in our records.',
      });
      expect(ledger.claims).toEqual([]);
    });

    it('when the secret lookup fails otherwise, then its error passes through untranslated', async () => {
      const failure = new KmsError('HsmUnavailable', 'The HSM did not answer.');
      const params = signed();
      const ledger = nonceLedger();
      const verifying = verifyRpcSignature('POST', params, {
        lookupSecret: async () => Promise.reject(failure),
        claimNonce: ledger.claimNonce,
        now: () => NOW,
      });
      await expect(verifying).rejects.toBe(failure);
      expect(ledger.claims).toEqual([]);
    });
  });

  describe('when the signature does not match', () => {
    const cases: [string, () => { params: Map<string, string>; method: string }][] = [
      ['the secret is wrong', () => ({ params: signed({ secret: 'not-the-secret' }), method: 'POST' })],
      [
        'the signer appended the "&" to the secret itself',
        () => ({ params: signed({ secret: 'secret&' }), method: 'POST' }),
      ],
      [
        'a parameter value was tampered with',
        () => {
          const params = signed();
          params.set('KeyId', 'alias/other');
          return { params, method: 'POST' };
        },
      ],
      [
        'a parameter was added',
        () => {
          const params = signed();
          params.set('EncryptionContext', '{"a":"b"}');
          return { params, method: 'POST' };
        },
      ],
      [
        'a parameter was removed',
        () => {
          const params = signed();
          params.delete('Plaintext');
          return { params, method: 'POST' };
        },
      ],
      ['a GET-signed request arrives by POST', () => ({ params: signed({ method: 'GET' }), method: 'POST' })],
      ['a POST-signed request arrives by GET', () => ({ params: signed({ method: 'POST' }), method: 'GET' })],
    ];

    it.each(cases)(
      'when %s, then SignatureDoesNotMatch 400 shows the server string to sign, and no nonce is claimed',
      async (_what, make) => {
        const { params, method } = make();
        const ledger = nonceLedger();
        await expectApiError(verify(params, { method, ledger }), mismatch(method, params));
        expect(ledger.claims).toEqual([]);
        expect(ledger.recorded.size).toBe(0);
      },
    );

    it('when the method changed, then the message ends with the string the server signed, its plaintext redacted', async () => {
      const { message } = await rejection(verify(signed({ method: 'GET' }), { method: 'POST' }));
      expect(message).toBe(
        'Specified signature is not matched with our calculation. server string to sign is:' +
          'POST&%2F&AccessKeyId%3DAKIAALIBABAEXAMPLE23%26Action%3DEncrypt%26Format%3DJSON%26KeyId%3Dalias%252Fapp' +
          '%26Plaintext%3DREDACTED%26SignatureMethod%3DHMAC-SHA1' +
          '%26SignatureNonce%3Df3c1d0e2-6a4b-4c1d-9e8f-0123456789ab%26SignatureVersion%3D1.0' +
          '%26Timestamp%3D2026-11-24T12%253A00%253A00Z%26Version%3D2016-01-20',
      );
    });

    it("when a forger sends a caller's nonce with a wrong signature, then the caller can still use that nonce", async () => {
      const ledger = nonceLedger();
      await expectApiError(verify(signed({ secret: 'forged' }), { ledger }), mismatch('POST', signed()));
      await expect(verify(signed(), { ledger })).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
    });

    it.each<[string, (genuine: string) => string]>([
      ['not base64 at all', () => '!!!!'],
      ['a single character', () => 'A'],
      ['shorter than an HMAC-SHA1', (genuine) => genuine.slice(0, 20)],
      ['longer than an HMAC-SHA1', (genuine) => `${genuine.slice(0, -1)}AAAA`],
      ['the right length but wrong', () => `${'A'.repeat(27)}=`],
      ['the genuine MAC in hex', (genuine) => Buffer.from(genuine, 'base64').toString('hex')],
      ['the genuine signature still percent-encoded', (genuine) => encodeURIComponent(genuine)],
    ])('when the Signature is %s, then SignatureDoesNotMatch 400 and nothing else is thrown', async (_what, spell) => {
      const params = signed();
      params.set('Signature', spell(params.get('Signature') as string));
      await expectApiError(verify(params), mismatch('POST', params));
    });

    // Node's base64 decoder is lenient (stray characters, missing padding): only the canonical spelling of
    // the MAC may pass, as Alibaba's gateway compares the Signature as a string.
    it.each<[string, (genuine: string) => string]>([
      ['the genuine signature twice', (genuine) => genuine + genuine],
      ['the genuine signature followed by junk', (genuine) => `${genuine}!!`],
      ['the genuine signature without its padding', (genuine) => genuine.replace(/=+$/, '')],
      ['the genuine signature with a space inside', (genuine) => `${genuine.slice(0, 10)} ${genuine.slice(10)}`],
    ])('when the Signature is %s, then SignatureDoesNotMatch 400', async (_what, spell) => {
      const params = signed();
      params.set('Signature', spell(params.get('Signature') as string));
      await expectApiError(verify(params), mismatch('POST', params));
    });
  });

  describe('when a nonce is reused or too long', () => {
    it('when the same signed request is sent twice, then the second is SignatureNonceUsed 400', async () => {
      const ledger = nonceLedger();
      const params = signed();
      await expect(verify(params, { ledger })).resolves.toEqual({ accessKeyId: ACCESS_KEY_ID, projectId: 'p1' });
      await expectApiError(verify(params, { ledger }), {
        code: 'SignatureNonceUsed',
        status: 400,
        message: 'Specified signature nonce was used already.',
      });
    });

    it('when a new request reuses a nonce under a new Timestamp, then it is SignatureNonceUsed too', async () => {
      const ledger = nonceLedger();
      await verify(signed({ params: { Timestamp: iso(NOW - MINUTE) } }), { ledger });
      await expectApiError(verify(signed({ params: { Action: 'Decrypt' } }), { ledger }), {
        code: 'SignatureNonceUsed',
        status: 400,
        message: 'Specified signature nonce was used already.',
      });
    });

    it('when the nonce has 128 characters, then it is accepted', async () => {
      await expect(verify(signed({ params: { SignatureNonce: 'n'.repeat(128) } }))).resolves.toEqual({
        accessKeyId: ACCESS_KEY_ID,
        projectId: 'p1',
      });
    });

    it('when the nonce has 129 characters, then InvalidParameter 400 and it is not claimed', async () => {
      const ledger = nonceLedger();
      await expectApiError(verify(signed({ params: { SignatureNonce: 'n'.repeat(129) } }), { ledger }), {
        code: 'InvalidParameter',
        status: 400,
        message: 'The specified parameter "SignatureNonce" is not valid: at most 128 characters.',
      });
      expect(ledger.claims).toEqual([]);
    });
  });
});
