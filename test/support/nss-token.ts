import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { machine, tmpdir } from 'node:os';
import path from 'node:path';

/** scripts/test sets KMS_TEST_NSS_LIBRARY; without it, Debian's multiarch directory of this machine's architecture. */
export const NSS_LIBRARY = process.env.KMS_TEST_NSS_LIBRARY ?? `/usr/lib/${machine()}-linux-gnu/libsoftokn3.so`;

/** NSS softokn names the token of a database so, whatever the database. */
export const NSS_TOKEN_LABEL = 'NSS Certificate DB';

/** The library parameters that open (and create, if empty) the `sql:` database in `dir`, without certutil. */
export function nssInitParams(dir: string): string {
  return `configdir='sql:${dir}' certPrefix='' keyPrefix='' secmod='' flags=`;
}

/**
 * Runs in a child node process: C_Initialize and the PIN set-up are per process, and this test process later opens
 * the same module through the adapter with parameters of its own. The new database has an empty SO PIN; the user
 * PIN comes in the environment, never on the command line. Exits non-zero naming the failed call, never the PIN.
 */
const INIT_SCRIPT = `
const pkcs11js = require(process.env.NSS_INIT_PKCS11JS);
const lib = new pkcs11js.PKCS11();
let step = 'load';
try {
  lib.load(process.env.NSS_INIT_LIBRARY);
  step = 'C_Initialize';
  lib.C_Initialize({ libraryParameters: process.env.NSS_INIT_PARAMS + ' ' });
  step = 'find the token';
  const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === process.env.NSS_INIT_LABEL);
  if (slot === undefined) throw new Error('no token labelled ' + process.env.NSS_INIT_LABEL);
  step = 'C_OpenSession';
  const session = lib.C_OpenSession(slot, pkcs11js.CKF_RW_SESSION | pkcs11js.CKF_SERIAL_SESSION);
  step = 'C_Login(CKU_SO)';
  lib.C_Login(session, pkcs11js.CKU_SO, '');
  step = 'C_InitPIN';
  lib.C_InitPIN(session, process.env.NSS_INIT_PIN);
  lib.C_Logout(session);
  lib.C_Finalize();
} catch (err) {
  process.stderr.write('nss-token: ' + step + ' failed: ' + err.message + '\\n');
  process.exit(1);
}
`;

const PKCS11JS = createRequire(import.meta.url).resolve('pkcs11js');

export interface NssDatabase {
  /** Throw-away directory; the database (cert9.db, key4.db) is in it. */
  readonly dir: string;
  readonly initParams: string;
  readonly tokenLabel: string;
  readonly pin: string;
}

/** A fresh NSS softokn database in its own temporary directory, with a random user PIN, made with PKCS#11 calls. */
export function createNssDatabase(): NssDatabase {
  const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-nss-'));
  const initParams = nssInitParams(dir);
  const pin = randomBytes(12).toString('hex');
  execFileSync(process.execPath, ['-e', INIT_SCRIPT], {
    env: {
      PATH: process.env.PATH,
      NSS_INIT_PKCS11JS: PKCS11JS,
      NSS_INIT_LIBRARY: NSS_LIBRARY,
      NSS_INIT_PARAMS: initParams,
      NSS_INIT_LABEL: NSS_TOKEN_LABEL,
      NSS_INIT_PIN: pin,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return { dir, initParams, tokenLabel: NSS_TOKEN_LABEL, pin };
}
