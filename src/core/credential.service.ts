import { ACCESS_KEY_ID_PATTERN } from './credentials.js';
import { KmsError } from './errors.js';
import type { Clock, Hsm, MetadataStore } from './ports.js';

const ACCESS_KEY_ID_PREFIX = 'AKIA';
/** 10 random bytes are exactly 16 base32 characters (80 bits). */
const ACCESS_KEY_ID_RANDOM_BYTES = 10;
/** 30 bytes of the MAC are exactly 40 base64 characters, the length of an AWS secret access key. */
const SECRET_BYTES = 30;
const MAX_CACHED_SECRETS = 10_000;
const BASE32_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

export interface NewCredential {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

export interface ResolvedCredential {
  readonly projectId: string;
  readonly secretAccessKey: string;
}

/**
 * Access keys of the signed dialects. The store records who owns an access key and whether it is revoked; the
 * secret is never stored anywhere: it is recomputed in the HSM (HMAC under the non-extractable credential key) from
 * the access key id, so stealing the database yields no secret.
 */
export class CredentialService {
  readonly #hsm: Hsm;
  readonly #store: MetadataStore;
  readonly #clock: Clock;
  /**
   * Derived secrets by access key id, oldest first. A secret never changes for an id, so caching it is safe; the
   * revocation state is never cached (resolve reads the store on every call).
   */
  readonly #secrets = new Map<string, string>();

  constructor(hsm: Hsm, store: MetadataStore, clock: Clock) {
    this.#hsm = hsm;
    this.#store = store;
    this.#clock = clock;
  }

  /** A new access key of the project, and its secret: the only time the secret is handed out. */
  async create(projectId: string): Promise<NewCredential> {
    const accessKeyId = ACCESS_KEY_ID_PREFIX + base32(await this.#hsm.generateRandom(ACCESS_KEY_ID_RANDOM_BYTES));
    await this.#store.insertCredential({ accessKeyId, projectId, createdAt: this.#clock.now(), revokedAt: null });
    return { accessKeyId, secretAccessKey: await this.#secretOf(accessKeyId) };
  }

  /** False if the access key does not exist or was already revoked. */
  async revoke(accessKeyId: string): Promise<boolean> {
    this.#secrets.delete(accessKeyId);
    if (!ACCESS_KEY_ID_PATTERN.test(accessKeyId)) return false;
    return this.#store.revokeCredential(accessKeyId, this.#clock.now());
  }

  /** The project and secret of an active access key; AuthUnknownCredential if it is malformed, unknown or revoked. */
  async resolve(accessKeyId: string): Promise<ResolvedCredential> {
    if (!ACCESS_KEY_ID_PATTERN.test(accessKeyId)) throw unknownCredential();
    const credential = await this.#store.findCredential(accessKeyId);
    if (credential === undefined || credential.revokedAt !== null) throw unknownCredential();
    return { projectId: credential.projectId, secretAccessKey: await this.#secretOf(accessKeyId) };
  }

  async #secretOf(accessKeyId: string): Promise<string> {
    const cached = this.#secrets.get(accessKeyId);
    if (cached !== undefined) return cached;
    const mac = await this.#hsm.credentialSecret(accessKeyId);
    const secret = mac.subarray(0, SECRET_BYTES).toString('base64');
    mac.fill(0);
    if (this.#secrets.size >= MAX_CACHED_SECRETS) {
      const oldest = this.#secrets.keys().next().value;
      if (oldest !== undefined) this.#secrets.delete(oldest);
    }
    this.#secrets.set(accessKeyId, secret);
    return secret;
  }
}

/** The wording of AWS's UnrecognizedClientException, which SDK users see. */
function unknownCredential(): KmsError {
  return new KmsError('AuthUnknownCredential', 'The security token included in the request is invalid.');
}

/** RFC 4648 base32 without padding; callers pass a multiple of 5 bytes. */
function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += BASE32_ALPHABET[(value << (5 - bits)) & 31];
  return out;
}
