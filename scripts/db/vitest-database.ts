// For test files: a database of their own, cloned from the run's migrated template (see vitest-global-setup.ts).
import pg from 'pg';
import { inject } from 'vitest';
import { databaseName } from './database-url.ts';
import { cloneDatabase, dropDatabase, type TemplateDatabase } from './test-databases.ts';

export interface TestDatabase {
  url: string;
  name: string;
  /** a small pool on url; ended by drop() */
  pool: pg.Pool;
  /** ends the pool and drops the database; call it in afterAll (leftovers are dropped at the end of the run anyway) */
  drop(): Promise<void>;
}

export function templateDatabase(): TemplateDatabase {
  const template = inject('mixpanelPgSyncTemplate');
  if (!template) throw new Error('no template database: run tests with `npm test` (vitest.config.ts sets up the database).');
  return template;
}

export async function createTestDatabase(options: { poolSize?: number } = {}): Promise<TestDatabase> {
  const template = templateDatabase();
  const url = await cloneDatabase(template);
  const pool = new pg.Pool({ connectionString: url, max: options.poolSize ?? 4 });
  pool.on('error', () => {}); // idle clients see the server go away at teardown
  let dropped: Promise<void> | undefined;
  return {
    url,
    name: databaseName(url),
    pool,
    drop: () => {
      dropped ??= pool.end().then(() => dropDatabase(template.serverUrl, databaseName(url)));
      return dropped;
    },
  };
}
