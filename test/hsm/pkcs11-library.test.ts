import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLibrary } from '../../src/hsm/pkcs11-library.js';
import { createTestToken, removeTestToken, SOFTHSM_LIBRARY, type TestToken } from '../support/softhsm.js';
import { ckrThrownBy } from './hsm-fixtures.js';

/** The process-wide registry of PKCS#11 libraries, on the real SoftHSM library. */

let token: TestToken;

beforeAll(() => {
  token = createTestToken();
});

afterAll(() => {
  if (token) removeTestToken(token.dir);
});

/** The CKR code C_GetInfo answers: undefined while the library is initialised, CKR_CRYPTOKI_NOT_INITIALIZED after. */
function infoAnswer(lib: pkcs11js.PKCS11): number | undefined {
  return ckrThrownBy(() => lib.C_GetInfo());
}

describe('acquireLibrary', () => {
  it('when two users acquire one library, then it is loaded and initialised once and finalized when the last releases', () => {
    const first = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    const second = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    expect(second.module).toBe(first.module);
    expect(first.users).toBe(2);

    first.release();
    first.release(); // a user releases once, however often it says so
    expect(second.users).toBe(1);
    expect(infoAnswer(second.lib)).toBeUndefined();

    second.release();
    expect(infoAnswer(second.lib)).toBe(pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED);
  });

  it('when the path is another name of a loaded library, then it is the same library', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hsm-kms-link-'));
    const link = path.join(dir, 'libsofthsm2-link.so');
    symlinkSync(SOFTHSM_LIBRARY, link);
    const first = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    try {
      const second = acquireLibrary(link, undefined);
      expect(second.module).toBe(first.module);
      second.release();
    } finally {
      first.release();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when someone else in the process initialised the library, then acquiring it is fine', () => {
    const other = new pkcs11js.PKCS11();
    other.load(SOFTHSM_LIBRARY);
    other.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    const library = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    expect(library.users).toBe(1);
    library.release();
    expect(infoAnswer(other)).toBe(pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED);
  });

  it('when it is acquired with other library parameters while in use, then it is refused, and accepted once released', () => {
    const first = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    expect(() => acquireLibrary(SOFTHSM_LIBRARY, "configdir='sql:/elsewhere'")).toThrow(
      expect.objectContaining({
        code: 'InternalError',
        message:
          `The PKCS#11 library ${SOFTHSM_LIBRARY} is already initialised in this process with other library ` +
          'parameters: a library is initialised once per process, so all its tokens must be configured with the ' +
          'same parameters.',
      }),
    );
    expect(first.users).toBe(1);
    first.release();
    // With nobody on it, the new parameters reach C_Initialize (SoftHSM takes none: CKR_ARGUMENTS_BAD), and a library
    // that failed to initialise is not kept.
    expect(() => acquireLibrary(SOFTHSM_LIBRARY, "configdir='sql:/elsewhere'")).toThrow(
      'HSM error CKR_ARGUMENTS_BAD (0x7) in C_Initialize',
    );
    const again = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    expect(again.users).toBe(1);
    again.release();
  });

  it('when the library was finalized under its users, then the first to notice initialises it again once for all', () => {
    const first = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    const second = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    try {
      const seen = first.generation;
      first.lib.C_Finalize();

      first.reinitialize(seen);
      expect(first.generation).toBe(seen + 1);
      const slot = first.lib.C_GetSlotList(true)[0] as Buffer;
      const session = first.lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);

      second.reinitialize(seen); // noticed later: already done
      expect(second.generation).toBe(seen + 1);
      expect(first.lib.C_GetSessionInfo(session).slotID.equals(slot)).toBe(true);
      first.lib.C_CloseSession(session);
    } finally {
      first.release();
      second.release();
    }
  });

  it('when a user that is not alone asks to restart the library, then it is refused', () => {
    const first = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    const second = acquireLibrary(SOFTHSM_LIBRARY, undefined);
    try {
      const seen = first.generation;
      expect(() => first.restart()).toThrow('Only the sole user of a PKCS#11 library may restart it.');
      second.release();
      first.restart();
      expect(first.generation).toBe(seen + 1);
      expect(infoAnswer(first.lib)).toBeUndefined();
    } finally {
      first.release();
      second.release();
    }
  });
});
