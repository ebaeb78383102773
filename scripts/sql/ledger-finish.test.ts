// finish_events_run (migrations/current/200-ledger.sql) through real runs: the watermark of a run that did not fetch
// every name, the partition drop next to a reader, and what the REPLACE loop and the marker probe cost (counted
// scans and calls, never timings).
// Seen failing without each protection (removed once, then restored):
//   - `if keeps_watermark then` (both places) in finish_events_run: "a run that leaves out names events.only syncs
//     keeps the watermark; with none, it leaves none" (the first, login-only full run created a watermark row);
//   - `length(s.line) < 64` before is_terminated_early_marker in the MP003 probe: "the marker probe calls ..." (the
//     function was called 4 times, once per staged line, not once);
//   - the REPLACE loop's step 3 as one `l.day < kept_from or not exists (...)` query (the UNION ALL undone): "the
//     REPLACE loop reads the run's events a number of times linear in the events" (5,200 rows read at 60 users, 1,280
//     with the two branches);
//   - `lock table ... nowait` (and its lock_not_available skip) in drop_ledger_partitions: "a reader's open
//     transaction on the ledger" (the DROP waited behind the reader until the finishing connection's lock_timeout:
//     finish_run failed with 55P03).
import { beforeEach, describe, expect, it } from 'vitest';
import { beginRun, finishRun, readWatermarks, stageLines, stageRecords, writeSetting, type BeginRunOptions } from './sync-api.ts';
import { exportEvent, type ExportEvent, syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();
beforeEach(async () => {
  await writeSetting(db.pool, 'events.only', '[]');
  await writeSetting(db.pool, 'events.store_raw', 'off');
  await writeSetting(db.pool, 'events.upsert_path', 'set');
});

const clock = new Date('2024-03-10T00:00:00Z');
const at = (day: string, second: number) => new Date(Date.parse(`${day}T00:00:00Z`) + second * 1000);

async function run(lines: ExportEvent[], options: Omit<BeginRunOptions, 'source'> = {}) {
  const begun = await beginRun(db.pool, { source: 'events', clock, ...options });
  await stageRecords(db.pool, 'events', begun.id, lines);
  return finishRun(db.pool, begun.id);
}

const watermark = async () => (await readWatermarks(db.pool)).find((w) => w.source === 'events') ?? null;

describe('the watermark of a run with options.keeps_watermark', () => {
  it('a run that leaves out names events.only syncs keeps the watermark; with none, it leaves none', async () => {
    // events.only = [] (every name): a login-only run did not fetch the other names.
    const first = await run([exportEvent('u1', 'login', at('2024-03-09', 5), { insertId: 'a' })], { events: ['login'] });
    expect(first).toMatchObject({ mode: 'full', status: 'succeeded', applied: '1' });
    expect(first.options.keeps_watermark).toBe(true);
    expect(await watermark()).toBeNull();

    await run([exportEvent('u1', 'purchase', at('2024-03-09', 100), { insertId: 'b' })]);
    const before = await watermark();
    expect(before?.watermark).toEqual(at('2024-03-09', 100));

    const partial = await run([exportEvent('u1', 'login', at('2024-03-09', 5000), { insertId: 'c' })], { events: ['login'] });
    expect(partial).toMatchObject({ mode: 'incremental', status: 'succeeded', applied: '1' });
    expect(partial.watermark_after).toEqual(before?.watermark);
    expect(await watermark()).toMatchObject({
      watermark: before?.watermark,
      processing_watermark: before?.processing_watermark,
      run_id: before?.run_id,
    });

    // a run of every name moves it again
    await run([exportEvent('u1', 'purchase', at('2024-03-09', 6000), { insertId: 'd' })]);
    expect((await watermark())?.watermark).toEqual(at('2024-03-09', 6000));
  });
});

describe('the terminated-early probe', () => {
  it('the marker probe calls is_terminated_early_marker only for lines shorter than 64 characters', async () => {
    // Counted with track_functions = all in the finishing transaction (pg_stat_xact_user_functions), not timed.
    const lines = [1, 2, 3].map((n) => JSON.stringify(exportEvent(`u${n}`, 'login', at('2024-03-09', n), { insertId: `m${n}` })));
    expect(lines.every((line) => line.length >= 64)).toBe(true);
    const begun = await beginRun(db.pool, { source: 'events', clock });
    await stageLines(db.pool, 'events', begun.id, [...lines, '{"short": true}']);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`set local track_functions = 'all'`);
      const finished = await finishRun(client, begun.id);
      expect(finished).toMatchObject({ status: 'succeeded', applied: '3', rejected: '1' });
      const { rows } = await client.query<{ calls: number }>(
        `select coalesce(sum(f.calls), 0)::int as calls from pg_catalog.pg_stat_xact_user_functions f
         where f.schemaname = 'mixpanel_sync' and f.funcname = 'is_terminated_early_marker'`,
      );
      expect(rows).toEqual([{ calls: 1 }]);
      await client.query('commit');
    } finally {
      client.release();
    }
  });
});

