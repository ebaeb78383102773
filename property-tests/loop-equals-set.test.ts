// Invariant 1: each path's row-at-a-time reference (…_loop) and its set-based implementation leave identical
// events_daily, event_ledger and subscribers (every column: both run in one transaction, so now() and the run are
// the same) and the same apply_result, from an arbitrary prior state and for any batch; with raw storage
// (events.store_raw, 200-ledger.sql) off or on, so the raw columns and the no_user rows (distinct_id '') too.
// Seen failing with raw on: the loop REPLACE's `or raw_on and e.skip_reason = 'no_user'` dropped from its step 3 (the
// loop deleted the no_user ledger rows the set path kept).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchArb, type StagedLine } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { applyAdd, applyReplace, assertSameTables, tableSnapshot, type Queryable } from '../scripts/sql/sync-api.ts';
import { applyPriorState, branch, eventTables, parsedRun, pathDayArb, pathSpan, priorStateArb, rolledBack, spanDay } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const runs = 30;

/**
 * With raw storage on, the batch plus a third of its events sent again with no distinct_id (absent, null or ""):
 * no_user events, which the paths keep in the ledger under '' (staged as lines; the parser makes them no_user).
 */
function withNoUserEvents(batch: StagedLine[], raw: boolean): StagedLine[] {
  if (!raw) return batch;
  const extra: StagedLine[] = [];
  batch.forEach((line, i) => {
    if (line.kind !== 'event' || i % 3 !== 0) return;
    const { distinct_id: _id, ...rest } = line.event.properties;
    const properties = i % 2 === 0 ? rest : { ...rest, distinct_id: i % 4 === 1 ? null : '' };
    extra.push({ kind: 'invalid', line: JSON.stringify({ event: line.event.event, properties }) });
  });
  return [...batch, ...extra];
}

/** events.store_raw for the rest of the (rolled back) transaction: parsing fills the raw columns, the paths keep them. */
async function storeRaw(client: Queryable, raw: boolean): Promise<void> {
  await client.query(`update mixpanel_sync.sync_settings set value = $1 where key = 'events.store_raw'`, [raw ? 'on' : 'off']);
}

/** An event of pathSpan's day `offset` as a staged line (for examples). */
function eventOn(offset: number, user: string, insertId: string): StagedLine {
  const event = {
    event: 'view',
    properties: { time: (pathSpan.firstDayMs + offset * 86_400_000) / 1000 + 3_600, distinct_id: user, $insert_id: insertId },
  };
  return { kind: 'event', event, line: JSON.stringify(event) };
}

