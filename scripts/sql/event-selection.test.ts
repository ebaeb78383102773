// Choosing which events to sync (issue 13 part 2; migrations/current/050-setting-kinds.sql and 300-selection.sql): the
// setting events.only (kind event_names, checked on write), begin_run's events argument and what it records in
// options->'events' / options->'keeps_watermark', and forget_event_names. Seen failing without each protection
// (removed once, then restored):
//   - the 'event_names' branch of setting_value_is_valid returning true for any JSON: the bad values (an object, a
//     number in the array, "", 256 characters, a repeat) were written;
//   - begin_run's name check removed: begin_run(events => array['']) started a run (expected 'MP004');
//   - `or not selection @> standing` removed: a run of ["login"] under events.only ["login","purchase"] had no
//     keeps_watermark;
//   - forget_event_names without its events.only check: 'login' still selected was forgotten (expected 'MP004');
//   - forget_event_names without refresh_subscribers: u2 (only "purchase" events) stayed in subscribers.
import { beforeEach, describe, expect, it } from 'vitest';
import { beginRun, failRun, forgetEventNames, runSelection, writeSetting, type BeginRunOptions } from './sync-api.ts';
import { exportEvent, syncEvents, syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();
beforeEach(async () => {
  await writeSetting(db.pool, 'events.only', '[]');
});

async function sqlstate(promise: Promise<unknown>): Promise<string | undefined> {
  return promise.then(
    () => undefined,
    (error: unknown) => (error as { code?: string }).code,
  );
}

/** begin_run, what it recorded, then the run failed (one events run at a time). */
async function recorded(options: Omit<BeginRunOptions, 'source'>): Promise<{ events: unknown; keeps_watermark: unknown }> {
  const run = await beginRun(db.pool, { source: 'events', clock: '2024-03-10T00:00:00Z', ...options });
  await failRun(db.pool, run.id, 'test: only begin_run is looked at');
  return { events: run.options.events, keeps_watermark: run.options.keeps_watermark };
}

describe('setting events.only', () => {
  it('exists, defaults to [] (every event), and takes a JSON array of distinct event names', async () => {
    const { rows } = await db.pool.query("select value, kind from mixpanel_sync.sync_settings where key = 'events.only'");
    expect(rows).toEqual([{ value: '[]', kind: 'event_names' }]);
    for (const value of ['["Sign Up"]', '["Sign Up", "Purchase", "ログイン"]', JSON.stringify(['n'.repeat(255)]), '[]']) {
      await writeSetting(db.pool, 'events.only', value);
    }
  });

  it.each([
    ['not JSON', 'Sign Up'],
    ['an object', '{"names": ["Sign Up"]}'],
    ['a string', '"Sign Up"'],
    ['a number in the array', '["Sign Up", 5]'],
    ['null in the array', '[null]'],
    ['an empty name', '[""]'],
    ['a name of 256 characters', JSON.stringify(['n'.repeat(256)])],
    ['a name twice', '["Sign Up", "Sign Up"]'],
  ])('refuses %s on write (check violation)', async (_what, value) => {
    expect(await sqlstate(writeSetting(db.pool, 'events.only', value))).toBe('23514');
  });

  it("the ledger stream's kind interval_or_forever: 'forever' or an interval", async () => {
    const { rows } = await db.pool.query<{ value: string; valid: boolean }>(
      `select v.value, mixpanel_sync.setting_value_is_valid('interval_or_forever', v.value) as valid
       from unnest(array['forever', '90 days', '1 year', 'never', 'Forever', '']) v (value)`,
    );
    expect(Object.fromEntries(rows.map((r) => [r.value, r.valid]))).toEqual({
      forever: true,
      '90 days': true,
      '1 year': true,
      never: false,
      Forever: false,
      '': false,
    });
  });
});

describe('begin_run events', () => {
  it('records the selection sorted, without repeats; absent when every event is synced', async () => {
    expect(await recorded({})).toEqual({ events: undefined, keeps_watermark: undefined });
    expect(await recorded({ events: ['purchase', 'login', 'purchase'] })).toEqual({
      events: ['login', 'purchase'],
      keeps_watermark: true,
    });
    expect(await recorded({ events: [] })).toEqual({ events: undefined, keeps_watermark: undefined });
  });

  it('without events, the setting events.only applies; a run may widen it ({} = every event) or narrow it', async () => {
    await writeSetting(db.pool, 'events.only', '["purchase", "login"]');
    // the standing selection itself: the watermark moves as usual
    expect(await recorded({})).toEqual({ events: ['login', 'purchase'], keeps_watermark: undefined });
    expect(await recorded({ events: ['purchase', 'login'] })).toEqual({ events: ['login', 'purchase'], keeps_watermark: undefined });
    // a superset (a name added to the standing ones) or every event: still every standing name fetched
    expect(await recorded({ events: ['login', 'purchase', 'Sign Up'] })).toEqual({
      events: ['Sign Up', 'login', 'purchase'],
      keeps_watermark: undefined,
    });
    expect(await recorded({ events: [] })).toEqual({ events: undefined, keeps_watermark: undefined });
    // narrower: purchase is not fetched, so the watermark must stay
    expect(await recorded({ events: ['login'] })).toEqual({ events: ['login'], keeps_watermark: true });
  });

  it('run_selection reads options->events: names as given; [], null or no key: null (every event)', async () => {
    // the one place the "[] = every event" rule of a run lives; the loader's Export API requests and the REPLACE paths
    // read it. Seen failing with run_selection returning '{}' for []: the Export API was asked for no names.
    const run = await beginRun(db.pool, { source: 'events', clock: '2024-03-10T00:00:00Z' });
    await failRun(db.pool, run.id, 'test: only run_selection is looked at');
    const selectionOf = async (options: string) => {
      await db.pool.query('update mixpanel_sync.sync_runs set options = $2::jsonb where id = $1', [run.id, options]);
      return runSelection(db.pool, run.id);
    };
    expect(await selectionOf('{"events": ["Sign Up", "buy"]}')).toEqual(['Sign Up', 'buy']);
    for (const options of ['{"events": []}', '{"events": null}', '{}']) expect(await selectionOf(options), options).toBeNull();
  });

  it('on every kind of events run: incremental, full, resync', async () => {
    const clock = new Date('2024-03-10T00:00:00Z');
    await syncEvents(db.pool, [exportEvent('u1', 'login', new Date('2024-03-09T12:00:00Z'))], { clock });
    const incremental = await beginRun(db.pool, { source: 'events', clock, events: ['login'] });
    expect([incremental.mode, await runSelection(db.pool, incremental.id)]).toEqual(['incremental', ['login']]);
    await failRun(db.pool, incremental.id, 'test');
    const full = await beginRun(db.pool, { source: 'events', clock, forceFull: true, events: ['login'] });
    expect([full.mode, full.options.mode_reason, await runSelection(db.pool, full.id)]).toEqual(['full', 'forced', ['login']]);
    await failRun(db.pool, full.id, 'test');
    const resync = await beginRun(db.pool, { source: 'events', clock, resync: { from: '2024-03-09' }, events: ['login'] });
    expect([resync.mode, resync.options.mode_reason, await runSelection(db.pool, resync.id)]).toEqual(['full', 'resync', ['login']]);
    await failRun(db.pool, resync.id, 'test');
  });

  it.each([
    ['an empty name', ['login', '']],
    ['a null name', ['login', null]],
    ['a name of 256 characters', ['n'.repeat(256)]],
  ])('refuses %s with MP004, starting nothing', async (_what, events) => {
    const error = await beginRun(db.pool, { source: 'events', events: events as string[] }).catch(
      (e: unknown) => e as Error & { code?: string; hint?: string },
    );
    expect(error).toMatchObject({ code: 'MP004', message: expect.stringContaining('non-empty event name of at most 255 characters') });
    expect((error as { hint?: string }).hint).toContain('--event NAME');
    const { rows } = await db.pool.query('select count(*)::int as runs from mixpanel_sync.sync_runs');
    expect(rows[0].runs).toBe(0);
  });

  it('a name of 255 characters is a name', async () => {
    expect(await recorded({ events: ['n'.repeat(255)] })).toMatchObject({ events: ['n'.repeat(255)] });
  });

  it('refuses events for profiles with MP004', async () => {
    expect(await sqlstate(beginRun(db.pool, { source: 'profiles', events: ['login'] }))).toBe('MP004');
  });
});

describe('forget_event_names', () => {
  const day = new Date('2024-03-09T12:00:00Z');
  async function seed(): Promise<void> {
    await syncEvents(
      db.pool,
      [
        exportEvent('u1', 'login', day, { insertId: 'a' }),
        exportEvent('u1', 'purchase', day, { insertId: 'b' }),
        exportEvent('u2', 'purchase', day, { insertId: 'c' }),
        exportEvent('u2', 'purchase', new Date('2024-03-09T13:00:00Z'), { insertId: 'd' }),
      ],
      { clock: new Date('2024-03-10T00:00:00Z') },
    );
  }
  const rowsOf = async (table: string, columns: string) =>
    (await db.pool.query(`select ${columns} from mixpanel_sync.${table} order by 1, 2`)).rows;

  it('deletes the names from events_daily and the ledger, and recomputes the subscribers they touched', async () => {
    await seed();
    await writeSetting(db.pool, 'events.only', '["login"]');
    const subscribersBefore = await rowsOf('subscribers', '*');
    expect(await forgetEventNames(db.pool, ['purchase', 'never seen', 'purchase'])).toEqual({
      event_names: ['never seen', 'purchase'],
      daily_rows: 2,
      events: 3,
      ledger_rows: 3,
      users_refreshed: 2,
    });
    expect(await rowsOf('events_daily', 'distinct_id, event_name, event_count')).toEqual([
      { distinct_id: 'u1', event_name: 'login', event_count: '1' },
    ]);
    expect(await rowsOf('event_ledger', 'distinct_id, event_name')).toEqual([{ distinct_id: 'u1', event_name: 'login' }]);
    // u2 had only purchase events: gone; u1 recomputed from what is left
    const subscribers = await rowsOf('subscribers', '*');
    expect(subscribers.map((s) => s.distinct_id)).toEqual(['u1']);
    expect(subscribersBefore.map((s) => s.distinct_id)).toEqual(['u1', 'u2']);
  });

  it('refuses (MP004) a name events.only still syncs, every name when it is [], deleting nothing', async () => {
    await seed();
    const error = (await forgetEventNames(db.pool, ['purchase']).catch((e: unknown) => e)) as Error & { code?: string; hint?: string };
    expect(error).toMatchObject({ code: 'MP004', message: expect.stringContaining("'purchase' is still synced") });
    expect(error.hint).toContain('events.only');
    await writeSetting(db.pool, 'events.only', '["purchase"]');
    expect(await sqlstate(forgetEventNames(db.pool, ['login', 'purchase']))).toBe('MP004');
    expect(await rowsOf('events_daily', 'distinct_id, event_name')).toHaveLength(3);
  });

  it('refuses (MP002) while an events run is running, and bad arguments (MP004)', async () => {
    await seed();
    await writeSetting(db.pool, 'events.only', '["login"]');
    const run = await beginRun(db.pool, { source: 'events' });
    expect(await sqlstate(forgetEventNames(db.pool, ['purchase']))).toBe('MP002');
    await failRun(db.pool, run.id, 'test');
    for (const names of [[], [''], ['purchase', null]]) expect(await sqlstate(forgetEventNames(db.pool, names as string[]))).toBe('MP004');
    expect(await rowsOf('events_daily', 'distinct_id, event_name')).toHaveLength(3);
  });

  it('is for the DBA: neither PUBLIC nor the loader role may execute it; the loader may execute begin_run', async () => {
    const { rows } = await db.pool.query(
      `select r.role, has_function_privilege(r.role, 'mixpanel_sync.forget_event_names(text[], text)', 'execute') as forget,
         has_function_privilege(r.role, 'mixpanel_sync.begin_run(text, boolean, timestamptz, text, date, date, boolean, text[], text, bigint)', 'execute') as begin
       from unnest(array['mixpanel_sync_loader', 'mixpanel_sync_reader']) r (role) order by 1`,
    );
    expect(rows).toEqual([
      { role: 'mixpanel_sync_loader', forget: false, begin: true },
      { role: 'mixpanel_sync_reader', forget: false, begin: false },
    ]);
  });
});
