// Pins of the run functions (begin_run, replace_guard, finish_events_run, prune_history, run_selection,
// refresh_subscribers) for mutants the mutation run of issue 15 (npm run mutate) found surviving. Each test names the
// mutants it kills ("killed: <operator> line <n>: <change>", as npm run mutate prints them); each was seen failing with
// its mutant applied (npm run mutate -- --only <fn> --match <key> --proofs scripts/sql/mutation-pins-runs.test.ts, which
// writes the mutant into a clone database with create or replace) and passes on main.
// Expectations are written out from the data each test inserts, not computed by the functions under test.
// The guard is called directly on a parsed run, as finish_events_run calls it: replace_guard(run) before the REPLACE,
// replace_guard_outcome(run, <what it returned>) after it, in a transaction rolled back, without the rest of finish_run.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { emptySyncTables, syncTestDatabase } from './run-fixtures.ts';
import {
  beginRun,
  type BeginRunOptions,
  finishRun,
  parseNewStagedLines,
  parseStagedEvents,
  stageLines,
  stageRecords,
  writeSetting,
} from './sync-api.ts';

const db = await syncTestDatabase({ dropPartitions: false });

const clock = new Date('2024-03-10T12:00:00Z');
const at = (day: string, hour = 12) => Math.floor(new Date(`${day}T${String(hour).padStart(2, '0')}:00:00Z`).getTime() / 1000);
/** An export line: user null leaves distinct_id out (a no_user event). */
const line = (user: string | null, name: string, time: number, insertId: string) =>
  JSON.stringify({ event: name, properties: { ...(user === null ? {} : { distinct_id: user }), time, $insert_id: insertId } });

