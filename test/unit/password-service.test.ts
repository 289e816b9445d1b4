/**
 * PasswordService is a pure algorithm over a random-byte source, so these tests feed it node:crypto randomBytes
 * (statistics) or scripted byte sequences (exact behaviour). The HTTP tests of GetRandomPassword use the real HSM.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KmsError } from '../../src/core/errors.js';
import {
  DEFAULT_PASSWORD_LENGTH,
  MAX_PASSWORD_LENGTH,
  MIN_PASSWORD_LENGTH,
  PASSWORD_CHARACTER_TYPES,
  type PasswordCharacterType,
  type PasswordPolicy,
  PasswordService,
  type RandomBytes,
} from '../../src/core/password.service.js';
import { characterCounts, chiSquare, chiSquareCritical } from '../support/chi-square.js';

const TYPES = Object.keys(PASSWORD_CHARACTER_TYPES) as PasswordCharacterType[];
/** The 94 characters in the service's alphabet order (lowercase, uppercase, numbers, punctuation). */
const ALL = Object.values(PASSWORD_CHARACTER_TYPES).join('');
const ALLOWED_LIST = 'a-z, A-Z, 0-9 and !"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~';
/** p ≈ 1e-6: a correct generator fails these tests about once in a million runs. */
const Z = 4.75;

const cryptoRandom: RandomBytes = async (length) => randomBytes(length);
const service = new PasswordService(cryptoRandom);

function policy(overrides: Partial<PasswordPolicy> = {}): PasswordPolicy {
  return {
    length: DEFAULT_PASSWORD_LENGTH,
    excludeCharacters: '',
    excludedTypes: new Set(),
    requireEachIncludedType: false,
    ...overrides,
  };
}

/** The characters a policy allows, computed independently of the service, in the service's order. */
function allowedCharacters(p: PasswordPolicy): string {
  return TYPES.filter((type) => !p.excludedTypes.has(type))
    .flatMap((type) => [...PASSWORD_CHARACTER_TYPES[type]])
    .filter((character) => !p.excludeCharacters.includes(character))
    .join('');
}

/** The 15 non-empty sets of included types, as the sets of excluded ones. */
const EXCLUDED_TYPE_SETS: ReadonlySet<PasswordCharacterType>[] = Array.from(
  { length: 15 },
  (_, i) => new Set(TYPES.filter((_, bit) => ((i + 1) & (1 << bit)) === 0)),
);
const included = (excluded: ReadonlySet<PasswordCharacterType>) => TYPES.filter((type) => !excluded.has(type));

function generateMany(p: PasswordPolicy, count: number, generator = service): Promise<string[]> {
  return Promise.all(Array.from({ length: count }, () => generator.generate(p)));
}

/** A random source that records every request and keeps every buffer it handed out. */
function recordingRandom() {
  const requests: number[] = [];
  const buffers: Buffer[] = [];
  const random: RandomBytes = async (length) => {
    requests.push(length);
    const bytes = randomBytes(length);
    buffers.push(bytes);
    return bytes;
  };
  return { random, requests, buffers };
}

/**
 * A random source that plays `script` as one byte stream, whatever the request sizes. A request reaching past the
 * end is padded with 0xff (rejected for every alphabet used with it here); any request after that throws, so a
 * test cannot loop forever.
 */
function scriptedRandom(script: readonly number[]) {
  let position = 0;
  const buffers: Buffer[] = [];
  const random: RandomBytes = async (length) => {
    if (position >= script.length) throw new Error('script exhausted');
    const bytes = Buffer.alloc(length, 0xff);
    Buffer.from(script.slice(position, position + length)).copy(bytes);
    position += length;
    buffers.push(bytes);
    return bytes;
  };
  return { random, buffers };
}

async function expectKmsError(promise: Promise<unknown>, code: string, message: string | RegExp): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(KmsError);
  expect((error as KmsError).code).toBe(code);
  if (typeof message === 'string') expect((error as KmsError).message).toBe(message);
  else expect((error as KmsError).message).toMatch(message);
}

