import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SOFTHSM_LIBRARY = process.env.KMS_TEST_PKCS11_LIBRARY ?? '/usr/lib/softhsm/libsofthsm2.so';

const INIT_TOKEN = fileURLToPath(new URL('../../softhsm/init-token.sh', import.meta.url));

export interface TestToken {
  /** Throw-away directory holding softhsm2.conf and the token files. */
  readonly dir: string;
  readonly softhsmConf: string;
  readonly tokenLabel: string;
  readonly pin: string;
  readonly library: string;
}

/**
 * A fresh SoftHSM token in its own temporary directory, with random PINs. Sets SOFTHSM2_CONF for this process:
 * SoftHSM reads it at C_Initialize, and every vitest file runs in its own process (pool 'forks').
 */
export function createTestToken(): TestToken {
  const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-token-'));
  const tokenLabel = `test-${randomBytes(4).toString('hex')}`;
  const pin = randomBytes(12).toString('hex');
  const soPin = randomBytes(12).toString('hex');
  const softhsmConf = execFileSync(INIT_TOKEN, [dir, tokenLabel, pin, soPin], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
  process.env.SOFTHSM2_CONF = softhsmConf;
  return { dir, softhsmConf, tokenLabel, pin, library: SOFTHSM_LIBRARY };
}

export function removeTestToken(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
