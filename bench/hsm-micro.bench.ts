/**
 * In-process benchmark of the GrapheneHsm adapter (src/hsm/graphene-hsm.ts) on a throw-away SoftHSM token: what the
 * HSM side of a request costs without HTTP, Express, JSON or SQLite.
 *
 *   node --import tsx bench/hsm-micro.bench.ts [--seconds 3] [--rounds 3] [--cached 10000]
 *
 * One Node thread, calls awaited one after another (the adapter's calls are synchronous PKCS#11 calls behind a
 * promise, so this is also the cost per request on the event loop). Prints ops/s, the median of `rounds` rounds.
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import type { CmkVersionRef } from '../src/core/ports.js';
import { GrapheneHsm, ROOT_KEY_LABEL } from '../src/hsm/graphene-hsm.js';
import { gcmMechanism } from '../src/hsm/key-templates.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { machine } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    cached: { type: 'string', default: '10000' },
  },
});
const SECONDS = Number(opts.seconds);
const ROUNDS = Number(opts.rounds);
/** Derived keys held at once, as in the service with 10,000 CMKs (KMS_KEY_CACHE_SIZE default). */
const CACHED = Number(opts.cached);

const cmk = (): CmkVersionRef => ({
  keyId: randomUUID(),
  version: 0,
  rootKeyLabel: ROOT_KEY_LABEL,
  derivationData: randomBytes(32),
});

/** Ops per second of `op`, run back to back for `SECONDS` (checking the clock every 64 ops). */
async function opsPerSecond(op: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 200; i++) await op(); // warm-up
  const started = performance.now();
  const deadline = started + SECONDS * 1000;
  let n = 0;
  for (;;) {
    for (let i = 0; i < 64; i++) await op();
    n += 64;
    const now = performance.now();
    if (now >= deadline) return (n * 1000) / (now - started);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main() {
  const token = createTestToken();
  const hsm = await GrapheneHsm.open({
    library: token.library,
    tokenLabel: token.tokenLabel,
    pin: token.pin,
    poolSize: 4,
    keyCacheSize: CACHED,
    createRootKeyIfMissing: true,
  });
  try {
    const key = cmk();
    await hsm.prepareKey(key);
    const iv = randomBytes(12);
    const aad = randomBytes(80);
    const plaintext = randomBytes(64);
    const sealed = await hsm.encrypt(key, iv, plaintext, aad);

    // The same PKCS#11 calls without the adapter (its pool, checks, promise and error mapping), on one of its
    // idle sessions and its cached derived key: the difference is the adapter's own cost per call.
    const hooks = hsm.forTesting();
    const lib = hooks.lib;
    const session = hooks.idleSessions[0] as Buffer;
    const keyHandle = hooks.derivedKeys.get(`${key.keyId}:${key.version}`) as Buffer;
    const gcm = gcmMechanism(iv, aad);

    const cases: [string, () => Promise<unknown>][] = [
      ['raw pkcs11js C_GenerateRandom(64), sync', async () => lib.C_GenerateRandom(session, Buffer.alloc(64))],
      [
        'raw pkcs11js C_EncryptInit + C_Encrypt 64 B, sync',
        async () => {
          lib.C_EncryptInit(session, gcm, keyHandle);
          return lib.C_Encrypt(session, plaintext, Buffer.alloc(80));
        },
      ],
      ['generateRandom(64)', () => hsm.generateRandom(64)],
      ['generateRandom(12) (a GCM IV)', () => hsm.generateRandom(12)],
      ['encrypt 64 B, AES-256-GCM, cached derived key', () => hsm.encrypt(key, iv, plaintext, aad)],
      ['decrypt 64 B, AES-256-GCM, cached derived key', () => hsm.decrypt(key, iv, sealed, aad)],

      [
        'create-datakey HSM work: random 64 + random 12 + encrypt',
        async () => {
          await hsm.generateRandom(64);
          await hsm.generateRandom(12);
          await hsm.encrypt(key, iv, plaintext, aad);
        },
      ],
    ];
    const results: { operation: string; runs: number[] }[] = [];
    const run = async (list: [string, () => Promise<unknown>][]) => {
      const mine = list.map(([operation]) => ({ operation, runs: [] as number[] }));
      results.push(...mine);
      for (let round = 0; round < ROUNDS; round++) {
        for (const [i, [, op]] of list.entries()) mine[i]?.runs.push(await opsPerSecond(op));
      }
    };
    await run(cases);

    // Many CMKs: CACHED derived keys (session objects in the HSM), used in random order.
    const many = Array.from({ length: CACHED - 1 }, cmk);
    const filling = performance.now();
    for (const k of many) await hsm.prepareKey(k);
    const fillSeconds = (performance.now() - filling) / 1000;
    many.push(key);
    await run([
      [
        `encrypt 64 B, random one of ${CACHED} cached derived keys`,
        () => hsm.encrypt(many[randomInt(many.length)] as CmkVersionRef, iv, plaintext, aad),
      ],
      ['generateRandom(64), with those keys in the HSM', () => hsm.generateRandom(64)],
    ]);
    // Last, as it evicts the keys above: the cache is full, so every fresh derivation also destroys the least recently
    // used derived key (C_DestroyObject), as a cache miss in the service does.
    await run([['prepareKey, fresh derivation (C_DeriveKey + evicting C_DestroyObject)', () => hsm.prepareKey(cmk())]]);
    const m = machine();
    const lines = [
      `GrapheneHsm in-process, one thread, sequential awaits; ${m.nproc} cores, Node ${m.node}, SoftHSM ${m.softhsm2}`,
      `median of ${ROUNDS} rounds of ${SECONDS} s; deriving the first ${CACHED} keys took ${fillSeconds.toFixed(1)} s (${(CACHED / fillSeconds).toFixed(0)}/s)`,
      '',
      '| operation | ops/s (median) | µs/op | rounds |',
      '|---|---:|---:|---|',
      ...results.map(({ operation, runs }) => {
        const med = median(runs);
        return `| ${operation} | ${med.toFixed(0)} | ${(1e6 / med).toFixed(1)} | ${runs.map((r) => r.toFixed(0)).join(', ')} |`;
      }),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await hsm.close();
    removeTestToken(token.dir);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
