// Test fixtures: real runs through the SQL API (begin_run, stage_*, finish_run) with a chosen clock.
import { afterAll, beforeEach } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, finishRun, stageLines, stageRecords, syncHealth, type HealthRow, type Queryable, type SyncRun } from './sync-api.ts';

export interface ExportEvent {
  event: string;
  properties: { distinct_id: string; time: number; $insert_id?: string; mp_processing_time_ms?: number };
}

export interface EngageProfile {
  $distinct_id: string;
  $properties: Record<string, unknown>;
}

/** An export line for an event at `at`, processed by Mixpanel at `processedAt` (default: at). */
export function exportEvent(user: string, name: string, at: Date, options: { insertId?: string; processedAt?: Date } = {}): ExportEvent {
  const properties: ExportEvent['properties'] = {
    distinct_id: user,
    time: Math.floor(at.getTime() / 1000),
    mp_processing_time_ms: (options.processedAt ?? at).getTime(),
  };
  if (options.insertId !== undefined) properties.$insert_id = options.insertId;
  return { event: name, properties };
}

export const minutesBefore = (time: Date, minutes: number): Date => new Date(time.getTime() - minutes * 60_000);

/** A run that stages `lines` (events or profiles, as the run's source) and finishes. */
export async function syncRun(
  db: Queryable,
  options: {
    source: 'events' | 'profiles';
    lines: readonly unknown[];
    clock?: Date | string;
    forceFull?: boolean;
    /** the project's name (default: the session's, else the only one) */
    project?: string;
    beforeFinish?: (run: SyncRun) => Promise<unknown>;
  },
): Promise<SyncRun> {
  const run = await beginRun(db, { source: options.source, clock: options.clock, forceFull: options.forceFull, project: options.project });
  await stageRecords(db, options.source, run.id, options.lines);
  await options.beforeFinish?.(run);
  return finishRun(db, run.id);
}

/**
 * An events run of export lines as text (begin_run, the lines staged as they are, finish_run): what the CLI calls,
 * without its start-up. A test that seeds a history this way still runs the CLI for what it tests.
 */
export async function syncLines(db: Queryable, lines: readonly string[]): Promise<SyncRun> {
  const run = await beginRun(db, { source: 'events' });
  await stageLines(db, 'events', run.id, [...lines]);
  return finishRun(db, run.id);
}

export const syncEvents = (db: Queryable, lines: readonly ExportEvent[], options: { clock?: Date; forceFull?: boolean } = {}) =>
  syncRun(db, { source: 'events', lines, ...options });

export const syncProfiles = (db: Queryable, lines: readonly EngageProfile[]) => syncRun(db, { source: 'profiles', lines });

/**
 * An export line of a project's event at `time` (ISO), processed then, with its $insert_id and extra properties: the
 * line the several-projects tests (projects-isolation*.test.ts) build their colliding histories from.
 */
export function projectEvent(name: string, user: string, time: string, insertId: string, extra: Record<string, unknown> = {}) {
  const { event, properties } = exportEvent(user, name, new Date(time));
  return { event, properties: { ...properties, $insert_id: insertId, ...extra } };
}

/** An events run of one project (begin_run at `clock`, the lines staged, finish_run). */
export const projectEventsRun = (db: Queryable, project: string, clock: Date | string, lines: readonly unknown[], forceFull = false) =>
  syncRun(db, { source: 'events', lines, clock, forceFull, project });

/** The project's event_ledger rows as "distinct_id day", sorted (plain SQL by project_id). */
export async function projectLedger(db: Queryable, project: string): Promise<string[]> {
  const { rows } = await db.query<{ r: string }>(
    `select l.distinct_id || ' ' || l.day::text as r from mixpanel_sync.event_ledger l
     where l.project_id = mixpanel_sync.project_id($1) order by 1`,
    [project],
  );
  return rows.map((row) => row.r);
}

/** One sync_health() row by check name. */
export async function healthOf(db: Queryable, check: string): Promise<HealthRow> {
  const rows = (await syncHealth(db)).filter((row) => row.check === check);
  if (rows.length !== 1) throw new Error(`sync_health() has no check ${check}`);
  return rows[0]!;
}

/**
 * Empties every table a sync writes (runs, rejects, watermarks, staging, aggregates, the ledger, profiles, identity
 * links), for tests that share one database between their tests or property iterations; dropPartitions also drops the
 * ledger's day partitions (default true; property iterations keep them: finish_run would recreate them each time).
 * DELETE, not TRUNCATE: a TRUNCATE gives each table and index (every ledger partition's too) a new file, and its
 * catalog change invalidates the cached plans that read them. With DELETE (2026-12-02, this machine): `npm test`
 * 228 s against 261 s (401 s of file time against 460 s), the property tests at FC_NUM_RUNS=100 172–249 s against
 * 265–279 s, run-accounting's file alone 38–58 s against 120–141 s. Autovacuum reclaims the deleted rows;
 * subscriber_count follows through subscribers' delete trigger. A table added later that references one of these
 * makes the DELETE fail unless its foreign key cascades: list it here (without sync_watermarks, five tests failed).
 * A predicate fast-check abandoned at its time limit (interruptAfterTimeLimit) may still be running a statement on
 * another pool connection: wait until no other session of this database is active, and retry a delete that
 * deadlocked with it (seen in CI with TRUNCATE: 40P01 between the next test's TRUNCATE and the abandoned finish_run).
 */
export async function emptySyncTables(db: Queryable, options: { dropPartitions?: boolean } = {}): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    for (let waited = 0; waited < 120_000; waited += 100) {
      const { rows } = await db.query<{ busy: boolean }>(
        `select exists (select from pg_catalog.pg_stat_activity a where a.datname = current_database()
           and a.pid <> pg_backend_pid() and a.state = 'active' and a.backend_type = 'client backend') as busy`,
      );
      if (!rows[0]!.busy) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    try {
      // one simple query: one transaction, all or nothing; children before sync_runs
      await db.query(
        [
          'events_daily',
          'event_ledger',
          'event_ledger_legacy',
          'subscribers',
          'subscriber_properties',
          'identity_links',
          'staged_events',
          'staged_profiles',
          'run_events',
          'sync_rejects',
          'sync_watermarks',
          'sync_runs',
        ]
          .map((table) => `delete from mixpanel_sync.${table};`)
          .join('\n'),
      );
      break;
    } catch (error) {
      if ((error as { code?: string }).code !== '40P01' || attempt >= 5) throw error;
    }
  }
  if (options.dropPartitions ?? true) await db.query(`select mixpanel_sync_private.drop_ledger_partitions('9999-12-31')`);
}

/**
 * This test file's database, for `const db = await syncTestDatabase();` at the top of a SQL test file: cloned from the
 * migrated template, dropped after the file's tests, and its sync tables emptied before each test (emptySyncTables
 * with these options; a beforeEach the file registers after this call runs after the emptying).
 */
export async function syncTestDatabase(options: { dropPartitions?: boolean } = {}): Promise<TestDatabase> {
  const db = await createTestDatabase();
  afterAll(() => db.drop());
  beforeEach(() => emptySyncTables(db.pool, options));
  return db;
}
