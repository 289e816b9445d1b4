import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCloudHsmShim } from './cloudhsm-shim.js';
import { createNssDatabase, NSS_LIBRARY } from './nss-token.js';

export const SOFTHSM_LIBRARY = process.env.KMS_TEST_PKCS11_LIBRARY ?? '/usr/lib/softhsm/libsofthsm2.so';

const INIT_TOKEN = fileURLToPath(new URL('../../softhsm/init-token.sh', import.meta.url));

/**
 * The real PKCS#11 modules tests run on: SoftHSMv2, NSS softokn as a second, independent implementation, and
 * SoftHSM behind the CloudHSM-rules shim (test/support/cloudhsm-shim/cloudhsm-shim.c).
 */
export type TokenProvider = 'softhsm' | 'nss' | 'cloudhsm-shim';
/** The providers the adapter suites run on: SoftHSM, NSS softokn, and SoftHSM behind the CloudHSM-rules shim. */
export const TOKEN_PROVIDERS: readonly TokenProvider[] = ['softhsm', 'nss', 'cloudhsm-shim'];

interface TestTokenBase {
  /** Throw-away directory holding the token's files; removeTestToken deletes it. */
  readonly dir: string;
  readonly tokenLabel: string;
  readonly pin: string;
  readonly library: string;
  /** Library parameters for C_Initialize; undefined for SoftHSM. */
  readonly initParams: string | undefined;
  /** The variables that point the service (or `kms`) at this token. */
  readonly serviceEnv: Readonly<Record<string, string>>;
}

/** A SoftHSM token (what createTestToken() makes without a provider). */
export interface TestToken extends TestTokenBase {
  readonly provider: 'softhsm';
  readonly softhsmConf: string;
}

/** An NSS softokn database. Its token is always labelled "NSS Certificate DB". */
export interface NssTestToken extends TestTokenBase {
  readonly provider: 'nss';
  readonly initParams: string;
}

/**
 * A SoftHSM token seen through the CloudHSM-rules shim: `library` is the shim, which forwards to `targetLibrary`.
 * The shim reads HSM_KMS_SHIM_TARGET when it is loaded, so createTestToken('cloudhsm-shim') sets it in this
 * process's environment (for an adapter loaded in-process) as well as in `serviceEnv` (for a child process).
 */
export interface CloudHsmShimTestToken extends TestTokenBase {
  readonly provider: 'cloudhsm-shim';
  readonly softhsmConf: string;
  readonly targetLibrary: string;
}

export type AnyTestToken = TestToken | NssTestToken | CloudHsmShimTestToken;

/**
 * A fresh SoftHSM token in its own temporary directory, with random PINs. Sets SOFTHSM2_CONF for this process:
 * SoftHSM reads it at C_Initialize, and every vitest file runs in its own process (pool 'forks').
 */
function createSoftHsmToken(): TestToken {
  const token = initSoftHsmToken(mkdtempSync(path.join(tmpdir(), 'hsm-kms-token-')));
  process.env.SOFTHSM2_CONF = token.softhsmConf;
  return token;
}

/**
 * Another SoftHSM token in the token directory of `token` (one SOFTHSM2_CONF shows both), with its own label and
 * random PINs. SoftHSM lists the tokens of its directory at C_Initialize: add tokens before the library is opened.
 */
export function addSoftHsmToken(token: TestToken): TestToken {
  return initSoftHsmToken(token.dir);
}

/** A new token with a random label and random PINs in the token directory of `dir` (made if missing). */
function initSoftHsmToken(dir: string): TestToken {
  const tokenLabel = `test-${randomBytes(4).toString('hex')}`;
  const pin = randomBytes(12).toString('hex');
  const soPin = randomBytes(12).toString('hex');
  const softhsmConf = execFileSync(INIT_TOKEN, [dir, tokenLabel, pin, soPin], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  }).trim();
  return {
    provider: 'softhsm',
    dir,
    softhsmConf,
    tokenLabel,
    pin,
    library: SOFTHSM_LIBRARY,
    initParams: undefined,
    serviceEnv: {
      KMS_PKCS11_LIBRARY: SOFTHSM_LIBRARY,
      KMS_TOKEN_LABEL: tokenLabel,
      KMS_PIN: pin,
      SOFTHSM2_CONF: softhsmConf,
    },
  };
}

/** A fresh NSS softokn database in its own temporary directory, with a random user PIN. */
function createNssToken(): NssTestToken {
  const { dir, initParams, tokenLabel, pin } = createNssDatabase();
  return {
    provider: 'nss',
    dir,
    tokenLabel,
    pin,
    library: NSS_LIBRARY,
    initParams,
    serviceEnv: {
      KMS_PKCS11_LIBRARY: NSS_LIBRARY,
      KMS_PKCS11_INIT_PARAMS: initParams,
      KMS_TOKEN_LABEL: tokenLabel,
      KMS_PIN: pin,
    },
  };
}

/** A fresh SoftHSM token behind the CloudHSM-rules shim, which is compiled (once per source version) with gcc. */
function createCloudHsmShimToken(): CloudHsmShimTestToken {
  const library = buildCloudHsmShim();
  const { dir, softhsmConf, tokenLabel, pin, serviceEnv } = createSoftHsmToken();
  process.env.HSM_KMS_SHIM_TARGET = SOFTHSM_LIBRARY;
  return {
    provider: 'cloudhsm-shim',
    dir,
    softhsmConf,
    tokenLabel,
    pin,
    library,
    targetLibrary: SOFTHSM_LIBRARY,
    initParams: undefined,
    serviceEnv: { ...serviceEnv, KMS_PKCS11_LIBRARY: library, HSM_KMS_SHIM_TARGET: SOFTHSM_LIBRARY },
  };
}

const PROVIDERS: { readonly [P in TokenProvider]: () => Extract<AnyTestToken, { provider: P }> } = {
  softhsm: createSoftHsmToken,
  nss: createNssToken,
  'cloudhsm-shim': createCloudHsmShimToken,
};

/** A fresh token of the provider (SoftHSM by default), in its own temporary directory, with random PINs. */
export function createTestToken(): TestToken;
export function createTestToken<P extends TokenProvider>(provider: P): Extract<AnyTestToken, { provider: P }>;
export function createTestToken(provider: TokenProvider = 'softhsm'): AnyTestToken {
  return PROVIDERS[provider]();
}

export function removeTestToken(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