describe('prune_history', () => {
  it('deletes finished runs older than runs.retention only: not one finished exactly runs.retention ago, nor a recent one, nor a running one', async () => {
    // killed: plus-minus line 11 (now() + retention), negate-interval-setting line 11, relational line 11 (<=),
    // and-or line 11 (or): every finished run, or the one at the boundary, went
    const client = await db.pool.connect();
    try {
      await client.query('begin'); // one transaction: now() is the same for the rows and for prune_history
      // finished runs.retention ago exactly, one second longer ago, 1 day ago; and a running run begun long ago
      const finished = async (status: string, shift: string) =>
        (
          await client.query<{ id: string }>(
            `insert into mixpanel_sync.sync_runs (project_id, source, mode, status, fetch_to, started_at, finished_at)
             values (1, 'events', 'full', $1, now(), now() - interval '400 days', now() - mixpanel_sync.setting(mixpanel_sync.project_id(), 'runs.retention')::interval + $2::interval)
             returning id::text`,
            [status, shift],
          )
        ).rows[0]!.id;
      const boundary = await finished('succeeded', '0');
      const older = await finished('failed', '-1 second');
      const recent = await finished(
        'succeeded',
        `${(await client.query("select extract(day from mixpanel_sync.setting(mixpanel_sync.project_id(), 'runs.retention')::interval) - 1 as d")).rows[0].d} days`,
      );
      const running = (
        await client.query<{ id: string }>(
          `insert into mixpanel_sync.sync_runs (project_id, source, mode, status, fetch_to, started_at)
           values (1, 'profiles', 'full', 'running', now(), now() - interval '400 days') returning id::text`,
        )
      ).rows[0]!.id;
      const pruned = await client.query<{ n: string }>('select mixpanel_sync.prune_history(mixpanel_sync.project_id())::text as n');
      expect(pruned.rows[0]!.n).toBe('1');
      const left = await client.query<{ id: string }>('select id::text from mixpanel_sync.sync_runs order by id');
      expect(left.rows.map((r) => r.id)).toEqual([boundary, recent, running]);
      expect(left.rows.map((r) => r.id)).not.toContain(older);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });
});

describe('refresh_subscribers', () => {
  it('keeps the row of a user whose events did not change, and deletes only a user left with no events', async () => {
    // killed: drop-conjunct line 23 (the delete's `not exists (… per_user …)` dropped: every listed user's row deleted)
    await db.pool.query(`insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at) values
      (1, 'kept', '2024-03-01', 'open', 2, '2024-03-01 10:00Z', '2024-03-01 11:00Z'),
      (1, 'kept', '2024-03-02', 'buy', 1, '2024-03-02 09:00Z', '2024-03-02 09:00Z'),
      (1, 'gone', '2024-03-01', 'open', 1, '2024-03-01 08:00Z', '2024-03-01 08:00Z')`);
    await db.pool.query(`select mixpanel_sync.refresh_subscribers(mixpanel_sync.project_id(), array['kept', 'gone'])`);
    await db.pool.query(`delete from mixpanel_sync.events_daily where distinct_id = 'gone'`);
    await db.pool.query(`select mixpanel_sync.refresh_subscribers(mixpanel_sync.project_id(), array['kept', 'gone'])`);
    const { rows } = await db.pool.query<{ distinct_id: string; total_events: string; event_counts: unknown }>(
      'select distinct_id, total_events::text, event_counts from mixpanel_sync.subscribers order by distinct_id',
    );
    expect(rows).toEqual([{ distinct_id: 'kept', total_events: '3', event_counts: { open: 2, buy: 1 } }]);
  });
});

describe('replace_guard (called on a parsed run)', () => {
  beforeAll(async () => {
    // a day holding 2 events is guarded; a run must keep 1 of them (ratio 0.5, the default)
    await writeSetting(db.pool, 'events.replace_guard_min_events', '2');
    await writeSetting(db.pool, 'events.replace_guard_ratio', '0.5');
  });
  afterAll(async () => {
    await writeSetting(db.pool, 'events.replace_guard_min_events', '100');
  });

  /** events_daily rows: [user, day, name, count]. */
  const store = async (rows: [string, string, string, number][]) => {
    for (const [user, day, name, count] of rows)
      await db.pool.query(
        `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
         values (1, $1, $2::date, $3, $4, $2::date + time '10:00', $2::date + time '11:00')`,
        [user, day, name, count],
      );
  };
  /**
   * A run begun with these options, its lines staged and parsed; then the guard around the REPLACE (rolled back): its
   * error, or null when it let the run through.
   */
  const guard = async (options: Omit<BeginRunOptions, 'source'>, lines: string[]) => {
    const run = await beginRun(db.pool, { source: 'events', clock, ...options });
    await stageLines(db.pool, 'events', run.id, lines);
    await parseStagedEvents(db.pool, run.id);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      const runRow = 'select r from mixpanel_sync.sync_runs r where r.id = $1';
      const before = await client.query<{ guarded: unknown }>(`select mixpanel_sync.replace_guard((${runRow})) as guarded`, [run.id]);
      await client.query(
        'select mixpanel_sync.upsert_subscribers_incremental(r.id, r.window_from_day, r.window_to_day) from mixpanel_sync.sync_runs r where r.id = $1',
        [run.id],
      );
      const guarded = before.rows[0]!.guarded; // SQL null stays null (not the JSON null)
      await client.query(`select mixpanel_sync.replace_guard_outcome((${runRow}), $2::jsonb)`, [
        run.id,
        guarded === null ? null : JSON.stringify(guarded),
      ]);
      return null;
    } catch (error) {
      return error as { code: string; message: string };
    } finally {
      await client.query('rollback');
      client.release();
    }
  };
  const longName = 'n'.repeat(256);

  it('counts neither usable nor kept events of a run that ended while its loader still staged and parsed lines', async () => {
    // killed: drop-conjunct line 25 #1 and line 52 (e.run_id = run.id): the events a loader that outlived its
    // abandoned run parsed (see "a loader that outlived its run" below) made a shrinking REPLACE pass the guard
    const zombie = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink: true });
    await db.pool.query('select mixpanel_sync.fail_run($1, $2)', [zombie.id, 'test: abandoned, its loader still running']);
    await stageLines(
      db.pool,
      'events',
      zombie.id,
      [0, 1, 2].map((i) => line(`z${i}`, 'open', at('2024-03-09', 10 + i), `z-${i}`)),
    );
    await parseStagedEvents(db.pool, zombie.id);
    await store([['u1', '2024-03-09', 'open', 4]]);
    // no usable event of its own: refused for that (not for the shrink of the day the zombie's events would excuse)
    expect(await guard({ resync: { from: '2024-03-09' } }, [])).toMatchObject({
      code: 'MP001',
      message: expect.stringContaining('has no usable event'),
    });
    await db.pool.query(`update mixpanel_sync.sync_runs set status = 'failed', finished_at = now() where status = 'running'`);
    // one event of its own on the next day, none of the 4 stored on 2024-03-09 kept: refused
    expect(await guard({ resync: { from: '2024-03-09', to: '2024-03-10' } }, [line('u1', 'open', at('2024-03-10'), 'own')])).toMatchObject({
      code: 'MP001',
    });
  });

  it('lets a run begun with allow_shrink through, even with no usable event against stored events', async () => {
    // killed: swap-coalesce line 20 (coalesce(false, allow_shrink): the override ignored)
    await store([['u1', '2024-03-09', 'open', 3]]);
    expect(await guard({ resync: { from: '2024-03-09' }, allowShrink: true }, [])).toBeNull();
  });

  it('counts as usable only events of its window with no reject and no skip reason (MP001 when none is)', async () => {
    // killed: and-or line 25 #2, drop-conjunct line 25 (e.reject_reason is null, e.skip_reason is null), and-or line 26,
    // drop-conjunct line 26 (the window): a no_user event, a reject with a day, an event before the window were usable.
    // The stored day holds 1 event, under events.replace_guard_min_events: only the "no usable event" rule refuses.
    await store([['u1', '2024-03-09', 'open', 1]]);
    const error = await guard({ resync: { from: '2024-03-09' } }, [
      line(null, 'open', at('2024-03-09'), 'no-user'),
      line('u2', longName, at('2024-03-09'), 'rejected'),
      line('u3', 'open', at('2024-03-08'), 'before-the-window'),
    ]);
    expect(error).toMatchObject({ code: 'MP001', message: expect.stringContaining('has no usable event') });
  });

  it('weighs only stored events of its window (and of its selection) when it has no usable event', async () => {
    // killed: and-or line 31 #1, drop-conjunct line 31 (the window; the selection): events of another day, or of a
    // name the run does not select, made the empty run refused
    await store([
      ['u1', '2024-03-08', 'open', 3],
      ['u1', '2024-03-09', 'buy', 3],
    ]);
    expect(await guard({ resync: { from: '2024-03-09' }, events: ['open'] }, [])).toBeNull();
  });

  it('guards only the days of its window (and the names of its selection)', async () => {
    // killed: and-or line 44 #1, drop-conjunct line 44 (the window; the selection): a day before the window, or another
    // name's events of the day, were weighed as shrinking
    await store([
      ['u1', '2024-03-08', 'open', 3],
      ['u1', '2024-03-09', 'open', 1],
      ['u1', '2024-03-09', 'buy', 3],
    ]);
    expect(await guard({ resync: { from: '2024-03-09' }, events: ['open'] }, [line('u1', 'open', at('2024-03-09'), 'kept')])).toBeNull();
  });

  it('counts as kept only the usable events of the day (MP001 when a day would lose them all)', async () => {
    // killed: and-or line 52 #3 and #4, drop-conjunct line 52 (e.reject_reason is null, e.skip_reason is null), and-or
    // line 53: no_user events and rejects of the day counted as kept. 2024-03-08 (nothing stored) holds the usable event.
    await store([['u1', '2024-03-09', 'open', 2]]);
    const error = await guard({ resync: { from: '2024-03-08', to: '2024-03-09' } }, [
      line('u1', 'open', at('2024-03-08'), 'usable'),
      line(null, 'open', at('2024-03-09', 10), 'no-user-1'),
      line(null, 'open', at('2024-03-09', 11), 'no-user-2'),
      line('u2', longName, at('2024-03-09', 10), 'rejected-1'),
      line('u2', longName, at('2024-03-09', 11), 'rejected-2'),
    ]);
    expect(error).toMatchObject({ code: 'MP001', message: expect.stringContaining('would shrink 2024-03-09 from 2 to 0 events') });
  });

  it('names what a shrinking day keeps, and lets through a day under the minimum and a day kept whole', async () => {
    // killed: swap-coalesce line 40 (the message said "to 0"); drop-conjunct line 57 s.events >= min_events (a day of
    // 1 event guarded); drop-conjunct line 57 coalesce(k.kept, 0) < ratio * s.events and swap-coalesce line 57 (a day
    // kept whole refused)
    await store([['u1', '2024-03-09', 'open', 4]]);
    const error = await guard({ resync: { from: '2024-03-09' } }, [line('u1', 'open', at('2024-03-09'), 'one')]);
    expect(error).toMatchObject({ code: 'MP001', message: expect.stringContaining('from 4 to 1 events') });
    await emptySyncTables(db.pool, { dropPartitions: false });
    await store([
      ['u1', '2024-03-08', 'open', 1],
      ['u1', '2024-03-09', 'open', 2],
    ]);
    expect(
      await guard({ resync: { from: '2024-03-08', to: '2024-03-09' } }, [
        line('u1', 'open', at('2024-03-09', 10), 'a'),
        line('u1', 'open', at('2024-03-09', 11), 'b'),
      ]),
    ).toBeNull();
  });
});

