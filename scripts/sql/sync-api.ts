// The typed SQL API: every call from TypeScript into a function of schema mixpanel_sync (or mixpanel_sync_verify)
// goes through one small function here, one statement each. The loader, the CLIs, the bench and the tests use it;
// the rules themselves (parsing, keys, guards, accounting) live in the SQL functions, never here.
import type pg from 'pg';

/** pg.Pool, pg.PoolClient and pg.Client all fit. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

export type RunSource = 'events' | 'profiles';

/** A mixpanel_sync.sync_runs row as node-pg returns it (bigint columns come as strings, dates as 'YYYY-MM-DD'). */
export interface SyncRun {
  id: string;
  source: RunSource;
  mode: 'full' | 'incremental';
  status: 'running' | 'succeeded' | 'failed' | 'abandoned';
  fetch_from: Date | null;
  fetch_to: Date;
  window_from_day: string | null;
  window_to_day: string | null;
  lookback_from: Date | null;
  processed_after: Date | null;
  project_timezone: string | null;
  received: string | null;
  applied: string | null;
  duplicates: string | null;
  rejected: string | null;
  too_old: string | null;
  /** events runs: valid events with no distinct_id (not rejects; kept in the raw table when events.store_raw is on) */
  no_user: string | null;
  /** events runs: valid events outside the run's selection (options.events), ignored */
  not_selected: string | null;
  users_touched: string | null;
  inserted: string | null;
  updated: string | null;
  unchanged: string | null;
  watermark_before: Date | null;
  watermark_after: Date | null;
  lateness: unknown;
  options: Record<string, unknown>;
  started_at: Date;
  finished_at: Date | null;
  stage_ms: string | null;
  apply_ms: string | null;
  total_ms: string | null;
  error: string | null;
}

/** A count column of a run as a number (null before the run finished). */
export function runCount(value: string | null): number | null {
  return value === null ? null : Number(value);
}

/** A run's event counts as numbers (null before it finished): received = applied + duplicates + too_old + rejected + no_user + not_selected. */
export function eventCounts(run: SyncRun) {
  return {
    received: runCount(run.received),
    applied: runCount(run.applied),
    duplicates: runCount(run.duplicates),
    rejected: runCount(run.rejected),
    too_old: runCount(run.too_old),
    no_user: runCount(run.no_user),
    not_selected: runCount(run.not_selected),
  };
}

// date columns stay 'YYYY-MM-DD' strings: `::text` keeps node-pg from reading them as local midnight.
const RUN_COLUMNS = `r.*, r.window_from_day::text as window_from_day, r.window_to_day::text as window_to_day`;

// ---------------------------------------------------------------------------------------------------------------
// The run life cycle: begin_run, staging, finish_run, fail_run

export interface BeginRunOptions {
  source: RunSource;
  forceFull?: boolean;
  /** The run's clock (its fetch_to); default the database's now(). */
  clock?: Date | string;
  /** IANA name, for projects whose export times are local (MIXPANEL_PROJECT_TIMEZONE). */
  projectTimezone?: string | null;
  /** A full run over exactly these UTC days ('YYYY-MM-DD'; without `to`, exactly the day `from`). */
  resync?: { from: string; to?: string | null } | null;
  /** A full run may empty or shrink stored days (begin_run allow_shrink => true; otherwise finish_run refuses with MP001). */
  allowShrink?: boolean;
  /** This run's event names (begin_run events => …; CLI --event); absent or null: the setting events.only; []: every event. */
  events?: readonly string[] | null;
  /** The project's name (mixpanel_sync.projects; CLI --project, MIXPANEL_PROJECT); absent or null: the only project. */
  project?: string | null;
  /** Mixpanel's project id of the loader's credentials: recorded on the project's first run, refused (MP004) when it is another. */
  mixpanelProjectId?: string | number | null;
}

