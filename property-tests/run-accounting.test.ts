// What every finished run must account for, over any sequence of runs (the earlier runs are the prior state):
//   received = lines staged = applied + duplicates + too_old + rejected + no_user + not_selected;
//   the rejected lines are exactly the bad lines and the events after the run's clock, each in sync_rejects with a reason;
//   a valid event with no distinct_id (absent, null or "") is not a reject: it is counted no_user (issue 13);
//   the watermark (and the processing watermark) never moves past the run's fetch_to, whatever times the input claims.
// A full run on an empty database keeps exactly the events Mixpanel's dedup rule keeps (a model written here).
// And: numbers beyond any real time are a rejected line (time) or ignored (mp_processing_time_ms), never a failed run.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dayMs, eventSecond, isoInstant, outOfRangeLineArb, type StagedLine } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { assertSameTables, runCount, tableSnapshot, type TableSnapshot } from '../scripts/sql/sync-api.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';
import { emptyTables } from './event-runs.ts';
import { finishStep, runStepsArb, type RunStep } from './run-sequences.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

/**
 * A line of an otherwise valid event with no distinct_id (absent, null or ""), at or before the clock: counted
 * no_user, not rejected. (The invalid lines of arbitraries.ts that lack a distinct_id are valid in every other way.)
 */
function isNoUserLine(line: string, clockSeconds: number): boolean {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return false;
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return false;
  const { event, properties } = parsed as { event?: unknown; properties?: unknown };
  if (typeof event !== 'string' || event === '' || !properties || typeof properties !== 'object' || Array.isArray(properties)) return false;
  const { distinct_id: id, time } = properties as { distinct_id?: unknown; time?: unknown };
  return (id === undefined || id === null || id === '') && typeof time === 'number' && time > 0 && time <= clockSeconds;
}

/** The lines the parser must reject, by the export format's own rules: bad lines, and events after the clock. */
function expectedRejects(step: RunStep): string[] {
  const clockSeconds = Date.parse(step.clock) / 1000;
  return step.lines
    .filter(
      (l) => (l.kind === 'invalid' && !isNoUserLine(l.line, clockSeconds)) || (l.kind === 'event' && eventSecond(l.event) > clockSeconds),
    )
    .map((l) => l.line)
    .sort();
}

/** JSON with object keys sorted, so that two lines of the same object give the same text (as jsonb does). */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** events_daily after a full run over [fromDay, clock day] on an empty database, by Mixpanel's rule: the same
 *  (distinct_id, event name, second, $insert_id) is one event; without $insert_id, only identical events are. */
function modelEventsDaily(step: RunStep, fromDayMs: number): TableSnapshot {
  const clockSeconds = Date.parse(step.clock) / 1000;
  const seen = new Set<string>();
  const rows = new Map<string, Record<string, unknown>>(); // keyed as table_snapshot keys events_daily (JSON of the key)
  for (const line of step.lines) {
    if (line.kind !== 'event') continue;
    const { event, properties } = line.event;
    const second = eventSecond(line.event);
    const dayStart = Math.floor(second / 86_400) * dayMs;
    if (second > clockSeconds || dayStart < fromDayMs) continue;
    const insertId = properties.$insert_id;
    const hasInsertId = insertId !== undefined && insertId !== null && insertId !== '';
    const key = JSON.stringify([
      String(properties.distinct_id),
      event,
      second,
      hasInsertId ? (typeof insertId === 'string' ? insertId : canonical(insertId)) : `#${canonical(line.event)}`,
    ]);
    if (seen.has(key)) continue;
    seen.add(key);
    const day = new Date(dayStart).toISOString().slice(0, 10);
    const rowKey = JSON.stringify([String(properties.distinct_id), day, event]);
    const at = isoInstant(second);
    const row = rows.get(rowKey) ?? {
      distinct_id: String(properties.distinct_id),
      day,
      event_name: event,
      event_count: 0,
      first_at: at,
      last_at: at,
    };
    row.event_count = (row.event_count as number) + 1;
    if (at < (row.first_at as string)) row.first_at = at;
    if (at > (row.last_at as string)) row.last_at = at;
    rows.set(rowKey, row);
  }
  return { events_daily: Object.fromEntries(rows) };
}

interface Watermark {
  watermark: Date;
  processing_watermark: Date | null;
}

async function watermark(): Promise<Watermark | undefined> {
  const { rows } = await db.pool.query(`select watermark, processing_watermark from mixpanel_sync.sync_watermarks where source = 'events'`);
  return rows[0];
}

const runs = 20;

