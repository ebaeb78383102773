import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { databaseUrl } from './database-url.ts';
import { hasCurrentMigration } from './migrate.ts';
import { cloneDatabase, createTemplateDatabase, dropDatabasesWithPrefix } from './test-databases.ts';
import { createTestDatabase, templateDatabase } from './vitest-database.ts';

const a = await createTestDatabase();
const b = await createTestDatabase();
afterAll(async () => {
  await a.drop();
  await b.drop();
});

async function databaseExists(name: string): Promise<boolean> {
  const client = new pg.Client(templateDatabase().serverUrl);
  await client.connect();
  try {
    return (await client.query('select 1 from pg_catalog.pg_database where datname = $1', [name])).rowCount === 1;
  } finally {
    await client.end();
  }
}

describe('test databases cloned from the migrated template', () => {
  it('are migrated: graphile-migrate bookkeeping and the current migration are there', async () => {
    const { rows } = await a.pool.query<{ currents: number; migrations: number }>(
      'select (select count(*) from graphile_migrate.current)::int as currents, (select count(*) from graphile_migrate.migrations)::int as migrations',
    );
    expect(rows[0]!.currents).toBe((await hasCurrentMigration()) ? 1 : 0);
  });

  it('are isolated from each other', async () => {
    await a.pool.query('create table public.only_in_a (x int)');
    await a.pool.query('insert into public.only_in_a values (1)');
    expect((await a.pool.query('select x from public.only_in_a')).rows).toEqual([{ x: 1 }]);
    expect((await b.pool.query("select to_regclass('public.only_in_a') as t")).rows).toEqual([{ t: null }]);
    expect(a.name).not.toBe(b.name);
  });

  it('leave the template closed to connections', async () => {
    const { template, serverUrl } = templateDatabase();
    const client = new pg.Client(databaseUrl(serverUrl, template));
    await expect(client.connect()).rejects.toThrow(/not currently accepting connections/);
  });

  it('are gone after drop(), even with connections open', async () => {
    const c = await createTestDatabase();
    await c.pool.query('select 1');
    const open = new pg.Client(c.url);
    open.on('error', () => {});
    await open.connect();
    await c.drop();
    expect(await databaseExists(c.name)).toBe(false);
    await open.end().catch(() => {});
  });

  it('can be cloned in parallel', async () => {
    const many = await Promise.all(Array.from({ length: 6 }, () => createTestDatabase({ poolSize: 1 })));
    expect(new Set(many.map((d) => d.name)).size).toBe(6);
    await Promise.all(many.map((d) => d.drop()));
  });

  it("a run's template and leftovers are dropped by prefix, whatever the migrations contain", async () => {
    const { serverUrl } = templateDatabase();
    const folder = await mkdtemp(path.join(os.tmpdir(), 'mps-template-test-'));
    try {
      await mkdir(path.join(folder, 'current'));
      await writeFile(path.join(folder, 'current', '1-a.sql'), 'drop table if exists public.t; create table public.t (id int);');
      const own = await createTemplateDatabase(serverUrl, { migrationsFolder: folder, gmrc: false });
      const url = await cloneDatabase(own);
      const client = new pg.Client(url);
      await client.connect();
      expect((await client.query("select to_regclass('public.t')::text as t")).rows).toEqual([{ t: 't' }]);
      await client.end();
      const dropped = await dropDatabasesWithPrefix(serverUrl, own.prefix);
      expect(dropped.sort()).toEqual([own.template, url.split('/').pop()].sort());
      expect(await databaseExists(own.template)).toBe(false);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  it('a failed migration leaves no template behind and says why', async () => {
    const { serverUrl } = templateDatabase();
    const folder = await mkdtemp(path.join(os.tmpdir(), 'mps-template-test-'));
    try {
      await writeFile(path.join(folder, 'current.sql'), 'select * from no_such_table;');
      const prefix = `mps_fail_${Date.now().toString(36)}`;
      await expect(
        createTemplateDatabase(serverUrl, { migrationsFolder: folder, gmrc: false, prefix, errorLog: () => {} }),
      ).rejects.toThrow(/no_such_table/);
      expect(await databaseExists(`${prefix}_template`)).toBe(false);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });
});
