import { ACCESS_KEY_ID_PATTERN, type CredentialKind, XKS_ACCESS_KEY_ID_PATTERN } from './credentials.js';
import { KmsError } from './errors.js';
import type { Clock, Hsm, MetadataStore } from './ports.js';

/** 10 random bytes are exactly 16 base32 characters (80 bits). */
const ACCESS_KEY_ID_RANDOM_BYTES = 10;

interface CredentialFormat {
  readonly prefix: string;
  readonly pattern: RegExp;
  /** How many bytes of the 32-byte MAC make the secret, in base64. */
  readonly secretBytes: number;
}

const FORMATS: Readonly<Record<CredentialKind, CredentialFormat>> = {
  /** 30 bytes of the MAC are exactly 40 base64 characters, the length of an AWS secret access key. */
  signing: { prefix: 'AKIA', pattern: ACCESS_KEY_ID_PATTERN, secretBytes: 30 },
  /**
   * The whole MAC: 44 base64 characters (one '=' of padding), 256 bits. AWS takes an XKS secret of 43 to 64
   * characters of [A-Za-z0-9/+=] with at least 256 bits of entropy (custom-key-stores.md §1.1).
   */
  xks: { prefix: 'XKSA', pattern: XKS_ACCESS_KEY_ID_PATTERN, secretBytes: 32 },
};
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

  /**
   * A new access key of the project, and its secret: the only time the secret is handed out. `kind` 'xks' makes a
   * key of the XKS proxy API, which serves that API alone (src/core/credentials.ts says why).
   */
  async create(projectId: string, kind: CredentialKind = 'signing'): Promise<NewCredential> {
    const format = FORMATS[kind];
    const accessKeyId = format.prefix + base32(await this.#hsm.generateRandom(ACCESS_KEY_ID_RANDOM_BYTES));
    await this.#store.insertCredential({ accessKeyId, projectId, createdAt: this.#clock.now(), revokedAt: null });
    return { accessKeyId, secretAccessKey: await this.#secretOf(accessKeyId, format) };
  }

  /** False if the access key (of either kind) does not exist or was already revoked. */
  async revoke(accessKeyId: string): Promise<boolean> {
    this.#secrets.delete(accessKeyId);
    if (!ACCESS_KEY_ID_PATTERN.test(accessKeyId) && !XKS_ACCESS_KEY_ID_PATTERN.test(accessKeyId)) return false;
    return this.#store.revokeCredential(accessKeyId, this.#clock.now());
  }

  /**
   * The project and secret of an active access key of the signed dialects; AuthUnknownCredential if it is malformed,
   * unknown or revoked, or an XKS key.
   */
  resolve(accessKeyId: string): Promise<ResolvedCredential> {
    return this.#resolve(accessKeyId, FORMATS.signing);
  }

  /** The same for an access key of the XKS proxy API: any other key is AuthUnknownCredential. */
  resolveXks(accessKeyId: string): Promise<ResolvedCredential> {
    return this.#resolve(accessKeyId, FORMATS.xks);
  }

  async #resolve(accessKeyId: string, format: CredentialFormat): Promise<ResolvedCredential> {
    if (!format.pattern.test(accessKeyId)) throw unknownCredential();
    const credential = await this.#store.findCredential(accessKeyId);
    if (credential === undefined || credential.revokedAt !== null) throw unknownCredential();
    return { projectId: credential.projectId, secretAccessKey: await this.#secretOf(accessKeyId, format) };
  }

  async #secretOf(accessKeyId: string, format: CredentialFormat): Promise<string> {
    const cached = this.#secrets.get(accessKeyId);
    if (cached !== undefined) return cached;
    const mac = await this.#hsm.credentialSecret(accessKeyId);
    const secret = mac.subarray(0, format.secretBytes).toString('base64');
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
