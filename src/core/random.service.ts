import { needs } from './errors.js';
import type { KeyStoreService } from './key-store.service.js';
import type { Hsm } from './ports.js';

/** Largest single draw: 1024 bytes (Huawei's 8192 bits, AWS's 1024 bytes). */
export const MAX_RANDOM_LENGTH = 1024;

/** Random bytes, always from the HSM's C_GenerateRandom, never from the host's RNG. */
export class RandomService {
  constructor(
    private readonly hsm: Hsm,
    private readonly keyStores: KeyStoreService,
  ) {}

  /** From the default HSM, or from a connected key store's HSM of the project when one is named. */
  async generate(length: number, from?: { projectId: string; keyStoreId: string }): Promise<Buffer> {
    needs(Number.isInteger(length) && length >= 1 && length <= MAX_RANDOM_LENGTH, 'Invalid random data length.');
    if (from === undefined) return this.hsm.generateRandom(length);
    const { hsm } = await this.keyStores.connectedHsm(from.projectId, from.keyStoreId, 'GenerateRandom');
    return hsm.generateRandom(length);
  }
}