describe('PasswordService: length and defaults', () => {
  it('when nothing is set, then the Alibaba defaults apply: 32 characters, limits 8 to 128', async () => {
    expect([MIN_PASSWORD_LENGTH, DEFAULT_PASSWORD_LENGTH, MAX_PASSWORD_LENGTH]).toEqual([8, 32, 128]);
    expect(ALL).toHaveLength(94);
    expect(PASSWORD_CHARACTER_TYPES.punctuation).toHaveLength(32);
    expect(await service.generate(policy())).toHaveLength(32);
  });

  it.each([8, 32, 128])(
    'when the length is %i, then every password has exactly that many characters',
    async (length) => {
      for (const password of await generateMany(policy({ length }), 50)) expect(password).toHaveLength(length);
    },
  );

  it.each([7, 129, 0, -8, 32.5, Number.NaN, Number.POSITIVE_INFINITY])(
    'when the length is %s, then InvalidParameter names the range',
    async (length) => {
      await expectKmsError(
        service.generate(policy({ length })),
        'InvalidParameter',
        `Password length must be an integer from 8 to 128, got ${String(length)}.`,
      );
    },
  );
});

describe('PasswordService: policy validation', () => {
  it.each([' ', 'é', '\n', '\u0000', '😀', '€'])(
    'when an excluded character is %j, then InvalidParameter names it JSON-quoted and lists the 94 allowed',
    async (character) => {
      await expectKmsError(
        service.generate(policy({ excludeCharacters: `abc${character}XYZ` })),
        'InvalidParameter',
        `Excluded character ${JSON.stringify(character)} is not allowed: excluded characters must be among the 94 ` +
          `printable ASCII characters ${ALLOWED_LIST}.`,
      );
    },
  );

  it('when the excluded characters are all 94 (even repeated), then they are accepted as characters', async () => {
    // Every character is valid to exclude; the request then fails only because nothing is left.
    await expectKmsError(
      service.generate(policy({ excludeCharacters: ALL + ALL })),
      'InvalidParameter',
      'No characters are left to build a password: every character type is excluded (all characters in the ' +
        'excluded characters: lowercase, uppercase, numbers, punctuation).',
    );
  });

  it('when every type is excluded by its flag, then InvalidParameter says no character is left', async () => {
    await expectKmsError(
      service.generate(policy({ excludedTypes: new Set(TYPES) })),
      'InvalidParameter',
      'No characters are left to build a password: every character type is excluded (by its flag: lowercase, ' +
        'uppercase, numbers, punctuation).',
    );
  });

  it('when some types are excluded by flag and the others emptied by excluded characters, then the message says which', async () => {
    await expectKmsError(
      service.generate(
        policy({
          excludedTypes: new Set(['lowercase', 'punctuation']),
          excludeCharacters: PASSWORD_CHARACTER_TYPES.numbers + PASSWORD_CHARACTER_TYPES.uppercase,
          requireEachIncludedType: true,
        }),
      ),
      'InvalidParameter',
      'No characters are left to build a password: every character type is excluded (by its flag: lowercase, ' +
        'punctuation; all characters in the excluded characters: uppercase, numbers).',
    );
  });

  it('when a type is not flagged but all its characters are excluded, then it is simply not required', async () => {
    const p = policy({ length: 8, excludeCharacters: PASSWORD_CHARACTER_TYPES.numbers, requireEachIncludedType: true });
    for (const password of await generateMany(p, 200)) {
      expect(password).not.toMatch(/[0-9]/);
      expect(password).toMatch(/[a-z]/);
      expect(password).toMatch(/[A-Z]/);
      expect(password).toMatch(/[^a-zA-Z0-9]/);
    }
  });

  // The remaining precondition (fewer positions than required types) cannot be reached through the public API:
  // the length is at least 8 and there are 4 types. It stays in the service as a guard for future limits.
});

describe('PasswordService: the alphabet is exactly what the policy allows', () => {
  const EXCLUDED_CHARACTER_SETS = ['', 'ABCabc', '0Oo1lI|!"\'\\`~'];

  it.each(EXCLUDED_CHARACTER_SETS)(
    'when the excluded characters are %j, then for each of the 15 type combinations every character is allowed and every allowed one appears',
    async (excludeCharacters) => {
      for (const excludedTypes of EXCLUDED_TYPE_SETS) {
        const p = policy({ length: 128, excludeCharacters, excludedTypes });
        const allowed = allowedCharacters(p);
        // characterCounts throws on a character outside `allowed`; 24 × 128 draws miss one of ≤ 94 characters
        // with probability < 94 · (93/94)^3072 ≈ 4e-13.
        const counts = characterCounts(await generateMany(p, 24), allowed);
        expect(counts.every((count) => count > 0)).toBe(true);
      }
    },
  );

  it('when a single character is left, then the password repeats it', async () => {
    const p = policy({
      excludedTypes: new Set(['lowercase', 'uppercase', 'punctuation']),
      excludeCharacters: '012345689',
      requireEachIncludedType: true,
    });
    expect(await service.generate(p)).toBe('7'.repeat(32));
  });
});

