// Several projects in one database (issue 13 part 3, docs/projects.md): one project's runs never touch another's
// rows, and two projects' runs proceed at the same time. SQL-level (no CLI): projects 'a' and 'b' besides 'default',
// with colliding distinct_ids, $insert_ids (so colliding event keys), cohort ids and identity links.
// B's rows are read here with plain SQL (every table, by project_id or by B's runs), not through table_snapshot, so the
// expectation (B before A's runs) does not depend on the code under test.
// Seen failing, each mutant written once into a scratch copy of migrations/current/ (the test's database migrated from it):
//   - killed: replace-daily-no-project (upsert_subscribers_incremental: `d.project_id = pid and` dropped from the
//     window's events_daily rows of daily_diff): B's rows are safe (the DELETE/INSERT/UPDATE that follow match on
//     project_id too) but A's full run took B's equal rows for its own and did not write them: A's events_daily
//     against the rows computed here (test 1);
//   - killed: reattribute-daily-no-project (reattribute_identities: `d.project_id = ... and` dropped from alias_daily's
//     delete): A's identity step (it learned $device:D2 -> u3) deleted B's $device:D2 rows (test 1);
//   - killed: merge-loop-update-no-project (merge_daily_row_loop's UPDATE without `d.project_id = … and`, as the first
//     version of this migration had it: the loop REPLACE of A rewrote B's (u1, 2026-11-18, open) to A's count; found by
//     property-tests/project-isolation.test.ts) (test 1, "events_daily of b");
//   - killed: forget-no-project (forget_event_names: `d.project_id = pid and` dropped from the events_daily delete):
//     A's forget_event_names(['buy'], 'a') deleted B's buy rows (test 1);
//   - killed: add-ledger-no-project (upsert_subscribers_incremental_add: `l.project_id = pid and` dropped from the own-day
//     ledger probe of not_on_day): A's incremental events whose keys B's ledger holds counted as duplicates (test 1, A's
//     applied count);
//   - killed: staged-truncate-per-project (drop_staged_rows: "alone" counted only the run's own project's running runs):
//     A's finish truncated the staging tables and B's staged lines were gone (test 2);
//   - killed: finish-global-lock (finish_run's advisory key 'mixpanel_sync.finish_run' for every project): B's finish
//     waited for A's open finish and failed with 55P03 under lock_timeout = 5s (test 3);
//   - killed: analyze-waits (analyze_run_events without skip_locked): B's finish waited for the ANALYZE lock A's open
//     finish holds on run_events, 55P03 (test 3);
//   - killed: begin-global-lock (begin_run's advisory key 'mixpanel_sync.begin_run:' || source, as before projects):
//     B's begin_run waited for A's open one, 55P03 (the begin_run test);
//   - killed: drop-project-no-ledger (drop_project without its event_ledger delete): the dropped project's ledger rows
//     stayed (the drop_project test).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectsTotalLine, readProjectsStatus } from '../cli/read-status.ts';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { projectEvent as ev, projectEventsRun as eventsRun } from './run-fixtures.ts';
import { runVerifyScript, runVerifyScripts } from '../cli/verify.ts';
import { chosenProject } from '../loader/loader-cli.ts';
import {
  beginCohortsRun,
  beginRun,
  createProject,
  dropProject,
  failRun,
  finishCohortsRun,
  finishRun,
  forgetEventNames,
  type Queryable,
  readProject,
  stageCohortMembers,
  stageCohorts,
  stageRecords,
  writeSetting,
} from './sync-api.ts';

let db: TestDatabase;
const clock = new Date('2026-11-20T12:00:00Z');

/** Every table with a project_id, and the run-owned tables read through their run's project. */
const PROJECT_TABLES = [
  'events_daily',
  'event_ledger',
  'event_ledger_legacy',
  'subscribers',
  'subscriber_properties',
  'identity_links',
  'cohorts',
  'cohort_members',
  'sync_runs',
  'sync_watermarks',
  'sync_settings',
  'subscriber_count',
  'spot_checks',
] as const;
const RUN_TABLES = ['sync_rejects', 'run_events', 'staged_events', 'staged_profiles', 'staged_cohorts', 'staged_cohort_members'] as const;

