// Several projects (issue 13 part 3): what one project's begin_run and finish_run decide from another project's rows.
// Pins for mutants of migration 000013 that scripts/sql/projects-isolation.test.ts and the isolation property did not
// kill (the mutation run of 2026-12-01 on the new texts); each test was seen killing the mutants named here in that run:
//   - abandon_stale_runs without `r.project_id = … and`: A's begin_run marked B's run abandoned once it was older than
//     runs.abandon_after (test 1);
//   - begin_run's dead-loader rule without `r.project_id = pid and`: A's begin_run abandoned B's run whose loader
//     session was gone (test 2);
//   - finish_events_run's shared horizon with another project's clock taken from every project's runs
//     (`r.project_id = p.id` dropped): A's finish at a later clock dropped the day partition that still holds B's
//     ledger rows (test 3);
//   - finish_events_run's delete of the project's own rows between the shared horizon and its own with `>=` → `>`: the
//     row on the shared horizon's day stayed (test 4);
//   - the loop ADD (insert_new_events_loop) probing the ledger or the legacy ledger without `project_id = pid`: A's new
//     event counted a duplicate of B's row with the same key (test 5);
//   - finish_events_run deleting legacy ledger rows below the horizon without `l.project_id = pid`: A's finish deleted
//     B's (test 6);
//   - a full run that applied nothing: the watermark held before the window read without `d.project_id = pid` (A's
//     watermark taken from B's rows), and the watermark row deleted without `w.project_id = pid` (B's deleted) (test 7);
//   - identity_cluster listing the links of the canonical id without `l.project_id = …`: B's device in A's cluster
//     (test 8);
//   - prune_history without `r.project_id = …`: A's finish deleted B's runs older than A's runs.retention (test 9);
//   - replace_guard counting stored events without `d.project_id = pid` (the empty-run rule and the shrink rule): a
//     new project's first full run was refused for B's events of its days (test 10);
//   - the guard's per-day sums after the apply (migration 000018: replace_guard_outcome weighs replace_window_days)
//     without `d.project_id = …`: E's full run that kept 10 of its 120 events was let through for F's 120 (test 11);
//   - begin_run's timezone check with `and` → `or` (`project_row.timezone is not null or project_timezone <> …`): a
//     run that gave its project's own timezone was refused (test 12);
//   - REPLACE's (upsert_subscribers_incremental) delete and update of the rows its diff found gone or changed, without
//     `project_id = pid`: A's REPLACE deleted or rewrote B's rows of the same key (test 13);
//   - the loop REPLACE clearing its window's legacy ledger rows without `g.project_id = pid` in its delete: B's row of
//     the same distinct_id and key went too (test 14);
//   - reattribute_identities without `project_id = …` in its ledger delete, its ledger move, or its probe for the
//     canonical id's row: A's identity step dropped or moved B's rows of the alias, or dropped A's own row because B
//     held the key under the canonical id (test 15);
//   - learn_identity_links re-pointing the links of a cluster whose canonical id changed without `l.project_id = pid`:
//     A's $merge re-pointed B's link of the same canonical id (test 16);
//   - finish_events_run's read of the events watermark without `w.source = 'events'`, and its delete: a profiles
//     watermark row of the project read as the events mark, or deleted with it (test 17; begin_run's own read of
//     the mark without the source survives it, see survivor-notes.json);
//   - the shared horizon taking another project's clock from its runs of any source or status (`r.source = 'events'`
//     or `r.status = 'succeeded'` dropped): B's later profiles run, or its later failed events run, moved B's horizon
//     past days B's ledger still holds, and A's finish dropped them (test 18).
// Each database holds 'default', 'a' and 'b'; every test uses its own clocks and ids.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { projectEvent as ev, projectEventsRun as eventsRun, projectLedger as ledgerOf } from './run-fixtures.ts';
import { beginRun, createProject, failRun, finishRun, type Queryable, stageRecords, writeSetting } from './sync-api.ts';

