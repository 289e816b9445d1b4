import { KmsError } from './errors.js';
import type { KeyVersionRecord } from './keys.js';
import type { MetadataStore } from './ports.js';

/**
 * Runs `use` with the key version as the store has it. Should it fail because a root rotation rewrapped the version
 * since this process cached it (and destroyed the old root), it runs once more with the version read afresh. A
 * version the key never had is InvalidCiphertext: only a forged or corrupt ciphertext names one.
 */
export async function withKeyVersion<T>(
  store: MetadataStore,
  keyId: string,
  version: number,
  use: (found: KeyVersionRecord) => Promise<T>,
): Promise<T> {
  const cached = await store.findKeyVersion(keyId, version);
  if (!cached) throw new KmsError('InvalidCiphertext', 'Invalid cipher_text.');
  try {
    return await use(cached);
  } catch (err) {
    if (err instanceof KmsError && err.code === 'InvalidCiphertext') throw err;
    const fresh = await store.findKeyVersion(keyId, version, true);
    if (fresh === undefined || fresh.rootKeyLabel === cached.rootKeyLabel) throw err;
    return use(fresh);
  }
}
