import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { commit, Logger } from 'graphile-migrate';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { databaseUrl } from './database-url.ts';
import { isEmptySql, readCurrentMigrationText, runMigrations } from './migrate.ts';
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
    expect(isEmptySql(await readFile(path.join(folder, 'current.sql'), 'utf8'))).toBe(true);

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

describe('isEmptySql', () => {
  it('ignores comments and whitespace only', () => {
    expect(isEmptySql('')).toBe(true);
    expect(isEmptySql('  -- a\n/* b\n c */\n\t')).toBe(true);
    expect(isEmptySql('-- a\nselect 1; -- b')).toBe(false);
    expect(isEmptySql('/* a */ select 1')).toBe(false);
  });
});

describe('readCurrentMigrationText', () => {
  it('joins current/*.sql in numeric order after `--! split:` lines, as graphile-migrate does', async () => {
    const folder = await migrationsFolder({
      'current/10-last.sql': 'select 10;\n',
      'current/2-second.sql': '\nselect 2;',
      'current/1-first.sql': 'select 1;',
      'current/notes.txt': 'not sql',
    });
    expect(await readCurrentMigrationText(folder)).toBe(
      '--! split: 1-first.sql\nselect 1;\n\n--! split: 2-second.sql\nselect 2;\n\n--! split: 10-last.sql\nselect 10;\n',
    );
  });

  it('refuses current.sql next to current/, and two files with one number', async () => {
    const both = await migrationsFolder({ 'current.sql': '', 'current/1-a.sql': 'select 1;' });
    await expect(readCurrentMigrationText(both)).rejects.toThrow(/allows only one of these/);
    const clash = await migrationsFolder({ 'current/1-a.sql': 'select 1;', 'current/001-b.sql': 'select 2;' });
    await expect(readCurrentMigrationText(clash)).rejects.toThrow(/have the same number/);
    expect(await readCurrentMigrationText(await migrationsFolder({ 'committed/.gitkeep': '' }))).toBe('');
  });
});