/** mixpanel_sync.begin_run: the new running run (MP002 when one of this source is running, MP004 on bad arguments). */
export async function beginRun(db: Queryable, options: BeginRunOptions): Promise<SyncRun> {
  const { rows } = await db.query<SyncRun>(
    `select ${RUN_COLUMNS} from mixpanel_sync.begin_run($1, force_full => $2,
       clock => coalesce($3::timestamptz, now()), project_timezone => $4,
       resync_from => $5::date, resync_to => $6::date${options.allowShrink ? ', allow_shrink => true' : ''}, events => $7::text[],
       project => $8, mixpanel_project_id => $9::bigint) r`,
    [
      options.source,
      options.forceFull ?? false,
      options.clock ?? null,
      options.projectTimezone ?? null,
      options.resync?.from ?? null,
      options.resync?.to ?? null,
      options.events ?? null,
      options.project ?? null,
      options.mixpanelProjectId ?? null,
    ],
  );
  return rows[0]!;
}

// ---------------------------------------------------------------------------------------------------------------
// Projects (mixpanel_sync.projects): several Mixpanel projects in one database (docs/projects.md)

/** A mixpanel_sync.projects row (id and mixpanel_project_id as node-pg returns them). */
export interface ProjectRow {
  id: number;
  name: string;
  mixpanel_project_id: string | null;
  region: 'us' | 'eu' | 'in';
  timezone: string | null;
  created_at: Date;
}

/** mixpanel_sync.create_project (DBA): a new project with the default settings (MP004 on a bad or taken name). */
export async function createProject(
  db: Queryable,
  name: string,
  options: { mixpanelProjectId?: string | number | null; region?: 'us' | 'eu' | 'in'; timezone?: string | null } = {},
): Promise<ProjectRow> {
  const { rows } = await db.query<ProjectRow>(
    'select p.* from mixpanel_sync.create_project($1, mixpanel_project_id => $2::bigint, region => $3, timezone => $4) p',
    [name, options.mixpanelProjectId ?? null, options.region ?? 'us', options.timezone ?? null],
  );
  return rows[0]!;
}

/** mixpanel_sync.drop_project (DBA): every row of the project deleted; the number of data rows (MP002 while one of its runs is running). */
export async function dropProject(db: Queryable, name: string): Promise<number> {
  const { rows } = await db.query<{ removed: string }>('select mixpanel_sync.drop_project($1) as removed', [name]);
  return Number(rows[0]!.removed);
}

/** The project of this name, or the only one (null); MP004 when there are several or the name is unknown. */
export async function readProject(db: Queryable, project: string | null = null): Promise<ProjectRow> {
  const { rows } = await db.query<ProjectRow>('select p.* from mixpanel_sync.projects p where p.id = mixpanel_sync.project_id($1)', [
    project,
  ]);
  return rows[0]!;
}

/** Every project, by name. */
export async function listProjects(db: Queryable): Promise<ProjectRow[]> {
  const { rows } = await db.query<ProjectRow>('select p.* from mixpanel_sync.projects p order by p.name');
  return rows;
}

/** mixpanel_sync.run_selection: the event names a run syncs, as begin_run recorded them; null: every event. */
export async function runSelection(db: Queryable, runId: string | number): Promise<string[] | null> {
  const { rows } = await db.query<{ names: string[] | null }>('select mixpanel_sync.run_selection($1) as names', [runId]);
  return rows[0]?.names ?? null;
}

/** What mixpanel_sync.forget_event_names deleted. */
export interface ForgottenEventNames {
  event_names: string[];
  daily_rows: number;
  events: number;
  ledger_rows: number;
  users_refreshed: number;
}

/** mixpanel_sync.forget_event_names: the data of event names no longer synced deleted (DBA only; MP004 for a name events.only still syncs, MP002 while an events run is running). */
export async function forgetEventNames(
  db: Queryable,
  names: readonly string[],
  project: string | null = null,
): Promise<ForgottenEventNames> {
  const { rows } = await db.query<Record<keyof ForgottenEventNames, string & string[]>>(
    'select event_names, daily_rows, events, ledger_rows, users_refreshed from mixpanel_sync.forget_event_names($1::text[], $2)',
    [names, project],
  );
  const row = rows[0]!;
  return {
    event_names: row.event_names,
    daily_rows: Number(row.daily_rows),
    events: Number(row.events),
    ledger_rows: Number(row.ledger_rows),
    users_refreshed: Number(row.users_refreshed),
  };
}

/** mixpanel_sync.finish_run: parses, applies and accounts for the staged rows; the finished run. */
export async function finishRun(db: Queryable, runId: string | number): Promise<SyncRun> {
  const { rows } = await db.query<SyncRun>(`select ${RUN_COLUMNS} from mixpanel_sync.finish_run($1) r`, [runId]);
  return rows[0]!;
}

