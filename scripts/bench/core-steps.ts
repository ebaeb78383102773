// What the bench needs around the SQL API (scripts/sql/sync-api.ts) when it drives the event core's paths directly:
// a full run with its window and horizon, a prior state cut from a batch by event time, vacuum between trials.
import { beginRun, runHorizonDay, type Queryable } from '../sql/sync-api.ts';

export interface BenchRun {
  id: string;
  fromDay: string;
  toDay: string;
  /** the ADD paths' horizon for this run's clock */
  horizonDay: string;
}

/** begin_run(force_full) at `clock`: a running full run whose window ends on clock's day. */
export async function beginFullRun(db: Queryable, clock: Date): Promise<BenchRun> {
  const run = await beginRun(db, { source: 'events', forceFull: true, clock });
  return { id: run.id, fromDay: run.window_from_day!, toDay: run.window_to_day!, horizonDay: await runHorizonDay(db, run.id) };
}

/** Stages, in order, the lines whose event second (mixpanel_sync.event_second of properties.time) is before `before`. */
export async function stageLinesBefore(db: Queryable, runId: string, lines: readonly string[], before: Date): Promise<number> {
  let staged = 0;
  for (let at = 0; at < lines.length; at += 20_000) {
    const { rowCount } = await db.query(
      `insert into mixpanel_sync.staged_events (run_id, line)
       select $1, l.line
       from unnest($2::text[]) with ordinality l (line, n)
       where mixpanel_sync.event_second((l.line::jsonb #>> '{properties,time}')::numeric) < extract(epoch from $3::timestamptz)
       order by l.n`,
      [runId, lines.slice(at, at + 20_000), before],
    );
    staged += rowCount ?? 0;
  }
  return staged;
}

/** VACUUM (ANALYZE) the aggregate tables: rolled-back trials leave dead tuples the next trial must not pay for. */
export async function vacuumEventTables(db: Queryable): Promise<void> {
  await db.query('vacuum (analyze) mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers');
}
