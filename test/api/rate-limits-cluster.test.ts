import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadOrCreateIssuerKeys, signProjectToken } from '../../src/auth/local-issuer.js';
import { type ChildService, freePort, spawnService, stopService } from '../support/child-service.js';
import { rawRequest } from '../support/raw-http.js';
import { createTestToken, removeTestToken, type TestToken } from '../support/softhsm.js';

/**
 * The limit is the project's for the whole service: with two workers, each leasing its tokens from the primary's
 * buckets, the requests admitted over a window stay within one limit, not twice it.
 */
const RATE = 10;
const WORKERS = 2;
/** Clients sending at once, each on a fresh connection per request so that both workers get requests. */
const CLIENTS = 6;
const WINDOW_MS = 3_000;
/** Between a client's requests: some 250 requests/s offered in all, 25 times the limit, without flooding the machine. */
const PAUSE_MS = 20;
/**
 * What the workers may hold beyond the primary's bucket at the start of a window: 1.5 batches each (a batch is 20 ms
 * of the rate, at least one token), rounded up (src/core/rate-limiter.ts).
 */
const SLACK = WORKERS * Math.ceil(1.5 * Math.max(1, Math.ceil(RATE * 0.02)));

let token: TestToken;
let service: ChildService;
let dataDir: string;

beforeAll(async () => {
  token = createTestToken();
  dataDir = path.join(token.dir, 'data');
  service = await spawnService(
    {
      KMS_DATA_DIR: dataDir,
      KMS_PIN: token.pin,
      KMS_TOKEN_LABEL: token.tokenLabel,
      KMS_PKCS11_LIBRARY: token.library,
      SOFTHSM2_CONF: token.softhsmConf,
      KMS_PORT: String(await freePort()),
      KMS_WORKERS: String(WORKERS),
      KMS_RATE_LIMIT_CRYPTO_PER_SECOND: String(RATE),
    },
    WORKERS,
  );
}, 60_000);
afterAll(async () => {
  if (service) await stopService(service);
  removeTestToken(token.dir);
});

/** gen-random for the project on a connection of its own. */
async function genRandom(projectId: string, authToken: string) {
  const res = await rawRequest(service.url, {
    path: `/v1.0/${projectId}/kms/gen-random`,
    headers: { 'x-auth-token': authToken, 'content-type': 'application/json', connection: 'close' },
    body: JSON.stringify({ random_data_length: '256' }),
  });
  return { status: res.status, retryAfter: res.headers['retry-after'], code: JSON.parse(res.text).error_code };
}

describe('rate limits across two cluster workers', () => {
  it('when clients hammer one project through both workers, then the total admitted stays within one limit', async () => {
    const busy = await signProjectToken(loadOrCreateIssuerKeys(dataDir), 'busy', 3600);
    const outcomes: { status: number; retryAfter: unknown; code: string }[] = [];
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CLIENTS }, async () => {
        while (performance.now() - started < WINDOW_MS) {
          outcomes.push(await genRandom('busy', busy));
          await sleep(PAUSE_MS);
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const admitted = outcomes.filter((o) => o.status === 200).length;
    const refused = outcomes.filter((o) => o.status !== 200);
    // One limit: a second's burst, the rate over the window, and the workers' leases. Per-worker buckets would admit
    // about twice the burst and the rate.
    expect(admitted).toBeLessThanOrEqual(RATE + Math.ceil(RATE * seconds) + SLACK);
    // And close to it: the workers together are not held to half of it.
    expect(admitted).toBeGreaterThanOrEqual(RATE + Math.floor(RATE * WINDOW_MS * 0.001 * 0.6));
    expect(refused.length).toBeGreaterThan(admitted);
    for (const o of refused) expect(o).toEqual({ status: 429, retryAfter: '1', code: 'APIG.0308' });
  }, 30_000);

  it('when one project is throttled, then another is served by both workers at once', async () => {
    const issuer = loadOrCreateIssuerKeys(dataDir);
    const [noisy, quiet] = await Promise.all([
      signProjectToken(issuer, 'noisy', 3600),
      signProjectToken(issuer, 'quiet', 3600),
    ]);
    const [noise, served] = await Promise.all([
      Promise.all(Array.from({ length: 4 * RATE }, () => genRandom('noisy', noisy))),
      Promise.all(Array.from({ length: RATE }, () => genRandom('quiet', quiet))),
    ]);
    expect(noise.some((o) => o.status === 429)).toBe(true);
    expect(served.map((o) => o.status)).toEqual(Array(RATE).fill(200));
  }, 30_000);
});
