/**
 * Random passwords for Alibaba Cloud KMS GetRandomPassword (API 2016-01-20; limits and character set from the
 * Alibaba help page api-kms-2016-01-20-getrandompassword). The dialect adapter parses the request strings into a
 * PasswordPolicy; this file draws the password from HSM random bytes.
 *
 * The alphabet is the concatenation, in the declaration order of PASSWORD_CHARACTER_TYPES (lowercase, uppercase,
 * numbers, punctuation), of the types that are not excluded, minus the excluded characters. Every character is an
 * unbiased draw from that alphabet (rejection sampling), and a password lacking a required type is redrawn whole, so
 * the result is uniform over every password the policy allows.
 */
import { KmsError, needs } from './errors.js';
import { MAX_RANDOM_LENGTH } from './random.service.js';

export const PASSWORD_CHARACTER_TYPES = {
  lowercase: 'abcdefghijklmnopqrstuvwxyz',
  uppercase: 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
  numbers: '0123456789',
  punctuation: '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~', // the 32 ASCII punctuation characters
} as const;

export type PasswordCharacterType = keyof typeof PASSWORD_CHARACTER_TYPES;

export const MIN_PASSWORD_LENGTH = 8;
export const MAX_PASSWORD_LENGTH = 128;
export const DEFAULT_PASSWORD_LENGTH = 32;

export interface PasswordPolicy {
  readonly length: number;
  /** Characters never drawn; each must be one of the 94 characters above. */
  readonly excludeCharacters: string;
  readonly excludedTypes: ReadonlySet<PasswordCharacterType>;
  /** At least one character of every type that is not excluded and still has characters left. */
  readonly requireEachIncludedType: boolean;
}

/** Source of random bytes: in the service, the HSM's C_GenerateRandom (RandomService.generate, at most 1024 bytes per call). */
export type RandomBytes = (length: number) => Promise<Buffer>;

/**
 * Redraws allowed before giving up on a policy with required types. The hardest policy the limits allow (length 8,
 * three types cut down to one character each beside the full punctuation) succeeds with probability ≈ 0.8% per
 * attempt, so 10,000 failures in a row (≈ e^-77) mean a broken random source, not bad luck.
 */
const MAX_ATTEMPTS = 10_000;

const CHARACTER_TYPES = Object.keys(PASSWORD_CHARACTER_TYPES) as PasswordCharacterType[];
const ALLOWED_CHARACTERS = new Set(Object.values(PASSWORD_CHARACTER_TYPES).join(''));
const ALLOWED_DESCRIPTION = `a-z, A-Z, 0-9 and ${PASSWORD_CHARACTER_TYPES.punctuation}`;

/** What a policy leaves to draw from. */
interface Alphabet {
  readonly characters: string;
  /** For each character, the bit of its type (1 << index in CHARACTER_TYPES). */
  readonly typeBits: readonly number[];
  /** The type bits every password must show; 0 when requireEachIncludedType is off. */
  readonly requiredMask: number;
}

/**
 * Random passwords, each character from the HSM's random bytes. Pass the random source as a closure
 * (`(n) => randomService.generate(n)`), not as an unbound method.
 */
export class PasswordService {
  constructor(private readonly random: RandomBytes) {}

  /**
   * A password of `policy.length` characters drawn uniformly from the policy's alphabet.
   *
   * With requireEachIncludedType, a password missing a required type is thrown away and drawn again in full.
   * Conditioning on "every type present" this way keeps every valid password equally likely. The usual shortcut
   * (place one character of each type, fill the rest, shuffle) does not: it over-represents the small types (a
   * digit is forced into every password although digits are only 10 of 94 characters), which skews the character
   * frequencies and makes some passwords likelier than others.
   *
   * Random bytes are consumed as one stream: bytes left over from a discarded attempt start the next one.
   */
  async generate(policy: PasswordPolicy): Promise<string> {
    const alphabet = alphabetOf(policy);
    const indices = new UnbiasedIndices(this.random, alphabet.characters.length);
    try {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const characters: string[] = [];
        let seenTypes = 0;
        while (characters.length < policy.length) {
          const index = indices.take();
          if (index === undefined) {
            await indices.refill(policy.length - characters.length);
            continue;
          }
          characters.push(alphabet.characters.charAt(index));
          seenTypes |= alphabet.typeBits[index] ?? 0;
        }
        if ((seenTypes & alphabet.requiredMask) === alphabet.requiredMask) return characters.join('');
      }
    } finally {
      indices.dispose();
    }
    throw new KmsError(
      'InternalError',
      `No password with every required character type after ${MAX_ATTEMPTS} attempts; the random source looks broken.`,
    );
  }
}

