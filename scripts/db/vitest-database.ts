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

/**
 * poolSize: the pool's size (4). project: every connection of the pool gets the session setting mixpanel_sync.project
 * (which mixpanel_sync.project_id() reads when no project is named), after the project is created beside 'default'.
 */
export async function createTestDatabase(options: { poolSize?: number; project?: string } = {}): Promise<TestDatabase> {
  const template = templateDatabase();
  const url = await cloneDatabase(template);
  if (options.project) {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query('select mixpanel_sync.create_project($1)', [options.project]);
    } finally {
      await client.end();
    }
  }
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolSize ?? 4,
    ...(options.project ? { options: `-c mixpanel_sync.project=${options.project}` } : {}),
  });
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
