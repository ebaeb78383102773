// Cohorts in SQL: begin_cohorts_run, stage_cohorts, stage_cohort_members, finish_cohorts_run on a real database.
// Change detection is proved on the tables themselves: pg_stat_xact_user_tables inside the finishing transaction
// (0 tuples inserted, updated or deleted for an unchanged membership) and each row's (ctid, xmin) across runs.
// Seen failing without the protection (finish_cohorts_run re-created mutated in a throwaway copy of this file): with
// the leavers' delete taking every member of a fetched cohort (delete + re-insert), the unchanged run wrote tuples and
// the stayers' xmin moved; with the leavers' delete off, the member who left stayed; without the
// staged_cohort_fetches filter, a cohort fetched in part lost its members.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginCohortsRun, finishCohortsRun, stageCohortMembers, stageCohorts, type Queryable } from './sync-api.ts';

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(async () => {
  await db.drop();
});

const cohort = (id: number, name: string, count: number) => ({
  id,
  name,
  description: `${name} users`,
  count,
  is_visible: 1,
  created: '2026-01-02 03:04:05',
  project_id: 1234,
});
const profile = (id: string) => ({ $distinct_id: id, $properties: { $email: `${id}@example.com` } });

/** One whole cohorts run on `client`: the list, then each cohort's members (all pages, then marked whole). */
async function cohortsRun(client: Queryable, list: unknown[], members: Record<number, string[]>, partial: number[] = []) {
  const run = await beginCohortsRun(client);
  await stageCohorts(client, run.id, list);
  for (const [id, ids] of Object.entries(members)) {
    await stageCohortMembers(client, run.id, Number(id), ids.map(profile), false);
    if (!partial.includes(Number(id))) await stageCohortMembers(client, run.id, Number(id), [], true);
  }
  return finishCohortsRun(client, run.id);
}

const rows = async (sql: string) => (await db.pool.query(sql)).rows;
const members = () => rows(`select cohort_id::int, distinct_id from mixpanel_sync.cohort_members order by 1, 2`);
const versions = () => rows(`select cohort_id::int, distinct_id, ctid::text, xmin::text from mixpanel_sync.cohort_members order by 1, 2`);

