// The run API as property tests drive it: runs, staging, the four paths called directly, finish/fail, savepoints.
import fc from 'fast-check';
import type pg from 'pg';
import { batchArb, dayMs, type EventSpan, type StagedLine } from './arbitraries.ts';
import type { Queryable } from './event-tables.ts';

export interface ApplyResult {
  applied: number;
  duplicates: number;
  too_old: number;
  users_touched: number;
}

export interface RunRow {
  id: number;
  mode: 'full' | 'incremental';
  status: string;
  fetch_to: Date;
  window_from_day: string | null;
  window_to_day: string | null;
  received: number | null;
  applied: number | null;
  duplicates: number | null;
  rejected: number | null;
  too_old: number | null;
  watermark_before: Date | null;
  watermark_after: Date | null;
  error: string | null;
}

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

const runColumns = `id::int, mode, status, fetch_to, window_from_day::text, window_to_day::text, received::int, applied::int,
  duplicates::int, rejected::int, too_old::int, watermark_before, watermark_after, error`;

export async function beginRun(client: Queryable, clock: string, forceFull: boolean, timezone: string | null = null): Promise<RunRow> {
  const { rows } = await client.query(`select ${runColumns} from mixpanel_sync.begin_run('events', $1, clock => $2, project_timezone => $3)`, [forceFull, clock, timezone]);
  return rows[0];
}

/** Stages raw lines in order, as COPY would (no JSON parsing on the way). */
export async function stageLines(client: Queryable, runId: number, lines: StagedLine[]): Promise<void> {
  await client.query(
    'insert into mixpanel_sync.staged_events (run_id, line) select $1, l.line from unnest($2::text[]) with ordinality l (line, n) order by l.n',
    [runId, lines.map((l) => l.line)],
  );
}

export async function parseStaged(client: Queryable, runId: number): Promise<{ received: number; rejected: number }> {
  const { rows } = await client.query('select received::int, rejected::int from mixpanel_sync.parse_staged_events($1)', [runId]);
  return rows[0];
}

/** A forced-full run at pathClock with the lines staged and parsed once: ready for a path to be called on it. */
export async function parsedRun(client: Queryable, lines: StagedLine[]): Promise<number> {
  const run = await beginRun(client, pathClock, true);
  await stageLines(client, run.id, lines);
  await parseStaged(client, run.id);
  return run.id;
}

const applyColumns = 'applied::int, duplicates::int, too_old::int, users_touched::int';

export async function replace(client: Queryable, runId: number, fromDay: string, toDay: string, loop = false): Promise<ApplyResult> {
  const fn = loop ? 'upsert_subscribers_incremental_loop' : 'upsert_subscribers_incremental';
  const { rows } = await client.query(`select ${applyColumns} from mixpanel_sync.${fn}($1, $2, $3)`, [runId, fromDay, toDay]);
  return rows[0];
}

export async function add(client: Queryable, runId: number, horizonDay: string, loop = false): Promise<ApplyResult> {
  const fn = loop ? 'upsert_subscribers_incremental_add_loop' : 'upsert_subscribers_incremental_add';
  const { rows } = await client.query(`select ${applyColumns} from mixpanel_sync.${fn}($1, $2)`, [runId, horizonDay]);
  return rows[0];
}

export async function finishRun(client: Queryable, runId: number): Promise<RunRow> {
  const { rows } = await client.query(`select ${runColumns} from mixpanel_sync.finish_run($1)`, [runId]);
  return rows[0];
}

export async function failRun(client: Queryable, runId: number, error: string): Promise<RunRow> {
  const { rows } = await client.query(`select ${runColumns} from mixpanel_sync.fail_run($1, $2)`, [runId, error]);
  return rows[0];
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
  await client.query(`truncate mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers, mixpanel_sync.sync_runs,
    mixpanel_sync.sync_rejects, mixpanel_sync.sync_watermarks, mixpanel_sync.staged_events, mixpanel_sync.run_events`);
  await setUpsertPath(client, false);
}

export async function setUpsertPath(client: Queryable, loop: boolean): Promise<void> {
  await client.query(`update mixpanel_sync.sync_settings set value = $1 where key = 'events.upsert_path'`, [loop ? 'loop' : 'set']);
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
    fc.record({ path: fc.constant('replace' as const), lines: batchArb({ ...span, maxEvents: 30 }), from: offset, to: offset })
      .map((s) => ({ ...s, from: Math.min(s.from, s.to), to: Math.max(s.from, s.to) })),
    fc.record({ path: fc.constant('add' as const), lines: batchArb({ ...span, maxEvents: 30 }), horizon: offset }),
  );
  return fc.array(step, { minLength: 1, maxLength: 2 });
}

/** Builds the prior state with the set-based paths. */
export async function applyPriorState(client: Queryable, span: EventSpan, steps: PriorStep[]): Promise<void> {
  for (const step of steps) {
    const runId = await parsedRun(client, step.lines);
    if (step.path === 'replace') await replace(client, runId, spanDay(span, step.from), spanDay(span, step.to));
    else await add(client, runId, spanDay(span, step.horizon));
  }
}
