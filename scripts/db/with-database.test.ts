import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { withDatabase } from './test-databases.ts';

describe('withDatabase', () => {
  it('gives a migrated database on a throwaway server and stops it afterwards', async () => {
    let seen = '';
    const result = await withDatabase(
      async (url) => {
        seen = url;
        const client = new pg.Client(url);
        await client.connect();
        const { rows } = await client.query("select current_database() as db, to_regclass('graphile_migrate.migrations')::text as t");
        await client.end();
        return rows[0];
      },
      { env: {} },
    );
    expect(result).toEqual({ db: 'mixpanel_pg_sync', t: 'graphile_migrate.migrations' });
    const after = new pg.Client(seen);
    await expect(after.connect()).rejects.toThrow(/ECONNREFUSED/);
  });

  it('stops the server when fn throws', async () => {
    let seen = '';
    await expect(
      withDatabase(
        async (url) => {
          seen = url;
          throw new Error('inside');
        },
        { env: {} },
      ),
    ).rejects.toThrow('inside');
    await expect(new pg.Client(seen).connect()).rejects.toThrow(/ECONNREFUSED/);
  });
});
