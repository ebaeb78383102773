// Event selection (issue 13 part 2): REPLACE restricted to a selection S ≡ REPLACE of the whole window on the data
// where the names outside S are unchanged.
//
// From an arbitrary prior state — REPLACE([pa, pb], P) then ADD(Q) (everything above the span's first day) — and a
// new batch E over a window W:
//   left:  a run begun with events => S (so its other names are parsed as skip_reason 'not_selected'),
//          REPLACE(W) by the set path, and again by the _loop twin;
//   right: a run with every name, REPLACE(W, E') where E' = E's events of names in S, plus the prior's stored events
//          of names outside S inside W: P's lines of days in [pa, pb] first, then Q's (REPLACE keeps an event's first
//          line, as the prior state did), so that for names outside S, E' holds exactly what the tables hold.
// events_daily, event_ledger and subscribers must be identical on all three (event_ledger.run_id aside: left and
// right are different runs), and the rows of names outside S must be exactly the prior's, run_id included.
// Seen failing: without 200-ledger.sql (REPLACE not restricted to the run's selection, skip_reason not read), the
// counterexample S = ["ログイン"], E = one 'login' event in W, from an empty prior: the not-selected login event was
// applied (rows of names outside S: expected none, actual one events_daily and one event_ledger row).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchArb, dayMs, eventDayMs, type StagedLine } from './arbitraries.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { applyAdd, applyReplace, assertSameTables, tableSnapshot, type Queryable } from '../scripts/sql/sync-api.ts';
import { branch, eventTables, parsedRun, pathDayArb, pathSpan, rolledBack, spanDay } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const runs = 20;

/** Every name the arbitraries use, and one they never do. */
const names = ['login', 'purchase', 'Sign Up', 'page view', 'ログイン', '🎉', 'n'.repeat(255), 'never sent'];
const selectionArb = fc.subarray(names, { minLength: 1, maxLength: names.length - 1 });

/** The day offset of a valid line in pathSpan, null for a line the parser rejects. */
function dayOf(line: StagedLine): number | null {
  return line.kind === 'event' ? (eventDayMs(line.event) - pathSpan.firstDayMs) / dayMs : null;
}

/** The rows of names outside S, every column: what a REPLACE restricted to S must leave exactly as it was. */
async function rowsOutside(client: Queryable, selection: string[]): Promise<unknown> {
  const { rows } = await client.query(
    `select (select coalesce(jsonb_agg(to_jsonb(d) order by d.distinct_id, d.day, d.event_name), '[]')
             from mixpanel_sync.events_daily d where not (d.event_name = any ($1::text[]))) as events_daily,
            (select coalesce(jsonb_agg(to_jsonb(l) order by l.distinct_id, l.event_key), '[]')
             from mixpanel_sync.event_ledger l where not (l.event_name = any ($1::text[]))) as event_ledger`,
    [selection],
  );
  return rows[0];
}

describe('event selection: REPLACE restricted to S', () => {
  it('≡ REPLACE of the whole window with the names outside S as stored; loop ≡ set; other names untouched', {
    timeout: timeoutFor(runs, 250),
  }, async () => {
    let exercised = 0;
    await fc.assert(
      fc.asyncProperty(
        batchArb({ ...pathSpan, maxEvents: 40 }),
        fc.tuple(pathDayArb, pathDayArb),
        batchArb({ ...pathSpan, maxEvents: 20 }),
        batchArb({ ...pathSpan, maxEvents: 40 }),
        fc.tuple(pathDayArb, pathDayArb),
        selectionArb,
        async (p, [p1, p2], q, e, [w1, w2], selection) => {
          const [pa, pb] = [Math.min(p1, p2), Math.max(p1, p2)];
          const [wa, wb] = [Math.min(w1, w2), Math.max(w1, w2)];
          const [from, to] = [spanDay(pathSpan, wa), spanDay(pathSpan, wb)];
          const inS = (line: StagedLine) => line.kind === 'event' && selection.includes(line.event.event);
          const inW = (line: StagedLine) => {
            const day = dayOf(line);
            return day !== null && day >= wa && day <= wb;
          };
          const otherStored = [
            ...p.filter((line) => {
              const day = dayOf(line);
              return day !== null && day >= pa && day <= pb;
            }),
            ...q,
          ].filter((line) => line.kind === 'event' && !inS(line) && inW(line));
          const replacement = [...otherStored, ...e.filter(inS)];

          await rolledBack(db.pool, async (client) => {
            await applyReplace(client, await parsedRun(client, p), spanDay(pathSpan, pa), spanDay(pathSpan, pb));
            await applyAdd(client, await parsedRun(client, q), spanDay(pathSpan, 0));
            const prior = await rowsOutside(client, selection);

            const selectedRun = await parsedRun(client, e, selection);
            const bySet = await branch(client, async () => {
              await applyReplace(client, selectedRun, from, to);
              expect(
                await rowsOutside(client, selection),
                `rows of names outside ${JSON.stringify(selection)} after REPLACE ${from}..${to}`,
              ).toEqual(prior);
              return tableSnapshot(client, eventTables, ['event_ledger.run_id']);
            });
            const byLoop = await branch(client, async () => {
              await applyReplace(client, selectedRun, from, to, 'loop');
              return tableSnapshot(client, eventTables, ['event_ledger.run_id']);
            });
            const wholeRun = await parsedRun(client, replacement);
            await applyReplace(client, wholeRun, from, to);
            const whole = await tableSnapshot(client, eventTables, ['event_ledger.run_id']);

            await assertSameTables(
              db.pool,
              `S = ${JSON.stringify(selection)}, W = ${from}..${to}: REPLACE(W, E' = E|S + stored names outside S) (expected) and REPLACE restricted to S (set path, actual)`,
              whole,
              bySet,
            );
            await assertSameTables(
              db.pool,
              `S = ${JSON.stringify(selection)}, W = ${from}..${to}: set path (expected) and _loop (actual)`,
              bySet,
              byLoop,
            );
            if (otherStored.length > 0 && e.some((line) => inS(line) && inW(line))) exercised++;
          });
        },
      ),
      propertyParameters(runs, 250),
    );
    expect(exercised, 'runs whose window held other names and whose batch had selected events in it').toBeGreaterThan(0);
  });
});
