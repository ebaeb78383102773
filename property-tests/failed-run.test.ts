// Invariant 5: a run whose finish_run fails, at any point, changes nothing; fail_run then changes nothing but the
// run's own sync_runs row (status failed, its error, finished_at) and drops the run's staged rows; the watermark
// does not move. The state before is an arbitrary sequence of finished runs.
// Each iteration first finishes the run in a transaction that is rolled back (a dry run), counting every row it
// writes per table and operation, and keeping the state it leaves. Then it makes the real finish fail at one of
// those writes (a trigger raising at the k-th insert, update or delete of a table), or through another session
// holding a lock finish_run needs (with lock_timeout), or a statement_timeout. A finish that still succeeds (the
// parser retries its fast path once by design; a timeout may come too late) must leave the dry run's state:
// an error that was swallowed instead would show there. One difference is by design: under a lock on the ledger, the
// retention's partition drop is skipped (it never waits), so those days' rows stay until the next run.
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { assertSameTables, failRun, finishRun, parseStagedEvents, tableSnapshot, type TableSnapshot } from '../scripts/sql/sync-api.ts';
import { allTables, emptyTables } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';
import { finishStep, runStepsArb, stageStep } from './run-sequences.ts';

// Where finish_run writes.
const writtenTables = [
  'events_daily',
  'event_ledger',
  'subscribers',
  'run_events',
  'sync_rejects',
  'sync_watermarks',
  'sync_runs',
  'staged_events',
];

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 3 });
  await db.pool.query(`
    create sequence public.injected_writes;
    create function public.inject_failure() returns trigger language plpgsql as $$
    begin
      if nextval('public.injected_writes') = tg_argv[0]::bigint then
        raise exception 'injected failure at % #% on %', tg_op, tg_argv[0], tg_table_name;
      end if;
      return null;
    end;
    $$;
    create table public.write_counts (tab text, op text, n bigint not null, primary key (tab, op));
    create function public.count_write() returns trigger language plpgsql as $$
    begin
      if current_setting('proofs.count_writes', true) = 'on' then
        -- a day partition of the ledger (200-ledger.sql) counts as the ledger: the injected trigger goes on the parent
        insert into public.write_counts as w values (regexp_replace(tg_table_name, '^event_ledger_p[0-9]{8}$', 'event_ledger'), tg_op, 1)
          on conflict (tab, op) do update set n = w.n + 1;
      end if;
      return null;
    end;
    $$;`);
  for (const table of writtenTables) {
    await db.pool.query(
      `create trigger count_writes after insert or update or delete on mixpanel_sync.${table} for each row execute function public.count_write()`,
    );
  }
});
afterAll(async () => {
  await db?.drop();
});

type Injection = { kind: 'trigger'; pick: number; fraction: number } | { kind: 'lock'; table: string } | { kind: 'timeout'; ms: number };

const injectionArb: fc.Arbitrary<Injection> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('trigger' as const),
      pick: fc.nat(),
      fraction: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('lock' as const),
      table: fc.constantFrom('events_daily', 'event_ledger', 'subscribers', 'sync_watermarks', 'sync_rejects', 'sync_runs', 'finish lock'),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('timeout' as const), ms: fc.integer({ min: 1, max: 30 }) }) },
);

interface Write {
  table: string;
  op: string;
  count: number;
}

// Columns that legitimately differ between two transactions doing the same work: clock readings and now(), and
// the ids of rejects (taken from a sequence, which a rollback does not give back; rejects are keyed by line here).
const volatile = [
  'sync_runs.finished_at',
  'sync_runs.stage_ms',
  'sync_runs.apply_ms',
  'sync_runs.total_ms',
  'subscribers.updated_at',
  'sync_watermarks.updated_at',
  'sync_rejects.created_at',
  'sync_rejects.id',
];

async function stableState(client: pg.PoolClient): Promise<TableSnapshot> {
  const tables = await tableSnapshot(client, allTables, volatile);
  const rejects = Object.values(tables.sync_rejects!).map((row): [string, Record<string, unknown>] => [
    JSON.stringify([row.run_id, row.line_no]),
    row,
  ]);
  return { ...tables, sync_rejects: Object.fromEntries(rejects) };
}

/** finish_run in a transaction that is rolled back: the rows it writes per table and operation, and the state it leaves. */
async function dryRun(client: pg.PoolClient, runId: string): Promise<{ writes: Write[]; state: TableSnapshot }> {
  await client.query('begin');
  try {
    await client.query(`set local proofs.count_writes = 'on'`);
    await finishRun(client, runId);
    const { rows } = await client.query<{ table: string; op: string; count: string }>(
      'select tab as table, op, n as count from public.write_counts order by tab, op',
    );
    return { writes: rows.map((r) => ({ ...r, count: Number(r.count) })), state: await stableState(client) };
  } finally {
    await client.query('rollback');
  }
}

/** Sets the injection up; returns a label and what undoes it. */
async function inject(injection: Injection, writes: Write[], finisher: pg.PoolClient): Promise<[string, () => Promise<void>]> {
  if (injection.kind === 'trigger') {
    const write = writes[injection.pick % writes.length]!;
    const nth = 1 + Math.floor(injection.fraction * write.count);
    await db.pool.query(`alter sequence public.injected_writes restart;
      create trigger inject_failure after ${write.op.toLowerCase()} on mixpanel_sync.${write.table}
      for each row execute function public.inject_failure('${nth}')`);
    return [
      `${write.op} #${nth} of ${write.count} on ${write.table}`,
      async () => {
        await db.pool.query(`drop trigger inject_failure on mixpanel_sync.${write.table}`);
      },
    ];
  }
  if (injection.kind === 'timeout') {
    await finisher.query(`set statement_timeout = ${injection.ms}`);
    return [
      `statement_timeout ${injection.ms} ms`,
      async () => {
        await finisher.query('reset statement_timeout');
      },
    ];
  }
  const holder = await db.pool.connect();
  await holder.query('begin');
  await holder.query(
    injection.table === 'finish lock'
      ? `select pg_advisory_xact_lock(hashtextextended('mixpanel_sync.finish_run', 0))`
      : `lock table mixpanel_sync.${injection.table} in share mode`,
  );
  await finisher.query(`set lock_timeout = '100ms'`);
  return [
    `lock on ${injection.table}`,
    async () => {
      await finisher.query('reset lock_timeout');
      await holder.query('rollback');
      holder.release();
    },
  ];
}

