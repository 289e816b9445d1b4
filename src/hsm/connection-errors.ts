import type { ConnectionErrorCode } from '../core/key-stores.js';

/** Placeholder until the HSM layer classifies open() failures. */
export function connectionErrorCodeOf(_err: unknown): ConnectionErrorCode {
  return 'INTERNAL_ERROR';
}