describe('begin_run', () => {
  const refusal = (promise: Promise<unknown>) =>
    promise.then(
      () => null,
      (error: { code?: string; message: string }) => ({ code: error.code, message: error.message }),
    );
  const begin = (options: Omit<BeginRunOptions, 'source'> & { source?: BeginRunOptions['source'] }) =>
    beginRun(db.pool, { source: 'events', clock, ...options });

  describe('arguments', () => {
    it('names a wrong source and a wrong event name in its refusal, and takes a 255-character name', async () => {
      // killed: swap-coalesce line 21 (the source named 'null'), swap-coalesce line 40 (an empty name named 'null'),
      // and-or line 42 #1 and #2 (an empty name taken), relational line 42 (a 255-character name refused)
      expect(await refusal(beginRun(db.pool, { source: 'nonsense' as 'events' }))).toMatchObject({
        code: 'MP004',
        message: expect.stringContaining("got 'nonsense'"),
      });
      // only the bad names are listed (relational line 42: a name of exactly 255 characters listed too)
      expect(await refusal(begin({ events: ['n'.repeat(255), ''] }))).toMatchObject({
        code: 'MP004',
        message: expect.stringMatching(/, got ''$/),
      });
      const run = await begin({ events: ['n'.repeat(255)] });
      expect(run.options.events).toEqual(['n'.repeat(255)]);
    });

    it('refuses force_full with resync_from alone, a resync ending before it starts or after the clock, and a resync of profiles', async () => {
      // killed: and-or line 48 #2 and swap-coalesce line 48 (force_full with resync_from alone taken); and-or line 59 #2,
      // and-or line 60, swap-coalesce line 59 (resync_from > resync_to taken); swap-coalesce line 60 (resync_to after
      // the clock's day taken); relational line 60 (a resync of the clock's own day refused)
      expect(await refusal(begin({ forceFull: true, resync: { from: '2024-03-05' } }))).toMatchObject({ code: 'MP004' });
      expect(await refusal(begin({ resync: { from: '2024-03-08', to: '2024-03-07' } }))).toMatchObject({ code: 'MP004' });
      expect(await refusal(begin({ resync: { from: '2024-03-09', to: '2024-03-11' } }))).toMatchObject({ code: 'MP004' });
      expect(await refusal(begin({ source: 'profiles', resync: { from: '2024-03-09' } }))).toMatchObject({ code: 'MP004' });
      const today = await begin({ resync: { from: '2024-03-10' } });
      expect([today.window_from_day, today.window_to_day]).toEqual(['2024-03-10', '2024-03-10']);
    });
  });

  describe('mode, window and options', () => {
    const iso = (value: Date | string | null | undefined) => (value == null ? null : new Date(value).toISOString());
    const watermark = (at: string, processing: string) =>
      db.pool.query(
        `insert into mixpanel_sync.sync_watermarks (project_id, source, watermark, processing_watermark) values (1, 'events', $1, $2)`,
        [at, processing],
      );

    it('a resync of past days: its window, fetch_to at the last second of resync_to, allow_shrink recorded', async () => {
      // killed: swap-coalesce line 166 (the window ended at resync_from), least-greatest line 164 (fetch_to the clock),
      // swap-coalesce line 165 (allow_shrink recorded false)
      const run = await begin({ resync: { from: '2024-03-05', to: '2024-03-07' }, allowShrink: true });
      expect([run.mode, run.window_from_day, run.window_to_day, iso(run.fetch_from), iso(run.fetch_to)]).toEqual([
        'full',
        '2024-03-05',
        '2024-03-07',
        '2024-03-05T00:00:00.000Z',
        '2024-03-07T23:59:59.000Z',
      ]);
      expect(run.options).toMatchObject({ mode_reason: 'resync', allow_shrink: true });
    });

    it('a forced full run: events.full_window days ending on the clock day, allow_shrink recorded', async () => {
      // killed: negate-interval-setting line 174 (the window began after the clock), swap-coalesce line 173
      const run = await begin({ forceFull: true, allowShrink: true });
      // 45 days (events.full_window) ending 2024-03-10
      expect([run.mode, run.window_from_day, run.window_to_day, iso(run.fetch_from)]).toEqual([
        'full',
        '2024-01-26',
        '2024-03-10',
        '2024-01-26T00:00:00.000Z',
      ]);
      expect(run.options).toMatchObject({ mode_reason: 'forced', allow_shrink: true });
    });

    it('an incremental run: from the watermark minus events.overlap, looking back events.late_lookback, processed after the processing watermark minus the overlap', async () => {
      // killed: negate-interval-setting lines 149 (the run full), 181 (lookback_from after fetch_from), 182
      // (processed_after plus the overlap), 184 (fetch_from plus the overlap); swap-coalesce line 183
      await watermark('2024-03-09T10:00:00Z', '2024-03-09T11:00:00Z');
      const run = await begin({ allowShrink: true });
      expect([run.mode, iso(run.fetch_from), iso(run.fetch_to), iso(run.lookback_from), iso(run.processed_after)]).toEqual([
        'incremental',
        '2024-03-09T08:00:00.000Z',
        clock.toISOString(),
        '2024-03-04T08:00:00.000Z',
        '2024-03-09T09:00:00.000Z',
      ]);
      expect(run.options).toMatchObject({ mode_reason: 'watermark', allow_shrink: true });
    });

    it('a watermark whose overlap reaches back exactly to the ledger horizon is still incremental', async () => {
      // killed: relational line 154 (<=: the run full). The ledger horizon of 2024-03-10 is 2024-03-04
      // (events.ledger_retention: 7 days ending on the clock's day); events.overlap is 2 hours.
      await watermark('2024-03-04T02:00:00Z', '2024-03-04T02:00:00Z');
      const run = await begin({});
      expect([run.options.mode_reason, run.mode, iso(run.fetch_from), iso(run.lookback_from)]).toEqual([
        'watermark',
        'incremental',
        '2024-03-04T00:00:00.000Z',
        '2024-03-04T00:00:00.000Z',
      ]);
    });

    it('records the selection sorted without repeats, and keeps_watermark only when it leaves out a name events.only syncs', async () => {
      // killed: swap-coalesce line 136 (events.only ignored), 138 and 139 (a given selection dropped), and-or line 143
      // (--event with events.only [] did not keep the watermark)
      const recorded = async (events: string[] | null) => {
        const run = await begin({ events });
        await emptySyncTables(db.pool, { dropPartitions: false });
        return [run.options.events ?? null, run.options.keeps_watermark ?? false];
      };
      await writeSetting(db.pool, 'events.only', '[]');
      // relational line 141 (jsonb_array_length(selection) >= 0): every event recorded as events [] with keeps_watermark
      expect(await recorded(null)).toEqual([null, false]);
      expect(await recorded(['b', 'a', 'b'])).toEqual([['a', 'b'], true]);
      await writeSetting(db.pool, 'events.only', '["b", "a"]');
      try {
        expect(await recorded(null)).toEqual([['a', 'b'], false]);
        expect(await recorded(['c', 'b', 'a'])).toEqual([['a', 'b', 'c'], false]);
        expect(await recorded(['a'])).toEqual([['a'], true]);
      } finally {
        await writeSetting(db.pool, 'events.only', '[]');
      }
    });
  });

  describe('a running run whose loader is gone', () => {
    let live: pg.Client;
    let liveOwner: { pid: number; backend_start: string };
    let deadOwner: { pid: number; backend_start: string };
    const session = async (client: pg.Client) =>
      (
        await client.query<{ pid: number; backend_start: string }>(
          `select pid, to_json(backend_start) #>> '{}' as backend_start from pg_stat_activity where pid = pg_backend_pid()`,
        )
      ).rows[0]!;
    beforeAll(async () => {
      live = new pg.Client({ connectionString: db.url });
      await live.connect();
      liveOwner = await session(live);
      const gone = new pg.Client({ connectionString: db.url });
      await gone.connect();
      deadOwner = await session(gone);
      await gone.end();
      for (let i = 0; i < 100; i++) {
        if ((await db.pool.query('select from pg_stat_activity where pid = $1', [deadOwner.pid])).rowCount === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    });
    afterAll(async () => {
      await live?.end();
    });

    /** A run row as begin_run writes it, with this owner and heartbeat (an SQL expression). */
    const running = async (
      options: { owner?: object | null; heartbeat?: string; status?: string; source?: string },
      on: pg.ClientBase | pg.Pool = db.pool,
    ) =>
      (
        await on.query<{ id: string }>(
          `insert into mixpanel_sync.sync_runs (project_id, source, mode, status, fetch_to, options, heartbeat_at, finished_at)
           values (1, $1, 'full', $2, now(), $3::jsonb, ${options.heartbeat ?? 'null'}, case when $2 = 'running' then null else now() end) returning id::text`,
          [
            options.source ?? 'events',
            options.status ?? 'running',
            JSON.stringify(options.owner === null ? {} : { owner: options.owner ?? deadOwner }),
          ],
        )
      ).rows[0]!.id;
    const statusOf = async (id: string) =>
      (await db.pool.query<{ status: string }>('select status from mixpanel_sync.sync_runs where id = $1', [id])).rows[0]!.status;

    it('abandons only running runs of its source, and names the owner of a run it cannot abandon', async () => {
      // killed: and-or lines 78, 79, 80 #1 and 83, drop-conjunct line 78 (r.status = 'running': a finished run with a
      // dead owner rewritten as abandoned; r.source = begin_run.source: a profiles run abandoned); drop-conjunct
      // line 107 (r.source: the profiles run refused the events run); swap-coalesce line 112 ('?' for the owner's pid)
      const finished = await running({ status: 'succeeded' });
      const profiles = await running({ source: 'profiles' });
      const run = await begin({});
      expect([await statusOf(finished), await statusOf(profiles), run.status]).toEqual(['succeeded', 'running', 'running']);
      expect(await refusal(begin({}))).toMatchObject({
        code: 'MP002',
        message: expect.stringContaining(`by pid ${(run.options.owner as { pid: number }).pid})`),
      });
    });

    it('abandons a run whose owner session is gone and that has no heartbeat, or an old one, or one from before the server started', async () => {
      // killed: and-or line 80 #2 and drop-conjunct line 85 (no heartbeat: not abandoned), and-or line 82 (a heartbeat
      // older than runs.heartbeat_timeout but after the server's start: not abandoned), and-or line 87 (an owner
      // recorded without backend_start, its pid gone: not abandoned)
      for (const [owner, heartbeat] of [
        [deadOwner, undefined],
        [{ pid: deadOwner.pid }, undefined],
        [deadOwner, `pg_postmaster_start_time() + (now() - pg_postmaster_start_time()) / 2`],
      ] as const) {
        await db.pool.query(`update mixpanel_sync.sync_settings set value = '1 millisecond' where key = 'runs.heartbeat_timeout'`);
        try {
          const stale = await running({ owner, heartbeat });
          await begin({});
          expect(await statusOf(stale)).toBe('abandoned');
        } finally {
          await db.pool.query(`update mixpanel_sync.sync_settings set value = '2 minutes' where key = 'runs.heartbeat_timeout'`);
          await emptySyncTables(db.pool, { dropPartitions: false });
        }
      }
    });

    it('says why it abandoned a run: a beat exactly runs.heartbeat_timeout old but before the server started is "no heartbeat since"', async () => {
      // killed: relational line 96 (heartbeat_at <= now() - heartbeat_timeout in the error text)
      const client = await db.pool.connect();
      try {
        await client.query('begin'); // now() is the same for the setting, the heartbeat and begin_run
        await client.query(
          `update mixpanel_sync.sync_settings set value = ((now() - pg_postmaster_start_time()) + interval '1 minute')::text where key = 'runs.heartbeat_timeout'`,
        );
        const stale = await running(
          { heartbeat: `now() - mixpanel_sync.setting(mixpanel_sync.project_id(), 'runs.heartbeat_timeout')::interval` },
          client,
        );
        await beginRun(client, { source: 'events', clock });
        const { rows } = await client.query<{ status: string; error: string }>(
          'select status, error from mixpanel_sync.sync_runs where id = $1',
          [stale],
        );
        expect(rows[0]).toMatchObject({
          status: 'abandoned',
          error: expect.stringMatching(/and it sent no heartbeat since the server started$/),
        });
      } finally {
        await client.query('rollback');
        client.release();
      }
    });

    it('abandons a run whose owner pid is another session now (another backend_start)', async () => {
      // killed: drop-conjunct line 87 (the backend_start test: a reused pid kept the run)
      const reused = await running({ owner: { pid: liveOwner.pid, backend_start: '2000-01-01T00:00:00+00:00' } });
      await begin({});
      expect(await statusOf(reused)).toBe('abandoned');
    });

    it('keeps a run whose owner session lives, one with no recorded owner, and one with a fresh heartbeat', async () => {
      // killed: drop-conjunct line 83 and and-or line 88 (a live owner's run abandoned), and-or line 87 #2 (a live owner
      // recorded without backend_start), drop-conjunct line 79 (a run with no owner abandoned), drop-conjunct line 80 and
      // negate-interval-setting line 15 (a fresh heartbeat, owner gone: abandoned)
      for (const [owner, heartbeat] of [
        [liveOwner, undefined],
        [{ pid: liveOwner.pid }, undefined],
        [null, undefined],
        [deadOwner, 'now()'],
      ] as const) {
        const kept = await running({ owner, heartbeat });
        expect(await refusal(begin({}))).toMatchObject({ code: 'MP002' });
        expect(await statusOf(kept)).toBe('running');
        await emptySyncTables(db.pool, { dropPartitions: false });
      }
    });

    it('the heartbeat boundaries: a beat exactly runs.heartbeat_timeout old, or exactly at the server start, keeps the run', async () => {
      // killed: relational line 80 (heartbeat_at <= now() - heartbeat_timeout), relational line 82 (<= the server start)
      const client = await db.pool.connect();
      try {
        await client.query('begin'); // now() is the same for the heartbeat and for begin_run
        // a beat after the server's start (it started more than a second ago), exactly runs.heartbeat_timeout old
        await client.query(`update mixpanel_sync.sync_settings set value = '1 second' where key = 'runs.heartbeat_timeout'`);
        const exact = await running({ heartbeat: `now() - interval '1 second'` }, client);
        expect(await refusal(beginRun(client, { source: 'events', clock }))).toMatchObject({ code: 'MP002' });
        await client.query('rollback');
        await client.query('begin');
        await client.query(`update mixpanel_sync.sync_settings set value = '100 years' where key = 'runs.heartbeat_timeout'`);
        const started = await running({ heartbeat: 'pg_postmaster_start_time()' }, client);
        expect(await refusal(beginRun(client, { source: 'events', clock }))).toMatchObject({ code: 'MP002' });
        expect([exact, started]).toHaveLength(2);
      } finally {
        await client.query('rollback');
        client.release();
      }
    });
  });
});

describe('finish_events_run', () => {
  const ms = (iso: string) => new Date(iso).getTime();
  /** An export line at `time` processed at `processed` (ISO); user null: no distinct_id. */
  const at2 = (user: string | null, name: string, time: string, processed: string, insertId: string) =>
    JSON.stringify({
      event: name,
      properties: {
        ...(user === null ? {} : { distinct_id: user }),
        time: ms(time) / 1000,
        mp_processing_time_ms: ms(processed),
        $insert_id: insertId,
      },
    });
  const finish = async (options: Omit<BeginRunOptions, 'source'>, lines: string[]) => {
    const run = await beginRun(db.pool, { source: 'events', clock, ...options });
    await stageLines(db.pool, 'events', run.id, lines);
    return finishRun(db.pool, run.id);
  };
  const marks = async () =>
    (
      await db.pool.query<{ watermark: string; processing: string | null }>(
        `select to_json(watermark) #>> '{}' as watermark, to_json(processing_watermark) #>> '{}' as processing from mixpanel_sync.sync_watermarks`,
      )
    ).rows.map((r) => [new Date(r.watermark).toISOString(), r.processing && new Date(r.processing).toISOString()]);
  const setWatermark = (at: string, processing: string) =>
    db.pool.query(
      `insert into mixpanel_sync.sync_watermarks (project_id, source, watermark, processing_watermark) values (1, 'events', $1, $2)`,
      [at, processing],
    );

  it('the terminated-early marker: its line number in MP003; a line staged with a problem, or a short event, is not it', async () => {
    // killed: swap-coalesce line 39 (line '?'), and-or line 35 #2 and #3 and drop-conjunct line 35 (s.problem is null:
    // a line staged with a problem read as the marker), drop-conjunct line 35 (the marker test: a short line read as it)
    const marker = 'terminated early';
    const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    await stageLines(db.pool, 'events', run.id, [JSON.stringify({ event: 'e', properties: { distinct_id: 'u', time: 1 } })]);
    await db.pool.query(`insert into mixpanel_sync.staged_events (run_id, line, problem) values ($1, $2, 'invalid UTF-8 at byte 3')`, [
      run.id,
      marker,
    ]);
    const done = await finishRun(db.pool, run.id);
    // the short event (a time of 1 s: 1970, before the window) is usable, the problem line rejected with its problem
    expect([done.status, done.received, done.rejected]).toEqual(['succeeded', '2', '1']);
    await emptySyncTables(db.pool, { dropPartitions: false });
    const second = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    // numbered as the loader numbers its lines
    await db.pool.query(`insert into mixpanel_sync.staged_events (run_id, line_no, line) values ($1, 1, $2), ($1, 2, $3)`, [
      second.id,
      at2('u', 'e', '2024-03-09T10:00:00Z', '2024-03-09T10:00:00Z', 'a'),
      marker,
    ]);
    expect(await finishRun(db.pool, second.id).catch((e: { code: string; message: string }) => e)).toMatchObject({
      code: 'MP003',
      message: expect.stringContaining('line 2 is'),
    });
  });

  it('with raw storage on, the storage horizon is events.raw_retention when longer than the ledger retention', async () => {
    // killed: swap-coalesce line 20 ('forever' whatever events.raw_retention says: no storage horizon)
    await writeSetting(db.pool, 'events.store_raw', 'on');
    await writeSetting(db.pool, 'events.raw_retention', '10 days');
    try {
      const run = await finish({ forceFull: true }, []);
      // 10 days ending 2024-03-10 begin on 2024-03-01 (the ledger's 7 days on 2024-03-04)
      expect(run.options).toMatchObject({ store_raw: true, storage_horizon_day: '2024-03-01', horizon_day: '2024-03-04' });
    } finally {
      await writeSetting(db.pool, 'events.store_raw', 'off');
      await writeSetting(db.pool, 'events.raw_retention', '45 days');
    }
  });

  it('lateness: the largest, and the events beyond events.overlap (2 hours: exactly 2 hours is not beyond)', async () => {
    // killed: min-max line 87 (max_ms the smallest), relational line 88 (>=: exactly the overlap counted),
    // negate-interval-setting line 11 (every event beyond); since migration 000012 (one scan with an in_tables flag):
    // drop-conjunct line 93 (e.in_tables dropped from beyond_overlap: the no_user event, 3 hours late, counted)
    const run = await finish({ forceFull: true }, [
      at2('u1', 'e', '2024-03-09T10:00:00Z', '2024-03-09T10:00:01Z', 'a'),
      at2('u1', 'e', '2024-03-09T11:00:00Z', '2024-03-09T13:00:00Z', 'b'),
      at2('u1', 'e', '2024-03-09T12:00:00Z', '2024-03-09T14:00:01Z', 'c'),
      at2(null, 'e', '2024-03-09T09:00:00Z', '2024-03-09T12:00:00Z', 'no-user-late'),
    ]);
    expect(run.lateness).toMatchObject({ events: 3, max_ms: 7_201_000, beyond_overlap: 1 });
  });

  it('a full run sets the watermark from its usable events only, the processing watermark from their processing time', async () => {
    // killed: drop-conjunct lines 93 (e.reject_reason is null) and 94 (e.skip_reason is null): a later reject or
    // no_user event moved it; swap-coalesce line 116 (the processing watermark the event time)
    await finish({ forceFull: true }, [
      at2('u1', 'e', '2024-03-09T10:00:00Z', '2024-03-09T10:30:00Z', 'a'),
      at2('u1', 'n'.repeat(256), '2024-03-09T11:00:00Z', '2024-03-09T11:00:00Z', 'rejected'),
      at2(null, 'e', '2024-03-09T12:00:00Z', '2024-03-09T12:00:00Z', 'no-user'),
    ]);
    expect(await marks()).toEqual([['2024-03-09T10:00:00.000Z', '2024-03-09T10:30:00.000Z']]);
  });

  it('a full run whose newest event is older than the ledger horizon still sets the watermark from it', async () => {
    // killed: swap-coalesce line 95 (coalesce(horizon, window_from_day): events before the ledger horizon not seen)
    await finish({ forceFull: true }, [at2('u1', 'e', '2024-02-29T10:00:00Z', '2024-02-29T10:00:00Z', 'a')]);
    expect(await marks()).toEqual([['2024-02-29T10:00:00.000Z', '2024-02-29T10:00:00.000Z']]);
  });

  it('an incremental run moves the watermarks forward only, and a too-old event does not move them', async () => {
    // killed: and-or line 104 (an incremental run recomputed: the watermark went back to its event), drop-conjunct
    // line 95 (the too-old event, processed lately, moved the processing watermark)
    await setWatermark('2024-03-10T11:00:00Z', '2024-03-10T11:00:00Z');
    const run = await finish({}, [
      at2('u1', 'e', '2024-03-10T10:30:00Z', '2024-03-10T10:40:00Z', 'recent'),
      at2('u1', 'e', '2024-02-20T10:00:00Z', '2024-03-10T11:50:00Z', 'too-old'),
    ]);
    expect([run.mode, run.applied, run.too_old]).toEqual(['incremental', '1', '1']);
    expect(await marks()).toEqual([['2024-03-10T11:00:00.000Z', '2024-03-10T11:00:00.000Z']]);
  });

  it('a full run that applies nothing takes the watermark from the newest event stored before its window, or removes it', async () => {
    // killed: and-or line 105 (a watermark before the window kept), min-max line 118 (the oldest stored event),
    // relational line 120 (<=), and-or line 120 and drop-conjunct line 120 (d.day < window_from_day): a row of the
    // window's first day (another name's, kept by the run's selection) taken
    await setWatermark('2023-12-01T00:00:00Z', '2023-12-01T00:00:00Z');
    await finish({ forceFull: true, allowShrink: true }, []);
    expect(await marks()).toEqual([]);
    await db.pool.query(`insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at) values
      (1, 'u1', '2024-01-20', 'a', 1, '2024-01-20 10:00Z', '2024-01-20 10:00Z'),
      (1, 'u1', '2024-01-22', 'a', 1, '2024-01-22 09:00Z', '2024-01-22 09:00Z'),
      (1, 'u1', '2024-01-26', 'b', 1, '2024-01-26 11:00Z', '2024-01-26 11:00Z')`);
    await emptyRunsOnly();
    await writeSetting(db.pool, 'events.only', '["a"]');
    try {
      // events.full_window: 45 days ending 2024-03-10 begin on 2024-01-26
      const run = await finish({ forceFull: true, allowShrink: true }, []);
      expect([run.window_from_day, run.options.keeps_watermark ?? false]).toEqual(['2024-01-26', false]);
      expect(await marks()).toEqual([['2024-01-22T09:00:00.000Z', '2024-01-22T09:00:00.000Z']]);
    } finally {
      await writeSetting(db.pool, 'events.only', '[]');
    }
  });

  it('a run whose selection leaves out names events.only syncs leaves the watermarks as they are', async () => {
    // killed: swap-coalesce line 29 (coalesce(false, keeps_watermark): the watermark moved to the selected event)
    await setWatermark('2024-03-10T09:00:00Z', '2024-03-10T09:00:00Z');
    const run = await finish({ events: ['open'] }, [at2('u1', 'open', '2024-03-10T11:00:00Z', '2024-03-10T11:00:00Z', 'a')]);
    expect([run.options.keeps_watermark, run.applied]).toEqual([true, '1']);
    expect(await marks()).toEqual([['2024-03-10T09:00:00.000Z', '2024-03-10T09:00:00.000Z']]);
  });

  async function emptyRunsOnly() {
    await db.pool.query('truncate mixpanel_sync.sync_runs, mixpanel_sync.sync_watermarks cascade');
  }
});

// Seen failing: npm run mutate wrote each of these mutants into a clone database (create or replace) and this file was
// the proof that failed on it (npm run mutate -- --proofs this file, or the mapped proofs with this file first among
// the vitest ones); each passes on main. Keys as in scripts/mutation/equivalent-mutants.json (function|operator|line|n).
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and (a.backend_start is null or r.options -> 'owner' ->> 'backend_start' is null|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and (a.backend_start is null or r.options -> 'owner' ->> 'backend_start' is null|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and not exists (select from pg_catalog.pg_timezone_names z where z.name = project_timezone) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and not exists (|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|and r.options -> 'owner' ->> 'pid' is not null|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if coalesce(force_full, false) and (resync_from is not null or resync_to is not null) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if coalesce(force_full, false) and (resync_from is not null or resync_to is not null) then|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if exists (select from unnest(events) n (name) where n.name is null or n.name = '' or length(n.name) > 255) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if exists (select from unnest(events) n (name) where n.name is null or n.name = '' or length(n.name) > 255) then|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if resync_from is not null and (source <> 'events' or resync_from > coalesce(resync_to, resync_from)|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if resync_from is not null and (source <> 'events' or resync_from > coalesce(resync_to, resync_from)|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if resync_to is not null and resync_from is null then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|if source is null or source not in ('events', 'profiles') then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|or a.backend_start = (r.options -> 'owner' ->> 'backend_start')::timestamptz))|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|or coalesce(resync_to, resync_from) > clock_day) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|or r.heartbeat_at < pg_catalog.pg_postmaster_start_time())|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|where n.name is null or n.name = '' or length(n.name) > 255)|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|where n.name is null or n.name = '' or length(n.name) > 255)|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|and-or|where r.source = begin_run.source and r.status = 'running'|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|and (a.backend_start is null or r.options -> 'owner' ->> 'backend_start' is null|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|and not exists (|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|and r.options -> 'owner' ->> 'pid' is not null|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|where a.pid = (r.options -> 'owner' ->> 'pid')::integer|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|where r.source = begin_run.source and r.status = 'running'|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|drop-conjunct|where r.source = begin_run.source and r.status = 'running'|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|least-greatest|greatest(f.fetch_from - mixpanel_sync.setting('events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|least-greatest|least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|negate-interval-setting|heartbeat_timeout interval := mixpanel_sync.setting('runs.heartbeat_timeout')::interval;|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|from (select mark.watermark - mixpanel_sync.setting('events.overlap')::interval as fetch_from) f|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|greatest(f.fetch_from - mixpanel_sync.setting('events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|justify_interval(date_trunc('second', now() - other.heartbeat_at)), heartbeat_timeout)|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,|2
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|mark.processing_watermark - mixpanel_sync.setting('events.overlap')::interval,|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|other.id, source, justify_interval(date_trunc('second', now() - other.started_at)),|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus|total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|plus-minus||| case when other.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|if exists (select from unnest(events) n (name) where n.name is null or n.name = '' or length(n.name) > 255) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|if resync_from is not null and (source <> 'events' or resync_from > coalesce(resync_to, resync_from)|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|or coalesce(resync_to, resync_from) > clock_day) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|or r.heartbeat_at < pg_catalog.pg_postmaster_start_time())|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|when mark.watermark - mixpanel_sync.setting('events.overlap')::interval < horizon::timestamp at time zone 'UTC'|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational|where n.name is null or n.name = '' or length(n.name) > 255)|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|relational||| case when other.heartbeat_at < now() - heartbeat_timeout|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|(select string_agg(coalesce(quote_literal(case when length(n.name) > 60 then left(n.name, 60) || '…' else n.name end), 'null'), ', ')|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|coalesce(other.options -> 'owner' ->> 'pid', '?'), source|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|else (select coalesce(jsonb_agg(distinct to_jsonb(n.name)), '[]') from unnest(events) n (name)) end;|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|if coalesce(force_full, false) and (resync_from is not null or resync_to is not null) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|or coalesce(resync_to, resync_from) > clock_day) then|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|project_timezone, jsonb_build_object('mode_reason', 'resync', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|project_timezone, jsonb_build_object('mode_reason', 'watermark', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|project_timezone, jsonb_build_object('mode_reason', reason, 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|raise exception 'begin_run: source must be ''events'' or ''profiles'', got %', coalesce(quote_literal(source), 'null')|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')|1
// killed: mixpanel_sync.begin_run(text,boolean,timestamp with time zone,text,date,date,boolean,text[])|swap-coalesce|standing := coalesce(mixpanel_sync.setting('events.only')::jsonb, '[]');|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|and-or|or (mark.watermark at time zone 'UTC')::date between run.window_from_day and run.window_to_day);|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|and-or|recomputes := run.mode = 'full' and (run.options ->> 'mode_reason' is distinct from 'resync'|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|and-or|where d.day < run.window_from_day and d.last_at <= run.fetch_to;|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|drop-conjunct|and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity');|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|drop-conjunct|and e.skip_reason is null|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|drop-conjunct|where d.day < run.window_from_day and d.last_at <= run.fetch_to;|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|drop-conjunct|where s.run_id = run.id and s.problem is null and length(s.line) < 64 and mixpanel_sync.is_terminated_early_marker(s.line)|2
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|least-greatest|else least(horizon, mixpanel_sync.horizon_day(run.fetch_to, raw_retention::interval))|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|min-max|'max_ms', max(e.lateness_ms),|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|min-max|select max(d.last_at) into held|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|negate-interval-setting|overlap_ms bigint := (extract(epoch from mixpanel_sync.setting('events.overlap')::interval) * 1000)::bigint;|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|relational|'beyond_overlap', count(*) filter (where e.lateness_ms > overlap_ms)|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|relational|where d.day < run.window_from_day and d.last_at <= run.fetch_to;|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|swap-coalesce|and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity');|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|swap-coalesce|keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|swap-coalesce|raw_retention text := coalesce((select s.value from mixpanel_sync.sync_settings s where s.key = 'events.raw_retention'), 'forever');|1
// killed: mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs)|swap-coalesce|run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)|1
// killed: mixpanel_sync.prune_history()|and-or|and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;|1
// killed: mixpanel_sync.prune_history()|drop-conjunct|and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;|1
// killed: mixpanel_sync.prune_history()|negate-interval-setting|and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;|1
// killed: mixpanel_sync.prune_history()|plus-minus|and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;|1
// killed: mixpanel_sync.prune_history()|relational|and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;|1
// killed: mixpanel_sync.refresh_subscribers(text[])|and-or|and not exists (select from per_user p where p.distinct_id = u.distinct_id)|1
// killed: mixpanel_sync.refresh_subscribers(text[])|drop-conjunct|and not exists (select from per_user p where p.distinct_id = u.distinct_id)|1
// killed: mixpanel_sync.refresh_subscribers(text[])|drop-conjunct|where s.distinct_id = u.distinct_id|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|and-or|and e.day between run.window_from_day and run.window_to_day) then|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|and-or|if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|and-or|where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|and-or|where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null|2
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|drop-conjunct|and e.day between run.window_from_day and run.window_to_day) then|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|drop-conjunct|where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null|1
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|drop-conjunct|where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null|2
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|drop-conjunct|where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null|3
// killed: mixpanel_sync.replace_guard(mixpanel_sync.sync_runs)|swap-coalesce|if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then|1
// killed: mixpanel_sync.replace_guard_outcome(mixpanel_sync.sync_runs,jsonb)|swap-coalesce|select g.key::date as day, g.value::numeric as events, coalesce(w.events, 0) as kept into shrunk|1
// killed: mixpanel_sync.replace_guard_outcome(mixpanel_sync.sync_runs,jsonb)|swap-coalesce|where coalesce(w.events, 0) < ratio * g.value::numeric|1
// killed: mixpanel_sync.replace_window_days(mixpanel_sync.sync_runs)|drop-conjunct|where d.project_id = run.project_id and d.day between run.window_from_day and run.window_to_day|2

describe('a loader that outlived its run', () => {
  it("the rows an abandoned run's loader still COPYs and parses after the run ended are not the next run's", async () => {
    // A loader whose run begin_run abandoned (its heartbeat stale: suspended, or behind a pooler) may go on: its COPY
    // and its chunk parse (parse_staged_lines) commit after drop_staged_rows emptied the run's rows, so staged_events
    // and run_events hold rows of a run that is no longer running when the next run finishes. Only each statement's
    // `run_id = <this run>` keeps them out. Killed (npm run mutate): `e.run_id = run.id` dropped from
    // finish_events_run's terminated-early probe (MP003: since migration 000012 the probe reads the run's rejected
    // lines, so the zombie's marker line is parsed too), `e.run_id = run.id` from its skipped counts (no_user 1) or
    // its watermark query (the zombie's later event moved the watermark), `e.run_id = …` from identity_edges (a link
    // learned). The guard's counts: in the replace_guard cases above; profiles: upsert_subscriber_properties below.
    await writeSetting(db.pool, 'identity.mode', 'simplified');
    try {
      const zombie = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink: true });
      await db.pool.query('select mixpanel_sync.fail_run($1, $2)', [zombie.id, 'test: abandoned, its loader still running']);
      await stageLines(db.pool, 'events', zombie.id, [
        line('z1', 'Late', at('2024-03-10', 11), 'z-1'),
        line(null, 'Server', at('2024-03-10', 11), 'z-2'),
        JSON.stringify({
          event: 'Sign In',
          properties: { distinct_id: 'U9', $device_id: 'D9', $user_id: 'U9', time: at('2024-03-09', 9), $insert_id: 'z-3' },
        }),
      ]);
      await parseStagedEvents(db.pool, zombie.id);
      await stageLines(db.pool, 'events', zombie.id, ['terminated early']);
      await parseStagedEvents(db.pool, zombie.id);

      const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink: true });
      await stageLines(db.pool, 'events', run.id, [
        line('u1', 'View', at('2024-03-09', 10), 'b-1'),
        line('u2', 'View', at('2024-03-09', 11), 'b-2'),
      ]);
      // the loader's chunk parse of this run: its own 2 lines parsed, and said so
      expect(await parseNewStagedLines(db.pool, run.id)).toBe(2);
      const done = await finishRun(db.pool, run.id);
      expect({
        status: done.status,
        received: done.received,
        applied: done.applied,
        no_user: done.no_user,
        links: (done as unknown as { links_learned: string | null }).links_learned,
        watermark: done.watermark_after?.toISOString(),
      }).toEqual({
        status: 'succeeded',
        received: '2',
        applied: '2',
        no_user: '0',
        links: '0',
        watermark: new Date(at('2024-03-09', 11) * 1000).toISOString(),
      });
      const { rows } = await db.pool.query('select distinct_id, event_count from mixpanel_sync.events_daily order by distinct_id');
      expect(rows).toEqual([
        { distinct_id: 'u1', event_count: '1' },
        { distinct_id: 'u2', event_count: '1' },
      ]);
    } finally {
      await writeSetting(db.pool, 'identity.mode', 'off');
    }
  });
});

