// Least privilege (migration 000006, part `--! split: 900-privileges.sql`), with real login roles on a real database:
// - a login role granted only mixpanel_sync_loader runs whole events and profiles runs (begin_run, COPY through
//   pg-copy-streams, finish_run), fails a run, reads status and sync_health();
// - a login role granted only mixpanel_sync_reader selects the aggregates and profiles and can do nothing else;
// - PUBLIC (a login role with no grant) reaches nothing; a role given Supabase's "expose a custom schema" grants
//   (as anon is) sees no row and can change nothing, because RLS is on everywhere with policies for our roles only;
// - the migration needs no superuser (Supabase's postgres is not one): a CREATEROLE owner migrates, its loader runs;
// - the catalogue: no function executable by PUBLIC, no SECURITY DEFINER, RLS on every table, views security_invoker.
// Seen failing without the protection: dropping the loader's policy on events_daily (finish_run: "new row violates
// row-level security policy"), leaving staged_events owned by the migration role (COPY: "COPY FROM not supported with
// row-level security"), removing `revoke execute … from public` (the catalogue test lists every function), and
// `grant select on … to mixpanel_sync_reader` removed for subscribers (reader: permission denied), and the CREATE hand-over
// around `alter table … owner to mixpanel_sync_loader` removed (a non-superuser migration: "permission denied for schema").
import { Readable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl } from '../db/database-url.ts';
import { runMigrations } from '../db/migrate.ts';
import { createTestDatabase, templateDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { copyIntoStaging } from '../loader/copy-into-staging.ts';
import { CLOCK, eventLines } from '../fixtures/test-support.ts';
import { beginRun, failRun, finishRun, readLastRuns, readWatermarks, syncHealth } from './sync-api.ts';

let db: TestDatabase;
let roles: { loader: string; reader: string; nobody: string; exposed: string; owner: string };
const pools: pg.Pool[] = [];

/** A pool on the test database as `user` (the harness's servers use trust authentication on 127.0.0.1). */
function poolAs(user: string): pg.Pool {
  const url = new URL(db.url);
  url.username = user;
  url.password = '';
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  pool.on('error', () => {});
  pools.push(pool);
  return pool;
}

const quote = (name: string) => pg.Client.prototype.escapeIdentifier(name);

async function dropRoles(serverUrl: string, names: string[]): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    for (const name of names) await client.query(`drop role if exists ${quote(name)}`);
  } finally {
    await client.end();
  }
}

async function dropDatabaseIfExists(serverUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`drop database if exists ${quote(name)} with (force)`);
  } finally {
    await client.end();
  }
}

/** The SQLSTATE a promise rejects with (fails the test when it resolves). */
async function sqlstate(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    return (error as { code?: string }).code ?? `no code: ${(error as Error).message}`;
  }
  throw new Error('expected the statement to be refused, it succeeded');
}

const profileLine = (i: number) =>
  JSON.stringify({
    $distinct_id: `user-${i}`,
    $properties: { $email: `user-${i}@example.com`, $name: `User ${i}`, plan: i % 2 ? 'pro' : 'free' },
  });

beforeAll(async () => {
  db = await createTestDatabase();
  const stem = db.name; // unique per test file run; roles are cluster-wide
  roles = {
    loader: `${stem}_loader`,
    reader: `${stem}_reader`,
    nobody: `${stem}_nobody`,
    exposed: `${stem}_exposed`,
    owner: `${stem}_owner`,
  };
  await db.pool.query(`create role ${quote(roles.loader)} login in role mixpanel_sync_loader`);
  await db.pool.query(`create role ${quote(roles.reader)} login in role mixpanel_sync_reader`);
  await db.pool.query(`create role ${quote(roles.nobody)} login`);
  // What Supabase's guide for exposing a custom schema grants to anon / authenticated / service_role.
  await db.pool.query(`create role ${quote(roles.exposed)} login`);
  await db.pool.query(`grant usage on schema mixpanel_sync to ${quote(roles.exposed)}`);
  await db.pool.query(`grant all on all tables in schema mixpanel_sync to ${quote(roles.exposed)}`);
  await db.pool.query(`grant all on all routines in schema mixpanel_sync to ${quote(roles.exposed)}`);
  await db.pool.query(`grant all on all sequences in schema mixpanel_sync to ${quote(roles.exposed)}`);
});

