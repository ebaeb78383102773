// Rejected lines are read back by primary key, whatever the statistics say. Statistics are sampled while some run's
// lines are staged; run ids and line ids only grow, so when the next run is staged they estimate it at about one line.
// The statements that read each rejected line's staged text (parse_new_staged_events' sync_rejects insert, finish_run's
// probe for Mixpanel's "terminated early" marker) were joins planned on those estimates: a nested loop that scanned
// every staged line of the run once per rejected line (quadratic: on a 1M-line run with 2.9 % bad lines a chunk parse
// did not end in 5 minutes; a second full sync with 2 % bad lines, its parse already fixed, did not finish in 7 because
// of the probe). Each test here sets up
// exactly those statistics (autovacuum off on the two tables of this test database; ANALYZE while an earlier run's
// lines are staged), stages 2,000 lines of which 200 are not JSON, and counts the staged rows the step reads
// (pg_stat_xact_user_tables, in the step's own transaction). Seen failing with each of 000015's two functions put back
// (create or replace in this database): the chunk parse read 209,012 staged rows, finish_run 410,212; with 000016's,
// 8,212 and 10,412.
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { exportEvent, syncTestDatabase } from './run-fixtures.ts';
import { beginRun, finishRun, lastStagedLineId, stageLines, type SyncRun } from './sync-api.ts';

const db = await syncTestDatabase();
const LINES = 2_000;
const clock = new Date('2024-03-10T12:00:00Z');

/** every tenth staged line of the run is not JSON */
const BAD_EVERY = 10;
const REJECTS = LINES / BAD_EVERY;

/** Export lines of `LINES` events before the clock; with `bad`, every BAD_EVERY-th line cut short (not JSON). */
function exportLines(prefix: string, bad: boolean): string[] {
  return Array.from({ length: LINES }, (_, i) => {
    const at = new Date(clock.getTime() - (i + 1) * 60_000);
    const line = JSON.stringify(exportEvent(`${prefix}-${i % 97}`, 'open', at, { insertId: `${prefix}-${i}` }));
    return bad && i % BAD_EVERY === BAD_EVERY - 1 ? line.slice(0, -1) : line;
  });
}

beforeAll(async () => {
  await db.pool.query(`alter table mixpanel_sync.staged_events set (autovacuum_enabled = false);
    alter table mixpanel_sync.run_events set (autovacuum_enabled = false)`);
});

/**
 * A run staged with every BAD_EVERY-th line not JSON, on statistics sampled while an earlier run's lines were staged
 * (staged_events by hand; run_events by that run's finish_run, analyze_run_events).
 */
async function runOnStaleStatistics(): Promise<SyncRun> {
  const earlier = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
  await stageLines(db.pool, 'events', earlier.id, exportLines('earlier', false));
  await db.pool.query('analyze mixpanel_sync.staged_events');
  expect((await finishRun(db.pool, earlier.id)).status).toBe('succeeded');
  const { rows } = await db.pool.query<{ run_ids: string }>(
    `select n_distinct::text as run_ids from pg_catalog.pg_stats
     where schemaname = 'mixpanel_sync' and tablename = 'staged_events' and attname = 'run_id'`,
  );
  // one run id in the statistics: the next run's lines are estimated at about one row
  expect(rows[0]?.run_ids).toBe('1');
  const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
  await stageLines(db.pool, 'events', run.id, exportLines('now', true));
  return run;
}

/** The staged rows `step` reads (sequential and index fetches of staged_events) in its own transaction. */
async function stagedRowsRead(step: (client: pg.PoolClient) => Promise<unknown>): Promise<number> {
  const client = await db.pool.connect();
  try {
    // pg_stat_xact_user_tables also holds the session's counts not yet reported (earlier transactions'): read before and after
    const reads = async () =>
      Number(
        (
          await client.query<{ read: string }>(
            `select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as read from pg_catalog.pg_stat_xact_user_tables
             where relid = 'mixpanel_sync.staged_events'::regclass`,
          )
        ).rows[0]?.read ?? 0,
      );
    await client.query('begin');
    const before = await reads();
    await step(client);
    const after = await reads();
    await client.query('commit');
    return after - before;
  } catch (error) {
    await client.query('rollback');
    throw error;
  } finally {
    client.release();
  }
}

const rejectsWithLineNo = async (run: SyncRun) =>
  Number(
    (await db.pool.query<{ n: string }>('select count(line_no) as n from mixpanel_sync.sync_rejects where run_id = $1', [run.id])).rows[0]!
      .n,
  );

// A bounded number of reads per staged line: numbering the lines (3), the fast path up to its first bad line, the careful
// path (1 each), finish_run's count of the run's lines (1), a lookup per reject (0.1): about 5 a line. A scan of the run
// per reject reads REJECTS × LINES = 400,000 rows, 200 a line.
const READS_PER_LINE = 10;

describe('rejected lines are read back by primary key on statistics sampled before the run', () => {
  it('a chunk parse reads each staged line a bounded number of times, not the run once per reject', async () => {
    const run = await runOnStaleStatistics();
    const upTo = await lastStagedLineId(db.pool, run.id);
    const read = await stagedRowsRead((client) =>
      client.query('select mixpanel_sync.parse_staged_lines($1, after_line_id => $2, up_to_line_id => $3)', [
        run.id,
        String(Number(upTo) - LINES),
        upTo,
      ]),
    );
    expect(await rejectsWithLineNo(run)).toBe(REJECTS);
    expect(read).toBeGreaterThanOrEqual(LINES);
    expect(read).toBeLessThan(READS_PER_LINE * LINES);
  });

  it('finish_run (its parse, the "terminated early" probe) reads each staged line a bounded number of times', async () => {
    const run = await runOnStaleStatistics();
    const read = await stagedRowsRead(async (client) => {
      const finished = await finishRun(client, run.id);
      expect([finished.status, finished.received, finished.rejected]).toEqual(['succeeded', String(LINES), String(REJECTS)]);
    });
    expect(await rejectsWithLineNo(run)).toBe(REJECTS);
    expect(read).toBeGreaterThanOrEqual(LINES);
    expect(read).toBeLessThan(READS_PER_LINE * LINES);
  });
});