describe('a profiles loader that outlived its run', () => {
  it("the profiles an abandoned run's loader still staged are not stored by the next run", async () => {
    // The behaviour, not one mutant: upsert_subscriber_properties keeps the zombie's lines out twice (`staged` reads
    // this run's lines, `parsed` joins them on line_id and also filters p.run_id), so dropping either filter alone
    // changes nothing (p.run_id is listed equivalent); seen failing, in a scratch transaction, with both dropped
    // (the zombie's profile z1 was stored too).
    const zombie = await beginRun(db.pool, { source: 'profiles', clock });
    await db.pool.query('select mixpanel_sync.fail_run($1, $2)', [zombie.id, 'test: abandoned, its loader still running']);
    // its COPY (as the loader stages: straight into staged_profiles; stage_profiles() would refuse a run not running)
    await stageLines(db.pool, 'profiles', zombie.id, [JSON.stringify({ $distinct_id: 'z1', $properties: { plan: 'zombie' } })]);
    const run = await beginRun(db.pool, { source: 'profiles', clock });
    await stageRecords(db.pool, 'profiles', run.id, [{ $distinct_id: 'p1', $properties: { plan: 'pro' } }]);
    const done = await finishRun(db.pool, run.id);
    expect(done.status).toBe('succeeded');
    const { rows } = await db.pool.query('select distinct_id from mixpanel_sync.subscriber_properties order by 1');
    expect(rows).toEqual([{ distinct_id: 'p1' }]);
  });
});
