/**
 * In-process benchmark of the GrapheneHsm adapter (src/hsm/graphene-hsm.ts) on a throw-away SoftHSM token: what the
 * HSM side of a request costs without HTTP, Express, JSON or SQLite.
 *
 *   node --import tsx bench/hsm-micro.bench.ts [--seconds 3] [--rounds 3] [--cached 10000] [--async-calls]
 *
 * One Node thread, calls awaited one after another (the adapter's calls are synchronous PKCS#11 calls behind a
 * promise, so this is also the cost per request on the event loop). Prints ops/s, the median of `rounds` rounds.
 * `--async-calls` opens the adapter with KMS_HSM_ASYNC_CALLS' setting: GCM's C_Encrypt / C_Decrypt then go through
 * pkcs11js's callback variants (a libuv thread and back per call).
 */
import { randomBytes, randomInt, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import type { CmkVersionRef } from '../src/core/ports.js';
import { GrapheneHsm, LEGACY_ROOT_KEY_LABEL } from '../src/hsm/graphene-hsm.js';
import { gcmMechanism } from '../src/hsm/key-templates.js';
import { makeLegacyRootKey } from '../test/support/legacy-root-key.js';
import { createTestToken, removeTestToken } from '../test/support/softhsm.js';
import { machine } from './lib/processes.js';

const { values: opts } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    cached: { type: 'string', default: '10000' },
    'async-calls': { type: 'boolean', default: false },
  },
});
const SECONDS = Number(opts.seconds);
const ROUNDS = Number(opts.rounds);
/** Version keys held at once, as in the service with 10,000 CMKs (KMS_KEY_CACHE_SIZE default). */
const CACHED = Number(opts.cached);
const ROOT_KEY_LABEL = 'hsm-kms-wrap-1';

/** A new CMK version (kwp-v1): generated, wrapped under the root, unwrapped into the cache. */
const cmk = async (hsm: GrapheneHsm): Promise<CmkVersionRef> => {
  const keyId = randomUUID();
  return { keyId, version: 0, ...(await hsm.createKeyVersion(keyId, 0, ROOT_KEY_LABEL)) };
};

/** A version of the legacy scheme (cbc-encrypt-data-v1): derivation data under the derive-only root. */
const legacyCmk = (): CmkVersionRef => ({
  keyId: randomUUID(),
  version: 0,
  scheme: 'cbc-encrypt-data-v1',
  rootKeyLabel: LEGACY_ROOT_KEY_LABEL,
  keyMaterial: randomBytes(32),
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
    createTokenKeysIfMissing: true,
    asyncCalls: opts['async-calls'],
  });
  try {
    await hsm.ensureRootKey(ROOT_KEY_LABEL);
    const hooks = hsm.forTesting();
    makeLegacyRootKey(hooks.lib, hooks.anchorSession as Buffer);
    const key = await cmk(hsm);
    const aad = randomBytes(80);
    const plaintext = randomBytes(64);
    const sealed = await hsm.encrypt(key, plaintext, aad);

    // The same PKCS#11 calls without the adapter (its pool, checks, promise, IV and error mapping), on one of its
    // idle sessions and its cached version key: the difference is the adapter's own cost per call. The raw case
    // reuses one IV, which only a benchmark that throws its ciphertexts away may do.
    const lib = hooks.lib;
    const session = hooks.idleSessions[0] as Buffer;
    const keyHandle = hooks.versionKeys.get(`${key.keyId}:${key.version}`) as Buffer;
    const gcm = gcmMechanism(randomBytes(12), aad);

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
      [
        'encrypt 64 B, AES-256-GCM (IV from C_GenerateRandom), cached version key',
        () => hsm.encrypt(key, plaintext, aad),
      ],
      [
        'decrypt 64 B, AES-256-GCM, cached version key',
        () => hsm.decrypt(key, sealed.iv, sealed.ciphertextWithTag, aad),
      ],

      [
        'create-datakey HSM work: random 64 + encrypt',
        async () => {
          await hsm.generateRandom(64);
          await hsm.encrypt(key, plaintext, aad);
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

    // Many CMKs: CACHED version keys (session objects in the HSM), used in random order.
    const many: CmkVersionRef[] = [];
    const filling = performance.now();
    for (let i = 1; i < CACHED; i++) many.push(await cmk(hsm));
    const fillSeconds = (performance.now() - filling) / 1000;
    many.push(key);
    const anyOfMany = () => many[randomInt(many.length)] as CmkVersionRef;
    await run([
      [`encrypt 64 B, random one of ${CACHED} cached version keys`, () => hsm.encrypt(anyOfMany(), plaintext, aad)],
      ['generateRandom(64), with those keys in the HSM', () => hsm.generateRandom(64)],
      // A cache miss as the service meets it once the cache is full: one key object destroyed, one brought back.
      [
        'cache miss, kwp-v1: forget (C_DestroyObject) + prepareKey (C_UnwrapKey)',
        () => {
          const k = anyOfMany();
          hsm.forget(k.keyId, k.version);
          return hsm.prepareKey(k);
        },
      ],
    ]);
    // Last, as they evict the keys above: the cache is full, so every new key also destroys the least recently used
    // one (C_DestroyObject).
    await run([
      [
        'cache miss, legacy cbc-encrypt-data-v1: C_DeriveKey + evicting C_DestroyObject',
        () => hsm.prepareKey(legacyCmk()),
      ],
      ['createKeyVersion: C_GenerateKey + C_WrapKey + C_UnwrapKey + evicting C_DestroyObject', () => cmk(hsm)],
    ]);
    const m = machine();
    const lines = [
      `GrapheneHsm in-process (${opts['async-calls'] ? 'asynchronous' : 'synchronous'} calls), one thread, sequential awaits; ${m.nproc} cores, Node ${m.node}, SoftHSM ${m.softhsm2}`,
      `median of ${ROUNDS} rounds of ${SECONDS} s; creating the first ${CACHED} versions took ${fillSeconds.toFixed(1)} s (${(CACHED / fillSeconds).toFixed(0)}/s)`,
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
