/**
 * A pkcs11js callback variant as a promise: the module's call runs on a libuv thread while the event loop serves
 * other requests. pkcs11js keeps raw pointers to the Buffers passed in, not references: the caller must keep them
 * referenced, and must not zero or reuse them, until the promise settles. Errors are pkcs11js's own (with `.code`),
 * for the caller to map as it maps those of the synchronous call.
 */
export function pkcs11Async<T>(start: (callback: (error: Error | null, result: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((error, result) => (error ? reject(error) : resolve(result)));
  });
}