describe('invariant 1: loop ≡ set-based', () => {
  it('REPLACE: upsert_subscribers_incremental ≡ upsert_subscribers_incremental_loop', { timeout: timeoutFor(runs, 150) }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(
        priorStateArb(pathSpan),
        batchArb({ ...pathSpan, maxEvents: 60 }),
        pathDayArb,
        pathDayArb,
        fc.boolean(),
        async (prior, batch, a, b, raw) => {
          const [from, to] = [spanDay(pathSpan, Math.min(a, b)), spanDay(pathSpan, Math.max(a, b))];
          await rolledBack(db.pool, async (client) => {
            await storeRaw(client, raw);
            await applyPriorState(client, pathSpan, prior);
            const runId = await parsedRun(client, withNoUserEvents(batch, raw));
            const bySet = await branch(client, async () => ({
              result: await applyReplace(client, runId, from, to),
              tables: await tableSnapshot(client, eventTables),
            }));
            const loopResult = await applyReplace(client, runId, from, to, 'loop');
            await assertSameTables(
              db.pool,
              `REPLACE ${from}..${to}: tables after the loop (expected) and the set-based path (actual)`,
              await tableSnapshot(client, eventTables),
              bySet.tables,
            );
            expect(bySet.result, 'apply_result of the set-based path (actual) and the loop (expected)').toEqual(loopResult);
            if (loopResult.applied > 0 && loopResult.duplicates + loopResult.too_old > 0) exercised++;
          });
        },
      ),
      propertyParameters(runs, 150),
    );
    expect(exercised, 'runs that applied events and skipped some').toBeGreaterThan(0);
  });

  // ledger_from (400-ledger.sql): finish_run passes the ledger horizon, so that REPLACE writes ledger rows only for the
  // days the ledger keeps. Loop ≡ set with it, and REPLACE(W, E, ledger_from H) ≡ REPLACE(W, E) then the ledger rows of
  // W before H deleted (what the prune of finish_run does), apply_result included.
  // Seen failing: with `k.day >= kept_from` dropped from ledger_written in the set path (rows before H inserted), both
  // comparisons named the first ledger row before H.
  it('REPLACE with ledger_from: loop ≡ set, and ≡ REPLACE then the ledger before ledger_from pruned', {
    timeout: timeoutFor(runs, 150),
  }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(
        priorStateArb(pathSpan),
        batchArb({ ...pathSpan, maxEvents: 60 }),
        pathDayArb,
        pathDayArb,
        pathDayArb,
        fc.boolean(),
        async (prior, batch, a, b, h, raw) => {
          const [from, to] = [spanDay(pathSpan, Math.min(a, b)), spanDay(pathSpan, Math.max(a, b))];
          const ledgerFrom = spanDay(pathSpan, h);
          await rolledBack(db.pool, async (client) => {
            await storeRaw(client, raw);
            await applyPriorState(client, pathSpan, prior);
            const runId = await parsedRun(client, withNoUserEvents(batch, raw));
            const bySet = await branch(client, async () => ({
              result: await applyReplace(client, runId, from, to, 'set', ledgerFrom),
              tables: await tableSnapshot(client, eventTables),
            }));
            const whole = await branch(client, async () => {
              const result = await applyReplace(client, runId, from, to, 'set', null);
              await client.query(
                'delete from mixpanel_sync.event_ledger l where l.day between $1::date and $2::date and l.day < $3::date',
                [from, to, ledgerFrom],
              );
              return { result, tables: await tableSnapshot(client, eventTables) };
            });
            const loopResult = await applyReplace(client, runId, from, to, 'loop', ledgerFrom);
            await assertSameTables(
              db.pool,
              `REPLACE ${from}..${to}, ledger from ${ledgerFrom}: tables after the loop (expected) and the set-based path (actual)`,
              await tableSnapshot(client, eventTables),
              bySet.tables,
            );
            expect(bySet.result, 'apply_result of the set-based path (actual) and the loop (expected)').toEqual(loopResult);
            await assertSameTables(
              db.pool,
              `REPLACE ${from}..${to}: REPLACE then the ledger before ${ledgerFrom} deleted (expected) and REPLACE with ledger_from (actual)`,
              whole.tables,
              await tableSnapshot(client, eventTables),
            );
            expect(loopResult, 'apply_result with ledger_from (actual) and without (expected)').toEqual(whole.result);
            if (loopResult.applied > 0 && ledgerFrom > from && ledgerFrom <= to) exercised++;
          });
        },
      ),
      {
        ...propertyParameters(runs, 150),
        // always tried first: a window of every day, events on each, ledger_from its second day (the case counted below)
        examples: [[[], [0, 1, 2, 3, 4, 5].map((d) => eventOn(d, `u${d % 2}`, `e${d}`)), 0, pathSpan.days - 1, 1, false]],
      },
    );
    expect(exercised, 'runs whose ledger_from fell inside the window').toBeGreaterThan(0);
  });

  it('ADD: upsert_subscribers_incremental_add ≡ upsert_subscribers_incremental_add_loop', { timeout: timeoutFor(runs, 150) }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(
        priorStateArb(pathSpan),
        batchArb({ ...pathSpan, maxEvents: 60 }),
        pathDayArb,
        fc.boolean(),
        async (prior, batch, horizon, raw) => {
          const horizonDay = spanDay(pathSpan, horizon);
          await rolledBack(db.pool, async (client) => {
            await storeRaw(client, raw);
            await applyPriorState(client, pathSpan, prior);
            // re-send the prior batches too: events already in the ledger
            const runId = await parsedRun(client, withNoUserEvents([...batch, ...prior.flatMap((step) => step.lines)], raw));
            const bySet = await branch(client, async () => ({
              result: await applyAdd(client, runId, horizonDay),
              tables: await tableSnapshot(client, eventTables),
            }));
            const loopResult = await applyAdd(client, runId, horizonDay, 'loop');
            await assertSameTables(
              db.pool,
              `ADD above ${horizonDay}: tables after the loop (expected) and the set-based path (actual)`,
              await tableSnapshot(client, eventTables),
              bySet.tables,
            );
            expect(bySet.result, 'apply_result of the set-based path (actual) and the loop (expected)').toEqual(loopResult);
            if (loopResult.applied > 0 && loopResult.duplicates > 0) exercised++;
          });
        },
      ),
      propertyParameters(runs, 150),
    );
    expect(exercised, 'runs that applied events and skipped duplicates').toBeGreaterThan(0);
  });
});
