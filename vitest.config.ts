import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['scripts/**/*.test.ts', 'property-tests/**/*.test.ts'],
    // starts the embedded server (or uses DATABASE_URL) and builds the migrated template database
    globalSetup: ['scripts/db/vitest-global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
  },
});
