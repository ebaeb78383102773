// The migration path of several projects (docs/projects.md §5.12): an installation from before projects (committed
// migrations only, with events (raw on, identity on), profiles, cohorts and a customised setting) gets the current
// migration; every row is kept as it was, now of project 1 'default', the customised setting stays, and the next
// run deduplicates against the ledger rows written before. Re-running the migration changes nothing.
// One scratch database migrated from scratch (the committed migrations before 000013, then 000013, whose text is then
// run once more, then every later one): a few seconds. The rerun comes before the later migrations, as it did while
// 000013 was the current migration: a later one may change a function 000013 defines (000018: replace_guard's result).
// Seen failing (killed: settings-from-defaults: 200-keys.sql filling project 1's settings from sync_setting_defaults
// instead of keeping the installation's rows): events.ledger_retention came back as 7 days.
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl } from '../db/database-url.ts';
import { runMigrations } from '../db/migrate.ts';
import { defaultMigrationsFolder } from '../db/paths.ts';
import { dropDatabase } from '../db/test-databases.ts';
import { templateDatabase } from '../db/vitest-database.ts';
import { beginRun, finishRun, stageRecords } from './sync-api.ts';

const { serverUrl } = templateDatabase();
const name = `mps_projects_upgrade_${randomBytes(4).toString('hex')}`;
let folder: string;
let client: pg.Client;

const at = (iso: string) => Math.floor(Date.parse(iso) / 1000);
/** The number of the committed migration that added projects (its file name's prefix). */
const PROJECTS_MIGRATION = '000013';
const TABLES = [
  'events_daily',
  'event_ledger',
  'subscribers',
  'subscriber_properties',
  'identity_links',
  'cohorts',
  'cohort_members',
  'sync_runs',
  'sync_watermarks',
  'sync_rejects',
];

/** Every row of each table as jsonb without project_id, sorted (the same text whatever the column order). */
async function rows(): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const table of TABLES) {
    const { rows: r } = await client.query<{ r: string }>(
      `select (to_jsonb(t) - 'project_id')::text as r from mixpanel_sync.${table} t order by 1`,
    );
    out[table] = r.map((row) => row.r);
  }
  return out;
}

beforeAll(async () => {
  const admin = new pg.Client(serverUrl);
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  // the committed migrations before projects (000001–000012): an installation from before projects
  folder = await mkdtemp(path.join(os.tmpdir(), 'mps-projects-upgrade-'));
  await cp(path.join(defaultMigrationsFolder, 'committed'), path.join(folder, 'committed'), {
    recursive: true,
    filter: (source) => !/\/\d{6}-[^/]*\.sql$/.test(source) || path.basename(source) < PROJECTS_MIGRATION,
  });
  const url = databaseUrl(serverUrl, name);
  await runMigrations(url, { migrationsFolder: folder, gmrc: false });
  client = new pg.Client(url);
  await client.connect();
  // its data, through the functions of then (plain SQL: their signatures are not sync-api's any more)
  await client.query(`update mixpanel_sync.sync_settings set value = 'on' where key = 'events.store_raw';
    update mixpanel_sync.sync_settings set value = 'simplified' where key = 'identity.mode';
    update mixpanel_sync.sync_settings set value = '14 days' where key = 'events.ledger_retention'`);
  const events = [
    { event: 'open', properties: { distinct_id: 'u1', time: at('2026-11-19T08:00:00Z'), $insert_id: 'a1' } },
    { event: 'open', properties: { distinct_id: 'u1', time: at('2026-11-19T09:00:00Z'), $insert_id: 'a2' } },
    { event: 'buy', properties: { distinct_id: 'u2', time: at('2026-11-18T10:00:00Z'), $insert_id: 'a3' } },
    { event: 'open', properties: { distinct_id: '$device:D1', time: at('2026-11-18T10:01:00Z'), $insert_id: 'a4', $device_id: 'D1' } },
    {
      event: 'signup',
      properties: { distinct_id: 'u1', time: at('2026-11-18T10:02:00Z'), $insert_id: 'a5', $device_id: 'D1', $user_id: 'u1' },
    },
    { event: 'no user', properties: { time: at('2026-11-18T10:03:00Z'), $insert_id: 'a6' } },
  ];
  const run = async (begin: string, stage: string, finish = 'finish_run') => {
    const { rows: r } = await client.query<{ id: string }>(`select id from ${begin}`);
    await client.query(stage.replaceAll('$RUN', r[0]!.id));
    await client.query(`select mixpanel_sync.${finish}(${r[0]!.id})`);
  };
  await run(
    `mixpanel_sync.begin_run('events', true, clock => '2026-11-20 12:00Z')`,
    `select mixpanel_sync.stage_events($RUN, '${JSON.stringify(events)}')`,
  );
  await run(
    `mixpanel_sync.begin_run('profiles', clock => '2026-11-20 12:00Z')`,
    `select mixpanel_sync.stage_profiles($RUN, '[{"$distinct_id": "u1", "$properties": {"$name": "One"}}]')`,
  );
  await run(
    `mixpanel_sync.begin_cohorts_run('2026-11-20 12:00Z')`,
    `select mixpanel_sync.stage_cohorts($RUN, '[{"id": 7, "name": "c"}]'), mixpanel_sync.stage_cohort_members($RUN, 7, '[{"$distinct_id": "u1"}]', true)`,
    'finish_cohorts_run',
  );
});
afterAll(async () => {
  await client?.end();
  await dropDatabase(serverUrl, name);
  if (folder) await rm(folder, { recursive: true, force: true });
});

