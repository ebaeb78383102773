// The run life cycle in SQL, one small function per statement: begin_run, finish_run, fail_run.
import type pg from 'pg';

export type RunSource = 'events' | 'profiles';

/** A mixpanel_sync.sync_runs row as node-pg returns it (bigint columns come as strings). */
export interface SyncRunRow {
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
  users_touched: string | null;
  inserted: string | null;
  updated: string | null;
  unchanged: string | null;
  watermark_before: Date | null;
  watermark_after: Date | null;
  options: Record<string, unknown>;
  started_at: Date;
  finished_at: Date | null;
  total_ms: string | null;
  error: string | null;
}

export interface BeginRunOptions {
  source: RunSource;
  forceFull?: boolean;
  /** The run's clock (its fetch_to); default the database's now(). */
  clock?: Date;
  /** IANA name, for projects whose export times are local (MIXPANEL_PROJECT_TIMEZONE). */
  projectTimezone?: string | null;
  /** A full run over exactly these UTC days ('YYYY-MM-DD'; `to` defaults to the clock's day). */
  resync?: { from: string; to?: string | null } | null;
}

type Queryable = Pick<pg.Pool, 'query'>;

// date columns stay 'YYYY-MM-DD' strings: `::text` keeps node-pg from reading them as local midnight.
const RUN_COLUMNS = `r.*, r.window_from_day::text as window_from_day, r.window_to_day::text as window_to_day`;

export async function beginRun(db: Queryable, options: BeginRunOptions): Promise<SyncRunRow> {
  const { rows } = await db.query<SyncRunRow>(
    `select ${RUN_COLUMNS} from mixpanel_sync.begin_run($1, force_full => $2,
       clock => coalesce($3::timestamptz, now()), project_timezone => $4,
       resync_from => $5::date, resync_to => $6::date) r`,
    [
      options.source,
      options.forceFull ?? false,
      options.clock ?? null,
      options.projectTimezone ?? null,
      options.resync?.from ?? null,
      options.resync?.to ?? null,
    ],
  );
  return rows[0]!;
}

export async function finishRun(db: Queryable, runId: string): Promise<SyncRunRow> {
  const { rows } = await db.query<SyncRunRow>(`select ${RUN_COLUMNS} from mixpanel_sync.finish_run($1) r`, [runId]);
  return rows[0]!;
}

export async function failRun(db: Queryable, runId: string, error: string): Promise<SyncRunRow> {
  const { rows } = await db.query<SyncRunRow>(`select ${RUN_COLUMNS} from mixpanel_sync.fail_run($1, $2) r`, [runId, error]);
  return rows[0]!;
}

/** Cancels the statement running on another backend (a finish_run cut short by Ctrl-C rolls back). */
export async function cancelBackend(db: Queryable, pid: number): Promise<void> {
  await db.query('select pg_catalog.pg_cancel_backend($1)', [pid]);
}

/** The server process of a connection, for cancelBackend. */
export async function backendPid(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ pid: number }>('select pg_catalog.pg_backend_pid() as pid');
  return rows[0]!.pid;
}
