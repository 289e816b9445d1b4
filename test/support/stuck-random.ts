import type pkcs11js from 'pkcs11js';

/** A switch on a real pkcs11js object: while stuck, C_GenerateRandom hands out one byte value over and over. */
export interface StuckRandom {
  /**
   * From the next call on, every byte C_GenerateRandom writes is `value`; only on sessions of `slot` when one is given
   * (the adapters of several tokens share the library's object).
   */
  stick(value?: number, slot?: Buffer): void;
  /** The module's own bytes again. */
  heal(): void;
  /** C_GenerateRandom calls so far, stuck or not. */
  readonly calls: number;
  /** Puts the library's own C_GenerateRandom back. */
  restore(): void;
}

/**
 * Makes the real module's C_GenerateRandom return a constant stream on demand, as a generator stuck at one output
 * would: the real call still runs (its errors and session checks stay the module's), then its output is
 * overwritten. Only this one function is touched. The object is shared by every adapter on the library in the process.
 */
export function stuckRandom(lib: pkcs11js.PKCS11): StuckRandom {
  const own = lib as { C_GenerateRandom: pkcs11js.PKCS11['C_GenerateRandom'] };
  const real = own.C_GenerateRandom;
  let stuckAt: number | undefined;
  let onlySlot: Buffer | undefined;
  let calls = 0;
  own.C_GenerateRandom = (session: Buffer, out: Buffer): Buffer => {
    calls++;
    const result = real.call(lib, session, out);
    if (stuckAt !== undefined && (onlySlot === undefined || lib.C_GetSessionInfo(session).slotID.equals(onlySlot))) {
      out.fill(stuckAt);
    }
    return result;
  };
  return {
    stick: (value = 0, slot?: Buffer) => {
      stuckAt = value;
      onlySlot = slot;
    },
    heal: () => {
      stuckAt = undefined;
    },
    get calls() {
      return calls;
    },
    restore: () => {
      own.C_GenerateRandom = real;
    },
  };
}
