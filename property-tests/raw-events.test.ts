// Raw events (issue 13, 200-ledger.sql), with events.store_raw = on:
//   1. a full run on an empty database keeps in mixpanel_sync.raw_events exactly the distinct events given (Mixpanel's
//      dedup rule, a model written here; the events with no distinct_id too, under a null distinct_id), each with the
//      properties of its first line;
//   2. after any sequence of runs (full and incremental, set and loop, project timezones), events_daily ≡ count(*) of
//      raw_events grouped by (user, day, name), users only, on the days the raw table keeps.
// (Loop ≡ set with raw on: loop-equals-set.test.ts draws events.store_raw too.)
// Seen failing: (2) with `where k.distinct_id <> ''` dropped from the set REPLACE's target (no_user events counted in
// events_daily under '').
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dayMs, eventSecond, type StagedLine } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { writeSetting } from '../scripts/sql/sync-api.ts';
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

async function rawOn(): Promise<void> {
  await emptyTables(db.pool);
  await writeSetting(db.pool, 'events.store_raw', 'on');
  await writeSetting(db.pool, 'events.raw_retention', '45 days');
}

/** JSON with object keys sorted (as jsonb compares). */
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

interface ModelEvent {
  distinctId: string | null;
  line: string;
}

/** An event as the parser takes it, or null for a line it rejects; distinct_id null for an event with none. */
function usableEvent(line: StagedLine): { event: string; properties: Record<string, unknown>; distinctId: string | null } | null {
  if (line.kind === 'event') {
    const { event, properties } = line.event;
    return { event, properties, distinctId: String(properties.distinct_id) };
  }
  // The invalid lines of arbitraries.ts that lack a distinct_id are valid in every other way: no_user events.
  let parsed: { event?: unknown; properties?: Record<string, unknown> };
  try {
    parsed = JSON.parse(line.line);
  } catch {
    return null;
  }
  const properties = parsed?.properties;
  if (
    !parsed ||
    typeof parsed.event !== 'string' ||
    parsed.event === '' ||
    !properties ||
    typeof properties !== 'object' ||
    Array.isArray(properties)
  ) {
    return null;
  }
  const id = properties.distinct_id;
  if (!(id === undefined || id === null || id === '') || typeof properties.time !== 'number') return null;
  return { event: parsed.event, properties, distinctId: null };
}

/** The distinct events of a full run over [fromDay, clock] on an empty database, first line of each. */
function modelRawEvents(lines: readonly StagedLine[], clockSeconds: number, fromDayMs: number): ModelEvent[] {
  const seen = new Set<string>();
  const kept: ModelEvent[] = [];
  for (const line of lines) {
    const usable = usableEvent(line);
    if (!usable) continue;
    const { event, properties, distinctId } = usable;
    const second = eventSecond({ event, properties } as Parameters<typeof eventSecond>[0]);
    if (second > clockSeconds || Math.floor(second / 86_400) * dayMs < fromDayMs) continue;
    const insertId = properties.$insert_id;
    const hasInsertId = insertId !== undefined && insertId !== null && insertId !== '';
    const { distinct_id: _ignored, ...withoutId } = properties;
    const key = JSON.stringify([
      distinctId ?? '',
      event,
      second,
      hasInsertId ? (typeof insertId === 'string' ? insertId : canonical(insertId)) : `#${canonical({ event, properties: withoutId })}`,
    ]);
    if (seen.has(key)) continue;
    seen.add(key);
    kept.push({ distinctId, line: line.line });
  }
  return kept;
}

const runs = 20;

/** Always tried first: a full run with one event of a user and one server-side event with no distinct_id. */
const noUserExample: RunStep = (() => {
  const clock = '2024-03-05T12:00:00Z';
  const time = Date.parse(clock) / 1000 - 3_600;
  const event = { event: 'purchase', properties: { time, distinct_id: 'u1', $insert_id: 'raw-1' } };
  const serverSide = JSON.stringify({ event: 'server ping', properties: { time, $insert_id: 'raw-2' } });
  return {
    clock,
    timezone: null,
    forceFull: true,
    loop: false,
    lines: [
      { kind: 'event', event, line: JSON.stringify(event) },
      { kind: 'invalid', line: serverSide },
    ],
  };
})();

describe('raw events (events.store_raw = on)', () => {
  it('a full run keeps in raw_events exactly the distinct events given, with the first line’s properties', {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    let noUserSeen = 0;
    await fc.assert(
      fc.asyncProperty(runStepsArb({ minLength: 1, maxLength: 1 }), async ([step]) => {
        await rawOn();
        const run = await finishStep(db.pool, { ...step!, forceFull: true, timezone: null });
        const expected = modelRawEvents(step!.lines, Date.parse(step!.clock) / 1000, Date.parse(`${run.window_from_day}T00:00:00Z`));
        noUserSeen += expected.filter((e) => e.distinctId === null).length;
        // raw_events (actual) against the model (expected), both ways, as jsonb: the properties of the line kept.
        const { rows } = await db.pool.query<{ side: string; distinct_id: string | null; event_name: string; properties: unknown }>(
          `with expected as (
             select m.distinct_id, (m.line::jsonb) ->> 'event' as event_name, (m.line::jsonb) -> 'properties' as properties
             from unnest($1::text[], $2::text[]) as m (distinct_id, line)
           ), actual as (
             select r.distinct_id, r.event_name, r.properties from mixpanel_sync.raw_events r
           )
           (select 'missing' as side, * from (select * from expected except all select * from actual) x)
           union all
           (select 'extra', * from (select * from actual except all select * from expected) y)`,
          [expected.map((e) => e.distinctId), expected.map((e) => e.line)],
        );
        expect(rows, `run at ${step!.clock}: raw_events rows missing (expected, not stored) or extra (stored, not expected)`).toEqual([]);
      }),
      { ...propertyParameters(runs, 200), examples: [[[noUserExample]]] },
    );
    expect(noUserSeen, 'events with no distinct_id kept').toBeGreaterThan(0);
  });

  it('after any sequence of runs, events_daily ≡ count(*) of raw_events by (user, day, name) on the days kept', {
    timeout: timeoutFor(runs, 400),
  }, async () => {
    await fc.assert(
      fc.asyncProperty(runStepsArb({ minLength: 1, maxLength: 4, timezones: true }), async (steps) => {
        await rawOn();
        let keptFrom = '0001-01-01';
        for (const step of steps) {
          const run = await finishStep(db.pool, step);
          expect(run.status).toBe('succeeded');
          const horizon = run.options.storage_horizon_day;
          if (typeof horizon === 'string' && horizon > keptFrom) keptFrom = horizon;
        }
        const { rows } = await db.pool.query(
          `with daily as (
             select d.distinct_id, d.day, d.event_name::text, d.event_count from mixpanel_sync.events_daily d where d.day >= $1::date
           ), raw as (
             select r.distinct_id, r.day, r.event_name, count(*) as event_count from mixpanel_sync.raw_events r
             where r.distinct_id is not null and r.day >= $1::date group by 1, 2, 3
           )
           (select 'daily only' as side, * from (select * from daily except select * from raw) x)
           union all
           (select 'raw only', * from (select * from raw except select * from daily) y)`,
          [keptFrom],
        );
        expect(rows, `events_daily and raw_events from ${keptFrom}`).toEqual([]);
        // and every ledger row carries its raw columns: raw storage was on for every run
        const { rows: bare } = await db.pool.query('select count(*)::int as n from mixpanel_sync.event_ledger where properties is null');
        expect(bare).toEqual([{ n: 0 }]);
      }),
      propertyParameters(runs, 400),
    );
  });
});