describe('the REPLACE loop (events.upsert_path = loop)', () => {
  /** Rows of run_events read (sequential and index fetches) inside the finish_run of a second full run over `users` users, one event each. */
  async function runEventReads(users: number): Promise<number> {
    const lines = Array.from({ length: users }, (_, n) => exportEvent(`u${n}`, 'login', at('2024-03-09', n), { insertId: `r${n}` }));
    expect(await run(lines, { forceFull: true })).toMatchObject({ status: 'succeeded', applied: String(users) });
    const begun = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    await stageRecords(db.pool, 'events', begun.id, lines);
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      const finished = await finishRun(client, begun.id);
      expect(finished).toMatchObject({ status: 'succeeded', applied: String(users) });
      const { rows } = await client.query<{ reads: number }>(
        `select (coalesce(t.seq_tup_read, 0) + coalesce(t.idx_tup_fetch, 0))::int as reads from pg_catalog.pg_stat_xact_user_tables t
         where t.relid = 'mixpanel_sync.run_events'::regclass`,
      );
      await client.query('commit');
      return rows[0]?.reads ?? 0;
    } finally {
      client.release();
    }
  }

  it("the REPLACE loop reads the run's events a number of times linear in the events, not once per ledger row", async () => {
    // A second full run over the same 60 users (60 ledger rows in the window): rows of run_events read (sequential
    // and index fetches) in its finish_run. Measured: 1,280 (about 21 per event); with the quadratic step 3, 5,200.
    await writeSetting(db.pool, 'events.upsert_path', 'loop');
    const users = 60;
    expect(await runEventReads(users)).toBeLessThan(30 * users);
  });
});

describe("the ledger's retention next to a reader", () => {
  const oldPartition = 'event_ledger_p20240101';
  const partitionExists = async () =>
    (await db.pool.query<{ present: boolean }>(`select to_regclass($1) is not null as present`, [`mixpanel_sync.${oldPartition}`])).rows[0]!
      .present;

  it("a reader's open transaction on the ledger: finish_run does not wait for it and keeps the old partition; the next run drops it", async () => {
    // The storage horizon of these runs (clock 2024-03-10, events.ledger_retention 7 days) is 2024-03-04.
    await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions('2024-01-01', '2024-01-01')`);
    await run([exportEvent('u1', 'login', at('2024-03-09', 10), { insertId: 'k1' })]);
    await db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions('2024-01-01', '2024-01-01')`);
    expect(await partitionExists()).toBe(true);

    const reader = await db.pool.connect();
    const finisher = await db.pool.connect();
    try {
      await reader.query('begin');
      await reader.query('select count(*) from mixpanel_sync.raw_events');
      await reader.query('select count(*) from mixpanel_sync.event_ledger');
      // Not a timing assertion: without the NOWAIT the DROP would wait behind the reader for good; this bounds it.
      await finisher.query(`set lock_timeout = '5s'`);
      const begun = await beginRun(finisher, { source: 'events', clock });
      await stageRecords(finisher, 'events', begun.id, [exportEvent('u1', 'login', at('2024-03-09', 20), { insertId: 'k2' })]);
      const busy = await finishRun(finisher, begun.id);
      expect(busy).toMatchObject({ status: 'succeeded', applied: '1' });
      expect(busy.options.storage_horizon_day).toBe('2024-03-04');
      expect(await partitionExists(), 'kept while the reader is open').toBe(true);
      await reader.query('commit');

      const next = await run([exportEvent('u1', 'login', at('2024-03-09', 30), { insertId: 'k3' })]);
      expect(next).toMatchObject({ status: 'succeeded', applied: '1' });
      expect(await partitionExists(), 'dropped by the next run').toBe(false);
    } finally {
      await reader.query('rollback').catch(() => undefined);
      reader.release();
      await finisher.query('reset lock_timeout');
      finisher.release();
    }
  });
});
