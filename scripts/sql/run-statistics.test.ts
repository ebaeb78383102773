// finish_run plans its statements on the running run's real size (mixpanel_sync_private.analyze_run_events, issue 11).
// run_events only ever holds new runs' rows (run ids grow), so statistics sampled during an earlier run estimate
// "run_id = <this run>" at about one row; a REPLACE planned on that estimate anti-joined the window's ledger rows
// against the run's events in a nested loop (a second 95,000-line full sync on a fresh database: 64 s in finish_run
// instead of 1.2 s). Here the planner's estimate is read with EXPLAIN, never timed.
// Seen failing without the protection: with the `perform mixpanel_sync_private.analyze_run_events()` line removed from
// finish_events_run, the estimate for the second run stays at 1 row (expected about 240).
// The same stale statistics on staged_events made number_staged_lines (lines a psql user staged without line_no)
// compute the run's highest line_no again for every line: 11.3 s for 8,000 lines. Its UPDATE's plan is read with
// auto_explain; seen failing on the function of migration 000009 (an Aggregate run 300 times).
import { describe, expect, it } from 'vitest';
import { withPlans } from './auto-explain.ts';
import { exportEvent, minutesBefore, syncTestDatabase } from './run-fixtures.ts';
import { beginRun, failRun, finishRun, parseStagedEvents, stageLines, stageRecords } from './sync-api.ts';

const db = await syncTestDatabase();

const lines = (at: Date, count: number, tag: string) =>
  Array.from({ length: count }, (_, i) =>
    exportEvent(`user-${i % 17}`, i % 3 === 0 ? 'open' : 'buy', minutesBefore(at, 1 + i), { insertId: `${tag}-${i}` }),
  );

/** The planner's row estimate for the run's rows of run_events, as every statement of finish_run after the parse sees it. */
async function estimatedRows(runId: string): Promise<number> {
  const { rows } = await db.pool.query<{ 'QUERY PLAN': [{ Plan: { 'Plan Rows': number } }] }>(
    `explain (format json) select * from mixpanel_sync.run_events e where e.run_id = ${Number(runId)}`,
  );
  return rows[0]!['QUERY PLAN'][0].Plan['Plan Rows'];
}

describe('finish_run samples run_events after the parse', () => {
  it('plans a run on its own size, whatever an earlier run left in the statistics', async () => {
    // no autovacuum on the work table in this database: only finish_run may sample it here
    await db.pool.query('alter table mixpanel_sync.run_events set (autovacuum_enabled = off)');
    const now = new Date();
    // an earlier run's rows are sampled (as autovacuum would, during a long run), then the run fails and its rows go
    const earlier = await beginRun(db.pool, { source: 'events', clock: now, forceFull: true });
    await stageRecords(db.pool, 'events', earlier.id, lines(now, 300, 'a'));
    await parseStagedEvents(db.pool, earlier.id);
    await db.pool.query('analyze mixpanel_sync.run_events');
    expect(await estimatedRows(earlier.id)).toBeGreaterThan(150);
    await failRun(db.pool, earlier.id, 'test: the earlier run');

    const run = await beginRun(db.pool, { source: 'events', clock: now, forceFull: true });
    // before finish_run, the statistics still describe the earlier run: this run is estimated at about one row
    expect(await estimatedRows(run.id)).toBeLessThan(10);
    const staged = 240;
    await stageRecords(db.pool, 'events', run.id, lines(now, staged, 'b'));
    const finished = await finishRun(db.pool, run.id);
    expect(finished.status).toBe('succeeded');
    // finish_run sampled run_events while it held this run's lines: the estimate is this run's size
    const estimate = await estimatedRows(run.id);
    expect(estimate).toBeGreaterThan(staged / 2);
    expect(estimate).toBeLessThan(staged * 2);
  });
});

interface PlanNode {
  'Node Type': string;
  'Actual Loops': number;
  Plans?: PlanNode[];
}

const nodes = (node: PlanNode): PlanNode[] => [node, ...(node.Plans ?? []).flatMap(nodes)];

describe('number_staged_lines after an earlier run was sampled', () => {
  it('numbers a psql-staged run in one pass: no step of its UPDATE runs once per line', async () => {
    const now = new Date();
    const earlier = await beginRun(db.pool, { source: 'events', clock: now, forceFull: true });
    await stageRecords(db.pool, 'events', earlier.id, lines(now, 300, 'a'));
    await db.pool.query('analyze mixpanel_sync.staged_events');
    await failRun(db.pool, earlier.id, 'test: the earlier run');

    const run = await beginRun(db.pool, { source: 'events', clock: now, forceFull: true });
    // as a psql user stages: no line_no
    await stageLines(
      db.pool,
      'events',
      run.id,
      lines(now, 300, 'b').map((line) => JSON.stringify(line)),
    );
    const { plans } = await withPlans<unknown, PlanNode>(
      db.pool,
      ['auto_explain.log_analyze = on', 'auto_explain.log_timing = off'],
      (client) => client.query(`select mixpanel_sync.number_staged_lines('events', $1)`, [run.id]),
    );
    const update = plans.find((plan) => plan['Query Text'].includes('update mixpanel_sync.staged_events'));
    expect(update, 'auto_explain reported the UPDATE').toBeDefined();
    const repeated = nodes(update!.Plan).filter((node) => node['Actual Loops'] > 1);
    expect(repeated.map((node) => `${node['Node Type']} × ${node['Actual Loops']}`)).toEqual([]);
    const { rows } = await db.pool.query<{ numbered: string; first: string; last: string }>(
      'select count(line_no) as numbered, min(line_no) as first, max(line_no) as last from mixpanel_sync.staged_events where run_id = $1',
      [run.id],
    );
    expect(rows[0]).toEqual({ numbered: '300', first: '1', last: '300' });
    await failRun(db.pool, run.id, 'test: numbering only');
  });
});
