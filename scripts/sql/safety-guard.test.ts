// The REPLACE guard (MP001), unambiguous resync (MP004), the incomplete-input marker (MP003) and the watermark of a
// full run, in SQL: what psql gets, without the loader.
// Seen failing without each protection (removed once in 100-safety-core.sql, then restored):
//   - `perform mixpanel_sync.replace_guard(run)` removed from finish_events_run: "empty full run" and "shrinking day"
//     finished 'succeeded' and emptied events_daily;
//   - `perform mixpanel_sync.replace_guard_outcome(run, guarded)` (the guard on what the apply left, migration 000018)
//     removed from finish_events_run: "shrinking day" finished 'succeeded' (seen 2026-12-04);
//   - the force_full/resync check removed from begin_run: the MP004 case began a run;
//   - `coalesce(resync_to, resync_from)` as `coalesce(resync_to, clock_day)`: the one-day resync covered up to the clock;
//   - the marker check removed from finish_events_run: the marker line became one reject and the run succeeded;
//   - `run.watermark_after := held` as `:= mark.watermark` (keep the old one): the emptied window kept its watermark.
// (Each mutation was applied to a copy of the migration in a template database, MIXPANEL_PG_SYNC_TEMPLATE.)
import { describe, expect, it } from 'vitest';
import { beginRun, failRun, finishRun, firstDifference, stageRecords, tableSnapshot, type Queryable } from './sync-api.ts';
import { syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();

const clock = '2024-03-10T12:00:00Z';
const day1 = Date.UTC(2024, 2, 8, 10) / 1000; // 2024-03-08 10:00
const day2 = Date.UTC(2024, 2, 9, 10) / 1000; // 2024-03-09 10:00

function events(n: number, second: number, prefix = 'e'): unknown[] {
  return Array.from({ length: n }, (_, i) => ({
    event: 'view',
    properties: { distinct_id: `u${i % 7}`, time: second + i, $insert_id: `${prefix}${second}-${i}` },
  }));
}

async function fullRun(
  client: Queryable,
  records: unknown[],
  options: { allowShrink?: boolean; resync?: { from: string; to?: string } } = {},
) {
  const run = await beginRun(client, {
    source: 'events',
    clock,
    forceFull: !options.resync,
    resync: options.resync ?? null,
    allowShrink: options.allowShrink,
  });
  await stageRecords(client, 'events', run.id, records);
  return run;
}

async function sqlError(promise: Promise<unknown>): Promise<{ code: string; message: string; hint?: string }> {
  try {
    await promise;
  } catch (error) {
    return error as { code: string; message: string; hint?: string };
  }
  throw new Error('expected an error');
}

async function storedEvents(): Promise<number> {
  const { rows } = await db.pool.query('select coalesce(sum(event_count), 0)::int as n from mixpanel_sync.events_daily');
  return rows[0].n;
}

/** What a run writes besides its own sync_runs row: the aggregates, the ledger, the watermarks. */
const SYNCED_TABLES = ['events_daily', 'event_ledger', 'subscribers', 'sync_watermarks'];

async function seed(): Promise<void> {
  const run = await fullRun(db.pool, [...events(150, day1), ...events(150, day2)]);
  const done = await finishRun(db.pool, run.id);
  expect(done.status).toBe('succeeded');
  expect(await storedEvents()).toBe(300);
}

describe('REPLACE guard (MP001)', () => {
  it('refuses a full run with no usable event over a window that holds events; nothing changes; fail_run records the code', async () => {
    await seed();
    const before = await db.pool.query('select * from mixpanel_sync.sync_watermarks');
    const run = await fullRun(db.pool, ['not an event', { event: 'no properties' }]);
    const error = await sqlError(finishRun(db.pool, run.id));
    expect(error.code).toBe('MP001');
    expect(error.message).toMatch(/no usable event/);
    expect(error.hint).toMatch(/allow_shrink => true/);
    expect(error.hint).toMatch(/--allow-shrink/);
    expect(await storedEvents()).toBe(300);
    expect((await db.pool.query('select * from mixpanel_sync.sync_watermarks')).rows).toEqual(before.rows);
    const failed = await failRun(db.pool, run.id, `${error.code}: ${error.message}`);
    expect(failed.status).toBe('failed');
    expect(failed.options.error_code).toBe('MP001');
  });

  it('refuses a full run that would keep less than events.replace_guard_ratio of a guarded day; its apply is rolled back', async () => {
    await seed();
    // The guard weighs what the REPLACE left (replace_guard_outcome, after the apply): the refusal must take back
    // every table the apply wrote, not only events_daily.
    const before = await tableSnapshot(db.pool, SYNCED_TABLES);
    // day 2 keeps 150 (40 of them new events), day 1 only 40 of 150 (< 0.5)
    const run = await fullRun(db.pool, [...events(40, day1), ...events(110, day2), ...events(40, day2 + 600, 'new')]);
    const error = await sqlError(finishRun(db.pool, run.id));
    expect(error.code).toBe('MP001');
    expect(error.message).toContain('2024-03-08 from 150 to 40');
    expect(error.hint).toMatch(/allow_shrink => true/);
    expect(await storedEvents()).toBe(300);
    expect(await firstDifference(db.pool, before, await tableSnapshot(db.pool, SYNCED_TABLES))).toBeNull();
    await failRun(db.pool, run.id, error.message, error.code);
  });

  it('lets a day below events.replace_guard_min_events shrink, and half of a guarded day is enough', async () => {
    await seed();
    await db.pool.query(`update mixpanel_sync.sync_settings set value = '151' where key = 'events.replace_guard_min_events'`);
    try {
      const run = await fullRun(db.pool, [...events(10, day1), ...events(150, day2)]);
      expect((await finishRun(db.pool, run.id)).applied).toBe('160');
    } finally {
      await db.pool.query(`update mixpanel_sync.sync_settings set value = '100' where key = 'events.replace_guard_min_events'`);
    }
    const run = await fullRun(db.pool, [...events(10, day1), ...events(75, day2)]);
    expect((await finishRun(db.pool, run.id)).status).toBe('succeeded');
    expect(await storedEvents()).toBe(85);
  });

  it('allow_shrink lets the run empty its window, and the watermark then claims nothing the tables do not hold', async () => {
    await seed();
    const run = await fullRun(db.pool, ['garbage'], { allowShrink: true });
    expect(run.options.allow_shrink).toBe(true);
    const done = await finishRun(db.pool, run.id);
    expect(done.status).toBe('succeeded');
    expect(await storedEvents()).toBe(0);
    expect(done.watermark_after).toBeNull();
    expect((await db.pool.query('select * from mixpanel_sync.sync_watermarks')).rows).toEqual([]);
    // the next run is full again, not incremental from a watermark over emptied days
    const next = await beginRun(db.pool, { source: 'events', clock });
    expect(next.mode).toBe('full');
    expect(next.options.mode_reason).toBe('no watermark yet');
  });

  it('the settings are checked on write: a ratio is a number from 0 to 1', async () => {
    const error = await sqlError(
      db.pool.query(`update mixpanel_sync.sync_settings set value = '1.5' where key = 'events.replace_guard_ratio'`),
    );
    expect(error.code).toBe('23514');
  });
});

describe('resync', () => {
  it('without resync_to covers exactly resync_from; with force_full it is refused (MP004)', async () => {
    await seed();
    const run = await beginRun(db.pool, { source: 'events', clock, resync: { from: '2024-03-08' } });
    expect([run.window_from_day, run.window_to_day]).toEqual(['2024-03-08', '2024-03-08']);
    await stageRecords(db.pool, 'events', run.id, events(150, day1, 'again'));
    expect((await finishRun(db.pool, run.id)).status).toBe('succeeded');
    expect(await storedEvents()).toBe(300); // day 2 untouched

    const error = await sqlError(beginRun(db.pool, { source: 'events', clock, forceFull: true, resync: { from: '2024-03-08' } }));
    expect(error.code).toBe('MP004');
    expect(error.hint).toMatch(/--resync-from/);
    expect((await db.pool.query(`select count(*)::int as n from mixpanel_sync.sync_runs where status = 'running'`)).rows[0].n).toBe(0);
  });

  it('a resync is guarded like a full run', async () => {
    await seed();
    const run = await fullRun(db.pool, [], { resync: { from: '2024-03-09' } });
    const error = await sqlError(finishRun(db.pool, run.id));
    expect(error.code).toBe('MP001');
    await failRun(db.pool, run.id, error.message, error.code);
    expect(await storedEvents()).toBe(300);
  });
});

describe('incomplete input (MP003)', () => {
  it("Mixpanel's terminated early marker fails the finish; nothing is applied", async () => {
    const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    await stageRecords(db.pool, 'events', run.id, events(5, day1));
    await db.pool.query(`insert into mixpanel_sync.staged_events (run_id, line_no, line) values ($1, 6, 'export terminated early')`, [
      run.id,
    ]);
    const error = await sqlError(finishRun(db.pool, run.id));
    expect(error.code).toBe('MP003');
    expect(error.message).toContain('line 6');
    expect(await storedEvents()).toBe(0);
  });
});