/** mixpanel_sync.fail_run: the run recorded as failed with `error` (and the SQLSTATE that failed it, kept in options->>'error_code'), its staged rows dropped, nothing applied. */
export async function failRun(db: Queryable, runId: string | number, error: string, errorCode: string | null = null): Promise<SyncRun> {
  const { rows } = await db.query<SyncRun>(
    `select ${RUN_COLUMNS} from mixpanel_sync.fail_run($1, $2${errorCode === null ? '' : ', error_code => $3'}) r`,
    errorCode === null ? [runId, error] : [runId, error, errorCode],
  );
  return rows[0]!;
}

/** mixpanel_sync.record_framing: the input framing counts of a run (blank_lines, bom_stripped, …) into sync_runs.options->'framing'. */
export async function recordFraming(db: Queryable, runId: string | number, counts: Record<string, number>): Promise<void> {
  await db.query('select mixpanel_sync.record_framing($1, $2::jsonb)', [runId, JSON.stringify(counts)]);
}

/** mixpanel_sync.heartbeat_run: the loader's sign of life for a running run (true when recorded; false when the run is not running or finish_run holds its row). */
export async function heartbeatRun(db: Queryable, runId: string | number): Promise<boolean> {
  const { rows } = await db.query<{ recorded: boolean }>('select mixpanel_sync.heartbeat_run($1) as recorded', [runId]);
  return rows[0]!.recorded;
}

/** mixpanel_sync.stage_events / stage_profiles: a JSON array of records staged for a run (psql's way in). */
export async function stageRecords(db: Queryable, source: RunSource, runId: string | number, records: readonly unknown[]): Promise<void> {
  const fn = source === 'events' ? 'mixpanel_sync.stage_events' : 'mixpanel_sync.stage_profiles';
  await db.query(`select ${fn}($1, $2::jsonb)`, [runId, JSON.stringify(records)]);
}

/**
 * Raw lines into staged_events / staged_profiles in order, as the loader's COPY puts them (no JSON parsing on the
 * way, so broken lines reach the parser too). The loader itself streams COPY (scripts/loader/copy-into-staging.ts).
 */
export async function stageLines(db: Queryable, source: RunSource, runId: string | number, lines: readonly string[]): Promise<void> {
  const table = source === 'events' ? 'mixpanel_sync.staged_events' : 'mixpanel_sync.staged_profiles';
  for (let at = 0; at < lines.length; at += 20_000) {
    await db.query(
      `insert into ${table} (run_id, line) select $1, l.line from unnest($2::text[]) with ordinality l (line, n) order by l.n`,
      [runId, lines.slice(at, at + 20_000)],
    );
  }
}

/** mixpanel_sync.parse_staged_events: staged lines parsed into run_events once (finish_run does it itself). */
export async function parseStagedEvents(db: Queryable, runId: string | number): Promise<{ received: number; rejected: number }> {
  const { rows } = await db.query<{ received: string; rejected: string }>(
    'select received, rejected from mixpanel_sync.parse_staged_events($1)',
    [runId],
  );
  return { received: Number(rows[0]!.received), rejected: Number(rows[0]!.rejected) };
}

/**
 * mixpanel_sync.parse_staged_lines(run, only_new => true): the lines staged after the run's last parsed one, parsed
 * into run_events; how many it parsed.
 */
export async function parseNewStagedLines(db: Queryable, runId: string | number): Promise<number> {
  const { rows } = await db.query<{ parsed: string }>('select mixpanel_sync.parse_staged_lines($1) as parsed', [runId]);
  return Number(rows[0]!.parsed);
}

/**
 * mixpanel_sync.parse_staged_lines(run, after_line_id, up_to_line_id): exactly the staged lines in (after, upTo] (one
 * committed COPY chunk, parsed by no other call), parsed into run_events; how many it parsed.
 */
export async function parseStagedChunk(db: Queryable, runId: string | number, after: string, upTo: string): Promise<number> {
  const { rows } = await db.query<{ parsed: string }>(
    'select mixpanel_sync.parse_staged_lines($1, after_line_id => $2, up_to_line_id => $3) as parsed',
    [runId, after, upTo],
  );
  return Number(rows[0]!.parsed);
}