/** Every row of the project in every table, as sorted JSON texts per table (plain SQL, independent of table_snapshot). */
async function rowsOf(client: Queryable, project: string): Promise<Record<string, string[]>> {
  const { id } = await readProject(client, project);
  const rows: Record<string, string[]> = {};
  for (const table of PROJECT_TABLES) {
    const result = await client.query<{ r: string }>(
      `select to_jsonb(t)::text as r from mixpanel_sync.${table} t where t.project_id = $1 order by 1`,
      [id],
    );
    rows[table] = result.rows.map((row) => row.r);
  }
  for (const table of RUN_TABLES) {
    const result = await client.query<{ r: string }>(
      `select to_jsonb(t)::text as r from mixpanel_sync.${table} t
       where t.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = $1) order by 1`,
      [id],
    );
    rows[table] = result.rows.map((row) => row.r);
  }
  return rows;
}

/**
 * events_daily of a project's events as this file computes it: Simplified ID Merge ($device:<d> joins the $user_id of
 * an event that carries both), one count per (canonical id, UTC day, name), each $insert_id once.
 */
function expectedDaily(events: readonly ReturnType<typeof ev>[]): string[] {
  const canonical = new Map<string, string>();
  for (const e of events) {
    const p = e.properties as Record<string, unknown>;
    if (typeof p.$device_id === 'string' && typeof p.$user_id === 'string') canonical.set(`$device:${p.$device_id}`, p.$user_id);
  }
  const counts = new Map<string, number>();
  const seen = new Set<string>();
  for (const e of events) {
    if (seen.has(e.properties.$insert_id)) continue;
    seen.add(e.properties.$insert_id);
    const user = canonical.get(e.properties.distinct_id) ?? e.properties.distinct_id;
    const key = JSON.stringify([user, new Date(e.properties.time * 1000).toISOString().slice(0, 10), e.event]);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([key, n]) => `${key} ${n}`).sort();
}

async function dailyOf(client: Queryable, project: string): Promise<string[]> {
  const { rows } = await client.query<{ r: string }>(
    `select jsonb_build_array(d.distinct_id, d.day::text, d.event_name)::text || ' ' || d.event_count as r
     from mixpanel_sync.events_daily d where d.project_id = mixpanel_sync.project_id($1)`,
    [project],
  );
  return rows.map((row) => row.r.replaceAll(', ', ',')).sort();
}

async function profilesRun(client: Queryable, project: string, profiles: readonly unknown[]): Promise<void> {
  const run = await beginRun(client, { source: 'profiles', clock, project });
  await stageRecords(client, 'profiles', run.id, profiles);
  await finishRun(client, run.id);
}

async function cohortsRun(client: Queryable, project: string, members: Record<number, string[]>): Promise<void> {
  const run = await beginCohortsRun(client, clock, project);
  await stageCohorts(
    client,
    run.id,
    Object.keys(members).map((id) => ({ id: Number(id), name: `cohort ${id} of ${project}`, count: members[Number(id)]!.length })),
  );
  for (const [id, users] of Object.entries(members)) {
    await stageCohortMembers(
      client,
      run.id,
      Number(id),
      users.map((u) => ({ $distinct_id: u, $properties: {} })),
      true,
    );
  }
  await finishCohortsRun(client, run.id);
}