afterAll(async () => {
  await Promise.all(pools.map((pool) => pool.end()));
  if (!db) return;
  await db.drop();
  if (roles) await dropDatabaseIfExists(templateDatabase().serverUrl, `${roles.owner}_db`);
  if (roles) await dropRoles(templateDatabase().serverUrl, Object.values(roles));
});

describe('mixpanel_sync_loader', () => {
  it('runs an events run with COPY, a profiles run, fails a run and reads status and health', async () => {
    const loader = poolAs(roles.loader);
    const lines = eventLines(40, { prefix: 'priv' });

    const run = await beginRun(loader, { source: 'events', clock: CLOCK });
    const client = await loader.connect();
    try {
      const copied = await copyIntoStaging(client, {
        table: 'mixpanel_sync.staged_events',
        runId: run.id,
        lines: Readable.from([`${lines.join('\n')}\n`]),
      });
      expect(copied.rows).toBe(40);
    } finally {
      client.release();
    }
    const finished = await finishRun(loader, run.id);
    expect(finished).toMatchObject({ status: 'succeeded', received: '40', applied: '40' });

    const profiles = await beginRun(loader, { source: 'profiles', clock: CLOCK });
    const profileClient = await loader.connect();
    try {
      const lines = Array.from({ length: 5 }, (_, i) => profileLine(i));
      await copyIntoStaging(profileClient, {
        table: 'mixpanel_sync.staged_profiles',
        runId: profiles.id,
        lines: Readable.from([`${lines.join('\n')}\n`]),
      });
    } finally {
      profileClient.release();
    }
    expect(await finishRun(loader, profiles.id)).toMatchObject({ status: 'succeeded', received: '5' });

    const doomed = await beginRun(loader, { source: 'events', clock: CLOCK });
    expect(await failRun(loader, doomed.id, 'given up on purpose')).toMatchObject({ status: 'failed', error: 'given up on purpose' });

    expect((await readWatermarks(loader)).map((w) => w.source)).toContain('events');
    expect((await readLastRuns(loader, 10)).length).toBe(3);
    expect((await syncHealth(loader)).length).toBeGreaterThan(0);

    // what it all wrote, seen by the owner
    const { rows } = await db.pool.query(
      `select (select sum(event_count)::int from mixpanel_sync.events_daily) as events,
              (select count(*)::int from mixpanel_sync.subscriber_properties) as profiles`,
    );
    expect(rows[0]).toEqual({ events: 40, profiles: 5 });
  });

  it("cannot change the settings (the REPLACE guard and windows are the DBA's)", async () => {
    const loader = poolAs(roles.loader);
    expect((await loader.query('select count(*)::int as n from mixpanel_sync.sync_settings')).rows[0].n).toBeGreaterThan(0);
    expect(await sqlstate(loader.query(`update mixpanel_sync.sync_settings set value = value`))).toBe('42501');
    expect(await sqlstate(loader.query(`delete from mixpanel_sync.sync_settings`))).toBe('42501');
  });
});

describe('mixpanel_sync_reader', () => {
  it('selects the aggregates and profiles, and nothing else', async () => {
    const reader = poolAs(roles.reader);
    const count = async (table: string) =>
      (await reader.query(`select count(*)::int as n from mixpanel_sync.${table}`)).rows[0].n as number;
    expect(await count('events_daily')).toBeGreaterThan(0);
    expect(await count('subscribers')).toBe(5);
    expect(await count('subscriber_properties')).toBe(5);

    expect(await sqlstate(beginRun(reader, { source: 'events', clock: CLOCK }))).toBe('42501');
    expect(await sqlstate(reader.query('select * from mixpanel_sync.sync_runs'))).toBe('42501');
    expect(await sqlstate(reader.query('select * from mixpanel_sync.staged_events'))).toBe('42501');
    expect(await sqlstate(reader.query(`delete from mixpanel_sync.events_daily`))).toBe('42501');
    expect(await sqlstate(reader.query(`copy mixpanel_sync.staged_events (run_id, line) from stdin`))).toBe('42501');
  });
});

