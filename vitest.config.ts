import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['scripts/**/*.test.ts', 'property-tests/**/*.test.ts'],
    // starts the embedded server (or uses DATABASE_URL) and builds the migrated template database
    globalSetup: ['scripts/db/vitest-global-setup.ts'],
    // vitest's default is one worker per core less one: a single worker on this 2-core machine, with the CPU idle while
    // a file waits for PostgreSQL, a spawned CLI or a fake server. Two workers: the same 8 files in 47-66 s instead of
    // 85-119 s (measured under load; a third worker gained nothing). Every file has its own database, so they never collide.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
  },
});
