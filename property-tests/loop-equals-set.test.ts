// Invariant 1: each path's row-at-a-time reference (…_loop) and its set-based implementation leave identical
// events_daily, event_ledger and subscribers (every column: both run in one transaction, so now() and the run are
// the same) and the same apply_result, from an arbitrary prior state and for any batch.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchArb } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { applyAdd, applyReplace, assertSameTables, tableSnapshot } from '../scripts/sql/sync-api.ts';
import { applyPriorState, branch, eventTables, parsedRun, pathDayArb, pathSpan, priorStateArb, rolledBack, spanDay } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const runs = 100;

describe('invariant 1: loop ≡ set-based', () => {
  it('REPLACE: upsert_subscribers_incremental ≡ upsert_subscribers_incremental_loop', { timeout: timeoutFor(runs, 150) }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(priorStateArb(pathSpan), batchArb({ ...pathSpan, maxEvents: 60 }), pathDayArb, pathDayArb, async (prior, batch, a, b) => {
        const [from, to] = [spanDay(pathSpan, Math.min(a, b)), spanDay(pathSpan, Math.max(a, b))];
        await rolledBack(db.pool, async (client) => {
          await applyPriorState(client, pathSpan, prior);
          const runId = await parsedRun(client, batch);
          const bySet = await branch(client, async () => ({ result: await applyReplace(client, runId, from, to), tables: await tableSnapshot(client, eventTables) }));
          const loopResult = await applyReplace(client, runId, from, to, 'loop');
          await assertSameTables(db.pool, `REPLACE ${from}..${to}: tables after the loop (expected) and the set-based path (actual)`, await tableSnapshot(client, eventTables), bySet.tables);
          expect(bySet.result, 'apply_result of the set-based path (actual) and the loop (expected)').toEqual(loopResult);
          if (loopResult.applied > 0 && loopResult.duplicates + loopResult.too_old > 0) exercised++;
        });
      }),
      propertyParameters(runs, 150),
    );
    expect(exercised, 'runs that applied events and skipped some').toBeGreaterThan(0);
  });

  it('ADD: upsert_subscribers_incremental_add ≡ upsert_subscribers_incremental_add_loop', { timeout: timeoutFor(runs, 150) }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(priorStateArb(pathSpan), batchArb({ ...pathSpan, maxEvents: 60 }), pathDayArb, async (prior, batch, horizon) => {
        const horizonDay = spanDay(pathSpan, horizon);
        await rolledBack(db.pool, async (client) => {
          await applyPriorState(client, pathSpan, prior);
          // re-send the prior batches too: events already in the ledger
          const runId = await parsedRun(client, [...batch, ...prior.flatMap((step) => step.lines)]);
          const bySet = await branch(client, async () => ({ result: await applyAdd(client, runId, horizonDay), tables: await tableSnapshot(client, eventTables) }));
          const loopResult = await applyAdd(client, runId, horizonDay, 'loop');
          await assertSameTables(db.pool, `ADD above ${horizonDay}: tables after the loop (expected) and the set-based path (actual)`, await tableSnapshot(client, eventTables), bySet.tables);
          expect(bySet.result, 'apply_result of the set-based path (actual) and the loop (expected)').toEqual(loopResult);
          if (loopResult.applied > 0 && loopResult.duplicates > 0) exercised++;
        });
      }),
      propertyParameters(runs, 150),
    );
    expect(exercised, 'runs that applied events and skipped duplicates').toBeGreaterThan(0);
  });
});
