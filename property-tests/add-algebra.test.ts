// Invariants 2 and 3, from an arbitrary prior state:
//   2. ADD is idempotent — ADD(E); ADD(E) ≡ ADD(E) — and order-independent — ADD(A); ADD(B) ≡ ADD(B); ADD(A).
//   3. REPLACE(W, A) then ADD(B1), …, ADD(Bk) with every Bi inside W ≡ REPLACE(W, A ∪ B1 ∪ … ∪ Bk).
// Idempotence runs each ADD in a transaction of its own and compares every column, updated_at included: a second
// ADD(E) that rewrote a subscriber would move its updated_at. The other comparisons run their two sides in one
// transaction (savepoints), so now() is the same on both; event_ledger.run_id is left out there because it records
// which run applied an event first, which is exactly what the order changes.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchArb, dayMs, eventDayMs, validLines, type StagedLine } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { applyAdd, applyReplace, assertSameTables, tableSnapshot } from '../scripts/sql/sync-api.ts';
import {
  applyPriorState,
  branch,
  emptyTables,
  eventTables,
  parsedRun,
  pathDayArb,
  pathSpan,
  priorStateArb,
  rolledBack,
  spanDay,
} from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const runs = 20;

describe('invariant 2: ADD is idempotent and order-independent', () => {
  it('ADD(E); ADD(E) ≡ ADD(E), each in its own transaction, every column compared', { timeout: timeoutFor(runs, 200) }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(priorStateArb(pathSpan), batchArb({ ...pathSpan, maxEvents: 60 }), pathDayArb, async (prior, batch, horizon) => {
        const horizonDay = spanDay(pathSpan, horizon);
        await emptyTables(db.pool);
        const client = await db.pool.connect();
        try {
          await applyPriorState(client, pathSpan, prior);
          const runs = [await parsedRun(client, batch), await parsedRun(client, batch)];
          const first = await applyAdd(client, runs[0]!, horizonDay);
          const once = await tableSnapshot(client, eventTables);
          const second = await applyAdd(client, runs[1]!, horizonDay);
          await assertSameTables(
            db.pool,
            `ADD(E) above ${horizonDay}: tables after ADD(E) (expected) and after ADD(E) again (actual)`,
            once,
            await tableSnapshot(client, eventTables),
          );
          expect(second, 'apply_result of the second ADD(E)').toEqual({
            applied: 0,
            duplicates: first.applied + first.duplicates,
            too_old: first.too_old,
            users_touched: 0,
          });
          if (first.applied > 0) exercised++;
        } finally {
          client.release();
        }
      }),
      propertyParameters(runs, 200),
    );
    expect(exercised, 'runs whose first ADD applied events').toBeGreaterThan(0);
  });

  it('ADD(A); ADD(B) ≡ ADD(B); ADD(A) for overlapping A and B (event_ledger.run_id aside)', {
    timeout: timeoutFor(runs, 150),
  }, async () => {
    const overlapping = fc
      .tuple(batchArb({ ...pathSpan, maxEvents: 40 }), batchArb({ ...pathSpan, maxEvents: 40 }))
      .chain(([a, b]) => fc.tuple(fc.constant(a), fc.constant(b), fc.subarray(validLines(a)), fc.subarray(validLines(b))))
      .map(([a, b, fromA, fromB]): [StagedLine[], StagedLine[]] => [
        [...a, ...fromB],
        [...b, ...fromA],
      ]);
    await fc.assert(
      fc.asyncProperty(priorStateArb(pathSpan), overlapping, pathDayArb, async (prior, [a, b], horizon) => {
        const horizonDay = spanDay(pathSpan, horizon);
        await rolledBack(db.pool, async (client) => {
          await applyPriorState(client, pathSpan, prior);
          const [runA, runB] = [await parsedRun(client, a), await parsedRun(client, b)];
          const aThenB = await branch(client, async () => {
            await applyAdd(client, runA, horizonDay);
            await applyAdd(client, runB, horizonDay);
            return tableSnapshot(client, eventTables, ['event_ledger.run_id']);
          });
          await applyAdd(client, runB, horizonDay);
          await applyAdd(client, runA, horizonDay);
          await assertSameTables(
            db.pool,
            `ADD above ${horizonDay}: tables after ADD(A); ADD(B) (expected) and ADD(B); ADD(A) (actual)`,
            aThenB,
            await tableSnapshot(client, eventTables, ['event_ledger.run_id']),
          );
        });
      }),
      propertyParameters(runs, 150),
    );
  });
});

