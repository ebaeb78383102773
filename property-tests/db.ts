// Test-file helper: `const db = await createTestDatabase()` gives { url, name, pool, drop() }, a migrated database of this file's own.
// FC_PROJECT=NAME (issue 13: the property tests run per project): each database also holds project NAME beside
// 'default', and every connection of db.pool works on NAME (the session setting mixpanel_sync.project), so every
// property runs on a project that is not the only one and not project 1. .ci/run's PostgreSQL 15 pass sets it.
import { createTestDatabase as createDatabase, type TestDatabase } from '../scripts/db/vitest-database.ts';

export { templateDatabase, type TestDatabase } from '../scripts/db/vitest-database.ts';

export function createTestDatabase(options: { poolSize?: number } = {}): Promise<TestDatabase> {
  return createDatabase({ ...options, ...(process.env.FC_PROJECT ? { project: process.env.FC_PROJECT } : {}) });
}