let db: TestDatabase;
const at = (iso: string) => Math.floor(Date.parse(iso) / 1000);

beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 4 });
  await createProject(db.pool, 'a');
  await createProject(db.pool, 'b');
});
afterAll(async () => {
  await db?.drop();
});

async function status(client: Queryable, runId: string): Promise<string> {
  const { rows } = await client.query<{ status: string }>('select r.status from mixpanel_sync.sync_runs r where r.id = $1', [runId]);
  return rows[0]!.status;
}

describe("one project's runs and another project's", () => {
  it("A's begin_run leaves B's run alone once it is older than runs.abandon_after; B's own begin_run abandons it", async () => {
    const stale = await beginRun(db.pool, { source: 'profiles', clock: '2026-10-01T12:00:00Z', project: 'b' });
    await db.pool.query(`update mixpanel_sync.sync_runs r set started_at = now() - interval '3 hours' where r.id = $1`, [stale.id]);
    const ofA = await beginRun(db.pool, { source: 'profiles', clock: '2026-10-01T12:00:00Z', project: 'a' });
    expect(await status(db.pool, stale.id)).toBe('running');
    await failRun(db.pool, ofA.id, 'test: done');
    // the control: the rule itself works, within the project
    const ofB = await beginRun(db.pool, { source: 'profiles', clock: '2026-10-01T12:00:00Z', project: 'b' });
    expect(await status(db.pool, stale.id)).toBe('abandoned');
    await failRun(db.pool, ofB.id, 'test: done');
  });

  it("A's begin_run leaves B's run alone when B's loader session is gone; B's own begin_run abandons it", async () => {
    const loader = new pg.Client({ connectionString: db.url });
    await loader.connect();
    const orphan = await beginRun(loader, { source: 'profiles', clock: '2026-10-02T12:00:00Z', project: 'b' });
    await loader.end();
    // the session is gone once the server has removed it from pg_stat_activity
    const pid = Number((orphan as unknown as { options: { owner: { pid: number } } }).options?.owner?.pid ?? 0);
    for (let i = 0; i < 100; i++) {
      const { rows } = await db.pool.query('select 1 from pg_catalog.pg_stat_activity a where a.pid = $1', [pid]);
      if (rows.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const ofA = await beginRun(db.pool, { source: 'profiles', clock: '2026-10-02T12:00:00Z', project: 'a' });
    expect(await status(db.pool, orphan.id)).toBe('running');
    await failRun(db.pool, ofA.id, 'test: done');
    const ofB = await beginRun(db.pool, { source: 'profiles', clock: '2026-10-02T12:00:00Z', project: 'b' });
    expect(await status(db.pool, orphan.id)).toBe('abandoned');
    await failRun(db.pool, ofB.id, 'test: done');
  });

  it("A's finish at a later clock keeps the day partitions B's horizon (at B's own last clock) still holds", async () => {
    // B's last run: clock 2026-09-10, ledger retention 7 days: B keeps 2026-09-04 .. 2026-09-10
    const ofB = [ev('open', 'b1', '2026-09-05T10:00:00Z', 'p1'), ev('open', 'b2', '2026-09-09T10:00:00Z', 'p2')];
    await eventsRun(db.pool, 'b', '2026-09-10T12:00:00Z', ofB, true);
    const before = await ledgerOf(db.pool, 'b');
    expect(before).toEqual(['b1 2026-09-05', 'b2 2026-09-09']);
    // A syncs five days later, twice (the second finish sees A's first run succeeded at the later clock)
    const ofA = [ev('open', 'a1', '2026-09-14T10:00:00Z', 'q1')];
    await eventsRun(db.pool, 'a', '2026-09-15T12:00:00Z', ofA, true);
    await eventsRun(db.pool, 'a', '2026-09-15T12:30:00Z', ofA, true);
    expect(await ledgerOf(db.pool, 'b')).toEqual(before);
  });

  it("A's finish deletes its own ledger rows from the shared horizon's day up to its own horizon (B keeps longer)", async () => {
    // B keeps 30 days at the same clock; A kept 30 days, then keeps 7: the days between are A's to delete
    await writeSetting(db.pool, 'events.ledger_retention', '30 days', 'b');
    await writeSetting(db.pool, 'events.ledger_retention', '30 days', 'a');
    const clock = '2026-11-30T12:00:00Z';
    await eventsRun(db.pool, 'b', clock, [ev('open', 'b9', '2026-11-01T10:00:00Z', 'r1')], true);
    // 2026-11-01 is the first day of a 30-day horizon ending 2026-11-30: the shared horizon's own day
    const ofA = [
      ev('open', 'a7', '2026-11-01T09:00:00Z', 's1'),
      ev('open', 'a8', '2026-11-20T09:00:00Z', 's2'),
      ev('open', 'a9', '2026-11-29T09:00:00Z', 's3'),
    ];
    await eventsRun(db.pool, 'a', clock, ofA, true);
    expect(await ledgerOf(db.pool, 'a')).toEqual(['a7 2026-11-01', 'a8 2026-11-20', 'a9 2026-11-29']);
    await writeSetting(db.pool, 'events.ledger_retention', '7 days', 'a');
    // an incremental run (a REPLACE would rewrite the ledger of its window itself): only the retention deletes
    const add = await eventsRun(db.pool, 'a', '2026-11-30T12:30:00Z', [ev('open', 'a9', '2026-11-30T09:00:00Z', 's4')]);
    expect(add.mode).toBe('incremental');
    expect(await ledgerOf(db.pool, 'a')).toEqual(['a9 2026-11-29', 'a9 2026-11-30']);
    expect(await ledgerOf(db.pool, 'b')).toEqual(['b9 2026-11-01']);
  });

  it('the loop ADD and the set ADD apply an event whose key only another project holds, in its ledger or its legacy ledger', async () => {
    const legacyKey = async (name: string, time: string, insertId: string) =>
      (
        await db.pool.query<{ k: string }>('select mixpanel_sync.legacy_event_key($1, $2, $3, $4::jsonb)::text as k', [
          name,
          at(time),
          insertId,
          '{}',
        ])
      ).rows[0]!.k;
    const legacy = (project: string, user: string, key: string, day: string) =>
      db.pool.query(
        `insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
         values (mixpanel_sync.project_id($1), $2, $3::uuid, $4::date, 'open', $4::date + time '10:00', 0)`,
        [project, user, key, day],
      );
    for (const path of ['loop', 'set'] as const) {
      await writeSetting(db.pool, 'events.upsert_path', path, 'a');
      const day = path === 'loop' ? '2026-08-10' : '2026-08-20';
      const clock = `${day}T12:00:00Z`;
      // B's ledger holds the key of A's event e3 (same distinct_id and $insert_id)
      await eventsRun(db.pool, 'b', clock, [ev('open', `shared-${path}`, `${day}T09:30:00Z`, `l3-${path}`)], true);
      await eventsRun(db.pool, 'a', clock, [ev('open', `shared-${path}`, `${day}T08:00:00Z`, `l1-${path}`)], true);
      // after the full runs (a REPLACE clears the legacy rows of its window): A's legacy ledger holds a row (so A's
      // parse computes legacy keys); B's holds the legacy key of A's event e2
      await legacy('a', `a-legacy-${path}`, '00000000-0000-0000-0000-0000000000a1', day);
      await legacy('b', `shared-${path}`, await legacyKey('open', `${day}T09:00:00Z`, `l2-${path}`), day);
      const add = await eventsRun(db.pool, 'a', `${day}T12:10:00Z`, [
        ev('open', `shared-${path}`, `${day}T09:00:00Z`, `l2-${path}`),
        ev('open', `shared-${path}`, `${day}T09:30:00Z`, `l3-${path}`),
      ]);
      expect([path, add.mode, Number(add.applied), Number(add.duplicates)]).toEqual([path, 'incremental', 2, 0]);
    }
    await writeSetting(db.pool, 'events.upsert_path', 'set', 'a');
  });

  it("A's finish leaves B's legacy ledger rows below A's horizon", async () => {
    await db.pool.query(
      `insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
       values (mixpanel_sync.project_id('b'), 'b-old', '00000000-0000-0000-0000-0000000000b6', '2026-07-01', 'open', '2026-07-01 10:00Z', 0)`,
    );
    await eventsRun(db.pool, 'a', '2026-07-20T12:00:00Z', [ev('open', 'a-x', '2026-07-19T10:00:00Z', 't1')], true);
    const { rows } = await db.pool.query(
      `select 1 from mixpanel_sync.event_ledger_legacy g where g.project_id = mixpanel_sync.project_id('b') and g.distinct_id = 'b-old'`,
    );
    expect(rows.length).toBe(1);
  });

  it("a full run of A that applies nothing: A's watermark is not taken from B's rows, and B's watermark row stays", async () => {
    const watermarks = () =>
      db.pool
        .query<{ project: string; watermark: string }>(
          `select p.name as project, w.watermark::text from mixpanel_sync.sync_watermarks w
           join mixpanel_sync.projects p on p.id = w.project_id where w.source = 'events' and p.name in ('a', 'b') order by 1`,
        )
        .then((r) => r.rows);
    // a fresh pair: project c has no rows at all; B's events lie 50 days before c's clock, before c's 45-day window
    await createProject(db.pool, 'c');
    await eventsRun(db.pool, 'b', '2026-05-01T12:00:00Z', [ev('open', 'b-w', '2026-04-30T10:00:00Z', 'w1')], true);
    const before = await watermarks();
    const empty = await eventsRun(db.pool, 'c', '2026-06-20T12:00:00Z', [], true);
    expect([empty.mode, Number(empty.applied)]).toEqual(['full', 0]);
    const { rows } = await db.pool.query(
      `select w.watermark from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id('c') and w.source = 'events'`,
    );
    expect(rows, 'c holds no events: no watermark row').toEqual([]);
    expect(await watermarks()).toEqual(before);
  });

  it("identity_cluster lists the project's links only, when another project links a device to the same user", async () => {
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'identity.mode', 'simplified', project);
    const signup = (device: string, insertId: string) => ({
      event: 'signup',
      properties: {
        distinct_id: 'same-user',
        time: at('2026-04-10T10:00:00Z'),
        $insert_id: insertId,
        $device_id: device,
        $user_id: 'same-user',
      },
    });
    await eventsRun(db.pool, 'b', '2026-04-11T12:00:00Z', [signup('DB', 'v1')], true);
    await eventsRun(db.pool, 'a', '2026-04-11T12:00:00Z', [signup('DA', 'v2')], true);
    const { rows } = await db.pool.query<{ member: string }>(
      `select c.member from mixpanel_sync.identity_cluster(mixpanel_sync.project_id('a'), 'same-user') c order by 1`,
    );
    expect(rows.map((r) => r.member)).toEqual(['$device:DA', 'same-user']);
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'identity.mode', 'off', project);
  });

  it("A's finish prunes A's old runs only: B's run older than A's runs.retention stays until B's own finish", async () => {
    const old = await beginRun(db.pool, { source: 'profiles', clock: '2026-03-01T12:00:00Z', project: 'b' });
    await failRun(db.pool, old.id, 'test: an old run');
    await db.pool.query(`update mixpanel_sync.sync_runs r set finished_at = now() - interval '100 days' where r.id = $1`, [old.id]);
    const exists = async () => (await db.pool.query('select 1 from mixpanel_sync.sync_runs r where r.id = $1', [old.id])).rows.length === 1;
    await eventsRun(db.pool, 'a', '2026-03-02T12:00:00Z', [ev('open', 'a-p', '2026-03-01T10:00:00Z', 'u1')], true);
    expect(await exists()).toBe(true);
    // the control: B's own finish prunes it (runs.retention 90 days)
    await eventsRun(db.pool, 'b', '2026-03-02T12:00:00Z', [ev('open', 'b-p', '2026-03-01T10:00:00Z', 'u2')], true);
    expect(await exists()).toBe(false);
  });

  it("the REPLACE guard of a project's full run counts that project's stored events, not another project's", async () => {
    // B stores 120 events on 2026-02-09 (a guarded day: at least events.replace_guard_min_events, 100)
    const many = Array.from({ length: 120 }, (_, i) =>
      ev('open', `g${i % 7}`, `2026-02-09T${String(i % 24).padStart(2, '0')}:00:00Z`, `g${i}`),
    );
    await eventsRun(db.pool, 'b', '2026-02-10T12:00:00Z', many, true);
    await createProject(db.pool, 'd');
    // d's first full runs over the same days: with no event, then with one; neither is refused (MP001)
    const empty = await eventsRun(db.pool, 'd', '2026-02-10T12:00:00Z', [], true);
    expect([empty.status, Number(empty.applied)]).toEqual(['succeeded', 0]);
    const one = await eventsRun(db.pool, 'd', '2026-02-10T12:05:00Z', [ev('open', 'd1', '2026-02-09T10:00:00Z', 'd1')], true);
    expect([one.status, Number(one.applied)]).toEqual(['succeeded', 1]);
  });

  it("the REPLACE guard weighs what a project's apply left in its own days, not another project's events of them", async () => {
    // E and F each store 120 events on 2026-02-19 (a guarded day). E's full run keeps 10 of them: refused (MP001),
    // whatever F holds on that day; F's rows and E's stay as they were.
    const day = (p: string, n: number) =>
      Array.from({ length: n }, (_, i) => ev('open', `${p}${i % 7}`, `2026-02-19T${String(i % 24).padStart(2, '0')}:00:00Z`, `${p}${i}`));
    await createProject(db.pool, 'e');
    await createProject(db.pool, 'f');
    await eventsRun(db.pool, 'e', '2026-02-20T12:00:00Z', day('e', 120), true);
    await eventsRun(db.pool, 'f', '2026-02-20T12:00:00Z', day('f', 120), true);
    const stored = async () =>
      (
        await db.pool.query<{ p: string; n: string }>(
          `select p.name as p, sum(d.event_count)::text as n from mixpanel_sync.events_daily d
           join mixpanel_sync.projects p on p.id = d.project_id where p.name in ('e', 'f') group by p.name order by p.name`,
        )
      ).rows;
    expect(await stored()).toEqual([
      { p: 'e', n: '120' },
      { p: 'f', n: '120' },
    ]);
    const run = await beginRun(db.pool, { source: 'events', clock: '2026-02-20T12:05:00Z', forceFull: true, project: 'e' });
    await stageRecords(db.pool, 'events', run.id, day('e', 10));
    const refusal = await finishRun(db.pool, run.id).then(
      () => null,
      (error: { code?: string; message: string }) => ({ code: error.code, message: error.message }),
    );
    expect(refusal).toMatchObject({ code: 'MP001', message: expect.stringContaining('would shrink 2026-02-19 from 120 to 10 events') });
    await failRun(db.pool, run.id, 'test: refused');
    expect(await stored()).toEqual([
      { p: 'e', n: '120' },
      { p: 'f', n: '120' },
    ]);
  });

  it("begin_run takes a project's own timezone when given it, and refuses another (MP004)", async () => {
    await createProject(db.pool, 'ny', { timezone: 'America/New_York' });
    const same = await beginRun(db.pool, {
      source: 'profiles',
      clock: '2026-01-05T12:00:00Z',
      project: 'ny',
      projectTimezone: 'America/New_York',
    });
    expect(same.project_timezone).toBe('America/New_York');
    await failRun(db.pool, same.id, 'test: done');
    const other = await beginRun(db.pool, {
      source: 'profiles',
      clock: '2026-01-05T12:00:00Z',
      project: 'ny',
      projectTimezone: 'Europe/Paris',
    }).catch((error) => error);
    expect(other.code).toBe('MP004');
  });

  it("A's REPLACE deletes and rewrites A's rows only, when B holds rows of the same keys (raw storage on)", async () => {
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'events.store_raw', 'on', project);
    const e = (user: string, time: string, insertId: string, plan: string) => ({
      event: 'open',
      properties: { distinct_id: user, time: at(time), $insert_id: insertId, plan },
    });
    const same = [e('k1', '2026-01-20T10:00:00Z', 'x1', 'free'), e('k2', '2026-01-20T11:00:00Z', 'x2', 'free')];
    await eventsRun(db.pool, 'b', '2026-01-21T12:00:00Z', same, true);
    await eventsRun(db.pool, 'a', '2026-01-21T12:00:00Z', same, true);
    const rowsOfB = () =>
      db.pool
        .query<{ r: string }>(
          `select 'daily ' || d.distinct_id || ' ' || d.event_count as r from mixpanel_sync.events_daily d
           where d.project_id = mixpanel_sync.project_id('b') and d.day = '2026-01-20'
           union all
           select 'ledger ' || l.distinct_id || ' ' || (l.properties ->> 'plan') from mixpanel_sync.event_ledger l
           where l.project_id = mixpanel_sync.project_id('b') and l.day = '2026-01-20' order by 1`,
        )
        .then((r) => r.rows.map((row) => row.r));
    const before = await rowsOfB();
    expect(before).toEqual(['daily k1 1', 'daily k2 1', 'ledger k1 free', 'ledger k2 free']);
    // A's REPLACE of the same window: k1's event gone, k2's re-sent with other properties plus a second event
    const replaced = await eventsRun(
      db.pool,
      'a',
      '2026-01-21T12:30:00Z',
      [e('k2', '2026-01-20T11:00:00Z', 'x2', 'paid'), e('k2', '2026-01-20T11:30:00Z', 'x3', 'paid')],
      true,
    );
    expect(replaced.mode).toBe('full');
    expect(await rowsOfB()).toEqual(before);
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'events.store_raw', 'off', project);
  });

  it("the loop REPLACE clears A's legacy ledger rows of its window, not B's of the same distinct_id and key", async () => {
    await writeSetting(db.pool, 'events.upsert_path', 'loop', 'a');
    await eventsRun(db.pool, 'a', '2026-01-11T12:00:00Z', [ev('open', 'lg', '2026-01-10T10:00:00Z', 'y1')], true);
    for (const project of ['a', 'b'])
      await db.pool.query(
        `insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
         values (mixpanel_sync.project_id($1), 'lg', '00000000-0000-0000-0000-0000000000c3', '2026-01-10', 'open', '2026-01-10 09:00Z', 0)`,
        [project],
      );
    await eventsRun(db.pool, 'a', '2026-01-11T12:30:00Z', [ev('open', 'lg', '2026-01-10T10:00:00Z', 'y1')], true);
    const { rows } = await db.pool.query<{ project: string }>(
      `select p.name as project from mixpanel_sync.event_ledger_legacy g join mixpanel_sync.projects p on p.id = g.project_id
       where g.distinct_id = 'lg' order by 1`,
    );
    expect(rows.map((r) => r.project)).toEqual(['b']);
    await writeSetting(db.pool, 'events.upsert_path', 'set', 'a');
  });

  it("A's identity step moves and drops A's ledger rows of an alias only, whatever B holds under the alias or the user", async () => {
    await writeSetting(db.pool, 'identity.mode', 'simplified', 'a');
    const open = (user: string, time: string, insertId: string) => ev('open', user, `2025-12-10T${time}:00Z`, insertId);
    const snapshot = (project: string) =>
      db.pool
        .query<{ r: string }>(
          `select 'ledger ' || l.distinct_id || ' ' || l.event_name || ' ' || to_char(l.event_time at time zone 'UTC', 'HH24:MI') as r from mixpanel_sync.event_ledger l
           where l.project_id = mixpanel_sync.project_id($1) and l.day = '2025-12-10'
           union all
           select 'daily ' || d.distinct_id || ' ' || d.event_name || ' ' || d.event_count from mixpanel_sync.events_daily d
           where d.project_id = mixpanel_sync.project_id($1) and d.day = '2025-12-10' order by 1`,
          [project],
        )
        .then((r) => r.rows.map((row) => row.r));
    // B (identity off): k1 and k2 under the device, k3 under the user
    await eventsRun(
      db.pool,
      'b',
      '2025-12-11T12:00:00Z',
      [open('$device:R', '10:00', 'z1'), open('$device:R', '10:10', 'z2'), open('ru', '10:20', 'z3')],
      true,
    );
    const ofB = await snapshot('b');
    // A: k1 under the device and under the user, k2 and k3 under the device; no link learned yet
    await eventsRun(
      db.pool,
      'a',
      '2025-12-11T12:00:00Z',
      [open('$device:R', '10:00', 'z1'), open('ru', '10:00', 'z1'), open('$device:R', '10:10', 'z2'), open('$device:R', '10:20', 'z3')],
      true,
    );
    // A learns $device:R -> ru: k1's device row is dropped (ru holds it), k2 and k3 move to ru
    const signup = {
      event: 'signup',
      properties: { distinct_id: 'ru', time: at('2025-12-10T11:00:00Z'), $insert_id: 'z9', $device_id: 'R', $user_id: 'ru' },
    };
    await eventsRun(db.pool, 'a', '2025-12-11T12:30:00Z', [signup]);
    expect(await snapshot('a')).toEqual([
      'daily ru open 3',
      'daily ru signup 1',
      'ledger ru open 10:00',
      'ledger ru open 10:10',
      'ledger ru open 10:20',
      'ledger ru signup 11:00',
    ]);
    expect(await snapshot('b')).toEqual(ofB);
    await writeSetting(db.pool, 'identity.mode', 'off', 'a');
  });

  it("A's $merge re-points A's links whose canonical id changed, not B's links to the same id (original ID merge)", async () => {
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'identity.mode', 'original', project);
    const e = (name: string, user: string, time: string, insertId: string, extra: Record<string, unknown> = {}) => ({
      event: name,
      properties: { distinct_id: user, time: at(`2025-11-09T${time}:00Z`), $insert_id: insertId, ...extra },
    });
    const identify = e('$identify', 'm-late', '09:30', 'id1', { $anon_id: 'm-anon', $identified_id: 'm-late' });
    await eventsRun(db.pool, 'b', '2025-11-09T10:00:00Z', [e('view', 'm-anon', '09:00', 'n1'), identify], true);
    const links = (project: string) =>
      db.pool
        .query<{ r: string }>(
          `select l.alias || ' -> ' || l.canonical as r from mixpanel_sync.identity_links l
           where l.project_id = mixpanel_sync.project_id($1) and l.alias like 'm-%' order by 1`,
          [project],
        )
        .then((r) => r.rows.map((row) => row.r));
    const ofB = await links('b');
    expect(ofB).toEqual(['m-anon -> m-late', 'm-late -> m-late']);
    await eventsRun(
      db.pool,
      'a',
      '2025-11-09T10:00:00Z',
      [identify, e('$create_alias', 'm-early', '08:10', 'al1', { alias: 'm-alias' })],
      true,
    );
    // m-early was identified first: the joined cluster's canonical id; m-anon's link moves from m-late to it
    await eventsRun(db.pool, 'a', '2025-11-09T11:00:00Z', [e('$merge', 'm-late', '10:30', 'm1', { $distinct_ids: ['m-alias', 'm-anon'] })]);
    expect(await links('a')).toEqual(['m-alias -> m-early', 'm-anon -> m-early', 'm-early -> m-early', 'm-late -> m-early']);
    expect(await links('b')).toEqual(ofB);
    for (const project of ['a', 'b']) await writeSetting(db.pool, 'identity.mode', 'off', project);
  });

  it("an events run reads and removes the project's events watermark, never its profiles watermark", async () => {
    await createProject(db.pool, 'wm');
    const marks = () =>
      db.pool
        .query<{ r: string }>(
          `select w.source || ' ' || w.watermark::text as r from mixpanel_sync.sync_watermarks w
           where w.project_id = mixpanel_sync.project_id('wm') order by 1`,
        )
        .then((r) => r.rows.map((row) => row.r));
    // a profiles watermark row (sync_watermarks' check allows the source; no function writes one today), physically
    // before the events row and later than any event
    await db.pool.query(
      `insert into mixpanel_sync.sync_watermarks (project_id, source, watermark) values (mixpanel_sync.project_id('wm'), 'profiles', '2025-10-20 12:00Z')`,
    );
    await eventsRun(db.pool, 'wm', '2025-10-10T12:00:00Z', [ev('open', 'w1', '2025-10-10T08:00:00Z', 'wm1')], true);
    const both = await marks();
    expect(both.map((m) => m.split(' ')[0])).toEqual(['events', 'profiles']);
    // the next events run starts from the events watermark (2025-10-10 08:00), not the profiles one
    const next = await eventsRun(db.pool, 'wm', '2025-10-10T13:00:00Z', [ev('open', 'w1', '2025-10-10T09:00:00Z', 'wm2')]);
    expect([next.mode, next.watermark_before?.toISOString()]).toEqual(['incremental', '2025-10-10T08:00:00.000Z']);
    // a full run over a window holding no event and nothing before it removes the events watermark row only
    const empty = await beginRun(db.pool, {
      source: 'events',
      clock: '2025-12-31T12:00:00Z',
      forceFull: true,
      allowShrink: true,
      project: 'wm',
    });
    await db.pool.query(`delete from mixpanel_sync.events_daily d where d.project_id = mixpanel_sync.project_id('wm')`);
    await finishRun(db.pool, empty.id);
    expect(await marks()).toEqual([both[1]]);
  });

  it("the shared horizon takes another project's clock from its last succeeded events run, not its later profiles or failed runs", async () => {
    // two fresh projects (the others' last runs lie in 2026: their horizons are later than these days)
    await createProject(db.pool, 'hza');
    await createProject(db.pool, 'hzb');
    // hzb's last succeeded events run: 2025-08-10 (ledger kept from 2025-08-04); then a profiles run and a failed
    // events run of hzb at 2025-08-20
    await eventsRun(db.pool, 'hzb', '2025-08-10T12:00:00Z', [ev('open', 'hz', '2025-08-05T10:00:00Z', 'h1')], true);
    const before = await ledgerOf(db.pool, 'hzb');
    expect(before).toEqual(['hz 2025-08-05']);
    const profiles = await beginRun(db.pool, { source: 'profiles', clock: '2025-08-20T12:00:00Z', project: 'hzb' });
    await stageRecords(db.pool, 'profiles', profiles.id, [{ $distinct_id: 'hz', $properties: {} }]);
    await finishRun(db.pool, profiles.id);
    const failed = await beginRun(db.pool, { source: 'events', clock: '2025-08-20T12:00:00Z', project: 'hzb' });
    await failRun(db.pool, failed.id, 'test: a failed run at a later clock');
    // hza's finish at 2025-08-20 (its own horizon 2025-08-14)
    await eventsRun(db.pool, 'hza', '2025-08-20T12:00:00Z', [ev('open', 'a-hz', '2025-08-19T10:00:00Z', 'h2')], true);
    expect(await ledgerOf(db.pool, 'hzb')).toEqual(before);
  });
});