describe('PasswordService: requireEachIncludedType', () => {
  it('when on, then every password of 8 characters holds every included type, for all 15 combinations', async () => {
    for (const excludedTypes of EXCLUDED_TYPE_SETS) {
      const p = policy({ length: 8, excludedTypes, requireEachIncludedType: true });
      for (const password of await generateMany(p, 100)) {
        for (const type of included(excludedTypes)) {
          expect([...password].some((c) => PASSWORD_CHARACTER_TYPES[type].includes(c))).toBe(true);
        }
      }
    }
  });

  it('when three types are cut down to one character each, then every 8-character password still holds them all', async () => {
    // Alphabet of 35 (q, Z, 7 and the 32 punctuation): under 1% of draws qualify, so this exercises the redraw loop.
    const p = policy({
      length: 8,
      excludeCharacters: [...ALL].filter((c) => /[a-zA-Z0-9]/.test(c) && !'qZ7'.includes(c)).join(''),
      requireEachIncludedType: true,
    });
    const allowed = allowedCharacters(p);
    expect(allowed).toBe(`qZ7${PASSWORD_CHARACTER_TYPES.punctuation}`);
    const passwords = await generateMany(p, 50);
    characterCounts(passwords, allowed); // throws on a character outside the alphabet
    for (const password of passwords) {
      expect(password).toMatch(/q/);
      expect(password).toMatch(/Z/);
      expect(password).toMatch(/7/);
      expect(password).toMatch(/[^qZ7]/);
    }
  });

  it('when a drawn password lacks a required type, then the whole password is redrawn, not patched', async () => {
    // lowercase + numbers: 36 characters, bytes >= 252 rejected. The first 8 bytes give 'abcdefgh' (no digit),
    // so the answer must be exactly the next 8 accepted bytes: 26 → '0', then 0..6 → 'abcdefg'.
    const { random } = scriptedRandom([0, 1, 2, 3, 4, 5, 6, 7, 26, 0, 1, 2, 3, 4, 5, 6]);
    const p = policy({
      length: 8,
      excludedTypes: new Set(['uppercase', 'punctuation']),
      requireEachIncludedType: true,
    });
    expect(await new PasswordService(random).generate(p)).toBe('0abcdefg');
  });

  it('when off, then a password missing a type is returned as drawn', async () => {
    const { random } = scriptedRandom([0, 1, 2, 3, 4, 5, 6, 7]);
    const p = policy({ length: 8, excludedTypes: new Set(['uppercase', 'punctuation']) });
    expect(await new PasswordService(random).generate(p)).toBe('abcdefgh');
  });

  it('when the random source never yields a required type, then InternalError after 10,000 attempts', async () => {
    const p = policy({
      length: 8,
      excludedTypes: new Set(['uppercase', 'punctuation']),
      requireEachIncludedType: true,
    });
    const zeros: RandomBytes = async (length) => Buffer.alloc(length); // always 'aaaaaaaa'
    await expectKmsError(
      new PasswordService(zeros).generate(p),
      'InternalError',
      'No password with every required character type after 10000 attempts; the random source looks broken.',
    );
  });
});

