// Several projects (issue 13 part 3): two-project pins of the `project_id = pid` predicates that the mutation run of
// migration 000013 left alive (survivor-notes.json called 12 of them "a gap of the proofs"; the 54 mutants it did not
// measure held more): each statement below reads or changes rows that another project can hold under the same
// distinct_id, event key or alias, and only a database where it does tells the predicate from its absence. B's rows
// are read with plain SQL by project_id; every expected value follows from the fixture (A's own events, links and
// rows), not from a run.
// Seen failing, each mutant applied with `create or replace` in a clone and this file run against it (npm run mutate
// -- --at HEAD --overlay <this file> --proofs <this file> --match <keys> --workers 1, 2026-12-02, saved in
// .tmp/mutation/pins-0202*.json), passing unmutated. Killed (key: function|operator|line text|n, shortened):
//   test 1 (REPLACE and ADD, loop and set path):
//   - upsert_subscribers_incremental|drop-conjunct|…event_ledger_legacy g where g.project_id = pid and g.distinct_id =
//     w.distinct_id and g.event_key = w.legacy_key))|1 and |where l.project_id = pid and l.distinct_id = w.distinct_id
//     and l.event_key = w.event_key|1: A's REPLACE took its event for a double count of B's legacy row or of B's
//     ledger row on the next day;
//   - upsert_subscribers_incremental_add|drop-conjunct|where l.project_id = pid and l.distinct_id = w.distinct_id and
//     l.event_key = w.event_key|1: the same for A's ADD (B's row on a neighbouring day);
//   - upsert_subscribers_incremental_loop|drop-conjunct|, `project_id = pid` dropped from: the legacy and the outside-
//     window probes of step 1 (`…g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)|1`, `where
//     l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key|1`), the lookup of
//     the stored row (`… and l.day = event.day;|1`), the events_daily rows of the window (`where d.project_id = pid and
//     d.day between from_day and to_day|1`: users_touched counted B's user), and the probes of steps 2 and 3 (`…
//     g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))|1`, `where l.project_id = pid and l.distinct_id =
//     e.distinct_id and l.event_key = e.event_key|1`, `where o.project_id = pid and …|1`); and `g.distinct_id = …`
//     or `g.event_key = e.legacy_key` dropped from the legacy probes of steps 2 and 3 (|2, |3 and |5, |6: A's legacy
//     rows before the window, of another user or another key, took A's rows of e3 away);
//   test 2 (loop REPLACE, raw storage on): upsert_subscribers_incremental_loop, the lookup of the stored row without
//     `l.day = event.day` (|4: A's row of e6 on the day before taken for it) and its UPDATE (the same line text) without
//     `l.project_id = pid`, `l.distinct_id = …` or `l.event_key = …` (|5-|7: B's row, another user's row or e6's row
//     rewritten);
//   test 3: reattribute_all|drop-conjunct|where l.project_id = pid and l.alias <> l.canonical|1 (B's link chosen)
//     and its five probes without `d.project_id = pid` (events_daily |2, event_ledger |1, event_ledger_legacy |1,
//     subscribers |1, subscriber_properties |1), event_ledger_legacy's and subscriber_properties' without
//     `d.distinct_id = l.alias` (|2), and their and-or mutants (|2): ids_moved 2, not 1;
//   test 4: reattribute_identities|drop-conjunct|, `project_id = …` dropped from the legacy rows' at_canonical probe,
//     their delete and their move (B's legacy rows of the alias deleted or moved, or A's row dropped);
//   tests 5 and 6: reattribute_identities, the profile probe `not exists (select from …subscriber_properties c where
//     c.project_id = …|1` and the profiles' delete and rename without `p.project_id = …`; reattribute_identities_loop,
//     `project_id = …` dropped from every statement (the ledger and legacy lists, probes, deletes, moves, the
//     events_daily decrement, delete, list and delete, the profile probes, delete and rename), the and-or mutants of
//     the profiles' delete and rename, and `l.distinct_id = move.from_id` and `l.day = event.day` dropped from the
//     ledger move (|6, |8: another user's row of the key renamed; the alias's second day of a key moved, not dropped).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { projectEvent as ev, projectEventsRun as eventsRun, projectLedger } from './run-fixtures.ts';
import { beginRun, createProject, finishRun, stageRecords, writeSetting } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await createProject(db.pool, 'a');
  await createProject(db.pool, 'b');
});
afterAll(async () => {
  await db?.drop();
});

