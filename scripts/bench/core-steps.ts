// The event core's SQL API as the bench drives it directly: one small function per statement.
import type pg from 'pg';

type Queryable = Pick<pg.Pool, 'query'>;

export interface BenchRun {
  id: string;
  fromDay: string;
  toDay: string;
  /** the ADD paths' horizon for this run's clock */
  horizonDay: string;
}

/** begin_run(force_full) at `clock`: a running full run whose window ends on clock's day. */
export async function beginFullRun(db: Queryable, clock: Date): Promise<BenchRun> {
  const { rows } = await db.query<BenchRun>(
    `select r.id, r.window_from_day::text as "fromDay", r.window_to_day::text as "toDay",
       mixpanel_sync.horizon_day(r.fetch_to, mixpanel_sync.setting('events.ledger_retention')::interval)::text as "horizonDay"
     from mixpanel_sync.begin_run('events', force_full => true, clock => $1) r`,
    [clock],
  );
  return rows[0]!;
}

/** Stages raw export lines for a run (setup only: the loader's COPY is what the full-sync suite times). */
export async function stageLines(db: Queryable, runId: string, lines: string[]): Promise<void> {
  for (let at = 0; at < lines.length; at += 20_000) {
    await db.query('insert into mixpanel_sync.staged_events (run_id, line) select $1, unnest($2::text[])', [runId, lines.slice(at, at + 20_000)]);
  }
}

/** Copies the staged lines of one run whose event time is before `before` into another run. */
export async function stageEarlierLines(db: Queryable, fromRunId: string, toRunId: string, before: Date): Promise<number> {
  const { rowCount } = await db.query(
    `insert into mixpanel_sync.staged_events (run_id, line)
     select $2, s.line
     from mixpanel_sync.staged_events s
     cross join lateral (select (s.line::jsonb #>> '{properties,time}')::numeric as t) x
     where s.run_id = $1 and case when x.t >= 1e11 then x.t / 1000 else x.t end < extract(epoch from $3::timestamptz)
     order by s.line_id`,
    [fromRunId, toRunId, before],
  );
  return rowCount ?? 0;
}

export async function finishRun(db: Queryable, runId: string): Promise<void> {
  await db.query('select mixpanel_sync.finish_run($1)', [runId]);
}

export async function parseStagedEvents(db: Queryable, runId: string): Promise<void> {
  await db.query('select mixpanel_sync.parse_staged_events($1)', [runId]);
}

export type PathKind = 'replace' | 'add';
export type PathImplementation = 'set' | 'loop';

const PATH_FUNCTIONS: Record<PathKind, string> = {
  replace: 'mixpanel_sync.upsert_subscribers_incremental',
  add: 'mixpanel_sync.upsert_subscribers_incremental_add',
};

/** Calls a REPLACE or ADD path (set-based, or its `_loop` twin) on a parsed run; returns events applied. */
export async function applyPath(db: Queryable, kind: PathKind, implementation: PathImplementation, run: BenchRun): Promise<number> {
  const fn = `${PATH_FUNCTIONS[kind]}${implementation === 'loop' ? '_loop' : ''}`;
  const args = kind === 'replace' ? [run.id, run.fromDay, run.toDay] : [run.id, run.horizonDay];
  const placeholders = kind === 'replace' ? '$1, $2::date, $3::date' : '$1, $2::date';
  const { rows } = await db.query<{ applied: string }>(`select (${fn}(${placeholders})).applied`, args);
  return Number(rows[0]!.applied);
}

/** VACUUM (ANALYZE) the aggregate tables: rolled-back trials leave dead tuples the next trial must not pay for. */
export async function vacuumEventTables(db: Queryable): Promise<void> {
  await db.query('vacuum (analyze) mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers');
}

/** The work_mem finish_run runs the paths with (the bench calls them directly, in a transaction that sets it too). */
export async function setFinishRunWorkMem(db: Queryable): Promise<void> {
  await db.query(
    `select pg_catalog.set_config('work_mem', coalesce(
       (select substring(c from 'work_mem=(.*)') from pg_catalog.pg_proc p, unnest(p.proconfig) c
        where p.oid = 'mixpanel_sync.finish_run(bigint)'::regprocedure and c like 'work_mem=%'), current_setting('work_mem')), true)`,
  );
}
