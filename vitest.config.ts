import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // PKCS#11 state (C_Initialize, login) is per process: every test file gets its own process and its own token.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