describe('the migration to several projects on an installation in use', () => {
  it("keeps every row as project 1 'default', its settings, its count; the next run deduplicates; a rerun changes nothing", async () => {
    const before = await rows();
    const { rows: counted } = await client.query<{ n: string }>('select subscribers::text as n from mixpanel_sync.subscriber_count');
    for (const table of ['events_daily', 'event_ledger', 'identity_links', 'cohort_members', 'sync_watermarks'])
      expect(before[table]!.length, table).toBeGreaterThan(0);

    const url = databaseUrl(serverUrl, name);
    const committed = await readdir(path.join(defaultMigrationsFolder, 'committed'));
    const file = committed.find((f) => f.startsWith(PROJECTS_MIGRATION))!;
    const appliedFrom = async () =>
      (
        await client.query<{ filename: string }>(
          'select filename from graphile_migrate.migrations where filename >= $1 order by filename',
          [PROJECTS_MIGRATION],
        )
      ).rows.map((r) => r.filename.slice(0, 6));
    // the migration to projects alone first
    await cp(path.join(defaultMigrationsFolder, 'committed', file), path.join(folder, 'committed', file));
    expect(await runMigrations(url, { migrationsFolder: folder, gmrc: false })).toEqual({ currentApplied: false });
    expect(await appliedFrom()).toEqual([PROJECTS_MIGRATION]);
    expect(await rows()).toEqual(before);
    // its text run again (as `watch` re-ran it while it was the current migration, before any later one existed):
    // nothing changes
    await client.query('begin');
    await client.query(await readFile(path.join(defaultMigrationsFolder, 'committed', file), 'utf8'));
    await client.query('commit');
    expect(await rows()).toEqual(before);
    // then every migration committed after it
    expect(await runMigrations(url, { migrationsFolder: defaultMigrationsFolder, gmrc: false })).toEqual({ currentApplied: false });
    expect((await appliedFrom())[0]).toBe(PROJECTS_MIGRATION);

    expect(await rows()).toEqual(before);
    const { rows: projects } = await client.query('select id, name from mixpanel_sync.projects');
    expect(projects).toEqual([{ id: 1, name: 'default' }]);
    for (const table of [...TABLES.filter((t) => t !== 'sync_rejects'), 'sync_settings', 'subscriber_count']) {
      const { rows: ids } = await client.query<{ id: number }>(`select distinct project_id as id from mixpanel_sync.${table}`);
      expect({ table, ids: ids.map((r) => r.id) }).toEqual({ table, ids: before[table]?.length === 0 ? [] : [1] });
    }
    const { rows: settings } = await client.query(
      `select key, value from mixpanel_sync.sync_settings where key in ('events.store_raw', 'identity.mode', 'events.ledger_retention') order by key`,
    );
    expect(settings).toEqual([
      { key: 'events.ledger_retention', value: '14 days' },
      { key: 'events.store_raw', value: 'on' },
      { key: 'identity.mode', value: 'simplified' },
    ]);
    const { rows: all } = await client.query<{ settings: number; defaults: number }>(
      `select (select count(*)::int from mixpanel_sync.sync_settings) as settings, (select count(*)::int from mixpanel_sync.sync_setting_defaults) as defaults`,
    );
    expect(all[0]!.settings).toBe(all[0]!.defaults);
    const { rows: countedAfter } = await client.query<{ n: string }>('select subscribers::text as n from mixpanel_sync.subscriber_count');
    expect(countedAfter).toEqual(counted);

    // the next run, through today's API: a1 and a2 were applied before the migration, a7 is new
    const next = await beginRun(client, { source: 'events', clock: '2026-11-20T13:00:00Z' });
    expect(next.mode).toBe('incremental');
    await stageRecords(client, 'events', next.id, [
      { event: 'open', properties: { distinct_id: 'u1', time: at('2026-11-19T08:00:00Z'), $insert_id: 'a1' } },
      { event: 'open', properties: { distinct_id: 'u1', time: at('2026-11-19T09:00:00Z'), $insert_id: 'a2' } },
      { event: 'open', properties: { distinct_id: 'u1', time: at('2026-11-19T09:30:00Z'), $insert_id: 'a7' } },
    ]);
    const finished = await finishRun(client, next.id);
    expect({ applied: finished.applied, duplicates: finished.duplicates }).toEqual({ applied: '1', duplicates: '2' });
  });
});
