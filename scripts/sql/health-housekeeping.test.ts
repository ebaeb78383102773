// Housekeeping done by the core: runs (and their rejects) pruned after runs.retention, staged rows
// dropped when a run finishes, fails or is abandoned, timings recorded. finished_at/started_at are
// moved back only where elapsed time itself is the point (retention, abandonment, a slow stage).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun, stageRecords } from './sync-api.ts';
import { exportEvent, minutesBefore, syncEvents, syncRun } from './run-fixtures.ts';

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(async () => {
  await db.drop();
});

const now = new Date();
const lines = (tag: string) => [
  exportEvent('u1', 'open', minutesBefore(now, 5), { insertId: tag }),
  { event: 'open', properties: { distinct_id: 'u1' } }, // no time: one reject per run (no distinct_id is no_user, not a reject)
];
const count = async (sql: string, params: unknown[] = []) => Number((await db.pool.query(sql, params)).rows[0].n);
const stagedRows = (runId: string) =>
  count(
    `select (select count(*) from mixpanel_sync.staged_events where run_id = $1)
       + (select count(*) from mixpanel_sync.staged_profiles where run_id = $1)
       + (select count(*) from mixpanel_sync.run_events where run_id = $1) as n`,
    [runId],
  );

describe('housekeeping', () => {
  it('finish_run prunes finished runs older than runs.retention with their rejects, and keeps the rest', async () => {
    const old = await syncEvents(db.pool, lines('a') as never);
    const oldFailed = await beginRun(db.pool, { source: 'profiles' });
    await failRun(db.pool, oldFailed.id, 'boom');
    const recent = await syncEvents(db.pool, lines('b') as never);
    const running = await beginRun(db.pool, { source: 'profiles' });
    await db.pool.query(
      `update mixpanel_sync.sync_runs set started_at = started_at - interval '91 days', finished_at = finished_at - interval '91 days'
       where id = any($1)`,
      [[old.id, oldFailed.id, running.id]],
    );
    expect(await count('select count(*) as n from mixpanel_sync.sync_rejects')).toBe(2);

    const next = await syncEvents(db.pool, lines('c') as never);
    const { rows } = await db.pool.query('select id, status from mixpanel_sync.sync_runs order by id');
    // the running one was abandoned by the next begin_run (an abandoned run is pruned only 90 days after that)
    expect(rows).toEqual([
      { id: recent.id, status: 'succeeded' },
      { id: running.id, status: 'abandoned' },
      { id: next.id, status: 'succeeded' },
    ]);
    expect((await db.pool.query('select run_id from mixpanel_sync.sync_rejects order by run_id')).rows).toEqual([
      { run_id: recent.id },
      { run_id: next.id },
    ]);
  });

  it('the runs.retention setting decides what is old', async () => {
    const first = await syncEvents(db.pool, lines('a') as never);
    await db.pool.query(`update mixpanel_sync.sync_runs set finished_at = finished_at - interval '2 days' where id = $1`, [first.id]);
    await db.pool.query(`update mixpanel_sync.sync_settings set value = '1 day' where key = 'runs.retention'`);
    await syncEvents(db.pool, lines('b') as never);
    expect(await count('select count(*) as n from mixpanel_sync.sync_runs where id = $1', [first.id])).toBe(0);
  });

  it('staged rows are dropped when a run finishes, fails or is abandoned', async () => {
    const finished = await syncRun(db.pool, {
      source: 'events',
      lines: lines('a'),
      beforeFinish: async (run) => expect(await stagedRows(run.id)).toBe(2),
    });
    expect(await stagedRows(finished.id)).toBe(0);

    const failed = await beginRun(db.pool, { source: 'profiles' });
    await stageRecords(db.pool, 'profiles', failed.id, [{ $distinct_id: 'u', $properties: {} }]);
    expect(await stagedRows(failed.id)).toBe(1);
    await failRun(db.pool, failed.id, 'Engage answered 500');
    expect(await stagedRows(failed.id)).toBe(0);

    const dead = await beginRun(db.pool, { source: 'events' });
    await stageRecords(db.pool, 'events', dead.id, lines('d'));
    await db.pool.query(`update mixpanel_sync.sync_runs set started_at = started_at - interval '3 hours' where id = $1`, [dead.id]);
    await beginRun(db.pool, { source: 'events' });
    expect(await count(`select count(*) as n from mixpanel_sync.sync_runs where id = $1 and status = 'abandoned'`, [dead.id])).toBe(1);
    expect(await stagedRows(dead.id)).toBe(0);
  });

  it('a run records stage_ms, apply_ms and total_ms; a failed run its total_ms', async () => {
    const run = await syncRun(db.pool, {
      source: 'events',
      lines: lines('a'),
      beforeFinish: (begun) =>
        db.pool.query(`update mixpanel_sync.sync_runs set started_at = started_at - interval '5 seconds' where id = $1`, [begun.id]),
    });
    const { rows } = await db.pool.query('select stage_ms::int, apply_ms::int, total_ms::int from mixpanel_sync.sync_runs where id = $1', [
      run.id,
    ]);
    const timing = rows[0];
    expect(timing.stage_ms).toBeGreaterThanOrEqual(5000);
    expect(timing.apply_ms).toBeGreaterThanOrEqual(0);
    expect(Math.abs(timing.total_ms - timing.stage_ms - timing.apply_ms)).toBeLessThanOrEqual(2);

    const failed = await beginRun(db.pool, { source: 'events' });
    await db.pool.query(`update mixpanel_sync.sync_runs set started_at = started_at - interval '7 seconds' where id = $1`, [failed.id]);
    const failedRow = await failRun(db.pool, failed.id, 'boom');
    expect(Number(failedRow.total_ms)).toBeGreaterThanOrEqual(7000);
  });
});