describe('invariant 3: REPLACE ≡ REPLACE then ADDs', () => {
  it('REPLACE(W, A); ADD(B1); …; ADD(Bk) ≡ REPLACE(W, A ∪ B1 ∪ … ∪ Bk) with Bi inside W (event_ledger.run_id aside)', {
    timeout: timeoutFor(runs, 250),
  }, async () => {
    const scenario = fc
      .record({ a: batchArb({ ...pathSpan, maxEvents: 40 }), x: pathDayArb, y: pathDayArb })
      .chain(({ a, x, y }) => {
        const [from, to] = [Math.min(x, y), Math.max(x, y)];
        const inside = { firstDayMs: pathSpan.firstDayMs + from * dayMs, days: to - from + 1 };
        const aInside = validLines(a).filter(
          (l) =>
            l.kind === 'event' && eventDayMs(l.event) >= inside.firstDayMs && eventDayMs(l.event) < inside.firstDayMs + inside.days * dayMs,
        );
        const b = fc.record({
          fresh: batchArb({ ...inside, maxEvents: 20 }),
          fromA: fc.subarray(aInside),
          again: fc.integer({ min: 0, max: 100 }),
        });
        return fc.record({
          a: fc.constant(a),
          from: fc.constant(from),
          to: fc.constant(to),
          bs: fc.array(b, { minLength: 1, maxLength: 3 }),
        });
      })
      .map(({ a, from, to, bs }) => {
        // each Bi: fresh events inside W, some of A, and a share of the previous B re-sent
        const batches: StagedLine[][] = [];
        for (const { fresh, fromA, again } of bs) {
          const previous = batches.at(-1) ?? [];
          batches.push([...fresh, ...fromA, ...previous.slice(0, Math.floor((previous.length * again) / 100))]);
        }
        return { a, from, to, batches };
      });
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(priorStateArb(pathSpan), scenario, async (prior, { a, from, to, batches }) => {
        const [fromDay, toDay] = [spanDay(pathSpan, from), spanDay(pathSpan, to)];
        await rolledBack(db.pool, async (client) => {
          await applyPriorState(client, pathSpan, prior);
          const aRun = await parsedRun(client, a);
          const bRuns: string[] = [];
          for (const batch of batches) bRuns.push(await parsedRun(client, batch));
          const unionRun = await parsedRun(client, [...a, ...batches.flat()]);
          const stepwise = await branch(client, async () => {
            let applied = (await applyReplace(client, aRun, fromDay, toDay)).applied;
            for (const run of bRuns) applied += (await applyAdd(client, run, fromDay)).applied;
            return { applied, tables: await tableSnapshot(client, eventTables, ['event_ledger.run_id']) };
          });
          const atOnce = await applyReplace(client, unionRun, fromDay, toDay);
          await assertSameTables(
            db.pool,
            `W = ${fromDay}..${toDay}: tables after REPLACE(W, A ∪ B…) (expected) and REPLACE(W, A) then ADD(Bi) (actual)`,
            await tableSnapshot(client, eventTables, ['event_ledger.run_id']),
            stepwise.tables,
          );
          expect(stepwise.applied, 'events applied by REPLACE then ADDs (actual) and by REPLACE of the union (expected)').toBe(
            atOnce.applied,
          );
          if (atOnce.duplicates > 0 && stepwise.applied > 0) exercised++;
        });
      }),
      propertyParameters(runs, 250),
    );
    expect(exercised, 'runs with duplicates across the batches').toBeGreaterThan(0);
  });
});
