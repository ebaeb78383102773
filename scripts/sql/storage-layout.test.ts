// 200-storage.sql: events_daily stores its fixed-width columns first (event_count, first_at, last_at, day, then
// distinct_id, event_name), so a row holds no alignment padding (issue 11, scale_storage_bytes_per_event), and the
// rebuild that reorders an existing table keeps its rows and everything declared on it. Since several projects
// (issue 13, 200-keys.sql) project_id sits between day and the texts: still no padding. The rebuild of 000009 is
// checked on events_daily as it stood before projects (migrations/schema.sql's declaration less project_id).
// Seen failing (throwaway database, each mutant applied by hand):
// - killed: no-reorder (200-storage.sql without its rebuild, events_daily in the former order distinct_id, day,
//   event_name, event_count, …): the first pin reports a row of 64 bytes against 61 for header + columns (the padding
//   before event_count), the second the former column order;
// - killed: no-reader-grant (the rebuild without `grant select … to mixpanel_sync_reader`): the second pin reports the
//   difference with what migrations/schema.sql declares;
// - killed: no-order-check (the rebuild without its skip when event_count is first: it rebuilds on every apply): the
//   third pin sees a new table oid.
import { readdir, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();

/** The text of 200-storage.sql: its `--! split: 200-storage.sql` section of the committed migration that holds it. */
async function migration(): Promise<string> {
  const committed = new URL('../../migrations/committed/', import.meta.url);
  const marker = '--! split: 200-storage.sql';
  for (const name of (await readdir(committed)).sort().reverse()) {
    const text = await readFile(new URL(name, committed), 'utf8');
    const start = text.indexOf(`${marker}\n`);
    if (start < 0) continue;
    const end = text.indexOf('\n--! split: ', start + marker.length);
    return text.slice(start, end < 0 ? undefined : end);
  }
  throw new Error('no committed migration has a section 200-storage.sql');
}

const FORMER_ORDER = ['distinct_id', 'day', 'event_name', 'event_count', 'first_at', 'last_at'];

/**
 * events_daily's block of migrations/schema.sql (create table to the blank line after it), with the column lines of
 * its create table put in the former order (they all end with a comma: the constraints follow).
 */
async function formerDeclaration(): Promise<string> {
  const schema = await readFile(new URL('../../migrations/schema.sql', import.meta.url), 'utf8');
  const start = schema.indexOf('create table mixpanel_sync.events_daily (');
  if (start < 0) throw new Error('migrations/schema.sql declares no mixpanel_sync.events_daily');
  // before projects: no project_id column (nor its comment), keys without it, the table's comment of 000009
  const lines = schema
    .slice(start, schema.indexOf('\n\n', start))
    .split('\n')
    .filter((line) => !/^\s*project_id |events_daily\.project_id is/.test(line))
    .map((line) => line.replace('(project_id, ', '(').replace('Event counts per project, user,', 'Event counts per user,'));
  const column = (line: string) => FORMER_ORDER.indexOf(line.trim().split(' ')[0]!);
  const columns = lines.filter((line) => column(line) >= 0).sort((a, b) => column(a) - column(b));
  if (columns.length !== FORMER_ORDER.length) throw new Error(`events_daily in schema.sql: columns ${columns.length}, expected 6`);
  let next = 0;
  return lines.map((line) => (column(line) >= 0 ? columns[next++]! : line)).join('\n');
}

/** Everything declared on events_daily besides the column order: columns by name, constraints, indexes, policies, grants, comments. */
async function declared(client: { query: typeof db.pool.query }): Promise<unknown> {
  const { rows } = await client.query<{ declared: unknown }>(
    `select jsonb_build_object(
       'columns', (select jsonb_agg(jsonb_build_array(a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
           a.attcollation::regcollation::text, pg_catalog.col_description(a.attrelid, a.attnum)) order by a.attname)
         from pg_catalog.pg_attribute a where a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped),
       'constraints', (select jsonb_agg(jsonb_build_array(c.conname, pg_catalog.pg_get_constraintdef(c.oid)) order by c.conname)
         from pg_catalog.pg_constraint c where c.conrelid = t.oid),
       'indexes', (select jsonb_agg(pg_catalog.pg_get_indexdef(i.indexrelid) order by 1)
         from pg_catalog.pg_index i where i.indrelid = t.oid),
       'policies', (select jsonb_agg(jsonb_build_array(p.polname, p.polcmd, p.polroles::regrole[]::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), pg_catalog.obj_description(p.oid, 'pg_policy')) order by p.polname)
         from pg_catalog.pg_policy p where p.polrelid = t.oid),
       'table', jsonb_build_array(t.relowner::regrole::text, t.relacl::text[], t.relrowsecurity, t.reloptions,
         pg_catalog.obj_description(t.oid, 'pg_class'))) as declared
     from pg_catalog.pg_class t where t.oid = 'mixpanel_sync.events_daily'::regclass`,
  );
  return rows[0]!.declared;
}

const ROWS = `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at) values
  (1, 'u-1', '2026-11-01', 'open', 3, '2026-11-01 01:00Z', '2026-11-01 02:00Z'),
  (1, 'user-with-a-longer-id', '2026-11-02', 'Purchase Completed', 1, '2026-11-02 23:59:59Z', '2026-11-02 23:59:59Z')`;

const columnOrder = async (client: { query: typeof db.pool.query }) =>
  (
    await client.query<{ name: string }>(
      `select a.attname as name from pg_catalog.pg_attribute a
       where a.attrelid = 'mixpanel_sync.events_daily'::regclass and a.attnum > 0 and not a.attisdropped order by a.attnum`,
    )
  ).rows.map((r) => r.name);

const content = async (client: { query: typeof db.pool.query }) =>
  (
    await client.query<{ row: string }>(
      `select jsonb_build_array(d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at)::text as row
       from mixpanel_sync.events_daily d order by 1`,
    )
  ).rows.map((r) => r.row);

describe('events_daily storage layout (200-storage.sql)', () => {
  it('a row is its columns and the tuple header, with no alignment padding between them', async () => {
    await db.pool.query(ROWS);
    // pg_column_size of the whole row (a composite datum: the 24-byte tuple header, then the data) against that header
    // plus each stored column's own size: equal only when no column waits for an alignment boundary
    const { rows } = await db.pool.query<{ row: number; columns: number }>(
      `select pg_column_size(d.*) as row,
         24 + pg_column_size(d.distinct_id) + pg_column_size(d.day) + pg_column_size(d.project_id) + pg_column_size(d.event_name)
           + pg_column_size(d.event_count) + pg_column_size(d.first_at) + pg_column_size(d.last_at) as columns
       from mixpanel_sync.events_daily d order by d.distinct_id`,
    );
    expect(rows).toHaveLength(2);
    for (const r of rows) expect(r.row).toBe(r.columns);
    expect(await columnOrder(db.pool)).toEqual(['event_count', 'first_at', 'last_at', 'day', 'project_id', 'distinct_id', 'event_name']);
  });

  it('the rebuild of a table in the former column order keeps its rows and everything declared on it', async () => {
    await db.pool.query(ROWS);
    const rows = await content(db.pool);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      // events_daily as migrations/schema.sql declares it (constraints, index, RLS, policies, grants, comments), with
      // its columns in the former order and its rows: the expected declarations come from there, not from the migration
      // (the rows wait in a temporary table: the dropped table's constraint names must be free for the schema's)
      await client.query('create temporary table events_daily_saved on commit drop as select * from mixpanel_sync.events_daily');
      await client.query('drop table mixpanel_sync.events_daily');
      await client.query(await formerDeclaration());
      expect(await columnOrder(client)).toEqual(FORMER_ORDER);
      const expected = await declared(client);
      await client.query(`insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at)
        select distinct_id, day, event_name, event_count, first_at, last_at from events_daily_saved`);
      expect(await content(client)).toEqual(rows);
      await client.query(await migration());
      expect(await columnOrder(client)).toEqual(['event_count', 'first_at', 'last_at', 'day', 'distinct_id', 'event_name']);
      expect(await declared(client)).toEqual(expected);
      expect(await content(client)).toEqual(rows);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });

  it('re-running the migration on the reordered table changes nothing', async () => {
    await db.pool.query(ROWS);
    const oid = async () =>
      (await db.pool.query<{ oid: string }>(`select 'mixpanel_sync.events_daily'::regclass::oid::text as oid`)).rows[0]!.oid;
    const [before, rows] = [await oid(), await content(db.pool)];
    await db.pool.query(await migration());
    expect(await oid()).toBe(before);
    expect(await content(db.pool)).toEqual(rows);
  });
});