function withoutRun(tables: TableSnapshot, runId: string): TableSnapshot {
  const runs = Object.entries(tables.sync_runs!).filter(([, row]) => String(row.id) !== runId);
  const staged = Object.entries(tables.staged_events!).filter(([, row]) => String(row.run_id) !== runId);
  return { ...tables, sync_runs: Object.fromEntries(runs), staged_events: Object.fromEntries(staged) };
}

/**
 * The dry run's state with the ledger's rows of the days before the run's storage horizon as they were before: under
 * another session's lock on the ledger, drop_ledger_partitions drops nothing (it never waits; the next run drops them),
 * and a finish that succeeds wrote no ledger row (each write needs a lock the holder's SHARE lock blocks). Seen in CI:
 * an incremental run with no lines whose only ledger work was dropping the day of an earlier run's event.
 */
function withLedgerDaysKept(dry: TableSnapshot, before: TableSnapshot, runId: string): TableSnapshot {
  const run = Object.values(dry.sync_runs!).find((row) => String(row.id) === runId)!;
  const horizon = (run.options as { storage_horizon_day?: string | null }).storage_horizon_day;
  const kept = Object.entries(before.event_ledger!).filter(([, row]) => horizon != null && String(row.day) < horizon);
  return { ...dry, event_ledger: { ...dry.event_ledger, ...Object.fromEntries(kept) } };
}

async function runEventsOf(runId: string): Promise<number> {
  const { rows } = await db.pool.query('select count(*)::int as n from mixpanel_sync.run_events where run_id = $1', [runId]);
  return rows[0].n;
}

const runs = 20;

describe('invariant 5: a failed run changes nothing but its own sync_runs row', () => {
  it('finish_run failing anywhere leaves every table as it was; fail_run then marks only the run', {
    timeout: timeoutFor(runs, 800),
  }, async () => {
    const failedAt: string[] = [];
    await fc.assert(
      fc.asyncProperty(
        runStepsArb({ minLength: 1, maxLength: 3, jumpWeight: 3 }),
        injectionArb,
        fc.boolean(),
        async (steps, injection, parsedEarly) => {
          await emptyTables(db.pool);
          await db.pool.query('truncate public.write_counts');
          const finisher = await db.pool.connect();
          try {
            for (const step of steps.slice(0, -1)) await finishStep(finisher, step);
            const run = await stageStep(finisher, steps.at(-1)!);
            // Now and then the lines are parsed while staging (as a loader may between COPY chunks), so that run_events
            // holds the run's lines when fail_run comes: else the run_events check below could not fail (issue 15; seen
            // failing with a drop_staged_rows that truncates staged_events but not run_events).
            const staged = parsedEarly ? (await parseStagedEvents(finisher, run.id)).received : 0;
            if (parsedEarly) expect(await runEventsOf(run.id), 'run_events after parsing while staging').toBe(staged);
            const before = await tableSnapshot(finisher, allTables);
            const dry = await dryRun(finisher, run.id);
            const [where, undo] = await inject(injection, dry.writes, finisher);
            let error: Error | undefined;
            try {
              await finishRun(finisher, run.id);
            } catch (caught) {
              error = caught as Error;
            } finally {
              await undo();
            }
            if (!error) {
              await assertSameTables(
                db.pool,
                `finish_run succeeded despite ${where}: state of the dry run (expected) and of this finish (actual)`,
                injection.kind === 'lock' && injection.table === 'event_ledger' ? withLedgerDaysKept(dry.state, before, run.id) : dry.state,
                await stableState(finisher),
              );
              return;
            }
            failedAt.push(where);
            await assertSameTables(
              db.pool,
              `after finish_run failed at ${where} (${error.message}): tables before (expected) and after (actual)`,
              before,
              await tableSnapshot(finisher, allTables),
            );

            const failed = await failRun(finisher, run.id, error.message);
            const after = await tableSnapshot(finisher, allTables);
            await assertSameTables(
              db.pool,
              `after fail_run (failed at ${where}): tables before (expected) and after (actual), the run's row and staged lines aside`,
              withoutRun(before, run.id),
              withoutRun(after, run.id),
            );
            expect(Object.keys(after.staged_events!).length, 'staged lines left after fail_run').toBe(0);
            expect(await runEventsOf(run.id), 'run_events left after fail_run').toBe(0);
            expect(failed).toMatchObject({ status: 'failed', error: error.message, watermark_after: null, applied: null });
            const { rows } = await finisher.query('select finished_at from mixpanel_sync.sync_runs where id = $1', [run.id]);
            expect(rows[0].finished_at, 'failed run finished_at').toBeInstanceOf(Date);
          } finally {
            finisher.release();
          }
        },
      ),
      propertyParameters(runs, 800),
    );
    // (not when FC_PATH replays one counterexample)
    if (propertyParameters(runs).path === undefined) {
      expect(failedAt.length, `finishes made to fail: ${failedAt.join(', ')}`).toBeGreaterThan(propertyParameters(runs).numRuns! / 2);
    }
  });
});
