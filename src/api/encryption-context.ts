import { z } from 'zod';
import type { EncryptionContext } from '../core/encryption-context.js';

/**
 * An encryption context as a client sends it: a JSON object of string values. Every key is an ordinary key, including
 * `__proto__`, `constructor` or `toString`: JSON.parse keeps `__proto__` as an own property, but copying the object
 * by assignment (`copy[key] = value`, which z.record does, or Object.assign) would set a prototype instead and drop
 * the pair from the AAD, so that `{"__proto__":"tenant-a"}`, `{"__proto__":"tenant-b"}` and no context would all open
 * the same blob. The copy is made with Object.fromEntries, which defines own properties only.
 *
 * Undefined when `value` is not an object of strings.
 */
export function ownStringMap(value: unknown): EncryptionContext | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const entries = Object.entries(value);
  if (entries.some(([, v]) => typeof v !== 'string')) return undefined;
  return Object.fromEntries(entries) as EncryptionContext;
}

/** The zod schema of an encryption context member, for the JSON dialects (Huawei, AWS). */
export const encryptionContextSchema = z
  .custom<EncryptionContext>((value) => ownStringMap(value) !== undefined)
  .transform((value) => ownStringMap(value) as EncryptionContext);