// B's data, then A's: the same distinct_ids, $insert_ids (same event keys), cohort id 7 and device D1.
const eventsOfB = [
  ev('open', 'u1', '2026-11-18T10:00:00Z', 'i1'),
  ev('open', 'u1', '2026-11-18T11:00:00Z', 'i2'),
  ev('buy', 'u2', '2026-11-19T09:00:00Z', 'i3'),
  ev('open', '$device:D1', '2026-11-19T08:00:00Z', 'i4', { $device_id: 'D1' }),
  ev('signup', 'u1', '2026-11-19T08:30:00Z', 'i5', { $device_id: 'D1', $user_id: 'u1' }),
  ev('open', 'b-only', '2026-11-20T07:00:00Z', 'i6'),
  ev('open', '$device:D2', '2026-11-20T06:00:00Z', 'i15', { $device_id: 'D2' }),
];
const eventsOfA = [
  ev('open', 'u1', '2026-11-18T10:00:00Z', 'i1'),
  ev('buy', 'u2', '2026-11-19T09:00:00Z', 'i3'),
  ev('buy', 'u2', '2026-11-19T09:30:00Z', 'i7'),
  ev('open', '$device:D1', '2026-11-19T08:00:00Z', 'i4', { $device_id: 'D1' }),
  ev('signup', 'u2', '2026-11-19T08:45:00Z', 'i8', { $device_id: 'D1', $user_id: 'u2' }),
  // A learns $device:D2 -> u3: its identity step moves the rows of $device:D2, which only B holds
  ev('signup', 'u3', '2026-11-20T06:30:00Z', 'i16', { $device_id: 'D2', $user_id: 'u3' }),
];
// A's incremental run: i2 and i6 are keys B's ledger holds (same distinct_id): new to A, so applied.
const incrementalOfA = [
  ev('open', 'u1', '2026-11-20T09:00:00Z', 'i9'),
  ev('open', 'u1', '2026-11-18T11:00:00Z', 'i2'),
  ev('open', 'b-only', '2026-11-20T07:00:00Z', 'i6'),
  ev('buy', 'u2', '2026-11-19T09:30:00Z', 'i7'),
];

beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 4 });
  await createProject(db.pool, 'a');
  await createProject(db.pool, 'b');
  for (const project of ['a', 'b']) await writeSetting(db.pool, 'identity.mode', 'simplified', project);
  // the day partitions the runs write, created up front: a finish then creates none (a partition created by one
  // finish is attached under a lock held to its commit)
  await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions('2026-11-14', '2026-11-21')`);
  await eventsRun(db.pool, 'b', clock, eventsOfB, true);
  await profilesRun(db.pool, 'b', [
    { $distinct_id: 'u1', $properties: { $name: 'B one' } },
    { $distinct_id: 'u2', $properties: { $name: 'B two' } },
  ]);
  await cohortsRun(db.pool, 'b', { 7: ['u1', 'u2'] });
});
afterAll(async () => {
  await db?.drop();
});

describe('several projects in one database', () => {
  it("A's runs (full, incremental, profiles, identity on, cohorts, a failed run, forget_event_names) change no row of B", async () => {
    const before = await rowsOf(db.pool, 'b');
    // every table B's runs write (its legacy ledger and spot checks stay empty here)
    for (const table of PROJECT_TABLES.filter((t) => t !== 'event_ledger_legacy' && t !== 'spot_checks'))
      expect(before[table]!.length, `B holds rows of ${table}`).toBeGreaterThan(0);

    const full = await eventsRun(db.pool, 'a', clock, eventsOfA, true);
    expect(full.status).toBe('succeeded');
    expect(await dailyOf(db.pool, 'a')).toEqual(expectedDaily(eventsOfA));
    const incremental = await eventsRun(db.pool, 'a', clock, incrementalOfA);
    expect(incremental.mode).toBe('incremental');
    // i9, i2 and i6 are new to A (B holding i2 and i6 does not make them duplicates); i7 A already has
    expect(Number(incremental.applied)).toBe(3);
    // the row-at-a-time REPLACE too: A's full run again through the loop path, which sets (u1, 11-18, open) back to 1
    await writeSetting(db.pool, 'events.upsert_path', 'loop', 'a');
    expect((await eventsRun(db.pool, 'a', clock, eventsOfA, true)).status).toBe('succeeded');
    expect(await dailyOf(db.pool, 'a')).toEqual(expectedDaily(eventsOfA));
    await writeSetting(db.pool, 'events.upsert_path', 'set', 'a');
    await profilesRun(db.pool, 'a', [
      { $distinct_id: 'u1', $properties: { $name: 'A one' } },
      { $distinct_id: 'u3', $properties: { $name: 'A three' } },
    ]);
    await cohortsRun(db.pool, 'a', { 7: ['u2', 'u3'] });
    const failing = await beginRun(db.pool, { source: 'events', clock, project: 'a' });
    await stageRecords(db.pool, 'events', failing.id, [ev('open', 'u1', '2026-11-20T10:00:00Z', 'i10')]);
    await failRun(db.pool, failing.id, 'test: a failed run of A');
    await writeSetting(db.pool, 'events.only', '["open", "signup"]', 'a');
    const forgotten = await forgetEventNames(db.pool, ['buy'], 'a');

    // A's runs did write A's rows (the comparison below is not vacuous)
    const { rows: aDaily } = await db.pool.query<{ n: number }>(
      `select count(*)::int as n from mixpanel_sync.events_daily d where d.project_id = mixpanel_sync.project_id('a')`,
    );
    expect(aDaily[0]!.n).toBeGreaterThan(0);
    const after = await rowsOf(db.pool, 'b');
    for (const table of Object.keys(before)) expect(after[table], `${table} of b`).toEqual(before[table]);
    expect(forgotten.daily_rows).toBeGreaterThan(0);
  });

  it("A's finish leaves B's staged lines alone (staging is truncated only when no run of any project is running)", async () => {
    const runOfB = await beginRun(db.pool, { source: 'events', clock, project: 'b' });
    await stageRecords(db.pool, 'events', runOfB.id, [ev('open', 'u1', '2026-11-20T11:00:00Z', 'i11')]);
    const staged = async () =>
      (await db.pool.query<{ n: number }>('select count(*)::int as n from mixpanel_sync.staged_events s where s.run_id = $1', [runOfB.id]))
        .rows[0]!.n;
    expect(await staged()).toBe(1);
    await eventsRun(db.pool, 'a', clock, [ev('open', 'u1', '2026-11-20T11:00:00Z', 'i12')]);
    expect(await staged()).toBe(1);
    const finished = await finishRun(db.pool, runOfB.id);
    expect(Number(finished.applied)).toBe(1);
  });

  it("two projects' finish_run proceed at the same time: B's finishes while A's finish is open in a transaction", async () => {
    const first = await db.pool.connect();
    const second = await db.pool.connect();
    try {
      const runOfA = await beginRun(first, { source: 'events', clock, project: 'a' });
      await stageRecords(first, 'events', runOfA.id, [ev('open', 'u1', '2026-11-20T11:30:00Z', 'i13')]);
      const runOfB = await beginRun(second, { source: 'events', clock, project: 'b' });
      await stageRecords(second, 'events', runOfB.id, [ev('open', 'u2', '2026-11-20T11:30:00Z', 'i14')]);
      await first.query('begin');
      expect((await finishRun(first, runOfA.id)).status).toBe('succeeded');
      await second.query(`set lock_timeout = '5s'`);
      const finishedB = await finishRun(second, runOfB.id);
      expect(finishedB.status).toBe('succeeded');
      await first.query('commit');
      const { rows } = await db.pool.query<{ project: string; n: number }>(
        `select p.name as project, count(*)::int as n from mixpanel_sync.event_ledger l join mixpanel_sync.projects p on p.id = l.project_id
         where l.run_id in ($1, $2) group by 1 order by 1`,
        [runOfA.id, runOfB.id],
      );
      expect(rows).toEqual([
        { project: 'a', n: 1 },
        { project: 'b', n: 1 },
      ]);
    } finally {
      await first.query('rollback').catch(() => {});
      first.release();
      second.release();
    }
  });

  it("two projects' begin_run proceed at the same time: B's begins while A's begin_run is open in a transaction", async () => {
    const first = await db.pool.connect();
    const second = await db.pool.connect();
    try {
      await first.query('begin');
      const runOfA = await beginRun(first, { source: 'profiles', clock, project: 'a' });
      await second.query(`set lock_timeout = '5s'`);
      const runOfB = await beginRun(second, { source: 'profiles', clock, project: 'b' });
      expect(runOfB.status).toBe('running');
      await first.query('commit');
      await failRun(db.pool, runOfA.id, 'test: begun only');
      await failRun(db.pool, runOfB.id, 'test: begun only');
    } finally {
      await first.query('rollback').catch(() => {});
      first.release();
      second.release();
    }
  });

  it('drop_project deletes every row of the project and nothing else; refused while one of its runs is running', async () => {
    await createProject(db.pool, 'c');
    await eventsRun(db.pool, 'c', clock, eventsOfB, true);
    await profilesRun(db.pool, 'c', [{ $distinct_id: 'u1', $properties: { $name: 'C one' } }]);
    await cohortsRun(db.pool, 'c', { 7: ['u1'] });
    const { id } = await readProject(db.pool, 'c');
    const others = { a: await rowsOf(db.pool, 'a'), b: await rowsOf(db.pool, 'b') };
    const running = await beginRun(db.pool, { source: 'events', clock, project: 'c' });
    expect((await dropProject(db.pool, 'c').catch((error) => error)).code).toBe('MP002');
    await failRun(db.pool, running.id, 'test: dropping the project');
    expect(await dropProject(db.pool, 'c')).toBeGreaterThan(0);
    for (const table of PROJECT_TABLES) {
      const { rows } = await db.pool.query<{ n: number }>(
        `select count(*)::int as n from mixpanel_sync.${table} t where t.project_id = $1`,
        [id],
      );
      expect({ table, n: rows[0]!.n }).toEqual({ table, n: 0 });
    }
    expect(await rowsOf(db.pool, 'a')).toEqual(others.a);
    expect(await rowsOf(db.pool, 'b')).toEqual(others.b);
    expect((await readProject(db.pool, 'nope').catch((error) => error)).code).toBe('MP004');
  });

  it('with several projects a call that names none is refused (MP004) with the names; so is an unknown name', async () => {
    const none = await beginRun(db.pool, { source: 'events', clock }).catch((error) => error);
    expect(none.code).toBe('MP004');
    expect(none.hint).toContain('a, b, default');
    const unknown = await beginRun(db.pool, { source: 'events', clock, project: 'nope' }).catch((error) => error);
    expect(unknown.code).toBe('MP004');
    expect(unknown.message).toContain("'nope'");
  });

  // verify/*.sql per project (issue 13: "the verify scripts run per project"): a DBA runs them on a database of several
  // projects with the session setting mixpanel_sync.project (npm run verify -- --project NAME, or PGOPTIONS for psql),
  // which project_id(null) reads. Here the three scripts that read per-project rows directly (the watermark row, a
  // legacy ledger row), for one project of a database holding three; .ci/run runs every script so on PostgreSQL 15,
  // through psql. Seen failing with project_id() not reading the setting (MP004), and before those scripts named the
  // project (a watermark subquery of two rows; an ADD that found B's legacy row in project 1).
  it('the verify scripts pass for a named project of a database holding several (the session setting); unnamed: MP004', async () => {
    const scripts = ['verify/finish_run_end_to_end.sql', 'verify/mutation_pins.sql', 'verify/run_lifecycle_pinned.sql'];
    const before = { a: await rowsOf(db.pool, 'a'), b: await rowsOf(db.pool, 'b') };
    const outcomes = await runVerifyScripts(db.url, scripts, () => {}, 'b');
    expect(outcomes.filter((o) => o.failure).map((o) => `${o.script}: ${o.failure}`)).toEqual([]);
    expect(outcomes.every((o) => o.passLines.length > 0)).toBe(true);
    const unnamed = await runVerifyScript(db.url, 'verify/run_lifecycle_pinned.sql');
    expect(unnamed.failure).toMatch(/holds 3 projects: name one/);
    // each script rolls back: no project's rows changed
    expect({ a: await rowsOf(db.pool, 'a'), b: await rowsOf(db.pool, 'b') }).toEqual(before);
  });

  // Seen failing with identity_cluster's `not exists (… l.project_id = … and l.alias = …)` turned into `or` (a survivor
  // of the quick mutation sample): with any link in the project, an unlinked id had no cluster at all.
  it("identity_cluster: an id no link of the project names is a cluster of one, though the project has links and another project's link names it", async () => {
    const b = (await readProject(db.pool, 'b')).id;
    const { rows: links } = await db.pool.query<{ alias: string }>(
      'select l.alias from mixpanel_sync.identity_links l where l.project_id = $1 and l.alias <> l.canonical order by l.alias limit 1',
      [b],
    );
    expect(links.length, "B's identity step learned a link").toBe(1);
    const cluster = (project: number, id: string) =>
      db.pool
        .query('select c.member, c.canonical, c.is_canonical from mixpanel_sync.identity_cluster($1::smallint, $2) c', [project, id])
        .then((r) => r.rows);
    expect(await cluster(b, 'nobody')).toEqual([{ member: 'nobody', canonical: 'nobody', is_canonical: true }]);
    const other = (await readProject(db.pool, 'default')).id;
    expect(await cluster(other, links[0]!.alias)).toEqual([{ member: links[0]!.alias, canonical: links[0]!.alias, is_canonical: true }]);
  });

  it("a run of another Mixpanel project than the project's is refused (MP004); the first run records it", async () => {
    const first = await beginRun(db.pool, { source: 'profiles', clock, project: 'a', mixpanelProjectId: 1001 });
    await failRun(db.pool, first.id, 'test: recorded the id');
    expect((await readProject(db.pool, 'a')).mixpanel_project_id).toBe('1001');
    const other = await beginRun(db.pool, { source: 'profiles', clock, project: 'a', mixpanelProjectId: 1002 }).catch((error) => error);
    expect(other.code).toBe('MP004');
    const taken = await beginRun(db.pool, { source: 'profiles', clock, project: 'b', mixpanelProjectId: 1001 }).catch((error) => error);
    expect(taken.code).toBe('MP004');
    expect(taken.message).toContain("(Mixpanel project 1001 is project 'a')");
    // The message names the project's own recorded Mixpanel project first, even when the id given belongs to a third
    // project (killed: begin_run|swap-coalesce|quote_literal(project_row.name), coalesce(project_row.mixpanel_project_id::text,|1).
    const third = await beginRun(db.pool, { source: 'profiles', clock, project: 'b', mixpanelProjectId: 1003 });
    await failRun(db.pool, third.id, 'test: recorded the id');
    const both = await beginRun(db.pool, { source: 'profiles', clock, project: 'a', mixpanelProjectId: 1003 }).catch((error) => error);
    expect(both.code).toBe('MP004');
    expect(both.message).toContain("Mixpanel project 1003 is not the Mixpanel project of project 'a' (1001)");
  });

  it('two first runs of one project, other sources, other Mixpanel projects, begun together: the second is refused (MP004)', async () => {
    // begin_run's lock is per project and source, so an events run and a profiles run of project race begin at the same
    // time; both read race with no Mixpanel project recorded. The second must not go on with another Mixpanel project
    // than the one the first recorded (kills begin_run|drop-conjunct|where p.id = pid and p.mixpanel_project_id is null;|2,
    // which overwrites the first's id; seen failing on 000013's begin_run, which let the second run go on unrecorded).
    await createProject(db.pool, 'race');
    const first = await db.pool.connect();
    const second = await db.pool.connect();
    try {
      await first.query('begin');
      const runOfFirst = await beginRun(first, { source: 'events', clock, project: 'race', mixpanelProjectId: 2001 });
      await second.query(`set lock_timeout = '20s'`);
      const pid = (await second.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const begun = beginRun(second, { source: 'profiles', clock, project: 'race', mixpanelProjectId: 2002 }).catch((error) => error);
      // the second begin_run waits for the first's row of race (the first's transaction is still open)
      await expect
        .poll(
          async () => (await db.pool.query('select wait_event_type from pg_stat_activity where pid = $1', [pid])).rows[0]?.wait_event_type,
          {
            timeout: 15_000,
          },
        )
        .toBe('Lock');
      await first.query('commit');
      const refused = await begun;
      expect(refused.code, String(refused.message)).toBe('MP004');
      expect(refused.message).toContain("Mixpanel project 2002 is not the Mixpanel project of project 'race' (2001)");
      expect((await readProject(db.pool, 'race')).mixpanel_project_id).toBe('2001');
      const { rows } = await db.pool.query<{ source: string }>(
        `select r.source from mixpanel_sync.sync_runs r join mixpanel_sync.projects p on p.id = r.project_id where p.name = 'race'`,
      );
      expect(rows.map((r) => r.source)).toEqual(['events']);
      await failRun(db.pool, runOfFirst.id, 'test: begun only');
      await dropProject(db.pool, 'race'); // (the status test below counts the projects)
    } finally {
      await first.query('rollback').catch(() => {});
      first.release();
      second.release();
    }
  });

  it('status of several projects: one block per project (its own runs), the total of their worst statuses', async () => {
    const all = await readProjectsStatus(db.pool, 100);
    expect(all.projects.map((p) => p.project)).toEqual(['a', 'b', 'default']);
    for (const p of all.projects) {
      const { rows } = await db.pool.query<{ id: number }>(
        `select r.id::int as id from mixpanel_sync.sync_runs r join mixpanel_sync.projects p on p.id = r.project_id
         where p.name = $1 order by r.id desc`,
        [p.project],
      );
      expect(p.runs.map((r) => r.id)).toEqual(rows.map((r) => r.id));
    }
    const statuses = all.projects.map((p) => p.status);
    expect(all.total.ok + all.total.warn + all.total.critical).toBe(3);
    expect(all.total.warn).toBe(statuses.filter((s) => s === 'warn').length);
    expect(projectsTotalLine(all.total)).toMatch(/^3 projects: /);
    // the view for psql: the same worst status, each project's last events run
    const { rows: view } = await db.pool.query<{ name: string; health: string; last_events_run: string | null }>(
      'select name, health, last_events_run from mixpanel_sync.project_status order by name',
    );
    expect(view.map((v) => [v.name, v.health])).toEqual(all.projects.map((p) => [p.project, p.status]));
    for (const v of view) {
      const { rows } = await db.pool.query<{ id: string | null }>(
        `select max(r.id)::text as id from mixpanel_sync.sync_runs r join mixpanel_sync.projects p on p.id = r.project_id
         where p.name = $1 and r.source = 'events'`,
        [v.name],
      );
      expect(v.last_events_run).toBe(rows[0]!.id);
    }
  });

  it('--project wins over MIXPANEL_PROJECT; neither: null, the only project', () => {
    expect(chosenProject('eu_app', { MIXPANEL_PROJECT: 'us_app' })).toBe('eu_app');
    expect(chosenProject(undefined, { MIXPANEL_PROJECT: ' us_app ' })).toBe('us_app');
    expect(chosenProject(undefined, {})).toBeNull();
    expect(chosenProject(undefined, { MIXPANEL_PROJECT: '' })).toBeNull();
  });
});
