// The ledger's partition of the day after a run's clock is created ahead by that run's finish (ensure_run_ledger_partitions,
// ensure_ledger_partitions(…, wait => false)), so that the first finish of a new UTC day attaches no partition under
// locks held to its commit, and another project's finish of that day does not wait for it (docs/ledger.md).
// Seen failing, each mutant written once into migrations/current.sql:
//   - killed: no-ahead (ensure_run_ledger_partitions without its ahead call): no partition of the day after the clock
//     (test 1), and B's finish of the new day waited for A's open finish, which had attached that day: 55P03 (test 2);
//   - killed: ahead-waits (the ahead call with wait => true): B's finish waited for the creators' advisory lock A's open
//     finish holds while creating its own day ahead: 55P03 (test 2);
//   - killed: ahead-no-nowait (wait => false taking SHARE UPDATE EXCLUSIVE without nowait): a run, while another
//     session held SHARE UPDATE EXCLUSIVE on the ledger (as VACUUM or ANALYZE of it does), waited until its
//     statement_timeout (test 3);
//   - killed: ahead-no-creators-lock (wait => false without pg_try_advisory_xact_lock): while another creator held that
//     lock with its table created and not attached yet, the finish's CREATE TABLE of the same name waited for the
//     creator's commit until its statement_timeout (test 4).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { projectEvent as ev, projectEventsRun as eventsRun } from './run-fixtures.ts';
import { beginRun, createProject, finishRun, stageRecords } from './sync-api.ts';

let db: TestDatabase;

const partitionExists = async (day: string) =>
  (
    await db.pool.query<{ present: boolean }>(`select to_regclass($1) is not null as present`, [
      `mixpanel_sync.event_ledger_p${day.replaceAll('-', '')}`,
    ])
  ).rows[0]!.present;

beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 4 });
  await createProject(db.pool, 'a');
  await createProject(db.pool, 'b');
});
afterAll(async () => {
  await db?.drop();
});

