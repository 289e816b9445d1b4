import type pkcs11js from 'pkcs11js';
import type { RandomHealthEvent } from '../core/random-health.js';
import type { ProfileName } from './hsm-profiles.js';

/** How the PKCS#11 adapter reaches its token. The PIN is a secret: it is never logged or put in an error message. */
export interface HsmConfig {
  /** Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so. */
  readonly library: string;
  /** The token is found by label, never by slot number (SoftHSM gives `--free` tokens random slot ids). */
  readonly tokenLabel: string;
  /** User PIN. */
  readonly pin: string;
  /**
   * Library parameters for C_Initialize (the `LibraryParameters` NSS softokn reads: `configdir='sql:DIR' …`);
   * undefined for modules that take none, such as SoftHSM. Not a secret, but it names paths: never logged.
   */
  readonly initParams?: string | undefined;
  /** The module's profile; undefined: chosen from C_GetInfo (src/hsm/hsm-profiles.ts). */
  readonly profile?: ProfileName | undefined;
  /** Number of read-write sessions used for encrypt, decrypt and random. */
  readonly poolSize: number;
  /**
   * How long an operation waits for a pool session when all are busy before it fails with HsmUnavailable
   * (default DEFAULT_SESSION_WAIT_MS, src/hsm/session-pool.ts). Sessions are busy across an await only with
   * `asyncCalls`.
   */
  readonly sessionWaitMs?: number | undefined;
  /**
   * Whether GCM encrypt and decrypt and the credential HMAC run through pkcs11js's callback variants, on the libuv
   * thread pool, so that a slow (network) HSM does not stall the event loop; undefined: the profile's `asyncCalls`.
   */
  readonly asyncCalls?: boolean | undefined;
  /**
   * Number of CMK version keys kept as session objects (least recently used ones are destroyed); capped at the
   * profile's session-key budget.
   */
  readonly keyCacheSize: number;
  /**
   * Create the credential key at start-up when it is missing. Only one process may do this (the cluster primary);
   * the others wait for it to appear and fail if it does not. Root keys are made by the core (RootKeyService).
   */
  readonly createTokenKeysIfMissing: boolean;
  /**
   * Whether this token holds the service's own token keys, the credential and secret-sealing keys (default true).
   * False for a tenant's key store: open() neither looks for nor creates them, and credentialSecret() is refused.
   */
  readonly credentialKey?: boolean | undefined;
  /**
   * Whether the PIN must be checked by a C_Login of this instance (default false). PKCS#11 login state is per process
   * and token, so a session on a token this process is already logged in to opens logged in, whatever the PIN.
   * True for a tenant's key store: open() refuses a token it finds logged in (ConnectionErrorCode USER_LOGGED_IN),
   * and a C_Login answered CKR_USER_ALREADY_LOGGED_IN is a refusal rather than a success.
   */
  readonly requireOwnLogin?: boolean | undefined;
  /**
   * How often, and how far apart, start-up looks again for a token or credential key it did not find.
   * `{ attempts: 1, delayMs: 0 }`: fail at once (connecting a tenant's key store, where the caller reports it).
   */
  readonly startupRetry?: { readonly attempts: number; readonly delayMs: number };
  /** Told when the token's random number generator fails its health tests, and when it passes them again. */
  readonly onRandomHealth?: ((event: RandomHealthEvent) => void) | undefined;
  /**
   * Wraps the PKCS#11 binding the adapter calls (never the library's own, which other adapters share): tests and
   * bench/hsm-faults.bench.ts inject faults and latency there, so that the real recovery code runs. No setting
   * enables it; only code that starts the service itself (StartOptions.wrapPkcs11) can pass it.
   */
  readonly wrapPkcs11?: ((lib: pkcs11js.PKCS11) => pkcs11js.PKCS11) | undefined;
}

export const DEFAULT_STARTUP_RETRY = { attempts: 5, delayMs: 200 } as const;