/** Validates the policy (InvalidParameter) and builds its alphabet. */
function alphabetOf(policy: PasswordPolicy): Alphabet {
  const { length } = policy;
  needs(
    Number.isInteger(length) && length >= MIN_PASSWORD_LENGTH && length <= MAX_PASSWORD_LENGTH,
    `Password length must be an integer from ${MIN_PASSWORD_LENGTH} to ${MAX_PASSWORD_LENGTH}, got ${String(length)}.`,
  );

  const excluded = new Set<string>();
  // for…of walks code points, so an emoji is named whole rather than as two halves of a surrogate pair.
  for (const character of policy.excludeCharacters) {
    needs(
      ALLOWED_CHARACTERS.has(character),
      `Excluded character ${JSON.stringify(character)} is not allowed: excluded characters must be among the 94 ` +
        `printable ASCII characters ${ALLOWED_DESCRIPTION}.`,
    );
    excluded.add(character);
  }

  let characters = '';
  const typeBits: number[] = [];
  let includedMask = 0;
  const excludedByFlag: PasswordCharacterType[] = [];
  const emptied: PasswordCharacterType[] = [];
  CHARACTER_TYPES.forEach((type, index) => {
    if (policy.excludedTypes.has(type)) {
      excludedByFlag.push(type);
      return;
    }
    const left = [...PASSWORD_CHARACTER_TYPES[type]].filter((character) => !excluded.has(character));
    // A type whose every character is excluded is simply not required: there is nothing of it to require.
    if (left.length === 0) {
      emptied.push(type);
      return;
    }
    const bit = 1 << index;
    characters += left.join('');
    for (let i = 0; i < left.length; i++) typeBits.push(bit);
    includedMask |= bit;
  });

  needs(
    characters.length > 0,
    'No characters are left to build a password: every character type is excluded (' +
      [
        excludedByFlag.length > 0 ? `by its flag: ${excludedByFlag.join(', ')}` : undefined,
        emptied.length > 0 ? `all characters in the excluded characters: ${emptied.join(', ')}` : undefined,
      ]
        .filter((part) => part !== undefined)
        .join('; ') +
      ').',
  );

  if (!policy.requireEachIncludedType) return { characters, typeBits, requiredMask: 0 };

  // Unreachable within today's limits (length >= 8, at most 4 types), kept so a future limit change fails loudly.
  const required = CHARACTER_TYPES.filter((_, index) => includedMask & (1 << index));
  needs(
    required.length <= length,
    `A password of ${length} characters cannot hold one character of each of the ${required.length} required ` +
      `types (${required.join(', ')}).`,
  );
  return { characters, typeBits, requiredMask: includedMask };
}

/**
 * Unbiased indices in [0, n) from random bytes, by rejection sampling.
 *
 * `byte % n` alone is biased whenever n does not divide 256: for n = 94, the indices 0..67 are hit by three byte
 * values each (b, b + 94, b + 188) and 68..93 by two, so the first 68 characters would be 50% likelier. Using only
 * bytes below 256 - (256 % n), the largest multiple of n, gives each index exactly 256 / n byte values; the others
 * are discarded.
 *
 * Bytes are fetched in batches to keep HSM round trips few, and every batch is zeroed once used.
 */
class UnbiasedIndices {
  private readonly limit: number;
  /** Share of bytes accepted, limit / 256 (at least 172 / 256 for any n <= 94). */
  private readonly acceptance: number;
  private bytes: Buffer = Buffer.alloc(0);
  private offset = 0;
  private lastRequest = 0;

  constructor(
    private readonly random: RandomBytes,
    private readonly n: number,
  ) {
    this.limit = 256 - (256 % n);
    this.acceptance = this.limit / 256;
  }

  /** The next index, or undefined when the batch is used up (call refill). */
  take(): number | undefined {
    while (this.offset < this.bytes.length) {
      const byte = this.bytes[this.offset++] as number;
      if (byte < this.limit) return byte % this.n;
    }
    return undefined;
  }

  /**
   * Replaces the used-up batch with a new one, large enough for `positions` more characters with a margin.
   *
   * The number of bytes needed for r accepted ones has mean r/p and standard deviation √(r(1-p))/p (p the
   * acceptance); asking for the mean plus 4 standard deviations makes a second call for one password rare (exact
   * binomial odds: about 1 in 1,000 for 8 characters, 1 in 3,000 to 10,000 for 128). Should more be needed after
   * all (or a policy keeps rejecting whole passwords), each further call asks for twice as much as the one before,
   * up to the 1024-byte limit of one HSM draw, so the number of calls grows only logarithmically.
   */
  async refill(positions: number): Promise<void> {
    this.bytes.fill(0);
    const p = this.acceptance;
    const estimate = Math.ceil((positions + 4 * Math.sqrt(positions * (1 - p))) / p);
    const request = Math.min(MAX_RANDOM_LENGTH, Math.max(estimate, 2 * this.lastRequest));
    const bytes = await this.random(request);
    if (bytes.length !== request) {
      bytes.fill(0);
      throw new KmsError('InternalError', `The random source returned ${bytes.length} bytes instead of ${request}.`);
    }
    this.bytes = bytes;
    this.offset = 0;
    this.lastRequest = request;
  }

  /** Zeroes the current batch: its bytes are the password's characters. */
  dispose(): void {
    this.bytes.fill(0);
  }
}