/** The highest line_id staged for an events run so far ('0' when none): where its next COPY chunk begins. */
export async function lastStagedLineId(db: Queryable, runId: string | number): Promise<string> {
  const { rows } = await db.query<{ last: string }>(
    'select coalesce(max(s.line_id), 0) as last from mixpanel_sync.staged_events s where s.run_id = $1',
    [runId],
  );
  return String(rows[0]!.last);
}

// ---------------------------------------------------------------------------------------------------------------
// The apply paths, called directly by tests and the bench (finish_run picks one by the events.upsert_path setting)

/** mixpanel_sync.apply_result */
export interface ApplyResult {
  applied: number;
  duplicates: number;
  too_old: number;
  users_touched: number;
}

export type PathImplementation = 'set' | 'loop';

async function applyPath(db: Queryable, fn: string, args: unknown[]): Promise<ApplyResult> {
  const placeholders = args.map((_, i) => (i === 0 ? '$1' : `$${i + 1}::date`)).join(', ');
  const { rows } = await db.query<Record<keyof ApplyResult, string>>(
    `select applied, duplicates, too_old, users_touched from mixpanel_sync.${fn}(${placeholders})`,
    args,
  );
  const row = rows[0]!;
  return {
    applied: Number(row.applied),
    duplicates: Number(row.duplicates),
    too_old: Number(row.too_old),
    users_touched: Number(row.users_touched),
  };
}

/**
 * REPLACE: upsert_subscribers_incremental (or its _loop twin) over the days [fromDay, toDay] of a parsed run; with
 * ledgerFrom (finish_run passes the storage horizon) ledger rows are kept from that day on only.
 */
export function applyReplace(
  db: Queryable,
  runId: string | number,
  fromDay: string,
  toDay: string,
  implementation: PathImplementation = 'set',
  ledgerFrom?: string | null,
): Promise<ApplyResult> {
  const args = ledgerFrom === undefined ? [runId, fromDay, toDay] : [runId, fromDay, toDay, ledgerFrom];
  return applyPath(db, `upsert_subscribers_incremental${implementation === 'loop' ? '_loop' : ''}`, args);
}

/** ADD: upsert_subscribers_incremental_add (or its _loop twin) of a parsed run, events from horizonDay on. */
export function applyAdd(
  db: Queryable,
  runId: string | number,
  horizonDay: string,
  implementation: PathImplementation = 'set',
): Promise<ApplyResult> {
  return applyPath(db, `upsert_subscribers_incremental_add${implementation === 'loop' ? '_loop' : ''}`, [runId, horizonDay]);
}

/** mixpanel_sync.profiles_result */
export interface ProfilesResult {
  received: number;
  rejected: number;
  duplicates: number;
  inserted: number;
  updated: number;
  unchanged: number;
}

/** upsert_subscriber_properties: the profiles apply step alone on a staged run, change detection on or off. */
export async function applyProfiles(db: Queryable, runId: string | number, changeDetection: boolean): Promise<ProfilesResult> {
  const { rows } = await db.query<Record<keyof ProfilesResult, string>>(
    'select received, rejected, duplicates, inserted, updated, unchanged from mixpanel_sync.upsert_subscriber_properties($1, $2)',
    [runId, changeDetection],
  );
  const row = rows[0]!;
  return {
    received: Number(row.received),
    rejected: Number(row.rejected),
    duplicates: Number(row.duplicates),
    inserted: Number(row.inserted),
    updated: Number(row.updated),
    unchanged: Number(row.unchanged),
  };
}

/** mixpanel_sync.horizon_day of a run: the first day the ledger still holds at its clock (the ADD paths' horizon). */
export async function runHorizonDay(db: Queryable, runId: string | number): Promise<string> {
  const { rows } = await db.query<{ day: string }>(
    `select mixpanel_sync.horizon_day(r.fetch_to, mixpanel_sync.setting(r.project_id, 'events.ledger_retention')::interval)::text as day
     from mixpanel_sync.sync_runs r where r.id = $1`,
    [runId],
  );
  return rows[0]!.day;
}