describe("the ledger's partition of the next day", () => {
  it('a finish creates the partition of the UTC day after its clock, though no event of that day exists', async () => {
    expect(await partitionExists('2026-11-21')).toBe(false);
    const run = await eventsRun(db.pool, 'a', '2026-11-20T12:00:00Z', [ev('open', 'u1', '2026-11-20T10:00:00Z', 'i1')], true);
    expect(run.status).toBe('succeeded');
    expect(await partitionExists('2026-11-20')).toBe(true);
    expect(await partitionExists('2026-11-21'), 'the day after the clock').toBe(true);
    const { rows } = await db.pool.query<{ n: number }>(
      `select count(*)::int as n from mixpanel_sync.event_ledger where day > '2026-11-20'`,
    );
    expect(rows).toEqual([{ n: 0 }]);
    const b = await eventsRun(db.pool, 'b', '2026-11-20T12:00:00Z', [ev('open', 'u1', '2026-11-20T10:00:00Z', 'i1')], true);
    expect(b.status).toBe('succeeded');
  });

  it("the first finishes of a new day, two projects at once: B's finishes while A's finish, open in a transaction, creates the day after", async () => {
    const first = await db.pool.connect();
    const second = await db.pool.connect();
    try {
      const clock = '2026-11-21T12:00:00Z';
      const runOfA = await beginRun(first, { source: 'events', clock, project: 'a' });
      await stageRecords(first, 'events', runOfA.id, [ev('open', 'u2', '2026-11-21T10:00:00Z', 'i2')]);
      const runOfB = await beginRun(second, { source: 'events', clock, project: 'b' });
      await stageRecords(second, 'events', runOfB.id, [ev('open', 'u2', '2026-11-21T10:00:00Z', 'i2')]);
      await first.query('begin');
      expect((await finishRun(first, runOfA.id)).status).toBe('succeeded');
      // A's open transaction holds the partition of 2026-11-22 it created (and the creators' lock)
      const { rows: seen } = await second.query<{ present: boolean }>(
        `select to_regclass('mixpanel_sync.event_ledger_p20261122') is not null as present`,
      );
      expect(seen, "A's day ahead is not committed yet").toEqual([{ present: false }]);
      // Not a timing assertion: a finish that waits for A's commit would wait for good; this bounds it.
      await second.query(`set lock_timeout = '3s'`);
      const finishedB = await finishRun(second, runOfB.id);
      expect(finishedB).toMatchObject({ status: 'succeeded', applied: '1' });
      await first.query('commit');
      expect(await partitionExists('2026-11-22'), "A's day ahead, committed").toBe(true);
      const { rows } = await db.pool.query<{ project: string; n: number }>(
        `select p.name as project, count(*)::int as n from mixpanel_sync.event_ledger l join mixpanel_sync.projects p on p.id = l.project_id
         where l.day = '2026-11-21' group by 1 order by 1`,
      );
      expect(rows).toEqual([
        { project: 'a', n: 1 },
        { project: 'b', n: 1 },
      ]);
    } finally {
      await first.query('rollback').catch(() => {});
      await second.query('reset lock_timeout').catch(() => {});
      first.release();
      second.release();
    }
  });

  it('while another session holds SHARE UPDATE EXCLUSIVE on the ledger (a VACUUM or ANALYZE of it), a finish does not wait for the day ahead; the next run creates it', async () => {
    const locker = await db.pool.connect();
    const runner = await db.pool.connect();
    try {
      await locker.query('begin');
      // what a DBA's VACUUM or ANALYZE of the ledger holds while it runs: ROW EXCLUSIVE (the run's writes) goes on,
      // ATTACH PARTITION would wait
      await locker.query('lock table mixpanel_sync.event_ledger in share update exclusive mode');
      // Not a timing assertion: statement_timeout, not lock_timeout (a lock_timeout would make a waiting LOCK TABLE
      // fail as NOWAIT does): a finish that waits for the locker would wait for good; this bounds it.
      await runner.query(`set statement_timeout = '10s'`);
      // its own day's partition exists (created ahead by the runs of 2026-11-21)
      const run = await eventsRun(runner, 'a', '2026-11-22T12:00:00Z', [ev('open', 'u3', '2026-11-22T10:00:00Z', 'i3')]);
      expect(run).toMatchObject({ status: 'succeeded', mode: 'incremental', applied: '1' });
      expect(await partitionExists('2026-11-23'), 'skipped while the ledger is locked').toBe(false);
      await locker.query('commit');
      const next = await eventsRun(runner, 'a', '2026-11-22T13:00:00Z', [ev('open', 'u4', '2026-11-22T12:30:00Z', 'i4')]);
      expect(next.status).toBe('succeeded');
      expect(await partitionExists('2026-11-23'), 'created by the next run').toBe(true);
    } finally {
      await locker.query('rollback').catch(() => {});
      await runner.query('reset statement_timeout').catch(() => {});
      locker.release();
      runner.release();
    }
  });

  it("while another creator is at work (the creators' lock held, its table created, not attached yet), a finish does not wait for it", async () => {
    const creator = await db.pool.connect();
    const runner = await db.pool.connect();
    try {
      // the state ensure_ledger_partitions is in between its CREATE TABLE and its ATTACH, for the day after the run's clock
      await creator.query('begin');
      await creator.query(
        `select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.ensure_ledger_partitions', 0))`,
      );
      await creator.query('create table mixpanel_sync.event_ledger_p20261124 (like mixpanel_sync.event_ledger including defaults)');
      // Not a timing assertion: a finish that creates the same table waits for the creator's commit for good.
      await runner.query(`set statement_timeout = '10s'`);
      const run = await eventsRun(runner, 'a', '2026-11-23T12:00:00Z', [ev('open', 'u5', '2026-11-23T10:00:00Z', 'i5')]);
      expect(run).toMatchObject({ status: 'succeeded', mode: 'incremental', applied: '1' });
      await creator.query('rollback');
      expect(await partitionExists('2026-11-24'), 'skipped while another creator was at work').toBe(false);
    } finally {
      await creator.query('rollback').catch(() => {});
      await runner.query('reset statement_timeout').catch(() => {});
      creator.release();
      runner.release();
    }
  });
});
