// Test-file helper: `const db = await createTestDatabase()` gives { url, name, pool, drop() }, a migrated database of this file's own.
export { createTestDatabase, templateDatabase, type TestDatabase } from '../scripts/db/vitest-database.ts';
