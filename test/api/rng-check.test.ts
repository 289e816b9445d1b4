import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bytesForFipsBlocks, judgeRandomness, pullRandom, type RandomnessCriteria } from '../support/rng-check.js';
import { startTestService, type TestService } from '../support/test-service.js';

// The short version of scripts/rng-check (4 MB, 1,000 blocks): 256 KiB, 100 FIPS 140-2 blocks. Random data fails
// about one block in a thousand, so 5 of 100 stays the bar. ent's entropy of n random bytes falls short of 8 by about
// χ²/(2n·ln 2), χ² ≈ 255 ± 23: 7.9993 for 256 KiB, and 7.999 is five standard deviations below.
const SHORT: RandomnessCriteria = { fipsBlocks: 100, maxFipsFailures: 5, minEntropyBitsPerByte: 7.999 };
const BYTES = 256 * 1024;
const REGION = 'local-1';
const P = 'rngcheckshort';

let kms: TestService;

beforeAll(async () => {
  kms = await startTestService({ KMS_REGION: REGION });
});
afterAll(async () => {
  await kms?.destroy();
});

describe('the random bytes the service hands out, judged by rngtest and ent', () => {
  it('when 256 KiB are pulled through Huawei gen-random and AWS GenerateRandom, then they pass; a constant stream of the same length fails', async () => {
    expect(BYTES).toBeGreaterThanOrEqual(bytesForFipsBlocks(SHORT.fipsBlocks));
    const pulled = await pullRandom(
      {
        url: kms.url,
        huawei: { projectId: P, token: await kms.tokenFor(P) },
        aws: { region: REGION, credentials: await kms.running.credentials.create(P) },
      },
      BYTES,
    );
    expect(pulled.huaweiBytes).toBe(BYTES / 2);
    expect(pulled.awsBytes).toBe(BYTES / 2);

    const verdict = await judgeRandomness(pulled.bytes, SHORT);
    expect(verdict.reasons).toEqual([]);
    expect(verdict.fipsBlocks).toBe(SHORT.fipsBlocks);

    const control = await judgeRandomness(Buffer.alloc(BYTES, 0x5a), SHORT);
    expect(control.pass).toBe(false);
    expect(control.fipsFailures).toBe(SHORT.fipsBlocks);
    expect(control.entropyBitsPerByte).toBe(0);
  });
});