describe('cohorts and cohort_members', () => {
  it('a first run inserts the list and every member; the run is recorded with its counts', async () => {
    const run = await cohortsRun(db.pool, [cohort(1, 'Paying', 3), cohort(2, 'Churned', 1)], { 1: ['a', 'b', 'c'], 2: ['d'] });
    expect(run).toMatchObject({
      source: 'cohorts',
      mode: 'full',
      status: 'succeeded',
      received: '4',
      applied: '4',
      inserted: '4',
      updated: '0',
      unchanged: '0',
      rejected: '0',
    });
    expect(run.options).toMatchObject({ cohorts_listed: 2, cohorts_written: 2, members_added: 4, members_removed: 0 });
    expect(
      await rows(`select cohort_id::int, name, member_count::int, is_visible, created_at::text from mixpanel_sync.cohorts order by 1`),
    ).toEqual([
      { cohort_id: 1, name: 'Paying', member_count: 3, is_visible: true, created_at: expect.stringMatching(/^2026-01-02 03:04:05/) },
      { cohort_id: 2, name: 'Churned', member_count: 1, is_visible: true, created_at: expect.stringMatching(/^2026-01-02 03:04:05/) },
    ]);
    expect(await members()).toEqual([
      { cohort_id: 1, distinct_id: 'a' },
      { cohort_id: 1, distinct_id: 'b' },
      { cohort_id: 1, distinct_id: 'c' },
      { cohort_id: 2, distinct_id: 'd' },
    ]);
  });

  it('an unchanged membership writes 0 tuples (pg_stat_xact_user_tables in the finishing transaction; ctid and xmin kept)', async () => {
    const list = [cohort(1, 'Paying', 3)];
    await cohortsRun(db.pool, list, { 1: ['a', 'b', 'c'] });
    const before = await versions();
    const client = await db.pool.connect();
    // n_tup_* of the backend's pending statistics: read at the start and the end of the finishing transaction
    // (a backend may hold counts of its earlier transactions not yet flushed), the difference is this transaction's.
    const tuples = async () =>
      (
        await client.query(
          `select relname, n_tup_ins::int as ins, n_tup_upd::int as upd, n_tup_del::int as del
           from pg_catalog.pg_stat_xact_user_tables where schemaname = 'mixpanel_sync' and relname in ('cohorts', 'cohort_members') order by relname`,
        )
      ).rows;
    try {
      await client.query('begin');
      const start = await tuples();
      const run = await cohortsRun(client, list, { 1: ['c', 'a', 'b', 'a'] }); // another order, one repeated
      const end = await tuples();
      await client.query('commit');
      expect(
        end.map((row, i) => ({
          relname: row.relname,
          ins: row.ins - start[i].ins,
          upd: row.upd - start[i].upd,
          del: row.del - start[i].del,
        })),
      ).toEqual([
        { relname: 'cohort_members', ins: 0, upd: 0, del: 0 },
        { relname: 'cohorts', ins: 0, upd: 0, del: 0 },
      ]);
      expect(run).toMatchObject({ received: '4', applied: '3', duplicates: '1', inserted: '0', updated: '0', unchanged: '3' });
    } finally {
      client.release();
    }
    expect(await versions()).toEqual(before);
  });

  it('members who left are removed, who joined are added, who stayed are not rewritten', async () => {
    await cohortsRun(db.pool, [cohort(1, 'Paying', 3)], { 1: ['a', 'b', 'c'] });
    const before = new Map((await versions()).map((r) => [r.distinct_id, r.xmin]));
    const run = await cohortsRun(db.pool, [cohort(1, 'Paying', 3)], { 1: ['a', 'c', 'e'] });
    expect(run).toMatchObject({ inserted: '1', updated: '1', unchanged: '2' });
    const after = await versions();
    expect(after.map((r) => r.distinct_id)).toEqual(['a', 'c', 'e']);
    expect(after.filter((r) => before.get(r.distinct_id) === r.xmin).map((r) => r.distinct_id)).toEqual(['a', 'c']);
  });

  it('a changed list entry rewrites only that cohort; a cohort no longer listed goes, with its members', async () => {
    await cohortsRun(db.pool, [cohort(1, 'Paying', 3), cohort(2, 'Churned', 1)], { 1: ['a'], 2: ['d'] });
    const before = await rows(`select cohort_id::int, xmin::text from mixpanel_sync.cohorts order by 1`);
    const run = await cohortsRun(db.pool, [cohort(1, 'Paying customers', 3), cohort(2, 'Churned', 1)], { 1: ['a'], 2: ['d'] });
    expect(run.options).toMatchObject({ cohorts_written: 1, cohorts_removed: 0 });
    const after = await rows(`select cohort_id::int, name, xmin::text from mixpanel_sync.cohorts order by 1`);
    expect(after[0]).toMatchObject({ name: 'Paying customers' });
    expect(after[0].xmin).not.toBe(before[0].xmin);
    expect(after[1].xmin).toBe(before[1].xmin);
    const gone = await cohortsRun(db.pool, [cohort(1, 'Paying customers', 3)], { 1: ['a'] });
    expect(gone.options).toMatchObject({ cohorts_removed: 1 });
    expect(await members()).toEqual([{ cohort_id: 1, distinct_id: 'a' }]);
  });

  it('a cohort not fetched whole keeps its members; unusable entries and profiles are rejected with a reason, the rest applied', async () => {
    await cohortsRun(db.pool, [cohort(1, 'Paying', 2)], { 1: ['a', 'b'] });
    const run = await beginCohortsRun(db.pool);
    await stageCohorts(db.pool, run.id, [cohort(1, 'Paying', 2), { name: 'no id' }, cohort(3, 'New', 2)]);
    await stageCohortMembers(db.pool, run.id, 1, [profile('a')], false); // cohort 1: fetch cut short (never marked whole)
    await stageCohortMembers(db.pool, run.id, 3, [profile('x'), { $properties: {} }], true);
    const finished = await finishCohortsRun(db.pool, run.id);
    expect(finished).toMatchObject({ status: 'succeeded', received: '2', applied: '1', rejected: '2' });
    expect(await members()).toEqual([
      { cohort_id: 1, distinct_id: 'a' },
      { cohort_id: 1, distinct_id: 'b' },
      { cohort_id: 3, distinct_id: 'x' },
    ]);
    expect(await rows(`select reason from mixpanel_sync.sync_rejects where run_id = ${finished.id} order by reason`)).toEqual([
      { reason: 'cohort id missing or not a positive integer' },
      { reason: 'missing $distinct_id (cohort 3)' },
    ]);
  });

  it('one cohorts run at a time (MP002); sync_runs accepts source cohorts', async () => {
    const run = await beginCohortsRun(db.pool);
    await expect(beginCohortsRun(db.pool)).rejects.toMatchObject({ code: 'MP002', message: expect.stringContaining(`run ${run.id}`) });
    expect(await rows(`select source from mixpanel_sync.sync_runs`)).toEqual([{ source: 'cohorts' }]);
  });
});
