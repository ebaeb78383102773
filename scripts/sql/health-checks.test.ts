// Each sync_health() check driven to warn/critical and back to ok by real runs on a real database.
// Time is simulated with begin_run's clock (the watermark); sync_runs.started_at is moved back only
// where the elapsed time itself is what a check measures (run duration, a run left running, an abandoned run).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun, finishRun, stageRecords, syncHealth } from './sync-api.ts';
import { exportEvent, healthOf, minutesBefore, syncEvents, syncProfiles, syncRun, type EngageProfile } from './run-fixtures.ts';

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(async () => {
  await db.drop();
});

const DAY = 24 * 60;
const statusOf = async (check: string) => (await healthOf(db.pool, check)).status;
const moveStartBack = (runId: string, interval: string) =>
  db.pool.query(`update mixpanel_sync.sync_runs set started_at = started_at - $2::interval where id = $1`, [runId, interval]);
/** n on-time events of n users, a few minutes before `at` */
const onTime = (at: Date, n = 3, tag = 'e') =>
  Array.from({ length: n }, (_, i) => exportEvent(`user-${i}`, 'open', minutesBefore(at, 5 + i), { insertId: `${tag}-${i}` }));

describe('sync_health()', () => {
  it('with no runs: one row per check, all ok but the watermark (never synced)', async () => {
    const rows = (await syncHealth(db.pool)).map(({ check, status, detail }) => ({ check, status, detail }));
    expect(rows.map((r) => r.check)).toEqual([
      'events.duration',
      'events.incremental_volume',
      'events.incremental_typical',
      'events.watermark_lag',
      'events.watermark_stalled',
      'events.lateness',
      'events.too_old',
      'events.timezone',
      'events.subscribers',
      'events.failed_runs',
      'events.rejected',
      'profiles.duration',
      'profiles.change_detection',
      'profiles.skip_rate',
      'profiles.failed_runs',
      'profiles.rejected',
      'runs.running',
    ]);
    expect(rows.filter((r) => r.status !== 'ok')).toEqual([
      { check: 'events.watermark_lag', status: 'warn', detail: expect.stringContaining('never synced') },
    ]);
  });

  it('every threshold is a described sync_settings row', async () => {
    const { rows } = await db.pool.query(
      `select s.key, s.kind, s.value from mixpanel_sync.sync_settings s join mixpanel_sync.sync_setting_defaults d on d.key = s.key
       where s.key like 'health.%' and d.description <> '' order by s.key`,
    );
    expect(rows.length).toBe(24); // 14 of 000003, 10 of 200-health-cohorts.sql (the plan's monitors)
    expect(rows).toContainEqual({ key: 'health.events_duration_warn', kind: 'interval', value: '60 seconds' });
    expect(rows).toContainEqual({ key: 'health.incremental_received_warn', kind: 'integer', value: '50000' });
    expect(rows).toContainEqual({ key: 'health.watermark_lag_warn', kind: 'interval', value: '6 hours' });
    expect(rows).toContainEqual({ key: 'health.profiles_unskipped_runs_warn', kind: 'integer', value: '3' });
  });

  it('events.duration: warn from 60 s, critical from 10 min (run start moved back), ok again', async () => {
    const now = new Date();
    await syncEvents(db.pool, onTime(now));
    expect(await statusOf('events.duration')).toBe('ok');
    const slow = await syncRun(db.pool, {
      source: 'events',
      lines: onTime(now),
      beforeFinish: (run) => moveStartBack(run.id, '90 seconds'),
    });
    expect(Number(slow.total_ms)).toBeGreaterThanOrEqual(90_000);
    expect(await healthOf(db.pool, 'events.duration')).toMatchObject({ status: 'warn', value: expect.stringMatching(/^9\d\.\d s$/) });
    await syncRun(db.pool, { source: 'events', lines: onTime(now), beforeFinish: (run) => moveStartBack(run.id, '11 minutes') });
    expect(await statusOf('events.duration')).toBe('critical');
    await syncEvents(db.pool, onTime(now));
    expect(await statusOf('events.duration')).toBe('ok');
  });

  it('events.incremental_volume: warn when an incremental run receives 50,000 events, ok after a normal one', async () => {
    const now = new Date();
    await syncEvents(db.pool, onTime(minutesBefore(now, 10)), { clock: minutesBefore(now, 10) });
    const flood = Array.from({ length: 50_000 }, (_, i) =>
      exportEvent(`user-${i % 500}`, 'open', minutesBefore(now, 5), { insertId: `flood-${i}` }),
    );
    const big = await syncEvents(db.pool, flood, { clock: now });
    expect(big.mode).toBe('incremental');
    expect(await healthOf(db.pool, 'events.incremental_volume')).toMatchObject({ status: 'warn', value: '50000' });
    await syncEvents(db.pool, onTime(now, 3, 'after'));
    expect(await healthOf(db.pool, 'events.incremental_volume')).toMatchObject({ status: 'ok', value: '3' });
  });

  it('events.incremental_volume: a full run is not judged by its volume', async () => {
    const now = new Date();
    await syncEvents(db.pool, onTime(now));
    await db.pool.query(`update mixpanel_sync.sync_settings set value = '2' where key = 'health.incremental_received_warn'`);
    await syncEvents(db.pool, onTime(now, 3, 'b'));
    expect(await statusOf('events.incremental_volume')).toBe('warn');
    await syncEvents(db.pool, onTime(now, 3, 'c'), { forceFull: true });
    expect(await healthOf(db.pool, 'events.incremental_volume')).toMatchObject({ status: 'ok', detail: expect.stringContaining('forced') });
  });

  it('events.watermark_lag: critical at 30 h, warn at 7 h, ok when the newest event is recent (begin_run clock)', async () => {
    const now = new Date();
    const at30h = minutesBefore(now, 30 * 60);
    await syncEvents(db.pool, [exportEvent('u', 'open', minutesBefore(at30h, 1))], { clock: at30h });
    expect(await statusOf('events.watermark_lag')).toBe('critical');
    const at7h = minutesBefore(now, 7 * 60);
    const run = await syncEvents(db.pool, [exportEvent('u', 'open', minutesBefore(at7h, 1))], { clock: at7h });
    expect(run.mode).toBe('incremental');
    expect(await healthOf(db.pool, 'events.watermark_lag')).toMatchObject({
      status: 'warn',
      value: expect.stringMatching(/^07:0\d:\d\d$/),
    });
    await syncEvents(db.pool, [exportEvent('u', 'open', minutesBefore(now, 1))], { clock: now });
    expect(await statusOf('events.watermark_lag')).toBe('ok');
  });

  it('events.lateness: warn when 5% of recent events came later than the overlap, critical past the late lookback, ok after 10 clean runs', async () => {
    const now = new Date();
    const late = (minutes: number) => exportEvent('u', 'open', minutesBefore(now, minutes), { processedAt: now });
    await syncEvents(db.pool, [...onTime(now), late(3 * 60)]);
    expect(await healthOf(db.pool, 'events.lateness')).toMatchObject({ status: 'ok', detail: expect.stringContaining('no data') }); // full runs are not judged
    await syncEvents(db.pool, [...onTime(now, 19, 'a'), late(3 * 60)]);
    expect(await healthOf(db.pool, 'events.lateness')).toMatchObject({ status: 'warn', value: '1 of 20 (5.0%)' });
    await syncEvents(db.pool, onTime(now, 1, 'b'));
    expect(await healthOf(db.pool, 'events.lateness')).toMatchObject({ status: 'ok', value: '1 of 21 (4.8%)' });
    await syncEvents(db.pool, [late(6 * DAY)]);
    expect(await healthOf(db.pool, 'events.lateness')).toMatchObject({ status: 'critical', value: '2 of 22 (9.1%)' });
    for (let i = 0; i < 9; i++) await syncEvents(db.pool, onTime(now, 1, `clean-${i}`));
    expect(await statusOf('events.lateness')).toBe('critical'); // the 6-day-late run is still among the last 10
    await syncEvents(db.pool, onTime(now, 1, 'clean-9'));
    expect(await healthOf(db.pool, 'events.lateness')).toMatchObject({ status: 'ok', value: '0 of 10 (0.0%)' });
  });

  it('events.too_old: warn once an incremental run skips an event past the ledger retention, ok after a full run', async () => {
    const now = new Date();
    await syncEvents(db.pool, onTime(now));
    const old = await syncEvents(db.pool, [exportEvent('u', 'open', minutesBefore(now, 50 * DAY))]);
    expect(old).toMatchObject({ mode: 'incremental', too_old: '1' });
    expect(await healthOf(db.pool, 'events.too_old')).toMatchObject({ status: 'warn', value: '1' });
    await syncEvents(db.pool, onTime(now, 2, 'later'));
    expect(await healthOf(db.pool, 'events.too_old')).toMatchObject({ status: 'warn', value: '1' });
    await syncEvents(db.pool, onTime(now), { forceFull: true });
    expect(await healthOf(db.pool, 'events.too_old')).toMatchObject({ status: 'ok', value: '0' });
  });

  it('events.failed_runs: warn after one failure, critical after three (an abandoned run counts), ok after a success', async () => {
    const now = new Date();
    await syncEvents(db.pool, onTime(now));
    const first = await beginRun(db.pool, { source: 'events' });
    await failRun(db.pool, first.id, 'Mixpanel answered 401');
    expect(await healthOf(db.pool, 'events.failed_runs')).toMatchObject({
      status: 'warn',
      value: '1',
      detail: expect.stringContaining('401'),
    });
    await failRun(db.pool, (await beginRun(db.pool, { source: 'events' })).id, 'again');
    const dead = await beginRun(db.pool, { source: 'events' });
    await moveStartBack(dead.id, '3 hours');
    const next = await beginRun(db.pool, { source: 'events' }); // abandons the dead one
    expect(await healthOf(db.pool, 'events.failed_runs')).toMatchObject({
      status: 'critical',
      value: '3',
      detail: expect.stringContaining('abandoned'),
    });
    await stageRecords(db.pool, 'events', next.id, onTime(now));
    await finishRun(db.pool, next.id);
    expect(await healthOf(db.pool, 'events.failed_runs')).toMatchObject({ status: 'ok', value: '0' });
    expect(await statusOf('profiles.failed_runs')).toBe('ok');
  });

  it('profiles.failed_runs: counted apart from events', async () => {
    await failRun(db.pool, (await beginRun(db.pool, { source: 'profiles' })).id, 'Engage answered 500');
    expect(await statusOf('profiles.failed_runs')).toBe('warn');
    expect(await statusOf('events.failed_runs')).toBe('ok');
    await syncProfiles(db.pool, [{ $distinct_id: 'u', $properties: { $email: 'u@example.com' } }]);
    expect(await statusOf('profiles.failed_runs')).toBe('ok');
  });

  it('events.rejected: warn for a few rejected lines, critical from 1% of the run, ok after a clean run', async () => {
    const now = new Date();
    const noTime = { event: 'open', properties: { distinct_id: 'u-bad' } };
    await syncEvents(db.pool, [...onTime(now, 199), noTime] as never);
    expect(await healthOf(db.pool, 'events.rejected')).toMatchObject({ status: 'warn', value: '1 of 200' });
    await syncEvents(db.pool, [...onTime(now, 99), noTime] as never);
    expect(await healthOf(db.pool, 'events.rejected')).toMatchObject({ status: 'critical', value: '1 of 100' });
    await syncEvents(db.pool, onTime(now));
    expect(await healthOf(db.pool, 'events.rejected')).toMatchObject({ status: 'ok', value: '0 of 3' });
  });

  // Issue 13: an event with no distinct_id is ordinary Mixpanel content (counted no_user), not a reject: a project
  // that sends server-side events must not stay critical for good.
  it('events.rejected: events with no distinct_id are not rejects', async () => {
    const now = new Date();
    const noUser = { event: 'open', properties: { time: Math.floor(now.getTime() / 1000) - 60 } };
    await syncEvents(db.pool, [...onTime(now, 9), noUser, noUser] as never);
    expect(await healthOf(db.pool, 'events.rejected')).toMatchObject({ status: 'ok', value: '0 of 11' });
  });

  it('profiles.rejected: the same for profiles runs', async () => {
    const profiles = (n: number): EngageProfile[] =>
      Array.from({ length: n }, (_, i) => ({ $distinct_id: `u${i}`, $properties: { $name: `U ${i}` } }));
    const noId = { $properties: { $name: 'nobody' } };
    await syncProfiles(db.pool, [...profiles(199), noId] as never);
    expect(await healthOf(db.pool, 'profiles.rejected')).toMatchObject({ status: 'warn', value: '1 of 200' });
    await syncProfiles(db.pool, [...profiles(1), noId] as never);
    expect(await statusOf('profiles.rejected')).toBe('critical');
    await syncProfiles(db.pool, profiles(2));
    expect(await healthOf(db.pool, 'profiles.rejected')).toMatchObject({ status: 'ok', value: '0 of 2' });
  });

  it('profiles.change_detection: warn after 3 runs in a row that found every existing profile changed, ok when one is unchanged', async () => {
    const users = ['a', 'b', 'c'];
    const version = (v: number): EngageProfile[] =>
      users.map((u) => ({ $distinct_id: u, $properties: { $email: `${u}@example.com`, visits: v } }));
    await syncProfiles(db.pool, version(1)); // inserts only: not counted
    expect(await healthOf(db.pool, 'profiles.change_detection')).toMatchObject({
      status: 'ok',
      detail: expect.stringContaining('no data'),
    });
    await syncProfiles(db.pool, version(1));
    expect(await healthOf(db.pool, 'profiles.change_detection')).toMatchObject({ status: 'ok', value: '0' });
    await syncProfiles(db.pool, version(2));
    await syncProfiles(db.pool, version(3));
    expect(await healthOf(db.pool, 'profiles.change_detection')).toMatchObject({ status: 'ok', value: '2' });
    await syncProfiles(db.pool, version(4));
    expect(await healthOf(db.pool, 'profiles.change_detection')).toMatchObject({ status: 'warn', value: '3' });
    await syncProfiles(db.pool, [...version(4), { $distinct_id: 'new', $properties: { visits: 1 } }]);
    expect(await healthOf(db.pool, 'profiles.change_detection')).toMatchObject({ status: 'ok', value: '0' });
  });

  it('runs.running: warn after 30 min, critical past runs.abandon_after (run start moved back), ok once it ends', async () => {
    const run = await beginRun(db.pool, { source: 'events' });
    expect(await statusOf('runs.running')).toBe('ok');
    await moveStartBack(run.id, '31 minutes');
    expect(await healthOf(db.pool, 'runs.running')).toMatchObject({
      status: 'warn',
      value: '00:31:00',
      detail: expect.stringContaining(`fail_run(${run.id}`),
    });
    await moveStartBack(run.id, '2 hours');
    expect(await statusOf('runs.running')).toBe('critical');
    await failRun(db.pool, run.id, 'loader died');
    expect(await statusOf('runs.running')).toBe('ok');
  });
});
