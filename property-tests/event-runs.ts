// Scaffolding of the property tests around the SQL API (scripts/sql/sync-api.ts): the path span and clock, parsed
// runs ready for a path, savepoint branches, rolled-back iterations from empty tables, arbitrary prior states.
import fc from 'fast-check';
import type pg from 'pg';
import { applyAdd, applyReplace, beginRun, parseStagedEvents, setUpsertPath, stageLines, type Queryable } from '../scripts/sql/sync-api.ts';
import { emptySyncTables } from '../scripts/sql/run-fixtures.ts';
import { batchArb, dayMs, type EventSpan, type StagedLine } from './arbitraries.ts';

/** The tables a path writes: what the path-level properties compare, whole, row by row. */
export const eventTables = ['events_daily', 'event_ledger', 'subscribers'];

/** Every table a run can write, except run_events (checked by run). */
export const allTables = [...eventTables, 'sync_watermarks', 'sync_runs', 'sync_rejects', 'sync_settings', 'staged_events'];

/** Runs whose paths are called directly use this clock: after every event the arbitraries make for pathSpan. */
const pathClock = '2024-03-10T00:00:00Z';
/** Events of path-level properties: 2024-03-01 .. 2024-03-06 (UTC). */
export const pathSpan: EventSpan = { firstDayMs: Date.UTC(2024, 2, 1), days: 6 };

/** A day of pathSpan, as an offset from its first day. */
export const pathDayArb = fc.integer({ min: 0, max: pathSpan.days - 1 });

function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The day `offset` days after the span's first day, as YYYY-MM-DD. */
export function spanDay(span: EventSpan, offset: number): string {
  return isoDay(span.firstDayMs + offset * dayMs);
}

/**
 * A forced-full run at pathClock with the lines staged and parsed once: ready for a path to be called on it.
 * events: the run's selection of event names (begin_run events => …); absent: every event (events.only is []).
 */
export async function parsedRun(client: Queryable, lines: StagedLine[], events?: readonly string[]): Promise<string> {
  // One events run at a time (begin_run refuses another with MP002): the path-level runs staged before are set
  // aside (failed, their parsed rows kept for the paths still to be called on them).
  await client.query(
    `update mixpanel_sync.sync_runs set status = 'failed', finished_at = now(), error = 'path-level test run: applied by calling a path directly'
     where source = 'events' and status = 'running' and fetch_to = $1`,
    [pathClock],
  );
  const run = await beginRun(client, { source: 'events', clock: pathClock, forceFull: true, ...(events ? { events } : {}) });
  await stageLines(
    client,
    'events',
    run.id,
    lines.map((l) => l.line),
  );
  await parseStagedEvents(client, run.id);
  return run.id;
}

/** Runs fn inside a savepoint and rolls back to it: the next branch starts from the same state. */
export async function branch<T>(client: Queryable, fn: () => Promise<T>): Promise<T> {
  await client.query('savepoint branch');
  try {
    return await fn();
  } finally {
    await client.query('rollback to savepoint branch');
  }
}

/** Empties every table a run writes and puts the path switch back: the next iteration starts from nothing. */
export async function emptyTables(client: Queryable): Promise<void> {
  await emptySyncTables(client, { dropPartitions: false });
  await setUpsertPath(client, 'set');
}

/**
 * fn in one transaction that starts from empty tables and is rolled back: the iteration leaves the database as it
 * found it, and every row it compares was written in this transaction (so updated_at is this transaction's now()).
 */
export async function rolledBack<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await emptyTables(client);
    return await fn(client);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

/** One step of an arbitrary prior state: a batch and how it was applied (REPLACE over a window or ADD above a horizon). */
export type PriorStep =
  | { path: 'replace'; lines: StagedLine[]; from: number; to: number }
  | { path: 'add'; lines: StagedLine[]; horizon: number };

export function priorStateArb(span: EventSpan): fc.Arbitrary<PriorStep[]> {
  const offset = fc.integer({ min: 0, max: span.days - 1 });
  const step: fc.Arbitrary<PriorStep> = fc.oneof(
    fc
      .record({ path: fc.constant('replace' as const), lines: batchArb({ ...span, maxEvents: 30 }), from: offset, to: offset })
      .map((s) => ({ ...s, from: Math.min(s.from, s.to), to: Math.max(s.from, s.to) })),
    fc.record({ path: fc.constant('add' as const), lines: batchArb({ ...span, maxEvents: 30 }), horizon: offset }),
  );
  return fc.array(step, { minLength: 1, maxLength: 2 });
}

/** Builds the prior state with the set-based paths. */
export async function applyPriorState(client: Queryable, span: EventSpan, steps: PriorStep[]): Promise<void> {
  for (const step of steps) {
    const runId = await parsedRun(client, step.lines);
    if (step.path === 'replace') await applyReplace(client, runId, spanDay(span, step.from), spanDay(span, step.to));
    else await applyAdd(client, runId, spanDay(span, step.horizon));
  }
}