describe('run accounting', () => {
  it('counts add up, rejects are complete with reasons, the watermark stays within fetch_to', {
    timeout: timeoutFor(runs, 400),
  }, async () => {
    let rejected = 0;
    await fc.assert(
      fc.asyncProperty(runStepsArb({ minLength: 1, maxLength: 4 }), async (steps) => {
        await emptyTables(db.pool);
        for (const [index, step] of steps.entries()) {
          const label = `run ${index + 1} (clock ${step.clock})`;
          const before = await watermark();
          const run = await finishStep(db.pool, step);
          expect(run.status, label).toBe('succeeded');
          const received = runCount(run.received);
          expect(received, `${label}: received = lines staged`).toBe(step.lines.length);
          expect(
            runCount(run.applied)! +
              runCount(run.duplicates)! +
              runCount(run.too_old)! +
              runCount(run.rejected)! +
              runCount(run.no_user)! +
              runCount(run.not_selected)!,
            `${label}: applied + duplicates + too_old + rejected + no_user + not_selected = received`,
          ).toBe(received);
          const clockSeconds = Date.parse(step.clock) / 1000;
          expect(runCount(run.no_user), `${label}: no_user = the valid lines with no distinct_id`).toBe(
            step.lines.filter((l) => l.kind === 'invalid' && isNoUserLine(l.line, clockSeconds)).length,
          );

          const { rows } = await db.pool.query('select payload, reason from mixpanel_sync.sync_rejects where run_id = $1', [run.id]);
          expect(
            rows.filter((r) => !r.reason),
            `${label}: rejects without a reason`,
          ).toEqual([]);
          expect(rows.map((r) => r.payload).sort(), `${label}: sync_rejects payloads (actual) and the bad lines staged (expected)`).toEqual(
            expectedRejects(step),
          );
          expect(runCount(run.rejected), `${label}: rejected = rows in sync_rejects`).toBe(rows.length);
          rejected += rows.length;

          const after = await watermark();
          const fetchTo = run.fetch_to.getTime();
          if (after && after.watermark.getTime() !== before?.watermark.getTime()) {
            expect(
              after.watermark.getTime(),
              `${label}: watermark ${after.watermark.toISOString()} moved past fetch_to`,
            ).toBeLessThanOrEqual(fetchTo);
          }
          if (after?.processing_watermark && after.processing_watermark.getTime() !== before?.processing_watermark?.getTime()) {
            expect(after.processing_watermark.getTime(), `${label}: processing watermark moved past fetch_to`).toBeLessThanOrEqual(fetchTo);
          }
          expect(run.watermark_after?.getTime(), `${label}: run.watermark_after = sync_watermarks.watermark`).toBe(
            after?.watermark.getTime(),
          );
        }
      }),
      propertyParameters(runs, 400),
    );
    expect(rejected, 'rejected lines seen').toBeGreaterThan(0);
  });

  it("a full run on an empty database keeps exactly the events of Mixpanel's dedup rule (model)", {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    await fc.assert(
      fc.asyncProperty(runStepsArb({ minLength: 1, maxLength: 1 }), async ([step]) => {
        await emptyTables(db.pool);
        const run = await finishStep(db.pool, { ...step!, forceFull: true });
        const fromDayMs = Date.parse(`${run.window_from_day}T00:00:00Z`);
        const stored = await tableSnapshot(db.pool, ['events_daily']);
        await assertSameTables(
          db.pool,
          `full run at ${step!.clock}: events_daily by the model (expected) and stored (actual)`,
          modelEventsDaily(step!, fromDayMs),
          stored,
        );
      }),
      propertyParameters(runs, 200),
    );
  });

  it('numbers beyond any real time do not fail a run: a time is rejected, a processing time ignored', {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    await fc.assert(
      fc.asyncProperty(
        runStepsArb({ minLength: 1, maxLength: 1, maxEvents: 10 }),
        fc.array(outOfRangeLineArb, { minLength: 1, maxLength: 3 }),
        async ([step], extreme) => {
          await emptyTables(db.pool);
          const lines: StagedLine[] = [...step!.lines, ...extreme.map((line): StagedLine => ({ kind: 'invalid', line }))];
          const run = await finishStep(db.pool, { ...step!, lines });
          const { rows } = await db.pool.query('select payload, reason from mixpanel_sync.sync_rejects where run_id = $1', [run.id]);
          const timeLines = extreme.filter((line) => !line.includes('mp_processing_time_ms'));
          expect(rows.filter((r) => timeLines.includes(r.payload)).map((r) => r.reason)).toEqual(
            timeLines.map(() => expect.stringMatching(/^properties\.time out of range/)),
          );
          expect(
            rows.filter((r) => extreme.includes(r.payload) && !timeLines.includes(r.payload)),
            'lines rejected for their processing time',
          ).toEqual([]);
        },
      ),
      propertyParameters(runs, 200),
    );
  });
});