/** The work_mem finish_run runs the paths with, set for this transaction (for callers of the paths themselves). */
export async function setFinishRunWorkMem(db: Queryable): Promise<void> {
  await db.query(
    `select pg_catalog.set_config('work_mem', coalesce(
       (select substring(c from 'work_mem=(.*)') from pg_catalog.pg_proc p, unnest(p.proconfig) c
        where p.oid = 'mixpanel_sync.finish_run(bigint)'::regprocedure and c like 'work_mem=%'), current_setting('work_mem')), true)`,
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The event rules, for callers that build or filter export lines themselves (the demo, the bench)

/** mixpanel_sync.event_second of each properties.time: the epoch second (seconds, or milliseconds from 1e11 on); null out of range. */
export async function eventSeconds(db: Queryable, times: readonly number[]): Promise<(number | null)[]> {
  const { rows } = await db.query<{ second: string | null }>(
    'select mixpanel_sync.event_second(t.time) as second from unnest($1::numeric[]) with ordinality t (time, n) order by t.n',
    [times],
  );
  return rows.map((row) => runCount(row.second));
}

// ---------------------------------------------------------------------------------------------------------------
// Settings (mixpanel_sync.sync_settings, read through mixpanel_sync.setting)

export async function readSetting(db: Queryable, key: string, project: string | null = null): Promise<string> {
  const { rows } = await db.query<{ value: string }>('select mixpanel_sync.setting(mixpanel_sync.project_id($2), $1) as value', [
    key,
    project,
  ]);
  return rows[0]!.value;
}

/** Changes a setting; its check constraint refuses values the sync cannot use. */
export async function writeSetting(db: Queryable, key: string, value: string, project: string | null = null): Promise<void> {
  const { rowCount } = await db.query(
    'update mixpanel_sync.sync_settings set value = $2 where project_id = mixpanel_sync.project_id($3) and key = $1',
    [key, value, project],
  );
  if (rowCount !== 1) throw new Error(`no setting ${key} in mixpanel_sync.sync_settings`);
}

/** events.upsert_path: which REPLACE/ADD implementation finish_run calls. */
export function setUpsertPath(db: Queryable, implementation: PathImplementation): Promise<void> {
  return writeSetting(db, 'events.upsert_path', implementation);
}

/** The start of the UTC day an incremental Export reads again: the day of (events watermark − events.overlap). */
export async function rereadFromDay(db: Queryable, project: string | null = null): Promise<Date> {
  const { rows } = await db.query<{ day: Date }>(
    `select date_trunc('day', (w.watermark - mixpanel_sync.setting(w.project_id, 'events.overlap')::interval) at time zone 'UTC') at time zone 'UTC' as day
     from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id($1) and w.source = 'events'`,
    [project],
  );
  return rows[0]!.day;
}

// ---------------------------------------------------------------------------------------------------------------
// Status and health (npm run status, the demo)

export type HealthStatus = 'ok' | 'warn' | 'critical';

/** A row of mixpanel_sync.sync_health() */
export interface HealthRow {
  check: string;
  status: HealthStatus;
  value: string | null;
  threshold: string | null;
  detail: string | null;
}

export async function syncHealth(db: Queryable, project: string | null = null): Promise<HealthRow[]> {
  const { rows } = await db.query<HealthRow>(
    'select h."check", h.status, h.value, h.threshold, h.detail from mixpanel_sync.sync_health($1) h',
    [project],
  );
  return rows;
}

/** mixpanel_sync.sync_health_all(): every project's checks, by project name. */
export async function syncHealthAll(db: Queryable): Promise<(HealthRow & { project: string })[]> {
  const { rows } = await db.query<HealthRow & { project: string }>(
    'select h.project, h."check", h.status, h.value, h.threshold, h.detail from mixpanel_sync.sync_health_all() h',
  );
  return rows;
}

export interface WatermarkRow {
  source: string;
  watermark: Date;
  processing_watermark: Date | null;
  /** now() - watermark, as PostgreSQL prints an interval */
  lag: string;
  run_id: number | null;
  updated_at: Date;
}

export async function readWatermarks(db: Queryable, project: string | null = null): Promise<WatermarkRow[]> {
  const { rows } = await db.query<WatermarkRow>(
    `select w.source, w.watermark, w.processing_watermark,
       justify_interval(date_trunc('second', now() - w.watermark))::text as lag, w.run_id::float8 as run_id, w.updated_at
     from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id($1) order by w.source`,
    [project],
  );
  return rows;
}

/** The last `limit` runs, newest first. */
export async function readLastRuns(db: Queryable, limit: number, project: string | null = null): Promise<SyncRun[]> {
  const { rows } = await db.query<SyncRun>(
    `select ${RUN_COLUMNS} from mixpanel_sync.sync_runs r where r.project_id = mixpanel_sync.project_id($2) order by r.id desc limit $1`,
    [limit, project],
  );
  return rows;
}

// ---------------------------------------------------------------------------------------------------------------
// Verify helpers (schema mixpanel_sync_verify): whole-table snapshots and their first difference, the one definition
// of "equal" that the verify/*.sql proofs and the property tests share.

/** {table: {primary key as JSON text: row}}, as mixpanel_sync_verify.table_snapshot returns it. */
export type TableSnapshot = Record<string, Record<string, Record<string, unknown>>>;

/**
 * Every row of one project (null: the only project) of the named mixpanel_sync tables, keyed without project_id (tables
 * without project_id: the rows of the project's runs); `ignore` lists columns as table.column.
 */
export async function tableSnapshot(
  db: Queryable,
  tables: readonly string[],
  ignore: readonly string[] = [],
  project: string | null = null,
): Promise<TableSnapshot> {
  const { rows } = await db.query<{ snapshot: TableSnapshot }>('select mixpanel_sync_verify.table_snapshot($1, $2, $3) as snapshot', [
    tables,
    ignore,
    project,
  ]);
  return rows[0]!.snapshot;
}

/**
 * null when equal, else the first difference (table, key, column, expected, actual): verify_first_difference. Keys
 * may be any JSON text of the primary key array (canonical_snapshot re-prints them), e.g. JSON.stringify([id]).
 */
export async function firstDifference(db: Queryable, expected: TableSnapshot, actual: TableSnapshot): Promise<string | null> {
  const { rows } = await db.query<{ difference: string | null }>(
    `select mixpanel_sync_verify.verify_first_difference(
       mixpanel_sync_verify.canonical_snapshot($1::jsonb), mixpanel_sync_verify.canonical_snapshot($2::jsonb)) as difference`,
    [JSON.stringify(expected), JSON.stringify(actual)],
  );
  return rows[0]!.difference;
}

/** Throws an Error naming the first difference; `what` says what expected and actual are. */
export async function assertSameTables(db: Queryable, what: string, expected: TableSnapshot, actual: TableSnapshot): Promise<void> {
  const difference = await firstDifference(db, expected, actual);
  if (difference !== null) throw new Error(`${what}: ${difference}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Cohorts runs (200-health-cohorts.sql): begin_cohorts_run, stage_cohorts, stage_cohort_members, finish_cohorts_run

/** A cohorts run's sync_runs row (source 'cohorts'). */
export type CohortsRun = Omit<SyncRun, 'source'> & { source: 'cohorts' };

/** mixpanel_sync.begin_cohorts_run: the new running cohorts run (MP002 when one is running). */
export async function beginCohortsRun(db: Queryable, clock?: Date | string, project: string | null = null): Promise<CohortsRun> {
  const { rows } = await db.query<CohortsRun>(
    `select ${RUN_COLUMNS} from mixpanel_sync.begin_cohorts_run(coalesce($1::timestamptz, now()), $2) r`,
    [clock ?? null, project],
  );
  return rows[0]!;
}

/** mixpanel_sync.stage_cohorts: the /api/query/cohorts/list array, as received. */
export async function stageCohorts(db: Queryable, runId: string | number, list: readonly unknown[]): Promise<number> {
  const { rows } = await db.query<{ staged: string }>('select mixpanel_sync.stage_cohorts($1, $2::jsonb) as staged', [
    runId,
    JSON.stringify(list),
  ]);
  return Number(rows[0]!.staged);
}

/** mixpanel_sync.stage_cohort_members: one Engage page of a cohort's members; `complete` on its last page. */
export async function stageCohortMembers(
  db: Queryable,
  runId: string | number,
  cohortId: number,
  profiles: readonly unknown[],
  complete: boolean,
): Promise<number> {
  const { rows } = await db.query<{ staged: string }>('select mixpanel_sync.stage_cohort_members($1, $2, $3::jsonb, $4) as staged', [
    runId,
    cohortId,
    JSON.stringify(profiles),
    complete,
  ]);
  return Number(rows[0]!.staged);
}

/** mixpanel_sync.finish_cohorts_run: cohorts and memberships applied set-based, only what changed written. */
export async function finishCohortsRun(db: Queryable, runId: string | number): Promise<CohortsRun> {
  const { rows } = await db.query<CohortsRun>(`select ${RUN_COLUMNS} from mixpanel_sync.finish_cohorts_run($1) r`, [runId]);
  return rows[0]!;
}

// ---------------------------------------------------------------------------------------------------------------
// Spot-check (200-health-cohorts.sql): begin_spot_check, stage_spot_check, spot_check_differences, finish_spot_check

/** A mixpanel_sync.spot_checks row (from_day/to_day as 'YYYY-MM-DD'). */
export interface SpotCheck {
  id: string;
  seed: string;
  users: string[];
  from_day: string;
  to_day: string;
  watermark: Date;
  processing_watermark: Date | null;
  project_timezone: string | null;
  /** The event names the check compares (the setting events.only when it began); []: every event. */
  events: string[];
}

/** One (user, day, event) group that differs, or holds pending events; day null: the user's subscribers summary. */
export interface SpotCheckDifference {
  distinct_id: string;
  day: string | null;
  event_name: string;
  mixpanel: number;
  ours: number;
  pending: number;
  differs: boolean;
  reason: string;
}

/** mixpanel_sync.begin_spot_check: `users` subscribers chosen by the seed, the synced window and the event names compared. */
export async function beginSpotCheck(db: Queryable, users: number, seed: string, project: string | null = null): Promise<SpotCheck> {
  const { rows } = await db.query<SpotCheck>(
    `select c.id, c.seed, c.users, c.from_day::text as from_day, c.to_day::text as to_day, c.watermark, c.processing_watermark, c.project_timezone,
       array(select jsonb_array_elements_text(coalesce(c.events, '[]'))) as events
     from mixpanel_sync.begin_spot_check($1, $2, $3) c`,
    [users, seed, project],
  );
  return rows[0]!;
}

/** mixpanel_sync.stage_spot_check: export lines as received. */
export async function stageSpotCheck(db: Queryable, checkId: string, lines: readonly string[]): Promise<void> {
  await db.query('select mixpanel_sync.stage_spot_check($1, $2::text[])', [checkId, lines]);
}

/** mixpanel_sync.spot_check_differences and spot_check_counts: what differs, how much was compared and pending. */
export async function spotCheckResult(
  db: Queryable,
  checkId: string,
): Promise<{ differences: SpotCheckDifference[]; compared: number; pending: number }> {
  const { rows } = await db.query(
    `select distinct_id, day::text as day, event_name, mixpanel::int, ours::int, pending::int, differs, reason
     from mixpanel_sync.spot_check_differences($1)`,
    [checkId],
  );
  const counts = await db.query('select compared::int, pending::int from mixpanel_sync.spot_check_counts($1)', [checkId]);
  return { differences: rows as SpotCheckDifference[], compared: counts.rows[0].compared, pending: counts.rows[0].pending };
}

/** mixpanel_sync.finish_spot_check: the result recorded on the check, its staged lines dropped. */
export async function finishSpotCheck(
  db: Queryable,
  checkId: string,
  compared: number,
  differences: number,
  pending: number,
): Promise<void> {
  await db.query('select mixpanel_sync.finish_spot_check($1, $2, $3, $4)', [checkId, compared, differences, pending]);
}

/** Rows and an order-independent checksum of every row (sum of hashtextextended of its jsonb, `ignore` columns left
 * out) per table: fast enough for whole tables, for "these tables are identical" in the demo. */
export async function tablesChecksum(
  db: Queryable,
  tables: readonly ('events_daily' | 'event_ledger' | 'subscribers')[],
  ignore: readonly string[] = [],
  project: string | null = null,
): Promise<string> {
  const parts: string[] = [];
  for (const table of tables) {
    const { rows } = await db.query<{ n: string; h: string }>(
      `select count(*) as n, coalesce(sum(hashtextextended((to_jsonb(t) - $1::text[])::text, 0)), 0) as h
       from mixpanel_sync.${table} t where t.project_id = mixpanel_sync.project_id($2)`,
      [ignore, project],
    );
    parts.push(`${table} ${rows[0]!.n} rows #${BigInt(rows[0]!.h).toString(16).replace('-', '~')}`);
  }
  return parts.join(', ');
}
