/**
 * The randomness check behind scripts/rng-check (which documents its use): pulls a stream through a service's
 * Huawei gen-random and AWS GenerateRandom, judges it with rngtest and ent, then judges a constant stream of the same
 * length the same way, which must fail. Exit status: 0 pass, 1 the service's stream fails, 2 the negative control
 * passes (the check itself is broken), 3 usage or set-up error.
 *
 *   node --import tsx test/smoke/rng-check.ts [--bytes N] [--url URL]
 *
 * With --url, the environment gives the credentials: RNG_CHECK_PROJECT, RNG_CHECK_TOKEN (an X-Auth-Token of the
 * project), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (an access key of the project), KMS_REGION. Without it, the
 * service is started in this process on a fresh SoftHSM token and data directory, both removed at the end.
 */
import { parseArgs } from 'node:util';
import {
  bytesForFipsBlocks,
  judgeRandomness,
  pullRandom,
  type RandomnessVerdict,
  type RandomSources,
  RNG_CHECK_CRITERIA,
} from '../support/rng-check.js';
import { startTestService, type TestService } from '../support/test-service.js';

const DEFAULT_BYTES = 4 * 1024 * 1024;
const PROJECT = 'rngcheck';
const REGION = 'local-1';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { bytes: { type: 'string' }, url: { type: 'string' }, concurrency: { type: 'string' } },
  });
  const total = values.bytes === undefined ? DEFAULT_BYTES : Number(values.bytes);
  const needed = bytesForFipsBlocks(RNG_CHECK_CRITERIA.fipsBlocks);
  if (!Number.isInteger(total) || total < needed) {
    console.error(`--bytes must be a whole number of at least ${needed} (1,000 FIPS 140-2 blocks)`);
    return 3;
  }
  let own: TestService | undefined;
  let sources: RandomSources;
  if (values.url !== undefined) {
    const env = (name: string): string => {
      const value = process.env[name];
      if (value === undefined || value === '') throw new Error(`--url needs ${name} in the environment`);
      return value;
    };
    sources = {
      url: values.url.replace(/\/+$/, ''),
      huawei: { projectId: env('RNG_CHECK_PROJECT'), token: env('RNG_CHECK_TOKEN') },
      aws: {
        region: process.env.KMS_REGION ?? REGION,
        credentials: { accessKeyId: env('AWS_ACCESS_KEY_ID'), secretAccessKey: env('AWS_SECRET_ACCESS_KEY') },
      },
    };
  } else {
    own = await startTestService({ KMS_REGION: REGION });
    sources = {
      url: own.url,
      huawei: { projectId: PROJECT, token: await own.tokenFor(PROJECT) },
      aws: { region: REGION, credentials: await own.running.credentials.create(PROJECT) },
    };
  }
  try {
    const concurrency = values.concurrency === undefined ? 8 : Number(values.concurrency);
    const pulled = await pullRandom(sources, total, concurrency);
    console.log(
      `rng-check: ${fmt(pulled.bytes.length)} bytes from ${sources.url}${own ? ' (started here, fresh SoftHSM token)' : ''}: ` +
        `${fmt(pulled.huaweiBytes)} through Huawei gen-random, ${fmt(pulled.awsBytes)} through AWS GenerateRandom, ` +
        `${fmt(pulled.requests)} requests in ${(pulled.ms / 1000).toFixed(1)} s`,
    );
    const verdict = await judgeRandomness(pulled.bytes);
    report('the service', verdict);

    const constant = Buffer.alloc(pulled.bytes.length, 0x5a);
    const control = await judgeRandomness(constant);
    report('negative control (a constant stream of the same length)', control);

    if (control.pass) {
      console.log('rng-check: FAIL: the negative control passed, so the check cannot tell a broken stream');
      return 2;
    }
    console.log(`rng-check: ${verdict.pass ? 'pass' : 'FAIL'} (the negative control fails, as it must)`);
    return verdict.pass ? 0 : 1;
  } finally {
    await own?.destroy();
  }
}

function report(what: string, v: RandomnessVerdict): void {
  const perTest = Object.entries(v.fipsTests)
    .map(([t, n]) => `${t} ${n}`)
    .join(', ');
  console.log(`${what}: ${v.pass ? 'pass' : `fail: ${v.reasons.join('; ')}`}`);
  console.log(
    `  rngtest: ${v.fipsFailures} of ${v.fipsBlocks} FIPS 140-2 blocks failed (${perTest}); at most ` +
      `${RNG_CHECK_CRITERIA.maxFipsFailures} allowed`,
  );
  console.log(
    `  ent: entropy ${v.entropyBitsPerByte} bits per byte (at least ${RNG_CHECK_CRITERIA.minEntropyBitsPerByte}); ` +
      `chi square ${v.chiSquare} (random data exceeds it ${v.chiSquarePercent} % of the times); ` +
      `mean ${v.arithmeticMean}; Monte Carlo pi ${v.monteCarloPi}; serial correlation ${v.serialCorrelation}`,
  );
}

const fmt = (n: number) => n.toLocaleString('en-US');

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`rng-check: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(3);
  },
);
