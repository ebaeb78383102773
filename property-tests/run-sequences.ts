// Whole runs for property tests: arbitrary sequences of runs (clock, full or incremental, set or loop path, a batch
// around the clock with some events after it and some older than the ledger retention), finished through finish_run.
import fc from 'fast-check';
import { batchArb, dayMs, exportEventArb, type StagedLine } from './arbitraries.ts';
import { beginRun, finishRun, setUpsertPath, stageLines, type RunRow } from './event-runs.ts';
import type { Queryable } from './event-tables.ts';

export interface RunStep {
  clock: string;
  forceFull: boolean;
  loop: boolean;
  lines: StagedLine[];
}

const sequenceStartMs = Date.UTC(2024, 2, 5, 12);

/**
 * Runs whose clocks move forward by 0 to 3 days, or now and then by 40 to 44 days (still incremental, and the ledger
 * prune removes rows); a run may be forced full and may use the loop path; each run after the first re-sends a share
 * of the previous run's lines, as an incremental run re-reads its overlap.
 */
export function runStepsArb({ minLength = 1, maxLength = 3, maxEvents = 40 } = {}): fc.Arbitrary<RunStep[]> {
  const plan = fc.record({
    advanceMinutes: fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: 3 * 24 * 60 }) }, { weight: 1, arbitrary: fc.integer({ min: 40 * 24 * 60, max: 44 * 24 * 60 }) }),
    forceFull: fc.boolean(),
    loop: fc.boolean(),
    resendPercent: fc.integer({ min: 0, max: 100 }),
  });
  return fc.array(plan, { minLength, maxLength }).chain((plans) => {
    let clockMs = sequenceStartMs;
    const steps = plans.map(({ advanceMinutes, forceFull, loop }) => {
      clockMs += advanceMinutes * 60_000;
      const clockDayMs = Math.floor(clockMs / dayMs) * dayMs;
      const clock = new Date(clockMs).toISOString();
      return fc
        .tuple(
          batchArb({ firstDayMs: clockDayMs - 3 * dayMs, days: 5, maxEvents }),
          fc.array(exportEventArb({ firstDayMs: clockDayMs - 60 * dayMs, days: 30 }), { maxLength: 3 }),
        )
        .map(([lines, old]): RunStep => ({
          clock, forceFull, loop,
          lines: [...lines, ...old.map((event): StagedLine => ({ kind: 'event', event, line: JSON.stringify(event) }))],
        }));
    });
    return fc.tuple(...steps).map((built) =>
      built.map((step, i) => {
        const previous = built[i - 1]?.lines ?? [];
        return { ...step, lines: [...step.lines, ...previous.slice(0, Math.floor((previous.length * plans[i]!.resendPercent) / 100))] };
      }),
    );
  });
}

/** begin_run at the step's clock, stage its lines, switch the path: the run, ready to finish. */
export async function stageStep(client: Queryable, step: RunStep): Promise<RunRow> {
  const run = await beginRun(client, step.clock, step.forceFull);
  await stageLines(client, run.id, step.lines);
  await setUpsertPath(client, step.loop);
  return run;
}

export async function finishStep(client: Queryable, step: RunStep): Promise<RunRow> {
  return finishRun(client, (await stageStep(client, step)).id);
}


