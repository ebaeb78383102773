// fast-check parameters shared by the property tests: FC_NUM_RUNS overrides every property's number of runs
// (default: each property's own, sized so that `npm test` stays within its time budget); FC_SEED replays a seed, and
// FC_PATH with it the one counterexample fast-check printed (its `path`).
import type fc from 'fast-check';

function runsWanted(defaultRuns: number): number {
  return Number(process.env.FC_NUM_RUNS) || defaultRuns;
}

/**
 * A test timeout that grows with FC_NUM_RUNS: ms per run times runs, four times over, at least a minute. Four, not two:
 * with CI's property files running side by side on a machine 2.3× slower than usual (a bare COPY of the bench's file
 * 2.42 s against 1.07 s), seven properties at 300 runs reached 80 % of twice their budget (below) and were cut short,
 * and the property after one of them was interrupted with no run done (2026-12-02).
 */
export function timeoutFor(defaultRuns: number, msPerRun: number): number {
  return Math.max(60_000, runsWanted(defaultRuns) * msPerRun * 4);
}

/**
 * numRuns (and the seed of FC_SEED). Given msPerRun, fast-check also stops at 80% of timeoutFor: a slow shrink then
 * still reports its seed and counterexample instead of being cut off by the test's timeout.
 * Known limit: interruptAfterTimeLimit races a running async predicate against the clock and abandons it, and an
 * abandoned predicate goes on with its queries beside the next test (seen once on a machine loaded by a bench run: a
 * TRUNCATE deadlocked with it). skipAllAfterTimeLimit does not abandon, but keeps generating and skipping values until
 * fast-check's skip budget fails the property (seen in CI): not a replacement.
 */
export function propertyParameters(defaultRuns: number, msPerRun?: number): fc.Parameters<unknown> {
  const parameters: fc.Parameters<unknown> = { numRuns: runsWanted(defaultRuns) };
  if (process.env.FC_SEED) parameters.seed = Number(process.env.FC_SEED);
  if (process.env.FC_PATH) parameters.path = process.env.FC_PATH;
  if (msPerRun) parameters.interruptAfterTimeLimit = Math.floor(timeoutFor(defaultRuns, msPerRun) * 0.8);
  return parameters;
}
