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
    // Test files share their worker's module cache (each file still gets its own database): the suite is CPU-bound on
    // 2 cores, and importing pg, fast-check and our modules again for each of ~95 files cost 13 % of its CPU time.
    // Measured side by side on 2026-12-02 (idle machine, 554 tests): isolated 3 min 55 s wall, 433 s of CPU; shared
    // 3 min 25 s, 376 s. No test mocks, stubs globals or sets process.env, so no file sees another's module state.
    isolate: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
  },
});
