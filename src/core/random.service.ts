import { needs } from './errors.js';
import type { Hsm } from './ports.js';

/** Largest single draw: 1024 bytes (Huawei's 8192 bits, AWS's 1024 bytes). */
export const MAX_RANDOM_LENGTH = 1024;

/** Random bytes, always from the HSM's C_GenerateRandom, never from the host's RNG. */
export class RandomService {
  constructor(private readonly hsm: Hsm) {}

  generate(length: number): Promise<Buffer> {
    needs(Number.isInteger(length) && length >= 1 && length <= MAX_RANDOM_LENGTH, 'Invalid random data length.');
    return this.hsm.generateRandom(length);
  }
}
