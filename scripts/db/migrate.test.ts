import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { commit, Logger } from 'graphile-migrate';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { databaseUrl } from './database-url.ts';
import { hasCurrentMigration, runMigrations } from './migrate.ts';
import { dropDatabase } from './test-databases.ts';
import { templateDatabase } from './vitest-database.ts';

const { serverUrl } = templateDatabase();
const quiet = new Logger(() => () => {});
const created: string[] = [];
const folders: string[] = [];
afterAll(async () => {
  for (const name of created) await dropDatabase(serverUrl, name);
  for (const folder of folders) await rm(folder, { recursive: true, force: true });
});

async function sql<T extends pg.QueryResultRow>(url: string, text: string): Promise<T[]> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return (await client.query<T>(text)).rows;
  } finally {
    await client.end();
  }
}

async function scratchDatabase(): Promise<string> {
  const name = `mps_migrate_test_${randomBytes(4).toString('hex')}`;
  await sql(serverUrl, `create database ${name}`);
  created.push(name);
  return databaseUrl(serverUrl, name);
}

async function migrationsFolder(files: Record<string, string>): Promise<string> {
  const folder = await mkdtemp(path.join(os.tmpdir(), 'mps-migrations-test-'));
  folders.push(folder);
  for (const [file, body] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(folder, file)), { recursive: true });
    await writeFile(path.join(folder, file), body);
  }
  return folder;
}

describe('runMigrations', () => {
  it('applies a folder-mode current migration in numeric order, and re-runs cleanly', async () => {
    const folder = await migrationsFolder({
      'committed/.gitkeep': '',
      'current/1-first.sql': 'drop table if exists public.steps; create table public.steps (n int);\ninsert into public.steps values (1);',
      'current/10-last.sql': 'insert into public.steps values (10);',
      'current/2-second.sql': 'insert into public.steps values (2);',
      'current/README.md': 'not sql',
    });
    const url = await scratchDatabase();
    expect(await runMigrations(url, { migrationsFolder: folder, gmrc: false })).toEqual({ currentApplied: true });
    expect(await sql(url, 'select array_agg(n) as ns from public.steps')).toEqual([{ ns: [1, 2, 10] }]);
    expect(await runMigrations(url, { migrationsFolder: folder, gmrc: false })).toEqual({ currentApplied: true });
    expect(await sql(url, 'select count(*)::int as n from public.steps')).toEqual([{ n: 3 }]);
  });

  it('skips an empty-ish current.sql and a missing current migration, creating no files', async () => {
    for (const files of [{ 'current.sql': '-- Enter migration here\n/* nothing */\n' }, { 'committed/.gitkeep': '' }] as Record<
      string,
      string
    >[]) {
      const folder = await migrationsFolder(files);
      const url = await scratchDatabase();
      expect(await runMigrations(url, { migrationsFolder: folder, gmrc: false })).toEqual({ currentApplied: false });
      expect(await sql(url, 'select count(*)::int as n from graphile_migrate.current')).toEqual([{ n: 0 }]);
      expect(existsSync(path.join(folder, 'current.sql'))).toBe('current.sql' in files);
    }
  });

  it('applies committed migrations made by `graphile-migrate commit`', async () => {
    const folder = await migrationsFolder({
      'current.sql': 'drop table if exists public.committed_thing;\ncreate table public.committed_thing (id int primary key);',
    });
    const dev = await scratchDatabase();
    const shadow = `mps_migrate_test_${randomBytes(4).toString('hex')}_shadow`;
    created.push(shadow);
    await runMigrations(dev, { migrationsFolder: folder, gmrc: false });
    await commit({
      connectionString: dev,
      shadowConnectionString: databaseUrl(serverUrl, shadow),
      rootConnectionString: databaseUrl(serverUrl, 'postgres'),
      migrationsFolder: folder,
      logger: quiet,
    });
    expect(await readdir(path.join(folder, 'committed'))).toEqual(['000001.sql']);
    expect(await hasCurrentMigration(folder)).toBe(false);

    const fresh = await scratchDatabase();
    expect(await runMigrations(fresh, { migrationsFolder: folder, gmrc: false })).toEqual({ currentApplied: false });
    expect(await sql(fresh, 'select filename from graphile_migrate.migrations')).toEqual([{ filename: '000001.sql' }]);
    expect(await sql(fresh, "select to_regclass('public.committed_thing')::text as t")).toEqual([{ t: 'committed_thing' }]);
  });

  it('reports the failing statement', async () => {
    const folder = await migrationsFolder({ 'current/1-bad.sql': 'create tabel oops ();' });
    const url = await scratchDatabase();
    await expect(runMigrations(url, { migrationsFolder: folder, gmrc: false, errorLog: () => {} })).rejects.toThrow(
      /syntax error at or near "tabel"/,
    );
  });
});

describe('hasCurrentMigration', () => {
  it('is false for comments and whitespace only, or no current migration; true for SQL in current.sql or current/', async () => {
    const cases: [Record<string, string>, boolean][] = [
      [{ 'current.sql': '  -- a\n/* b\n c */\n\t' }, false],
      [{ 'committed/.gitkeep': '' }, false],
      [{ 'current.sql': '-- a\nselect 1; -- b' }, true],
      [{ 'current/1-a.sql': '-- nothing', 'current/2-b.sql': '/* a */ select 1' }, true],
    ];
    for (const [files, expected] of cases) expect(await hasCurrentMigration(await migrationsFolder(files))).toBe(expected);
  });

  it('refuses current.sql next to current/, and two files with one number', async () => {
    const both = await migrationsFolder({ 'current.sql': '', 'current/1-a.sql': 'select 1;' });
    await expect(hasCurrentMigration(both)).rejects.toThrow(/only one of these may exist/);
    const clash = await migrationsFolder({ 'current/1-a.sql': 'select 1;', 'current/001-b.sql': 'select 2;' });
    await expect(hasCurrentMigration(clash)).rejects.toThrow(/unique numeric prefix/);
  });
});