describe('PasswordService: rejection sampling', () => {
  it('when the alphabet has 94 characters, then bytes 188..255 are skipped and the others map to byte % 94', async () => {
    // Accepted: 0 → a[0], 187 → a[93], 93 → a[93], 94 → a[0], 1..4 → a[1..4]; 200, 188 and 255 are skipped.
    const { random } = scriptedRandom([200, 0, 188, 255, 187, 93, 94, 1, 2, 3, 4]);
    const password = await new PasswordService(random).generate(policy({ length: 8 }));
    expect(password).toBe(`${ALL[0]}~~${ALL[0]}bcde`);
    expect(password.charAt(0)).toBe(ALL[0]);
  });

  it('when the alphabet is the 10 digits, then bytes 250..255 are skipped', async () => {
    // Accepted: 249 → 9, 0 → 0, 9 → 9, 10 → 0, 19 → 9, 245 → 5, 123 → 3, 200 → 0.
    const { random } = scriptedRandom([250, 251, 252, 253, 254, 255, 249, 0, 9, 10, 19, 245, 123, 200, 7]);
    const p = policy({ length: 8, excludedTypes: new Set(['lowercase', 'uppercase', 'punctuation']) });
    expect(await new PasswordService(random).generate(p)).toBe('90909530');
  });

  it('when the random source returns fewer bytes than asked, then InternalError', async () => {
    const short: RandomBytes = async (length) => randomBytes(length - 1);
    await expectKmsError(new PasswordService(short).generate(policy()), 'InternalError', /returned \d+ bytes instead/);
  });

  it('when a password is done, then every random buffer handed to the service has been zeroed', async () => {
    const { random, buffers } = recordingRandom();
    const generator = new PasswordService(random);
    await generator.generate(policy({ length: 128 }));
    await generator.generate(
      policy({ length: 8, excludeCharacters: 'abcdefghijklmnopqrstuvwxy', requireEachIncludedType: true }),
    );
    expect(buffers.length).toBeGreaterThan(0);
    for (const buffer of buffers) expect(buffer.every((byte) => byte === 0)).toBe(true);
  });

  it('when generation fails, then the random buffers are zeroed too', async () => {
    const { random, buffers } = scriptedRandom([0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const p = policy({
      length: 8,
      excludedTypes: new Set(['uppercase', 'punctuation']),
      requireEachIncludedType: true,
    });
    await expect(new PasswordService(random).generate(p)).rejects.toThrow('script exhausted');
    for (const buffer of buffers) expect(buffer.every((byte) => byte === 0)).toBe(true);
  });
});

describe('PasswordService: uniformity (chi-square, p ≈ 1e-6)', () => {
  it('when 2,000 passwords of 128 use all 94 characters, then the counts fit uniform; the same bytes taken modulo 94 do not', async () => {
    const passwords = await generateMany(policy({ length: 128 }), 2000);
    const draws = 2000 * 128;
    const critical = chiSquareCritical(ALL.length - 1, Z);
    const statistic = chiSquare(characterCounts(passwords, ALL), draws / ALL.length);
    expect(statistic).toBeLessThan(critical);

    // Control, proving the test has power: alphabet[b % 94] without rejection over as many random bytes.
    const biased = [...randomBytes(draws)].map((b) => ALL.charAt(b % ALL.length)).join('');
    const biasedStatistic = chiSquare(characterCounts([biased], ALL), draws / ALL.length);
    expect(biasedStatistic).toBeGreaterThan(10 * critical);
  });

  it.each([
    ['the 10 digits', policy({ length: 32, excludedTypes: new Set(['lowercase', 'uppercase', 'punctuation']) })],
    ['lowercase and digits (36)', policy({ length: 32, excludedTypes: new Set(['uppercase', 'punctuation']) })],
    ['86 characters (the lowest acceptance, 172/256)', policy({ length: 128, excludeCharacters: 'aeiouAEI' })],
  ])('when the alphabet is %s, then the counts fit uniform', async (_, p) => {
    const alphabet = allowedCharacters(p);
    const passwords = await generateMany(p, 2000);
    const statistic = chiSquare(characterCounts(passwords, alphabet), (2000 * p.length) / alphabet.length);
    expect(statistic).toBeLessThan(chiSquareCritical(alphabet.length - 1, Z));
  });
});

describe('PasswordService: batching', () => {
  it('when 100 passwords of 128 characters are drawn, then each takes at most 2 calls (almost always 1), none over 1024 bytes', async () => {
    for (let i = 0; i < 100; i++) {
      const { random, requests } = recordingRandom();
      expect(await new PasswordService(random).generate(policy({ length: 128 }))).toHaveLength(128);
      expect(requests.length).toBeLessThanOrEqual(2);
      for (const length of requests) expect(length).toBeLessThanOrEqual(1024);
    }
  });

  it('when many whole-password redraws are needed, then request sizes double up to 1024 and never beyond', async () => {
    const { random, requests } = recordingRandom();
    const p = policy({
      length: 8,
      excludedTypes: new Set(['uppercase', 'punctuation']),
      requireEachIncludedType: true,
    });
    const zeros: RandomBytes = async (length) => (await random(length)).fill(0);
    await expect(new PasswordService(zeros).generate(p)).rejects.toThrow(KmsError);
    // 80,000 bytes in all, fetched in about 80 calls rather than thousands.
    expect(requests.length).toBeLessThan(90);
    expect(Math.max(...requests)).toBe(1024);
    for (let i = 1; i < requests.length; i++) {
      expect(requests[i]).toBe(Math.min(1024, 2 * (requests[i - 1] as number)));
    }
  });
});
