// What the bench needs around the SQL API (scripts/sql/sync-api.ts) when it drives the event core's paths directly:
// a full run with its window and horizon, a prior state cut from a staged batch, vacuum between trials.
import type pg from 'pg';
import { beginRun, parseStagedEvents, runHorizonDay, type Queryable } from '../sql/sync-api.ts';

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

/**
 * Copies the staged lines of one run whose event time is before `before` into another run. The times are read by
 * parse_staged_events itself (the one seconds-or-milliseconds rule), in a transaction rolled back: the source run
 * stays unparsed for the trials that time its parse.
 */
export async function stageEarlierLines(db: pg.Pool, fromRunId: string, toRunId: string, before: Date): Promise<number> {
  const client = await db.connect();
  let lineIds: string[];
  try {
    await client.query('begin');
    await parseStagedEvents(client, fromRunId);
    const { rows } = await client.query<{ line_id: string }>(
      'select e.line_id from mixpanel_sync.run_events e where e.run_id = $1 and e.event_time < $2',
      [fromRunId, before],
    );
    lineIds = rows.map((row) => row.line_id);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
  const { rowCount } = await db.query(
    `insert into mixpanel_sync.staged_events (run_id, line)
     select $2, s.line from mixpanel_sync.staged_events s
     where s.run_id = $1 and s.line_id = any($3::bigint[])
     order by s.line_id`,
    [fromRunId, toRunId, lineIds],
  );
  return rowCount ?? 0;
}

/** VACUUM (ANALYZE) the aggregate tables: rolled-back trials leave dead tuples the next trial must not pay for. */
export async function vacuumEventTables(db: Queryable): Promise<void> {
  await db.query('vacuum (analyze) mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers');
}
