import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { SignJWT } from 'jose';

/**
 * The development token issuer: an Ed25519 key pair kept in `<data dir>/issuer/issuer-key.pem` (mode 0600). The
 * service verifies with its public half; `kms token` signs with the private half. Production deployments verify
 * tokens from their identity provider's JWKS instead (KMS_JWKS_URL).
 */
export const LOCAL_ISSUER = 'hsm-kms-local';
export const LOCAL_AUDIENCE = 'hsm-kms';
/** The claim that carries the project a token is scoped to. */
export const PROJECT_CLAIM = 'project_id';

export interface IssuerKeys {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

export function issuerKeyPath(dataDir: string): string {
  return path.join(dataDir, 'issuer', 'issuer-key.pem');
}

/** Loads the issuer key, creating it on first use. Creation is exclusive, so racing processes agree on one key. */
export function loadOrCreateIssuerKeys(dataDir: string): IssuerKeys {
  const file = issuerKeyPath(dataDir);
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    const { privateKey } = generateKeyPairSync('ed25519');
    writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const privateKey = createPrivateKey(readFileSync(file));
  return { privateKey, publicKey: createPublicKey(privateKey) };
}

export function signProjectToken(keys: IssuerKeys, projectId: string, ttlSeconds: number): Promise<string> {
  return new SignJWT({ [PROJECT_CLAIM]: projectId })
    .setProtectedHeader({ alg: 'EdDSA', typ: 'JWT' })
    .setIssuer(LOCAL_ISSUER)
    .setAudience(LOCAL_AUDIENCE)
    .setSubject(`local-user@${projectId}`)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(keys.privateKey);
}
