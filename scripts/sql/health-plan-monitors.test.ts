// The original plan's monitors (issue 14), each driven to fire and kept quiet by real runs on a real database.
// Time is simulated with begin_run's clock; sync_runs.started_at is moved back only where elapsed time is the measure.
// Seen failing without their protection (each function re-created mutated in a throwaway copy of this file):
// profiles.duration with its warn threshold null; watermark_stalled with `moved` always true; incremental_typical
// with min() for the median; skip_rate never warning; the subscriber-count trigger dropped; the timezone check with
// configured_s forced to 0 (the Asia/Kolkata case warned); failed_runs without the MP001 branch.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import {
  exportEvent,
  healthOf,
  minutesBefore,
  syncEvents,
  syncProfiles,
  syncRun,
  type EngageProfile,
  type ExportEvent,
} from './run-fixtures.ts';
import { beginRun, failRun, finishRun, stageRecords, writeSetting } from './sync-api.ts';

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(async () => {
  await db.drop();
});

const moveStartBack = (runId: string, interval: string) =>
  db.pool.query(`update mixpanel_sync.sync_runs set started_at = started_at - $2::interval where id = $1`, [runId, interval]);
/** n on-time events of users user-<first>.., a few minutes before `at` */
const onTime = (at: Date, n: number, tag: string, first = 0): ExportEvent[] =>
  Array.from({ length: n }, (_, i) =>
    exportEvent(`user-${first + i}`, 'open', minutesBefore(at, 5 + (i % 30)), { insertId: `${tag}-${i}` }),
  );
const profiles = (n: number, changed: number, version: number): EngageProfile[] =>
  Array.from({ length: n }, (_, i) => ({
    $distinct_id: `p${i}`,
    $properties: { $email: `p${i}@example.com`, plan: i < changed ? `v${version}` : 'v0' },
  }));

