import { spawn } from 'node:child_process';
import { signedAwsRequest } from './aws-request.js';

/** The most one request draws: Huawei's 8192 bits, AWS's 1024 bytes. */
const BYTES_PER_REQUEST = 1024;

export interface RandomSources {
  readonly url: string;
  /** Huawei gen-random, with an X-Auth-Token of the project. */
  readonly huawei: { readonly projectId: string; readonly token: string };
  /** AWS GenerateRandom, signed with SigV4. */
  readonly aws: {
    readonly region: string;
    readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  };
}

export interface PulledStream {
  /** Huawei's half then AWS's, each in the order the requests were made. */
  readonly bytes: Buffer;
  readonly huaweiBytes: number;
  readonly awsBytes: number;
  readonly requests: number;
  readonly ms: number;
}

/**
 * At least `total` bytes from a running service, half through Huawei gen-random and half through AWS GenerateRandom,
 * 1,024 bytes a request, `concurrency` requests at a time. Any answer but 200 stops the pull with an error.
 */
export async function pullRandom(sources: RandomSources, total: number, concurrency = 8): Promise<PulledStream> {
  const perHalf = Math.ceil(total / 2 / BYTES_PER_REQUEST);
  const started = performance.now();
  const huawei = await inParallel(perHalf, concurrency, () => huaweiGenRandom(sources));
  const aws = await inParallel(perHalf, concurrency, () => awsGenerateRandom(sources));
  const huaweiBytes = Buffer.concat(huawei);
  const awsBytes = Buffer.concat(aws);
  return {
    bytes: Buffer.concat([huaweiBytes, awsBytes]),
    huaweiBytes: huaweiBytes.length,
    awsBytes: awsBytes.length,
    requests: 2 * perHalf,
    ms: performance.now() - started,
  };
}

