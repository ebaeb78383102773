// Several projects in one database (issue 13 part 3, docs/projects.md §5.11): over arbitrary run sequences,
//   1. project A's runs never change a row of project B: B is seeded by an arbitrary sequence and snapshotted (every
//      table it has rows in, by project), then A runs an arbitrary sequence that re-sends B's lines (B's distinct_ids
//      and event keys), with clocks that may run 40 to 60 days ahead of B's: B's snapshot is unchanged;
//   2. A's data (events_daily, event_ledger, subscribers, its watermark; run ids aside) is what the same sequence leaves
//      with A alone in the database.
// Seen failing (FC_NUM_RUNS=100, each mutant written into a scratch copy of migrations/current/):
//   - killed: shared-horizon-at-run-clock (finish_events_run dropping the day partitions before every project's
//     storage horizon taken at this run's clock, not at each project's last one): after a jump of A's clock, A's
//     finish dropped B's ledger days (property 1, event_ledger of B);
//   - killed: add-ledger-no-project (upsert_subscribers_incremental_add: `l.project_id = pid and` dropped from the
//     own-day ledger probe): A's re-sent copies of B's events counted as duplicates (property 2, events_daily of A).
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { emptySyncTables } from '../scripts/sql/run-fixtures.ts';
import { assertSameTables, createProject, tableSnapshot } from '../scripts/sql/sync-api.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { branch } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';
import { finishStep, runStepsArb } from './run-sequences.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await createProject(db.pool, 'a');
  await createProject(db.pool, 'b');
});
afterAll(async () => {
  await db?.drop();
});

/** Every table a run of B can write, by project (table_snapshot: by project_id, or by the project's runs). */
const B_TABLES = [
  'events_daily',
  'event_ledger',
  'event_ledger_legacy',
  'subscribers',
  'identity_links',
  'sync_runs',
  'sync_watermarks',
  'sync_rejects',
  'sync_settings',
  'subscriber_count',
];
/** A's data, run ids and write times aside (they differ between the two databases' runs). */
const A_DATA = ['events_daily', 'event_ledger', 'subscribers', 'sync_watermarks'];
const A_IGNORE = ['event_ledger.run_id', 'subscribers.updated_at', 'sync_watermarks.run_id', 'sync_watermarks.updated_at'];

/** fn in one transaction from empty sync tables (the projects stay), rolled back. */
async function inTransaction(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<void>): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await emptySyncTables(client, { dropPartitions: false });
    await fn(client);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

describe('several projects: isolation over arbitrary run sequences', () => {
  it(
    "A's runs on B's ids and keys change no row of B, and leave A's data as A alone would have it",
    async () => {
      await fc.assert(
        fc.asyncProperty(
          runStepsArb({ maxLength: 2, maxEvents: 20 }),
          runStepsArb({ maxLength: 3, maxEvents: 20, jumpWeight: 2 }),
          fc.integer({ min: 1, max: 3 }),
          async (stepsOfB, ownStepsOfA, every) => {
            const linesOfB = stepsOfB.flatMap((step) => step.lines);
            const stepsOfA = ownStepsOfA.map((step, i) => ({
              ...step,
              lines: [...step.lines, ...linesOfB.filter((_, j) => (i + j) % every === 0)],
            }));
            await inTransaction(db.pool, async (client) => {
              const alone = await branch(client, async () => {
                for (const step of stepsOfA) await finishStep(client, step, 'a');
                return tableSnapshot(client, A_DATA, A_IGNORE, 'a');
              });
              for (const step of stepsOfB) await finishStep(client, step, 'b');
              const before = await tableSnapshot(client, B_TABLES, [], 'b');
              for (const step of stepsOfA) await finishStep(client, step, 'a');
              await assertSameTables(
                client,
                "B's rows before (expected) and after (actual) A's runs",
                before,
                await tableSnapshot(client, B_TABLES, [], 'b'),
              );
              await assertSameTables(
                client,
                "A's data alone (expected) and beside B (actual)",
                alone,
                await tableSnapshot(client, A_DATA, A_IGNORE, 'a'),
              );
            });
          },
        ),
        propertyParameters(3, 2500),
      );
    },
    timeoutFor(3, 2500),
  );
});
