import { generateKeyPairSync } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, spawnService } from '../support/child-service.js';
import { startTestService, type TestService } from '../support/test-service.js';

/** Production mode: tokens come from an identity provider's JWKS, here served on 127.0.0.1. */
const P = 'projectjwks01';
const ISSUER = 'https://idp.example.test';
const AUDIENCE = 'kms-production';
const provider = generateKeyPairSync('ec', { namedCurve: 'P-256' });
let jwksServer: Server;
let kms: TestService;

function sign(claims: Record<string, unknown>, options: { issuer?: string; audience?: string; kid?: string } = {}) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: options.kid ?? 'idp-key-1' })
    .setIssuer(options.issuer ?? ISSUER)
    .setAudience(options.audience ?? AUDIENCE)
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(provider.privateKey);
}

beforeAll(async () => {
  const jwk = { ...(await exportJWK(provider.publicKey)), kid: 'idp-key-1', alg: 'ES256', use: 'sig' };
  jwksServer = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: [jwk] }));
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  const port = (jwksServer.address() as AddressInfo).port;
  kms = await startTestService({
    KMS_JWKS_URL: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    KMS_TOKEN_ISSUER: ISSUER,
    KMS_TOKEN_AUDIENCE: AUDIENCE,
  });
});
afterAll(async () => {
  await kms.destroy();
  await new Promise<void>((resolve) => jwksServer.close(() => resolve()));
});

describe('tokens verified with a JWKS', () => {
  it("when the identity provider's token names the project, then the request is served", async () => {
    const res = await kms.call(P, 'gen-random', {}, { token: await sign({ project_id: P }) });
    expect(res.status).toBe(200);
  });

  it('when the issuer, audience or key id is wrong, or the project claim is missing, then the answer is KMS.0302', async () => {
    for (const token of [
      await sign({ project_id: P }, { issuer: 'https://evil.example.test' }),
      await sign({ project_id: P }, { audience: 'other' }),
      await sign({ project_id: P }, { kid: 'unknown-key' }),
      await sign({}),
    ]) {
      const res = await kms.call(P, 'gen-random', {}, { token });
      expect(res.status).toBe(403);
      expect(res.body.error.error_code).toBe('KMS.0302');
    }
  });

  it('when a locally issued development token is sent, then it is refused', async () => {
    const res = await kms.call(P, 'gen-random', {});
    expect(res.body.error.error_code).toBe('KMS.0302');
  });
});

describe('start-up with a JWKS', () => {
  it('when KMS_JWKS_URL is set without an issuer and an audience, then the service exits with 1 naming them', async () => {
    const start = spawnService({
      KMS_PIN: '1234',
      KMS_PORT: String(await freePort()),
      KMS_JWKS_URL: 'https://idp.example.test/.well-known/jwks.json',
    });
    const failure = await start.then(
      () => expect.fail('the service started'),
      (err: Error) => err.message,
    );
    expect(failure).toMatch(/^service exited with 1 before listening:/);
    const line = JSON.parse(failure.split('\n')[1] as string);
    expect(line).toMatchObject({
      level: 'error',
      msg: 'start-up failed',
      message:
        'Invalid configuration: KMS_JWKS_URL is set, so KMS_TOKEN_ISSUER and KMS_TOKEN_AUDIENCE must be set too ' +
        '(missing: KMS_TOKEN_ISSUER, KMS_TOKEN_AUDIENCE); without them a token the JWKS signed for any issuer or ' +
        'audience would be accepted.',
    });
    expect(line).not.toHaveProperty('stack');
  });
});
