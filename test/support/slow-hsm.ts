import type pkcs11js from 'pkcs11js';

/** pkcs11js's C_Encrypt, any variant, as a plain function. */
export type EncryptCall = (...args: unknown[]) => unknown;

/**
 * Replaces the asynchronous C_Encrypt (the callback variant) of a real pkcs11js library object with `wrap(real)`;
 * synchronous calls pass through. Returns the function that puts the library's own method back. A wrapper around
 * the real call, for faults and delays: the module still does the work.
 */
export function wrapAsyncEncrypt(lib: pkcs11js.PKCS11, wrap: (real: EncryptCall) => EncryptCall): () => void {
  const own = lib.C_Encrypt;
  const real = own.bind(lib) as EncryptCall;
  const wrapped = wrap(real);
  lib.C_Encrypt = ((...args: unknown[]) =>
    typeof args[3] === 'function' ? wrapped(...args) : real(...args)) as typeof own;
  return () => {
    lib.C_Encrypt = own;
  };
}

/**
 * The real call, whose answer reaches the caller `delayMs` late, as a network HSM's round trip would: the session
 * stays busy meanwhile. `onCall` is told of each call.
 */
export function answerLate(delayMs: number, onCall: () => void = () => undefined) {
  return (real: EncryptCall): EncryptCall =>
    (...args) => {
      onCall();
      const callback = args[3] as EncryptCall;
      return real(...args.slice(0, 3), (err: unknown, data: unknown) => setTimeout(() => callback(err, data), delayMs));
    };
}