describe('PUBLIC and an exposed schema', () => {
  it('a role with no grant reaches nothing in either schema', async () => {
    const nobody = poolAs(roles.nobody);
    expect(await sqlstate(nobody.query('select count(*) from mixpanel_sync.events_daily'))).toBe('42501');
    expect(await sqlstate(beginRun(nobody, { source: 'events', clock: CLOCK }))).toBe('42501');
    expect(await sqlstate(nobody.query('select * from mixpanel_sync.sync_health()'))).toBe('42501');
    const { rows } = await db.pool.query<{ nspname: string }>(
      `select nspname from pg_catalog.pg_namespace where nspname like 'mixpanel\\_sync%' order by 1`,
    );
    for (const { nspname } of rows) {
      expect(
        await sqlstate(
          nobody.query(`select pg_catalog.count(*) from pg_catalog.generate_series(1, 1) where ${quote(nspname)}.no_such_fn() is null`),
        ),
      ).toBe('42501');
    }
  });

  it("with Supabase's expose-a-schema grants, an anon-like role sees no row and changes nothing", async () => {
    const exposed = poolAs(roles.exposed);
    for (const table of [
      'events_daily',
      'subscribers',
      'subscriber_properties',
      'sync_runs',
      'sync_settings',
      'staged_events',
      'sync_rejects',
    ]) {
      const { rows } = await exposed.query(`select count(*)::int as n from mixpanel_sync.${table}`);
      expect({ table, n: rows[0].n }).toEqual({ table, n: 0 });
    }
    expect(
      await sqlstate(
        exposed.query(`insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
      values (1, 'x', current_date, 'e', 1, now(), now())`),
      ),
    ).toBe('42501');
    // granted EXECUTE by the guide, begin_run runs with anon's rights: it sees no project (MP004: RLS hides
    // mixpanel_sync.projects), no settings row (42704), and RLS would refuse its insert anyway; no run is started
    const runs = async () => (await db.pool.query('select count(*)::int as n from mixpanel_sync.sync_runs')).rows[0].n as number;
    const before = await runs();
    expect(['42501', '42704', 'MP004']).toContain(await sqlstate(beginRun(exposed, { source: 'events', clock: CLOCK })));
    expect(await runs()).toBe(before);
    const client = await exposed.connect();
    try {
      expect(
        await sqlstate(copyIntoStaging(client, { table: 'mixpanel_sync.staged_events', runId: '1', lines: Readable.from(['{}\n']) })),
      ).toBe('0A000');
    } finally {
      client.release();
    }
    const changed = await exposed.query(`update mixpanel_sync.sync_settings set value = value`);
    expect(changed.rowCount).toBe(0);
  });
});

