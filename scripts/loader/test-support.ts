// For the loader's tests: event lines built by hand, and the database state a run may change.
import type pg from 'pg';
import { isLoaderFailure, type LoaderFailure } from './staged-sync.ts';

export const CLOCK = new Date('2026-11-10T12:00:00Z');
const CLOCK_SECONDS = CLOCK.getTime() / 1000;

export interface EventSpec {
  name?: string;
  user?: string;
  /** Seconds before CLOCK. */
  ago: number;
  insertId?: string;
  /** mp_processing_time_ms minus time, in ms (default 2 s). */
  lateMs?: number;
  extra?: Record<string, unknown>;
}

export function eventLine(spec: EventSpec): string {
  const time = CLOCK_SECONDS - spec.ago;
  return JSON.stringify({
    event: spec.name ?? 'Page View',
    properties: {
      time,
      distinct_id: spec.user ?? 'user-1',
      ...(spec.insertId === undefined ? {} : { $insert_id: spec.insertId }),
      mp_processing_time_ms: time * 1000 + (spec.lateMs ?? 2000),
      ...spec.extra,
    },
  });
}

/** n events of a few users, one every `stepSeconds`, the newest `newestAgo` seconds before CLOCK. */
export function eventLines(n: number, options: { prefix?: string; newestAgo?: number; stepSeconds?: number } = {}): string[] {
  const { prefix = 'e', newestAgo = 60, stepSeconds = 600 } = options;
  return Array.from({ length: n }, (_, i) =>
    eventLine({ user: `user-${i % 5}`, name: i % 3 ? 'Page View' : 'Sign Up', ago: newestAgo + (n - 1 - i) * stepSeconds, insertId: `${prefix}-${i}` }),
  );
}

/** Empties what the events runs write, runs included. */
export async function resetEvents(db: pg.Pool): Promise<void> {
  await db.query(`truncate mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers,
    mixpanel_sync.sync_watermarks, mixpanel_sync.sync_runs, mixpanel_sync.sync_rejects cascade`);
}

export async function watermark(db: pg.Pool): Promise<{ watermark: Date; processing_watermark: Date | null; run_id: string } | null> {
  const { rows } = await db.query('select watermark, processing_watermark, run_id from mixpanel_sync.sync_watermarks where source = $1', ['events']);
  return rows[0] ?? null;
}

export async function stagedRows(db: pg.Pool, runId: number): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `select (select count(*) from mixpanel_sync.staged_events where run_id = $1)
       + (select count(*) from mixpanel_sync.run_events where run_id = $1) as n`,
    [runId],
  );
  return Number(rows[0]!.n);
}

export async function runRow(db: pg.Pool, runId: number): Promise<{ status: string; error: string | null; mode: string; received: string | null }> {
  const { rows } = await db.query('select status, error, mode, received from mixpanel_sync.sync_runs where id = $1', [runId]);
  return rows[0];
}

export async function totalEvents(db: pg.Pool): Promise<number> {
  const { rows } = await db.query<{ n: string | null }>('select sum(event_count) as n from mixpanel_sync.events_daily');
  return Number(rows[0]!.n ?? 0);
}

/** Everything a run may change (not sync_runs): equal before and after means nothing was applied. */
export async function appliedState(db: pg.Pool): Promise<string> {
  const { rows } = await db.query<{ state: string }>(
    `select concat_ws('|',
       (select coalesce(string_agg(concat_ws(',', distinct_id, day, event_name, event_count, first_at, last_at), ';' order by distinct_id, day, event_name), '') from mixpanel_sync.events_daily),
       (select count(*) from mixpanel_sync.event_ledger),
       (select coalesce(string_agg(concat_ws(',', distinct_id, total_events, updated_at), ';' order by distinct_id), '') from mixpanel_sync.subscribers),
       (select coalesce(string_agg(concat_ws(',', watermark, processing_watermark, run_id), ';'), '') from mixpanel_sync.sync_watermarks)
     ) as state`,
  );
  return rows[0]!.state;
}

/** The LoaderFailure a run throws (any other outcome fails the test). */
export async function failure(promise: Promise<unknown>): Promise<LoaderFailure> {
  const error = await promise.then(
    () => new Error('expected the run to fail'),
    (caught: unknown) => caught,
  );
  if (!isLoaderFailure(error)) throw error;
  return error;
}