const legacyRow = (project: string, user: string, key: string, day: string) =>
  db.pool.query(
    `insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
     values (mixpanel_sync.project_id($1), $2, $3::uuid, $4::date, 'open', $4::date + time '10:00', 0)`,
    [project, user, key, day],
  );

/** A link alias -> canonical of the project, and the canonical id's own link (identity_links' foreign key). */
const link = (project: string, alias: string, canonical: string) =>
  db.pool.query(
    `insert into mixpanel_sync.identity_links (project_id, alias, canonical)
     values (mixpanel_sync.project_id($1), $3, $3), (mixpanel_sync.project_id($1), $2, $3) on conflict do nothing`,
    [project, alias, canonical],
  );

/** The project's legacy ledger rows of the ids 'l-…' as "distinct_id event_key", sorted. */
async function legacyOf(project: string): Promise<string[]> {
  const { rows } = await db.pool.query<{ r: string }>(
    `select g.distinct_id || ' ' || g.event_key::text as r from mixpanel_sync.event_ledger_legacy g
     where g.project_id = mixpanel_sync.project_id($1) and g.distinct_id like 'l-%' order by 1`,
    [project],
  );
  return rows.map((row) => row.r);
}

describe("one project's probes and another project's rows of the same keys", () => {
  it("A's REPLACE and ADD apply events whose keys only B holds: in its legacy ledger, or in its ledger on the same or a neighbouring day", async () => {
    const dailyOf = (project: string, user: string) =>
      db.pool
        .query<{ r: string }>(
          `select d.day::text || ' ' || d.event_name || ' ' || d.event_count as r from mixpanel_sync.events_daily d
           where d.project_id = mixpanel_sync.project_id($1) and d.distinct_id = $2 order by 1`,
          [project, user],
        )
        .then((r) => r.rows.map((row) => row.r));
    // the two paths' windows (45 days up to the clock's day) do not meet
    for (const path of ['loop', 'set'] as const) {
      await writeSetting(db.pool, 'events.upsert_path', path, 'a');
      const day = path === 'loop' ? '2026-06-10' : '2026-08-20';
      const next = new Date(Date.parse(day) + 86_400_000).toISOString().slice(0, 10);
      const u = `n-${path}`;
      const e1 = ev('view', u, `${day}T09:00:00Z`, `e1-${path}`);
      const e2 = ev('open', u, `${day}T09:10:00Z`, `e2-${path}`);
      const e3 = ev('buy', u, `${day}T09:20:00Z`, `e3-${path}`);
      const e4 = ev('open', u, `${day}T08:00:00Z`, `e4-${path}`);
      // B applied e1, e2 and e4 (the same distinct_id and $insert_id: the same keys as A's) and an event of a user A
      // does not have; its ledger then holds e1 and e2 on the next day, as after a change of B's timezone (a key's day
      // moves by up to 26 hours), e4 on its day
      await eventsRun(db.pool, 'b', `${day}T11:00:00Z`, [e1, e2, e4, ev('open', `b-only-${path}`, `${day}T07:00:00Z`, `b-${path}`)], true);
      await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions($1::date, $1::date)`, [next]);
      await db.pool.query(
        `update mixpanel_sync.event_ledger l set day = $2::date
         where l.project_id = mixpanel_sync.project_id('b') and l.distinct_id = $1 and l.event_time > $3::timestamptz`,
        [u, next, `${day}T08:30:00Z`],
      );
      expect(await projectLedger(db.pool, 'b')).toEqual(expect.arrayContaining([`${u} ${day}`, `${u} ${next}`, `${u} ${next}`]));
      // B's legacy ledger holds e3's old-formula key under the same distinct_id; A's holds a row (so A's parse
      // computes legacy keys)
      const { rows } = await db.pool.query<{ k: string }>(`select mixpanel_sync.legacy_event_key('buy', $1, $2, '{}')::text as k`, [
        e3.properties.time,
        e3.properties.$insert_id,
      ]);
      await legacyRow('b', u, rows[0]!.k, day);
      await legacyRow('a', `a-legacy-${path}`, '00000000-0000-0000-0000-0000000000a1', day);
      // and, before A's window (rows of the upgrade that A's finish has not deleted yet), e3's old-formula key under
      // another user, and another key under u: neither is e3's
      const early = new Date(Date.parse(day) - 50 * 86_400_000).toISOString().slice(0, 10);
      await legacyRow('a', `a-other-${path}`, rows[0]!.k, early);
      await legacyRow('a', u, '00000000-0000-0000-0000-0000000000a2', early);
      // A's REPLACE up to `day` of e1 (on the window's last day: probed outside the window), e3 and e4: all new to A,
      // and u the one user whose rows it writes
      const full = await eventsRun(db.pool, 'a', `${day}T11:30:00Z`, [e1, e3, e4], true);
      expect([path, full.mode, Number(full.applied), Number(full.duplicates), Number(full.users_touched)]).toEqual([path, 'full', 3, 0, 1]);
      // A's ADD of e2 (B holds its key on the next day only): new to A
      const add = await eventsRun(db.pool, 'a', `${day}T11:45:00Z`, [e2]);
      expect([path, add.mode, Number(add.applied), Number(add.duplicates)]).toEqual([path, 'incremental', 1, 0]);
      expect((await projectLedger(db.pool, 'a')).filter((r) => r.startsWith(`${u} `))).toEqual(Array(4).fill(`${u} ${day}`));
      expect(await dailyOf('a', u)).toEqual([`${day} buy 1`, `${day} open 2`, `${day} view 1`]);
    }
    await writeSetting(db.pool, 'events.upsert_path', 'set', 'a');
  });

  it("the loop REPLACE rewrites A's raw ledger rows only, and finds A's row of a key on its own day only", async () => {
    await writeSetting(db.pool, 'events.upsert_path', 'loop', 'a');
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'events.store_raw', 'on', project);
    const day = '2026-11-15';
    const before = '2026-11-14';
    const raw = (project: string) =>
      db.pool
        .query<{ r: string }>(
          `select l.distinct_id || ' ' || l.day || ' ' || l.insert_id || ' ' || coalesce(l.properties ->> 'plan', '-') as r
           from mixpanel_sync.event_ledger l where l.project_id = mixpanel_sync.project_id($1) and l.distinct_id like 'm-%' order by 1`,
          [project],
        )
        .then((r) => r.rows.map((row) => row.r));
    const e5 = (user: string, plan: string) => ev('open', user, `${day}T09:00:00Z`, 'm5', { plan });
    const e6 = ev('open', 'm-user', `${day}T09:30:00Z`, 'm6');
    // B and A hold e5 (the same key, the same day); A also holds it under another user, and e6
    await eventsRun(db.pool, 'b', `${day}T12:00:00Z`, [e5('m-user', 'free')], true);
    const ofB = await raw('b');
    expect(ofB).toEqual([`m-user ${day} m5 free`]);
    await eventsRun(db.pool, 'a', `${day}T12:00:00Z`, [e5('m-other', 'free'), e5('m-user', 'free'), e6], true);
    // A's row of e6 lies on the day before, as after a change of A's timezone (inside the window: no double count)
    await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions($1::date, $1::date)`, [before]);
    await db.pool.query(
      `update mixpanel_sync.event_ledger l set day = $1::date
       where l.project_id = mixpanel_sync.project_id('a') and l.distinct_id = 'm-user' and l.insert_id = 'm6'`,
      [before],
    );
    // A's REPLACE: e5 of m-user re-sent with another plan; e6 again: its row goes back to its day
    const replaced = await eventsRun(db.pool, 'a', `${day}T12:30:00Z`, [e5('m-other', 'free'), e5('m-user', 'paid'), e6], true);
    expect([replaced.mode, Number(replaced.applied)]).toEqual(['full', 3]);
    expect(await raw('a')).toEqual([`m-other ${day} m5 free`, `m-user ${day} m5 paid`, `m-user ${day} m6 -`]);
    expect(await raw('b')).toEqual(ofB);
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'events.store_raw', 'off', project);
    await writeSetting(db.pool, 'events.upsert_path', 'set', 'a');
  });

  it("reattribute_all moves A's aliases that hold A's rows: not B's links, not A's links whose alias only B's rows use", async () => {
    const snapshotOfB = () =>
      db.pool
        .query<{ r: string }>(
          `select t.name || ' ' || t.distinct_id as r from (
             select 'daily' as name, d.distinct_id from mixpanel_sync.events_daily d where d.project_id = mixpanel_sync.project_id('b')
             union all select 'ledger', l.distinct_id from mixpanel_sync.event_ledger l where l.project_id = mixpanel_sync.project_id('b')
             union all select 'legacy', g.distinct_id from mixpanel_sync.event_ledger_legacy g where g.project_id = mixpanel_sync.project_id('b')
             union all select 'subscriber', s.distinct_id from mixpanel_sync.subscribers s where s.project_id = mixpanel_sync.project_id('b')
             union all select 'profile', p.distinct_id from mixpanel_sync.subscriber_properties p where p.project_id = mixpanel_sync.project_id('b')
           ) t where t.distinct_id like 'r-%' order by 1`,
        )
        .then((r) => r.rows.map((row) => row.r));
    const dailyOfA = () =>
      db.pool
        .query<{ r: string }>(
          `select d.distinct_id || ' ' || d.event_count as r from mixpanel_sync.events_daily d
           where d.project_id = mixpanel_sync.project_id('a') and d.distinct_id like 'r-%' order by 1`,
        )
        .then((r) => r.rows.map((row) => row.r));
    // B: rows under r-only-b in every table a probe reads (events: events_daily, event_ledger, subscribers; a profile;
    // a legacy ledger row), and a link of its own r-b-alias -> r-b-user
    await eventsRun(db.pool, 'b', '2026-05-10T12:00:00Z', [ev('open', 'r-only-b', '2026-05-10T10:00:00Z', 'r1')], true);
    const profiles = await beginRun(db.pool, { source: 'profiles', clock: '2026-05-10T12:05:00Z', project: 'b' });
    await stageRecords(db.pool, 'profiles', profiles.id, [{ $distinct_id: 'r-only-b', $properties: { $name: 'R' } }]);
    await finishRun(db.pool, profiles.id);
    await legacyRow('b', 'r-only-b', '00000000-0000-0000-0000-0000000000b2', '2026-05-10');
    await link('b', 'r-b-alias', 'r-b-user');
    const ofB = await snapshotOfB();
    expect(ofB).toEqual(['daily r-only-b', 'ledger r-only-b', 'legacy r-only-b', 'profile r-only-b', 'subscriber r-only-b']);
    // A: events under r-a-alias (A links it to r-a-user) and under r-b-alias (only B links it); A links r-only-b too,
    // but holds nothing under it; rows of r-a-person
    await eventsRun(
      db.pool,
      'a',
      '2026-05-10T12:00:00Z',
      [ev('open', 'r-a-alias', '2026-05-10T10:00:00Z', 'r2'), ev('open', 'r-b-alias', '2026-05-10T10:10:00Z', 'r3')],
      true,
    );
    await link('a', 'r-a-alias', 'r-a-user');
    await link('a', 'r-only-b', 'r-a-user');
    // and a profile and a legacy ledger row of a user it links to nobody
    await db.pool.query(
      `insert into mixpanel_sync.subscriber_properties (project_id, distinct_id, name) values (mixpanel_sync.project_id('a'), 'r-a-person', 'P')`,
    );
    await legacyRow('a', 'r-a-person', '00000000-0000-0000-0000-0000000000a3', '2026-05-10');
    const { rows } = await db.pool.query<{ r: { ids_moved: number } }>(`select mixpanel_sync.reattribute_all('a') as r`);
    // one alias of A's links holds A's rows: r-a-alias
    expect(rows[0]!.r.ids_moved).toBe(1);
    expect(await dailyOfA()).toEqual(['r-a-user 1', 'r-b-alias 1']);
    expect(await snapshotOfB()).toEqual(ofB);
  });

  it("A's re-attribution of its legacy ledger rows drops and moves A's rows only, whatever B holds under the alias or the user", async () => {
    const key = (n: number) => `00000000-0000-0000-0000-00000000c${String(n).padStart(3, '0')}`;
    // A: k1 under the alias and the user (the alias's row is dropped), k2 and k3 under the alias (they move)
    for (const [user, n] of [
      ['l-alias', 1],
      ['l-user', 1],
      ['l-alias', 2],
      ['l-alias', 3],
    ] as const)
      await legacyRow('a', user, key(n), '2026-04-10');
    // B: k1 and k2 under the alias, k3 under the user
    for (const [user, n] of [
      ['l-alias', 1],
      ['l-alias', 2],
      ['l-user', 3],
    ] as const)
      await legacyRow('b', user, key(n), '2026-04-10');
    const ofB = await legacyOf('b');
    await link('a', 'l-alias', 'l-user');
    await db.pool.query(`select mixpanel_sync.reattribute_all('a')`);
    expect(await legacyOf('a')).toEqual([1, 2, 3].map((n) => `l-user ${key(n)}`));
    expect(await legacyOf('b')).toEqual(ofB);
  });

  for (const fn of ['reattribute_identities', 'reattribute_identities_loop'] as const) {
    it(`${fn} moves, drops and merges A's rows of every table only, whatever B holds under the alias or the user`, async () => {
      const x = fn === 'reattribute_identities' ? 'q' : 'w';
      const day = '2026-03-10';
      const next = '2026-03-11';
      const key = (n: number) => `00000000-0000-0000-0000-0000000${x === 'q' ? 'd' : 'e'}0${String(n).padStart(3, '0')}`;
      const [al, can, al2, can2, al3, can3] = [`${x}-al`, `${x}-can`, `${x}-al2`, `${x}-can2`, `${x}-al3`, `${x}-can3`] as const;
      await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions($1::date, $2::date)`, [day, next]);
      const ledger = (project: string, user: string, n: number, name = 'open', on = day) =>
        db.pool.query(
          `insert into mixpanel_sync.event_ledger (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
           values (mixpanel_sync.project_id($1), $2, $3::uuid, $4::date, $5, $4::date + time '10:00', 0)`,
          [project, user, key(n), on, name],
        );
      const daily = (project: string, user: string, name: string, count: number, on = day) =>
        db.pool.query(
          `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
           values (mixpanel_sync.project_id($1), $2, $3::date, $4, $5, $3::date + time '10:00', $3::date + time '10:00')`,
          [project, user, on, name, count],
        );
      const profile = (project: string, user: string) =>
        db.pool.query(
          `insert into mixpanel_sync.subscriber_properties (project_id, distinct_id, name) values (mixpanel_sync.project_id($1), $2, $3)`,
          [project, user, `${project} ${user}`],
        );
      /** The project's rows of this test's ids in every table a re-attribution reads or writes, as text. */
      const rowsOf = (project: string) =>
        db.pool
          .query<{ r: string }>(
            `select t.r from (
               select 'ledger ' || l.distinct_id || ' ' || l.event_key || ' ' || l.event_name || ' ' || l.day as r from mixpanel_sync.event_ledger l
               where l.project_id = mixpanel_sync.project_id($1) and l.distinct_id like $2
               union all select 'legacy ' || g.distinct_id || ' ' || g.event_key from mixpanel_sync.event_ledger_legacy g
               where g.project_id = mixpanel_sync.project_id($1) and g.distinct_id like $2
               union all select 'daily ' || d.distinct_id || ' ' || d.day || ' ' || d.event_name || ' ' || d.event_count from mixpanel_sync.events_daily d
               where d.project_id = mixpanel_sync.project_id($1) and d.distinct_id like $2
               union all select 'profile ' || p.distinct_id || ' ' || p.name from mixpanel_sync.subscriber_properties p
               where p.project_id = mixpanel_sync.project_id($1) and p.distinct_id like $2
             ) t order by 1`,
            [project, `${x}-%`],
          )
          .then((r) => r.rows.map((row) => row.r));
      // A: under the alias, ledger keys 1-3 and 8 ('open') and 4 ('buy'), key 8 on the next day too (counted twice,
      // across a change of timezone), legacy keys 5-7; the user already holds keys 1, 4 and 5 (the alias's rows of those
      // are double counts: dropped, as is key 8's second day); another user holds key 2 too (the same $insert_id and
      // second); the alias's events_daily rows count its 7 'open' and 1 'buy' events of the day and 1 of the next, the
      // user's 2 and 1. Profiles: the alias's (the user has none: it becomes the user's), al2's and can2's (can2 keeps
      // its own).
      for (const n of [1, 2, 3, 8]) await ledger('a', al, n);
      await ledger('a', al, 8, 'open', next);
      await ledger('a', al, 4, 'buy');
      await ledger('a', can, 1);
      await ledger('a', can, 4, 'buy');
      await ledger('a', `${x}-other`, 2);
      for (const n of [5, 6, 7]) await legacyRow('a', al, key(n), day);
      await legacyRow('a', can, key(5), day);
      await daily('a', al, 'open', 7);
      await daily('a', al, 'open', 1, next);
      await daily('a', al, 'buy', 1);
      await daily('a', can, 'open', 2);
      await daily('a', can, 'buy', 1);
      for (const user of [al, al2, can2]) await profile('a', user);
      // B: under the alias keys 1, 2, 5 and 6; under the user keys 3 and 7 (A's rows of those are no double counts);
      // events_daily rows of the alias; profiles of the alias, the user, al2 and al3 (A holds nothing under al3)
      for (const n of [1, 2]) await ledger('b', al, n);
      await ledger('b', can, 3);
      for (const n of [5, 6]) await legacyRow('b', al, key(n), day);
      await legacyRow('b', can, key(7), day);
      await daily('b', al, 'open', 3);
      await daily('b', al, 'buy', 2);
      for (const user of [al, can, al2, al3]) await profile('b', user);
      const ofB = await rowsOf('b');
      const { rows } = await db.pool.query<{ r: Record<string, number> }>(
        `select mixpanel_sync.${fn}(mixpanel_sync.project_id('a'), $1, $2) as r`,
        [
          [al, al2, al3],
          [can, can2, can3],
        ],
      );
      // kept once under the user: keys 1-8; dropped: the alias's 1, 4, 5 and 8 of the next day; moved: 2, 3, 6, 7
      // and 8 (7 - 2 'open' events of the day added to the user's 2; 'buy' and the next day: the alias's one event was
      // the user's); profiles: al's renamed, al2's removed
      expect(rows[0]!.r).toEqual({
        reattributed_events: 5,
        reattributed_duplicates: 4,
        reattributed_ledger_rows: 5,
        reattributed_raw_events: 0,
        reattributed_profiles: 2,
      });
      expect(await rowsOf('a')).toEqual(
        [
          `daily ${can} ${day} buy 1`,
          `daily ${can} ${day} open 7`,
          ...[1, 2, 3, 8].map((n) => `ledger ${can} ${key(n)} open ${day}`),
          `ledger ${can} ${key(4)} buy ${day}`,
          `ledger ${x}-other ${key(2)} open ${day}`,
          ...[5, 6, 7].map((n) => `legacy ${can} ${key(n)}`),
          `profile ${can} a ${al}`,
          `profile ${can2} a ${can2}`,
        ].sort(),
      );
      expect(await rowsOf('b')).toEqual(ofB);
    });
  }
});