describe('the migration owner', () => {
  it("needs no superuser: a CREATEROLE role (as Supabase's postgres) migrates a database of its own, then its loader runs", async () => {
    const server = templateDatabase().serverUrl;
    const name = `${roles.owner}_db`;
    await db.pool.query(`create role ${quote(roles.owner)} login createrole`);
    // Supabase's postgres created the roles itself on the first migration, so it may grant them (ADMIN OPTION, PG16+)
    await db.pool.query(`grant mixpanel_sync_loader, mixpanel_sync_reader to ${quote(roles.owner)} with admin option`);
    const admin = new pg.Client({ connectionString: server });
    await admin.connect();
    try {
      await admin.query(`create database ${quote(name)} owner ${quote(roles.owner)}`);
    } finally {
      await admin.end();
    }
    const ownerUrl = new URL(databaseUrl(server, name));
    ownerUrl.username = roles.owner;
    await runMigrations(ownerUrl.toString());

    const staging = new pg.Client({ connectionString: ownerUrl.toString() });
    await staging.connect();
    try {
      const { rows } = await staging.query<{ rel: string; owner: string; rolsuper: boolean }>(
        `select c.relname as rel, pg_catalog.pg_get_userbyid(c.relowner) as owner,
                (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user) as rolsuper
         from pg_catalog.pg_class c where c.oid = 'mixpanel_sync.staged_events'::regclass`,
      );
      expect(rows[0]).toEqual({ rel: 'staged_events', owner: 'mixpanel_sync_loader', rolsuper: false });
      // the loader role got no lasting CREATE on the schema from the hand-over
      const { rows: create } = await staging.query(
        `select pg_catalog.has_schema_privilege('mixpanel_sync_loader', 'mixpanel_sync', 'CREATE') as c`,
      );
      expect(create[0].c).toBe(false);
    } finally {
      await staging.end();
    }

    const loaderUrl = new URL(ownerUrl.toString());
    loaderUrl.username = roles.loader;
    const loader = new pg.Pool({ connectionString: loaderUrl.toString(), max: 2 });
    loader.on('error', () => {}); // as poolAs: a session terminated by the database's drop while it closes
    pools.push(loader);
    const run = await beginRun(loader, { source: 'events', clock: CLOCK });
    const client = await loader.connect();
    try {
      await copyIntoStaging(client, {
        table: 'mixpanel_sync.staged_events',
        runId: run.id,
        lines: Readable.from([`${eventLines(5, { prefix: 'own' }).join('\n')}\n`]),
      });
    } finally {
      client.release();
    }
    expect(await finishRun(loader, run.id)).toMatchObject({ status: 'succeeded', applied: '5' });
  });
});