async function huaweiGenRandom({ url, huawei }: RandomSources): Promise<Buffer> {
  const res = await fetch(`${url}/v1.0/${huawei.projectId}/kms/gen-random`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-auth-token': huawei.token },
    body: JSON.stringify({ random_data_length: String(BYTES_PER_REQUEST * 8) }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`gen-random answered ${res.status}: ${text}`);
  return Buffer.from((JSON.parse(text) as { random_data: string }).random_data, 'hex');
}

async function awsGenerateRandom({ url, aws }: RandomSources): Promise<Buffer> {
  const res = await signedAwsRequest(url, aws.credentials, aws.region, {
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.GenerateRandom' },
    body: JSON.stringify({ NumberOfBytes: BYTES_PER_REQUEST }),
  });
  if (res.status !== 200) throw new Error(`GenerateRandom answered ${res.status}: ${JSON.stringify(res.body)}`);
  return Buffer.from(res.body.Plaintext as string, 'base64');
}

/** `count` results of `task`, in the order of their index, at most `concurrency` running at once. */
async function inParallel<T>(count: number, concurrency: number, task: () => Promise<T>): Promise<T[]> {
  const results: T[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const at = next++;
      results[at] = await task();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return results;
}

/** What the stream must meet: at most `maxFipsFailures` of `fipsBlocks` FIPS 140-2 blocks fail; ent's entropy. */
export interface RandomnessCriteria {
  readonly fipsBlocks: number;
  readonly maxFipsFailures: number;
  readonly minEntropyBitsPerByte: number;
}

/** The bar, for a stream of at least 2.5 MB: 5 failed blocks of 1,000 at most, 7.9999 bits per byte. */
export const RNG_CHECK_CRITERIA: RandomnessCriteria = {
  fipsBlocks: 1000,
  maxFipsFailures: 5,
  minEntropyBitsPerByte: 7.9999,
};

export interface RandomnessVerdict {
  readonly pass: boolean;
  /** Why it failed, one line per criterion missed. */
  readonly reasons: readonly string[];
  readonly fipsBlocks: number;
  readonly fipsFailures: number;
  /** rngtest's per-test failure counts (Monobit, Poker, Runs, Long run, Continuous run). */
  readonly fipsTests: Readonly<Record<string, number>>;
  readonly entropyBitsPerByte: number;
  readonly chiSquare: number;
  /** ent's "would exceed this value X percent of the times". */
  readonly chiSquarePercent: string;
  readonly arithmeticMean: number;
  readonly monteCarloPi: number;
  readonly serialCorrelation: number;
}

/** 20,000-bit FIPS 140-2 blocks, after the 32 bits rngtest keeps for its continuous test. */
export const bytesForFipsBlocks = (blocks: number) => 4 + blocks * 2500;

/** Runs rngtest (rng-tools5) and ent over `stream` and judges it by `criteria`. */
export async function judgeRandomness(
  stream: Buffer,
  criteria: RandomnessCriteria = RNG_CHECK_CRITERIA,
): Promise<RandomnessVerdict> {
  if (stream.length < bytesForFipsBlocks(criteria.fipsBlocks)) {
    throw new Error(`${criteria.fipsBlocks} FIPS blocks need ${bytesForFipsBlocks(criteria.fipsBlocks)} bytes`);
  }
  // rngtest reports on stderr and exits non-zero when a block fails: both are read, neither is an error here.
  const rngtest = await run('rngtest', ['-c', String(criteria.fipsBlocks)], stream);
  const ent = await run('ent', [], stream);
  const count = (label: string): number => {
    const m = new RegExp(`rngtest: ${label}: (\\d+)`).exec(rngtest.stderr);
    if (!m) throw new Error(`rngtest printed no "${label}":\n${rngtest.stderr}`);
    return Number(m[1]);
  };
  const number = (pattern: RegExp, orElse?: number): number => {
    const m = pattern.exec(ent.stdout);
    if (m) return Number(m[1]);
    if (orElse !== undefined) return orElse;
    throw new Error(`ent printed no ${pattern}:\n${ent.stdout}`);
  };
  const fipsFailures = count('FIPS 140-2 failures');
  const fipsBlocks = fipsFailures + count('FIPS 140-2 successes');
  const fipsTests = Object.fromEntries(
    ['Monobit', 'Poker', 'Runs', 'Long run', 'Continuous run'].map((t) => [
      t,
      count(`FIPS 140-2\\(2001-10-10\\) ${t}`),
    ]),
  );
  const verdict = {
    fipsBlocks,
    fipsFailures,
    fipsTests,
    entropyBitsPerByte: number(/Entropy = ([\d.]+) bits per byte/),
    chiSquare: number(/Chi square distribution for \d+ samples is ([\d.]+)/),
    chiSquarePercent: /would exceed this value (.+?) percent/.exec(ent.stdout)?.[1] ?? '?',
    arithmeticMean: number(/Arithmetic mean value of data bytes is ([\d.]+)/),
    monteCarloPi: number(/Monte Carlo value for Pi is ([\d.]+)/),
    // "undefined (all values equal!)" for a constant stream.
    serialCorrelation: number(/Serial correlation coefficient is (-?[\d.]+)/, Number.NaN),
  };
  const reasons: string[] = [];
  if (fipsBlocks < criteria.fipsBlocks) reasons.push(`rngtest read ${fipsBlocks} blocks, not ${criteria.fipsBlocks}`);
  if (fipsFailures > criteria.maxFipsFailures) {
    reasons.push(`${fipsFailures} of ${fipsBlocks} FIPS 140-2 blocks failed (at most ${criteria.maxFipsFailures})`);
  }
  if (!(verdict.entropyBitsPerByte >= criteria.minEntropyBitsPerByte)) {
    reasons.push(`entropy ${verdict.entropyBitsPerByte} bits per byte (at least ${criteria.minEntropyBitsPerByte})`);
  }
  return { pass: reasons.length === 0, reasons, ...verdict };
}

function run(command: string, args: string[], input: Buffer): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', (err) =>
      reject(new Error(`${command} could not run (${err.message}): install rng-tools5 and ent`)),
    );
    child.on('close', () => resolve({ stdout, stderr }));
    // rngtest stops reading after its blocks: the rest of the stream meets a closed pipe, which is expected.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