describe("the plan's monitors in sync_health()", () => {
  it('lists the new checks beside the existing ones, with their thresholds as described settings', async () => {
    const { rows } = await db.pool.query('select "check" from mixpanel_sync.sync_health()');
    expect(rows.map((r) => r.check)).toEqual(
      expect.arrayContaining([
        'profiles.duration',
        'events.watermark_stalled',
        'events.incremental_typical',
        'profiles.skip_rate',
        'events.subscribers',
        'events.timezone',
      ]),
    );
    const settings = await db.pool.query(
      `select s.key, s.value from mixpanel_sync.sync_settings s join mixpanel_sync.sync_setting_defaults d on d.key = s.key
       where s.key like 'health.%' and d.description <> ''`,
    );
    expect(settings.rows).toEqual(
      expect.arrayContaining([
        { key: 'health.profiles_duration_warn', value: '30 seconds' },
        { key: 'health.watermark_stalled_warn', value: '6 hours' },
        { key: 'health.incremental_typical_warn', value: '10000' },
        { key: 'health.profiles_skip_share_warn', value: '0.70' },
      ]),
    );
  });

  it('profiles.duration: warn from 30 s (run start moved back), critical from 10 min, quiet for a quick run', async () => {
    await syncProfiles(db.pool, profiles(3, 0, 1));
    expect(await healthOf(db.pool, 'profiles.duration')).toMatchObject({ status: 'ok', value: expect.stringMatching(/^\d+\.\d s$/) });
    await syncRun(db.pool, { source: 'profiles', lines: profiles(3, 0, 1), beforeFinish: (run) => moveStartBack(run.id, '40 seconds') });
    expect(await healthOf(db.pool, 'profiles.duration')).toMatchObject({ status: 'warn', value: expect.stringMatching(/^4\d\.\d s$/) });
    await syncRun(db.pool, { source: 'profiles', lines: profiles(3, 0, 1), beforeFinish: (run) => moveStartBack(run.id, '11 minutes') });
    expect((await healthOf(db.pool, 'profiles.duration')).status).toBe('critical');
    await syncProfiles(db.pool, profiles(3, 0, 1));
    expect((await healthOf(db.pool, 'profiles.duration')).status).toBe('ok');
  });

  it('events.watermark_stalled: warn when runs succeed for 6 h without moving the watermark, quiet once one moves it', async () => {
    const now = new Date();
    const then = minutesBefore(now, 8 * 60);
    const old = onTime(then, 3, 'old');
    await syncEvents(db.pool, old, { clock: then });
    expect(await healthOf(db.pool, 'events.watermark_stalled')).toMatchObject({
      status: 'ok',
      detail: expect.stringContaining('moved the watermark'),
    });
    const again = await syncEvents(db.pool, old, { clock: minutesBefore(now, 4 * 60) }); // nothing new: duplicates only
    expect(again).toMatchObject({ mode: 'incremental', applied: '0' });
    expect(await healthOf(db.pool, 'events.watermark_stalled')).toMatchObject({ status: 'ok', value: '04:00:00' });
    await syncEvents(db.pool, old, { clock: now });
    expect(await healthOf(db.pool, 'events.watermark_stalled')).toMatchObject({
      status: 'warn',
      value: '08:00:00',
      detail: expect.stringContaining('2 succeeded events runs'),
    });
    await syncEvents(db.pool, onTime(now, 1, 'new'), { clock: now });
    expect(await healthOf(db.pool, 'events.watermark_stalled')).toMatchObject({ status: 'ok', value: null });
  });

  it('events.incremental_typical: warn when the median recent incremental run reaches the threshold, quiet once it is below', async () => {
    const now = new Date();
    await writeSetting(db.pool, 'health.incremental_typical_warn', '5'); // the same rule as 10000, on small runs
    await syncEvents(db.pool, onTime(now, 50, 'full'));
    expect(await healthOf(db.pool, 'events.incremental_typical')).toMatchObject({
      status: 'ok',
      detail: expect.stringContaining('no data'),
    });
    for (let i = 0; i < 3; i++) await syncEvents(db.pool, onTime(now, 6, `big-${i}`));
    expect(await healthOf(db.pool, 'events.incremental_typical')).toMatchObject({ status: 'warn', value: '6' });
    await syncEvents(db.pool, onTime(now, 2, 'small-0'));
    expect(await healthOf(db.pool, 'events.incremental_typical')).toMatchObject({ status: 'warn', value: '6' }); // one small run is not typical
    for (let i = 1; i < 4; i++) await syncEvents(db.pool, onTime(now, 2, `small-${i}`));
    expect(await healthOf(db.pool, 'events.incremental_typical')).toMatchObject({
      status: 'ok',
      value: '2',
      detail: expect.stringContaining('largest 6'),
    });
  });

  it('profiles.skip_rate: warn when under 70% of existing profiles are skipped, quiet at 90%; a first load is not judged', async () => {
    await syncProfiles(db.pool, profiles(10, 0, 0));
    expect(await healthOf(db.pool, 'profiles.skip_rate')).toMatchObject({ status: 'ok', detail: expect.stringContaining('no data') });
    const second = profiles(10, 4, 1);
    await syncProfiles(db.pool, second);
    expect(await healthOf(db.pool, 'profiles.skip_rate')).toMatchObject({ status: 'warn', value: '60.0%' });
    await syncProfiles(
      db.pool,
      second.map((p, i) => (i === 0 ? { ...p, $properties: { ...p.$properties, plan: 'v2' } } : p)),
    ); // only p0 differs
    expect(await healthOf(db.pool, 'profiles.skip_rate')).toMatchObject({ status: 'ok', value: '90.0%' });
  });

  it('events.subscribers: counts recorded per run; growth over 50% warns, a fall (a REPLACE that lost users) is critical', async () => {
    const now = new Date();
    const first = await syncEvents(db.pool, onTime(now, 20, 'a'));
    expect(first.options).toMatchObject({ subscribers: 20 });
    expect(await healthOf(db.pool, 'events.subscribers')).toMatchObject({
      status: 'ok',
      detail: expect.stringContaining('first events run'),
    });
    await syncEvents(db.pool, onTime(now, 2, 'b', 20));
    expect(await healthOf(db.pool, 'events.subscribers')).toMatchObject({ status: 'ok', value: '20 -> 22' });
    await syncEvents(db.pool, onTime(now, 12, 'c', 22));
    expect(await healthOf(db.pool, 'events.subscribers')).toMatchObject({
      status: 'warn',
      value: '22 -> 34',
      detail: expect.stringContaining('grew by 12'),
    });
    // a full run whose input lacks one user: the REPLACE removes that user
    const all = [...onTime(now, 20, 'a'), ...onTime(now, 2, 'b', 20), ...onTime(now, 12, 'c', 22)];
    const lost = await syncEvents(
      db.pool,
      all.filter((e) => e.properties.distinct_id !== 'user-33'),
      { forceFull: true },
    );
    expect(lost.status).toBe('succeeded');
    expect(await healthOf(db.pool, 'events.subscribers')).toMatchObject({
      status: 'critical',
      value: '34 -> 33',
      detail: expect.stringContaining('fell by 1'),
    });
    await syncEvents(db.pool, onTime(now, 1, 'd', 40));
    expect(await healthOf(db.pool, 'events.subscribers')).toMatchObject({ status: 'ok', value: '33 -> 34' });
  });

  /** events exported in local time of a UTC+05:30 project: `time` is 5.5 h later than mp_processing_time_ms */
  const kolkata = (now: Date, n: number) =>
    Array.from({ length: n }, (_, i) => {
      const stamped = minutesBefore(now, 10 + i);
      return exportEvent(`user-${i}`, 'open', stamped, { insertId: `k-${i}`, processedAt: minutesBefore(stamped, 330 - 1) });
    });

  it('events.timezone: names +05:30 when event times run 5.5 h ahead of their processing times', async () => {
    await syncEvents(db.pool, kolkata(new Date(), 25));
    const check = await healthOf(db.pool, 'events.timezone');
    expect(check).toMatchObject({ status: 'warn', value: '+05:29' /* 329 min: the 1-minute processing delay */ });
    expect(check.detail).toContain('local time of UTC+05:30');
    expect(check.detail).toContain('MIXPANEL_PROJECT_TIMEZONE');
  });

  it('events.timezone: quiet for the same data read with its zone configured, for UTC data, and with too few events', async () => {
    const now = new Date();
    const run = await beginRun(db.pool, { source: 'events', forceFull: true, projectTimezone: 'Asia/Kolkata' });
    await stageRecords(db.pool, 'events', run.id, kolkata(now, 25));
    expect(await finishRun(db.pool, run.id)).toMatchObject({ status: 'succeeded', rejected: '0' });
    expect(await healthOf(db.pool, 'events.timezone')).toMatchObject({ status: 'ok', detail: expect.stringContaining('Asia/Kolkata') });

    await db.pool.query('delete from mixpanel_sync.sync_runs'); // judge the next runs alone
    await syncEvents(db.pool, onTime(now, 25, 'utc'));
    expect(await healthOf(db.pool, 'events.timezone')).toMatchObject({ status: 'ok', detail: expect.stringContaining('(UTC)') });

    await db.pool.query('delete from mixpanel_sync.sync_runs');
    await syncEvents(db.pool, kolkata(now, 5));
    expect(await healthOf(db.pool, 'events.timezone')).toMatchObject({ status: 'ok', detail: expect.stringContaining('fewer than 20') });
  });

  it('events.failed_runs: a REPLACE guard refusal (MP001) is named with its override; other failures are not', async () => {
    const other = await beginRun(db.pool, { source: 'events' });
    await failRun(db.pool, other.id, 'Mixpanel answered 401');
    const plain = await healthOf(db.pool, 'events.failed_runs');
    expect(plain).toMatchObject({ status: 'warn', value: '1' });
    expect(plain.detail).not.toContain('REPLACE guard');
    // a real refusal: a full run that would keep 10 of the 120 events of a guarded day
    const yesterdayEvening = new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000 - 6 * 3_600_000); // one UTC day
    await syncEvents(db.pool, onTime(yesterdayEvening, 120, 'many'), { forceFull: true });
    const refused = await beginRun(db.pool, { source: 'events', forceFull: true });
    await stageRecords(db.pool, 'events', refused.id, onTime(yesterdayEvening, 10, 'few'));
    const error = await finishRun(db.pool, refused.id).then(
      () => null,
      (e: { code?: string; message: string }) => e,
    );
    expect(error).toMatchObject({ code: 'MP001', message: expect.stringContaining('REPLACE guard') });
    await failRun(db.pool, refused.id, `${error!.code} ${error!.message}`);
    const guard = await healthOf(db.pool, 'events.failed_runs');
    expect(guard).toMatchObject({ status: 'warn', value: '1' }); // the full run between succeeded
    expect(guard.detail).toContain(`run ${refused.id} was refused by the REPLACE guard (MP001)`);
    expect(guard.detail).toContain('--allow-shrink');
  });
});
