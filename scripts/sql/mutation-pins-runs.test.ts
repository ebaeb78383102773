// Pins of the run functions (begin_run, replace_guard, finish_events_run, prune_history, run_selection,
// refresh_subscribers) for mutants the mutation run of issue 15 (npm run mutate) found surviving. Each test names the
// mutants it kills ("killed: <operator> line <n>: <change>", as npm run mutate prints them); each was seen failing with
// its mutant applied (npm run mutate -- --only <fn> --match <key> --proofs scripts/sql/mutation-pins-runs.test.ts, which
// writes the mutant into a clone database with create or replace) and passes on main.
// Expectations are written out from the data each test inserts, not computed by the functions under test.
// The guard is called directly (mixpanel_sync.replace_guard(run)) on a parsed run: no apply, so each case costs a few
// statements.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { emptySyncTables } from './run-fixtures.ts';
import { beginRun, type BeginRunOptions, parseStagedEvents, stageLines, writeSetting } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await emptySyncTables(db.pool, { dropPartitions: false });
});

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
            `insert into mixpanel_sync.sync_runs (source, mode, status, fetch_to, started_at, finished_at)
             values ('events', 'full', $1, now(), now() - interval '400 days', now() - mixpanel_sync.setting('runs.retention')::interval + $2::interval)
             returning id::text`,
            [status, shift],
          )
        ).rows[0]!.id;
      const boundary = await finished('succeeded', '0');
      const older = await finished('failed', '-1 second');
      const recent = await finished(
        'succeeded',
        `${(await client.query("select extract(day from mixpanel_sync.setting('runs.retention')::interval) - 1 as d")).rows[0].d} days`,
      );
      const running = (
        await client.query<{ id: string }>(
          `insert into mixpanel_sync.sync_runs (source, mode, status, fetch_to, started_at)
           values ('profiles', 'full', 'running', now(), now() - interval '400 days') returning id::text`,
        )
      ).rows[0]!.id;
      const pruned = await client.query<{ n: string }>('select mixpanel_sync.prune_history()::text as n');
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
    await db.pool.query(`insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at) values
      ('kept', '2024-03-01', 'open', 2, '2024-03-01 10:00Z', '2024-03-01 11:00Z'),
      ('kept', '2024-03-02', 'buy', 1, '2024-03-02 09:00Z', '2024-03-02 09:00Z'),
      ('gone', '2024-03-01', 'open', 1, '2024-03-01 08:00Z', '2024-03-01 08:00Z')`);
    await db.pool.query(`select mixpanel_sync.refresh_subscribers(array['kept', 'gone'])`);
    await db.pool.query(`delete from mixpanel_sync.events_daily where distinct_id = 'gone'`);
    await db.pool.query(`select mixpanel_sync.refresh_subscribers(array['kept', 'gone'])`);
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
        `insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at)
         values ($1, $2::date, $3, $4, $2::date + time '10:00', $2::date + time '11:00')`,
        [user, day, name, count],
      );
  };
  /** A run begun with these options, its lines staged and parsed; then the guard: its error, or null when it let the run through. */
  const guard = async (options: Omit<BeginRunOptions, 'source'>, lines: string[]) => {
    const run = await beginRun(db.pool, { source: 'events', clock, ...options });
    await stageLines(db.pool, 'events', run.id, lines);
    await parseStagedEvents(db.pool, run.id);
    try {
      await db.pool.query('select mixpanel_sync.replace_guard(r) from mixpanel_sync.sync_runs r where r.id = $1', [run.id]);
      return null;
    } catch (error) {
      return error as { code: string; message: string };
    }
  };
  const longName = 'n'.repeat(256);

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
