// Several projects (issue 13 part 3): two-project pins of the `project_id = pid` predicates that the mutation run of
// migration 000013 left alive (survivor-notes.json called them "a gap of the proofs"): each statement below reads or
// changes rows that another project can hold under the same distinct_id, event key or alias, and only a database
// where it does tells the predicate from its absence. B's rows are read with plain SQL by project_id; every expected
// value follows from the fixture (A's own events, A's own links), not from a run.
// Seen failing, each mutant applied with `create or replace` in a clone (npm run mutate -- --at HEAD --overlay <this file,
// run-fixtures.ts> --proofs <this file> --match <the 14 keys> --workers 1, 2026-12-02: 14 of 14 killed), passing unmutated:
//   - killed: upsert_subscribers_incremental|drop-conjunct|select from mixpanel_sync.event_ledger_legacy g where
//     g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))|1, and the loop's
//     upsert_subscribers_incremental_loop|drop-conjunct|select from mixpanel_sync.event_ledger_legacy g where
//     g.project_id = pid and g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)|1: A's REPLACE took
//     its event for one applied before the upgrade because B's legacy ledger holds its old-formula key (test 1);
//   - killed: upsert_subscribers_incremental|drop-conjunct|where l.project_id = pid and l.distinct_id = w.distinct_id
//     and l.event_key = w.event_key|1, and the loop's `where l.project_id = pid and l.distinct_id = event.distinct_id
//     and l.event_key = event.event_key|1`: A's REPLACE took its event at the window's edge for one counted outside
//     the window because B's ledger holds the key on the next day (test 1);
//   - killed: upsert_subscribers_incremental_add|drop-conjunct|where l.project_id = pid and l.distinct_id = w.distinct_id
//     and l.event_key = w.event_key|1: A's ADD took a new event for a duplicate because B's ledger holds its key on a
//     neighbouring day (test 1);
//   - killed: reattribute_all|drop-conjunct|where l.project_id = pid and l.alias <> l.canonical|1 (B's link chosen:
//     A's rows of B's alias moved) and the five probes of reattribute_all for rows under an alias without
//     `d.project_id = pid` (events_daily |2, event_ledger |1, event_ledger_legacy |1, subscribers |1,
//     subscriber_properties |1): A's link chosen for B's rows (ids_moved 2, not 1) (test 2);
//   - killed: reattribute_identities|drop-conjunct|exists (select from mixpanel_sync.event_ledger_legacy c where
//     c.project_id = … as at_canonical|1 (A's legacy row dropped, not moved, because B holds the key under the
//     canonical id), and the legacy delete and the legacy move without `l.project_id = …` (`… (r.at_canonical or
//     r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key|1`, `… not r.at_canonical and r.n = 1
//     and …|1`): B's legacy rows of the alias deleted or moved (test 3).
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
  it("A's REPLACE and ADD apply events whose keys only B holds: in its legacy ledger, or in its ledger on a neighbouring day", async () => {
    for (const path of ['loop', 'set'] as const) {
      await writeSetting(db.pool, 'events.upsert_path', path, 'a');
      const day = path === 'loop' ? '2026-06-10' : '2026-06-20';
      const next = new Date(Date.parse(day) + 86_400_000).toISOString().slice(0, 10);
      const u = `n-${path}`;
      const e1 = ev('open', u, `${day}T09:00:00Z`, `e1-${path}`);
      const e2 = ev('open', u, `${day}T09:10:00Z`, `e2-${path}`);
      const e3 = ev('open', u, `${day}T09:20:00Z`, `e3-${path}`);
      // B applied e1 and e2 (the same distinct_id and $insert_id: the same keys as A's); its ledger then holds them on
      // the next day, as after a change of B's timezone (a key's day moves by up to 26 hours)
      await eventsRun(db.pool, 'b', `${day}T11:00:00Z`, [e1, e2], true);
      await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions($1::date, $1::date)`, [next]);
      await db.pool.query(
        `update mixpanel_sync.event_ledger l set day = $2::date
         where l.project_id = mixpanel_sync.project_id('b') and l.distinct_id = $1`,
        [u, next],
      );
      expect(await projectLedger(db.pool, 'b')).toContain(`${u} ${next}`);
      // B's legacy ledger holds e3's old-formula key under the same distinct_id; A's holds a row (so A's parse
      // computes legacy keys)
      const { rows } = await db.pool.query<{ k: string }>(`select mixpanel_sync.legacy_event_key('open', $1, $2, '{}')::text as k`, [
        e3.properties.time,
        e3.properties.$insert_id,
      ]);
      await legacyRow('b', u, rows[0]!.k, day);
      await legacyRow('a', `a-legacy-${path}`, '00000000-0000-0000-0000-0000000000a1', day);
      // A's REPLACE up to `day` (e1 on the window's last day, probed outside the window) and e3: both new to A
      const full = await eventsRun(db.pool, 'a', `${day}T11:30:00Z`, [e1, e3], true);
      expect([path, full.mode, Number(full.applied), Number(full.duplicates)]).toEqual([path, 'full', 2, 0]);
      // A's ADD of e2 (B holds its key on the next day only): new to A
      const add = await eventsRun(db.pool, 'a', `${day}T11:45:00Z`, [e2]);
      expect([path, add.mode, Number(add.applied), Number(add.duplicates)]).toEqual([path, 'incremental', 1, 0]);
      expect((await projectLedger(db.pool, 'a')).filter((r) => r.startsWith(`${u} `))).toEqual([
        `${u} ${day}`,
        `${u} ${day}`,
        `${u} ${day}`,
      ]);
    }
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
    // but holds nothing under it
    await eventsRun(
      db.pool,
      'a',
      '2026-05-10T12:00:00Z',
      [ev('open', 'r-a-alias', '2026-05-10T10:00:00Z', 'r2'), ev('open', 'r-b-alias', '2026-05-10T10:10:00Z', 'r3')],
      true,
    );
    await link('a', 'r-a-alias', 'r-a-user');
    await link('a', 'r-only-b', 'r-a-user');
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
});