describe('catalogue', () => {
  // killed: create-project-for-loader (the two revokes of create_project from mixpanel_sync_loader, in
  // 300-settings-and-projects.sql and 900-privileges.sql, removed: the schema's default privileges grant it every function)
  it('projects: the loader and the reader read them; only the DBA creates and drops them (create_project, drop_project)', async () => {
    const { rows } = await db.pool.query(
      `select r.role,
         has_function_privilege(r.role, 'mixpanel_sync.create_project(text, bigint, text, text)', 'execute') as create_project,
         has_function_privilege(r.role, 'mixpanel_sync.drop_project(text)', 'execute') as drop_project,
         has_table_privilege(r.role, 'mixpanel_sync.projects', 'select') as read,
         has_table_privilege(r.role, 'mixpanel_sync.projects', 'insert') as insert
       from unnest(array['mixpanel_sync_loader', 'mixpanel_sync_reader']) r (role) order by 1`,
    );
    expect(rows).toEqual([
      { role: 'mixpanel_sync_loader', create_project: false, drop_project: false, read: true, insert: false },
      { role: 'mixpanel_sync_reader', create_project: false, drop_project: false, read: true, insert: false },
    ]);
    expect(await sqlstate(poolAs(roles.loader).query(`select mixpanel_sync.create_project('by_loader')`))).toBe('42501');
  });

  it('no function of mixpanel_sync or mixpanel_sync_verify is executable by PUBLIC, and none is SECURITY DEFINER', async () => {
    const { rows } = await db.pool.query<{ fn: string; public_execute: boolean; definer: boolean }>(
      `select p.oid::regprocedure::text as fn,
              exists (select from pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                      where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public_execute,
              p.prosecdef as definer
       from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
       where n.nspname in ('mixpanel_sync', 'mixpanel_sync_verify')`,
    );
    expect(rows.length).toBeGreaterThan(40);
    expect(rows.filter((r) => r.public_execute).map((r) => r.fn)).toEqual([]);
    expect(rows.filter((r) => r.definer).map((r) => r.fn)).toEqual([]);
  });

  // 200-ledger.sql: the loader creates and drops the ledger's day partitions only through these two helpers (the loader
  // test above finishes a run as the loader, which creates partitions: it fails with "permission denied for schema
  // mixpanel_sync" when ensure_ledger_partitions is not SECURITY DEFINER).
  it('mixpanel_sync_private holds only the three SECURITY DEFINER helpers (run_events sampling, partitions), executable by the loader alone', async () => {
    const { rows } = await db.pool.query<{ fn: string; definer: boolean; path: boolean; grantees: string[] }>(
      `select p.oid::regprocedure::text as fn, p.prosecdef as definer,
              coalesce('search_path=""' = any (p.proconfig), false) as path,
              array(select coalesce(r.rolname, 'PUBLIC') from pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) a
                    left join pg_catalog.pg_roles r on r.oid = a.grantee
                    where a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner order by 1)::text[] as grantees
       from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'mixpanel_sync_private' order by 1`,
    );
    expect(rows).toEqual([
      { fn: 'mixpanel_sync_private.analyze_run_events()', definer: true, path: true, grantees: ['mixpanel_sync_loader'] },
      { fn: 'mixpanel_sync_private.drop_ledger_partitions(date)', definer: true, path: true, grantees: ['mixpanel_sync_loader'] },
      {
        fn: 'mixpanel_sync_private.ensure_ledger_partitions(date,date,boolean)',
        definer: true,
        path: true,
        grantees: ['mixpanel_sync_loader'],
      },
    ]);
    const { rows: usage } = await db.pool.query<{ public_usage: boolean; reader_usage: boolean; loader_usage: boolean }>(
      `select pg_catalog.has_schema_privilege('public', 'mixpanel_sync_private', 'usage') as public_usage,
              pg_catalog.has_schema_privilege('mixpanel_sync_reader', 'mixpanel_sync_private', 'usage') as reader_usage,
              pg_catalog.has_schema_privilege('mixpanel_sync_loader', 'mixpanel_sync_private', 'usage') as loader_usage`,
    );
    expect(usage).toEqual([{ public_usage: false, reader_usage: false, loader_usage: true }]);
  });

  it('RLS on every table, a policy or ownership for the loader on each, views security_invoker, every policy commented', async () => {
    const { rows: tables } = await db.pool.query<{ rel: string; rls: boolean; loader: boolean }>(
      `select c.oid::regclass::text as rel, c.relrowsecurity as rls,
              pg_catalog.pg_get_userbyid(c.relowner) = 'mixpanel_sync_loader'
              or exists (select from pg_catalog.pg_policy p where p.polrelid = c.oid and 'mixpanel_sync_loader'::regrole = any (p.polroles)) as loader
       from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('mixpanel_sync', 'mixpanel_sync_verify') and c.relkind in ('r', 'p')`,
    );
    expect(tables.length).toBeGreaterThan(8);
    expect(tables.filter((t) => !t.rls || !t.loader).map((t) => t.rel)).toEqual([]);

    const { rows: views } = await db.pool.query<{ rel: string; invoker: boolean }>(
      `select c.oid::regclass::text as rel, coalesce('security_invoker=true' = any (c.reloptions), false) as invoker
       from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('mixpanel_sync', 'mixpanel_sync_verify') and c.relkind = 'v'`,
    );
    expect(views.map((v) => v.rel)).toContain('mixpanel_sync.staged_profiles_parsed');
    expect(views.filter((v) => !v.invoker).map((v) => v.rel)).toEqual([]);

    const { rows: uncommented } = await db.pool.query<{ what: string }>(
      `select p.polname || ' on ' || p.polrelid::regclass::text as what from pg_catalog.pg_policy p
       where pg_catalog.obj_description(p.oid, 'pg_policy') is null
       union all
       select r.rolname from pg_catalog.pg_roles r
       where r.rolname in ('mixpanel_sync_loader', 'mixpanel_sync_reader') and pg_catalog.shobj_description(r.oid, 'pg_authid') is null`,
    );
    expect(uncommented).toEqual([]);
  });
});
