// The ledger contract's parse side (migrations/current/100-parse.sql): run_events.skip_reason ('no_user' for a valid
// event without a distinct_id, 'not_selected' for a name outside the run's selection) and the raw columns
// (properties, insert_id, processing_time_ms) filled only when events.store_raw = 'on'.
// Seen failing without each protection (each removed once from 100-parse.sql, then restored):
//   - the 'no_user' branch removed: the three events without an id had skip_reason null (would be applied);
//   - the selection test removed: 'other' had skip_reason null, not 'not_selected';
//   - `store_raw and` removed from the properties column: properties were filled with the setting off.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, parseStagedEvents, stageLines } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const clock = '2024-03-10T12:00:00Z';
const second = Date.UTC(2024, 2, 9, 10) / 1000;
const line = (event: string, props: Record<string, unknown>) => JSON.stringify({ event, properties: { time: second, ...props } });

interface ParsedRow {
  line_id: string;
  distinct_id: string | null;
  reject_reason: string | null;
  skip_reason: string | null;
  properties: Record<string, unknown> | null;
  insert_id: string | null;
  processing_time_ms: string | null;
}

async function parsedRows(runId: string): Promise<ParsedRow[]> {
  const { rows } = await db.pool.query<ParsedRow>(
    `select line_id, distinct_id, reject_reason, skip_reason, properties, insert_id, processing_time_ms
     from mixpanel_sync.run_events where run_id = $1 order by line_id`,
    [runId],
  );
  return rows;
}

/** events.store_raw is created by 200-ledger.sql; until then the test makes the row itself. */
async function setStoreRaw(value: 'on' | 'off'): Promise<void> {
  await db.pool.query(
    `update mixpanel_sync.sync_settings set value = $1 where project_id = mixpanel_sync.project_id() and key = 'events.store_raw'`,
    [value],
  );
}

async function endRun(runId: string): Promise<void> {
  await db.pool.query(`select mixpanel_sync.fail_run($1, 'test: parse only')`, [runId]);
}

describe('parse_new_staged_events: skip_reason and raw columns', () => {
  it('no_user for an absent, null or empty distinct_id; a wrong type or over-long id stays a reject', async () => {
    const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    await stageLines(db.pool, 'events', run.id, [
      line('view', { distinct_id: 'u1' }),
      line('view', {}),
      line('view', { distinct_id: null }),
      line('view', { distinct_id: '' }),
      line('view', { distinct_id: { a: 1 } }),
      line('view', { distinct_id: 'x'.repeat(256) }),
      line('view', { distinct_id: 42 }),
      JSON.stringify({ event: 'view', properties: {} }), // no time: a reject, not no_user
    ]);
    const totals = await parseStagedEvents(db.pool, run.id);
    expect(totals).toEqual({ received: 8, rejected: 3 });
    const rows = await parsedRows(run.id);
    expect(rows.map((r) => [r.reject_reason, r.skip_reason])).toEqual([
      [null, null],
      [null, 'no_user'],
      [null, 'no_user'],
      [null, 'no_user'],
      ['properties.distinct_id is not a string or number', null],
      ['properties.distinct_id longer than 255 characters', null],
      [null, null],
      ['missing properties.time', null],
    ]);
    // store_raw is off (or absent): no raw columns.
    expect(rows.every((r) => r.properties === null && r.insert_id === null && r.processing_time_ms === null)).toBe(true);
    await endRun(run.id);
  });

  it("not_selected for a name outside sync_runs.options -> 'events'; [] selects every event", async () => {
    for (const [selection, expected] of [
      [
        ['view', 'buy'],
        [null, 'not_selected', null, 'not_selected'],
      ],
      [[], [null, null, null, 'no_user']],
    ] as const) {
      const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink: true });
      await db.pool.query(`update mixpanel_sync.sync_runs set options = options || jsonb_build_object('events', $2::jsonb) where id = $1`, [
        run.id,
        JSON.stringify(selection),
      ]);
      await stageLines(db.pool, 'events', run.id, [
        line('view', { distinct_id: 'u1' }),
        line('other', { distinct_id: 'u1' }),
        line('buy', { distinct_id: 'u2' }),
        line('other', {}), // not selected wins over no user
      ]);
      await parseStagedEvents(db.pool, run.id);
      expect((await parsedRows(run.id)).map((r) => r.skip_reason)).toEqual(expected);
      await endRun(run.id);
    }
  });

  it("fills properties, insert_id and processing_time_ms only when events.store_raw = 'on'", async () => {
    const props = { distinct_id: 'u1', $insert_id: 'i-1', mp_processing_time_ms: second * 1000 + 5, extra: [1, 'two'] };
    for (const value of ['off', 'on'] as const) {
      await setStoreRaw(value);
      const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink: true });
      await stageLines(db.pool, 'events', run.id, [
        line('view', props),
        line('view', { $insert_id: 'i-2' }),
        line('view', { distinct_id: [] }),
      ]);
      await parseStagedEvents(db.pool, run.id);
      const rows = await parsedRows(run.id);
      if (value === 'off') {
        expect(rows.map((r) => [r.properties, r.insert_id, r.processing_time_ms])).toEqual([
          [null, null, null],
          [null, null, null],
          [null, null, null],
        ]);
      } else {
        expect(rows.map((r) => [r.properties, r.insert_id, r.processing_time_ms])).toEqual([
          [{ time: second, ...props }, 'i-1', String(second * 1000 + 5)],
          [{ time: second, $insert_id: 'i-2' }, 'i-2', null], // no_user: kept for the raw table
          [null, null, null], // a reject: nothing raw
        ]);
      }
      await endRun(run.id);
    }
  });
});
