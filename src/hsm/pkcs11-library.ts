import { realpathSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Module } from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { KmsError, needs } from '../core/errors.js';
import { TokenNotReached } from './connection-errors.js';
import { ckrOf, quietly, toKmsError } from './pkcs11-errors.js';

/**
 * A PKCS#11 library loaded and initialised once per process, shared by every adapter on one of its tokens.
 *
 * C_Initialize and C_Finalize act on the whole library, not on a token: a second C_Initialize answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED, and a C_Finalize logs every token out and invalidates every session and object
 * handle of every user. So the library is initialised by the first user, finalized only when the last one goes, and
 * re-initialised (after someone finalized it under us) once for all: its generation tells each user that the
 * handles it holds are from before.
 */
export interface Pkcs11Library {
  readonly module: Module;
  readonly lib: pkcs11js.PKCS11;
  /** Bumped on every C_Initialize after the first: session and object handles of an older generation mean nothing. */
  readonly generation: number;
  /** Adapters holding the library right now. */
  readonly users: number;
  /**
   * The library was finalized under a user that had seen generation `seen`: initialises it again, unless another
   * user did so since.
   */
  reinitialize(seen: number): void;
  /**
   * A token of the library looks lost to a user that had seen generation `seen`: C_Finalize and C_Initialize again,
   * so that the module reads its tokens again, unless another user did so since or one was done less than
   * RECOVER_INTERVAL_MS ago (every user's sessions and logins go with it). True if it did.
   */
  recover(seen: number): boolean;
  /** C_Finalize and C_Initialize again, to read the token list again (SoftHSM reads it at C_Initialize). Sole user only. */
  restart(): void;
  /** This user is done; the last one finalizes the library. Idempotent. */
  release(): void;
}

interface LoadedLibrary {
  readonly key: string;
  readonly module: Module;
  readonly initParams: string | undefined;
  generation: number;
  users: number;
  /** performance.now() of the last recover(). */
  recoveredAt: number;
}

/**
 * How often a lost token makes the library start again: each time costs every user its sessions, logins and
 * unwrapped keys, and while a token stays lost every request to it asks.
 */
export const RECOVER_INTERVAL_MS = 500;

/** Loaded libraries by real path: two spellings of one file are one library (the dynamic loader maps it once). */
const loaded = new Map<string, LoadedLibrary>();

/**
 * The library at `path`, loaded and initialised with `initParams` if no one in this process has done so yet.
 * Refused if it is already initialised with other parameters: NSS softokn reads them at C_Initialize only, so a
 * second set would silently be ignored and the tokens of the first shown instead.
 */
export function acquireLibrary(path: string, initParams: string | undefined): Pkcs11Library {
  const key = realPath(path);
  let library = loaded.get(key);
  if (library === undefined) {
    let module: Module;
    try {
      module = Module.load(path, 'hsm-kms');
    } catch (err) {
      throw new KmsError('HsmUnavailable', `Cannot load the PKCS#11 library ${path}.`, {
        cause: new TokenNotReached('library-not-loaded', { cause: err }),
      });
    }
    initialize(module, initParams);
    library = { key, module, initParams, generation: 0, users: 0, recoveredAt: Number.NEGATIVE_INFINITY };
    loaded.set(key, library);
  } else if (library.initParams !== initParams) {
    // The parameters name paths: never print them.
    throw new KmsError(
      'InternalError',
      `The PKCS#11 library ${path} is already initialised in this process with other library parameters: a library ` +
        'is initialised once per process, so all its tokens must be configured with the same parameters.',
    );
  }
  library.users++;
  return lease(library);
}

function lease(library: LoadedLibrary): Pkcs11Library {
  let released = false;
  return {
    module: library.module,
    lib: library.module.lib,
    get generation() {
      return library.generation;
    },
    get users() {
      return library.users;
    },
    reinitialize(seen) {
      if (library.generation !== seen) return;
      initialize(library.module, library.initParams);
      library.generation++;
    },
    recover(seen) {
      const now = performance.now();
      if (library.generation !== seen || now - library.recoveredAt < RECOVER_INTERVAL_MS) return false;
      library.recoveredAt = now;
      quietly(() => library.module.finalize());
      library.generation++;
      initialize(library.module, library.initParams);
      return true;
    },
    restart() {
      needs(library.users === 1, 'Only the sole user of a PKCS#11 library may restart it.');
      quietly(() => library.module.finalize());
      library.generation++;
      initialize(library.module, library.initParams);
    },
    release() {
      if (released) return;
      released = true;
      library.users--;
      if (library.users > 0) return;
      loaded.delete(library.key);
      quietly(() => library.module.finalize());
    },
  };
}

function realPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path; // Module.load reports a missing file
  }
}

/**
 * CKF_OS_LOCKING_OK: without it SoftHSM turns its locking off and concurrent calls crash the process. Library
 * parameters (NSS softokn) go in the same call. pkcs11js 2.1.7 copies them into a buffer one byte too short and so
 * drops their last character (`…configdir=sql:/db` would open `/d`): a trailing space is dropped instead.
 * CKR_CRYPTOKI_ALREADY_INITIALIZED is fine: someone else in this process (a test, another wrapper of the same
 * library) initialised it.
 */
function initialize(module: Module, initParams: string | undefined): void {
  const options: pkcs11js.InitializationOptions = { flags: pkcs11js.CKF_OS_LOCKING_OK };
  if (initParams !== undefined) options.libraryParameters = `${initParams} `;
  try {
    module.lib.C_Initialize(options);
  } catch (err) {
    if (ckrOf(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw toKmsError(err, 'C_Initialize');
  }
}
