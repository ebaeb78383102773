// Whole runs for property tests: arbitrary sequences of runs (clock, full or incremental, set or loop path, a batch
// around the clock with some events after it and some older than the ledger retention), finished through finish_run.
import fc from 'fast-check';
import { batchArb, dayMs, exportEventArb, type StagedLine } from './arbitraries.ts';
import { beginRun, finishRun, stageLines, writeSetting, type Queryable, type SyncRun } from '../scripts/sql/sync-api.ts';

export interface RunStep {
  clock: string;
  /** begin_run's project_timezone: null for UTC (today's Mixpanel projects) */
  timezone: string | null;
  forceFull: boolean;
  loop: boolean;
  lines: StagedLine[];
}

const sequenceStartMs = Date.UTC(2024, 2, 5, 12);

export interface RunStepsOptions {
  minLength?: number;
  maxLength?: number;
  maxEvents?: number;
  /** weight of a 40-to-60-day jump of the clock against 5 for 0 to 3 days */
  jumpWeight?: number;
  /** let runs read times in a project timezone now and then (older projects), which may change between runs */
  timezones?: boolean;
}

/**
 * Runs whose clocks move forward by 0 to 3 days, or now and then by 40 to 60 days (then the ledger prune removes
 * rows; past the retention the run turns full); a run may be forced full and may use the loop path. Each run after
 * the first re-sends a share of the previous run's lines, as an incremental run re-reads its overlap, or is now and
 * then a retry of the previous run as a full run (same clock, same lines), which changes no subscriber's summary
 * when the previous run was full.
 */
export function runStepsArb({
  minLength = 1,
  maxLength = 3,
  maxEvents = 40,
  jumpWeight = 1,
  timezones = false,
}: RunStepsOptions = {}): fc.Arbitrary<RunStep[]> {
  const plan = fc.record({
    advanceMinutes: fc.oneof(
      { weight: 5, arbitrary: fc.integer({ min: 0, max: 3 * 24 * 60 }) },
      { weight: jumpWeight, arbitrary: fc.integer({ min: 40 * 24 * 60, max: 60 * 24 * 60 }) },
    ),
    forceFull: fc.boolean(),
    loop: fc.boolean(),
    resendPercent: fc.integer({ min: 0, max: 100 }),
    retry: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
    timezone: timezones ? fc.constantFrom(null, null, 'America/Los_Angeles', 'Asia/Tokyo') : fc.constant(null),
  });
  return fc.array(plan, { minLength, maxLength }).chain((plans) => {
    let clockMs = sequenceStartMs;
    const steps = plans.map(({ advanceMinutes, forceFull, loop, retry, timezone }, i) => {
      if (!(retry && i > 0)) clockMs += advanceMinutes * 60_000;
      const clockDayMs = Math.floor(clockMs / dayMs) * dayMs;
      const clock = new Date(clockMs).toISOString();
      return fc
        .tuple(
          batchArb({ firstDayMs: clockDayMs - 3 * dayMs, days: 5, maxEvents }),
          fc.array(exportEventArb({ firstDayMs: clockDayMs - 60 * dayMs, days: 30 }), { maxLength: 3 }),
        )
        .map(
          ([lines, old]): RunStep => ({
            clock,
            timezone,
            forceFull,
            loop,
            lines: [...lines, ...old.map((event): StagedLine => ({ kind: 'event', event, line: JSON.stringify(event) }))],
          }),
        );
    });
    return fc.tuple(...steps).map((built) => {
      const result: RunStep[] = [];
      for (const [i, step] of built.entries()) {
        const previous = result[i - 1];
        if (previous && plans[i]!.retry) result.push({ ...previous, forceFull: true, loop: step.loop });
        else
          result.push({
            ...step,
            lines: [
              ...step.lines,
              ...(previous?.lines ?? []).slice(0, Math.floor(((previous?.lines.length ?? 0) * plans[i]!.resendPercent) / 100)),
            ],
          });
      }
      return result;
    });
  });
}

/**
 * The ledger retention these sequences are built around: 0-to-3-day steps stay incremental, 40-to-60-day jumps pass
 * it (the run turns full). With the 7-day default of 400-ledger.sql a 3-day step may already turn a run full, and a
 * full run whose batch has no usable event over stored days is refused by the REPLACE guard (MP001), which the tests
 * of these sequences do not expect. The 7-day default is proved by scripts/sql/ledger-merge.test.ts,
 * verify/replace_merge_writes_only_changes.sql and the ledger_from property of loop-equals-set.test.ts.
 */
export const sequenceLedgerRetention = '45 days';

/** begin_run at the step's clock, stage its lines, switch the path: the run, ready to finish (project: null, the only one). */
export async function stageStep(client: Queryable, step: RunStep, project: string | null = null): Promise<SyncRun> {
  await writeSetting(client, 'events.ledger_retention', sequenceLedgerRetention, project);
  // allowShrink: these sequences prove REPLACE/ADD algebra, where a full run replaces its window with whatever its
  // batch holds (an empty batch included); the REPLACE guard that refuses such a run without permission (MP001) has
  // its own tests (scripts/sql/safety-guard.test.ts, scripts/cli/seen-scenarios.test.ts).
  const run = await beginRun(client, {
    source: 'events',
    clock: step.clock,
    forceFull: step.forceFull,
    projectTimezone: step.timezone,
    allowShrink: true,
    project,
  });
  await stageLines(
    client,
    'events',
    run.id,
    step.lines.map((l) => l.line),
  );
  await writeSetting(client, 'events.upsert_path', step.loop ? 'loop' : 'set', project);
  return run;
}

export async function finishStep(client: Queryable, step: RunStep, project: string | null = null): Promise<SyncRun> {
  return finishRun(client, (await stageStep(client, step, project)).id);
}
