import type { KeyObject } from 'node:crypto';
import { createRemoteJWKSet, type JWTVerifyGetKey, errors as joseErrors, jwtVerify } from 'jose';
import { KmsError } from '../core/errors.js';
import { LOCAL_AUDIENCE, LOCAL_ISSUER, PROJECT_CLAIM } from './local-issuer.js';

/** Verified tokens are remembered until they expire, so a signature is checked once per token, not per request. */
const CACHE_LIMIT = 10_000;
const PROJECT_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export interface TokenVerifierOptions {
  /** The local issuer's public key (development), or a JWKS URL (production). */
  readonly key: KeyObject | URL;
  readonly issuer?: string | undefined;
  readonly audience?: string | undefined;
  readonly now?: () => number;
}

/** Who a verified token speaks for: its project, and its subject when it names one (never the token itself). */
export interface TokenIdentity {
  readonly projectId: string;
  readonly subject: string | undefined;
}

/** Verifies X-Auth-Token JWTs and returns the project they are scoped to. */
export class TokenVerifier {
  private readonly key: KeyObject | JWTVerifyGetKey;
  private readonly issuer: string | undefined;
  private readonly audience: string | undefined;
  private readonly now: () => number;
  private readonly verified = new Map<string, TokenIdentity & { expiresAtMs: number }>();

  constructor(options: TokenVerifierOptions) {
    const remote = options.key instanceof URL;
    this.key = remote ? createRemoteJWKSet(options.key as URL) : (options.key as KeyObject);
    this.issuer = options.issuer ?? (remote ? undefined : LOCAL_ISSUER);
    this.audience = options.audience ?? (remote ? undefined : LOCAL_AUDIENCE);
    this.now = options.now ?? Date.now;
  }

  /** The token's project. Throws KmsError AuthMissing, AuthInvalid or AuthExpired. */
  async projectOf(token: string | undefined): Promise<string> {
    return (await this.identify(token)).projectId;
  }

  /** The token's project and subject (for the audit trail). Throws as projectOf does. */
  async identify(token: string | undefined): Promise<TokenIdentity> {
    if (token === undefined || token.length === 0) throw new KmsError('AuthMissing', 'Invalid or null X-Auth-Token.');
    const cached = this.verified.get(token);
    if (cached) {
      if (cached.expiresAtMs > this.now()) return cached;
      this.verified.delete(token);
      throw new KmsError('AuthExpired', 'X-Auth-Token expired.');
    }
    const payload = await this.verify(token);
    const projectId = payload[PROJECT_CLAIM];
    if (typeof payload.exp !== 'number' || typeof projectId !== 'string' || !PROJECT_ID_PATTERN.test(projectId)) {
      throw new KmsError('AuthInvalid', 'Invalid X-Auth-Token.');
    }
    if (this.verified.size >= CACHE_LIMIT) this.verified.clear();
    const identity = { projectId, subject: typeof payload.sub === 'string' ? payload.sub : undefined };
    this.verified.set(token, { ...identity, expiresAtMs: payload.exp * 1000 });
    return identity;
  }

  private async verify(token: string) {
    try {
      const { payload } = await jwtVerify(token, this.key as KeyObject, {
        ...(this.issuer ? { issuer: this.issuer } : {}),
        ...(this.audience ? { audience: this.audience } : {}),
        requiredClaims: ['exp'],
        currentDate: new Date(this.now()),
      });
      return payload;
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) throw new KmsError('AuthExpired', 'X-Auth-Token expired.');
      throw new KmsError('AuthInvalid', 'Invalid X-Auth-Token.', { cause: err });
    }
  }
}
