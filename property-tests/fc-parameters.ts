// fast-check parameters shared by the property tests: FC_NUM_RUNS overrides every property's number of runs
// (default: each property's own, sized so that `npm test` stays within its time budget); FC_SEED replays a seed.
import type fc from 'fast-check';

export function propertyParameters(defaultRuns: number): fc.Parameters<unknown> {
  const numRuns = Number(process.env.FC_NUM_RUNS) || defaultRuns;
  const seed = process.env.FC_SEED ? Number(process.env.FC_SEED) : undefined;
  return seed === undefined ? { numRuns } : { numRuns, seed };
}

/** A test timeout that grows with FC_NUM_RUNS: ms per run times runs, at least a minute. */
export function timeoutFor(defaultRuns: number, msPerRun: number): number {
  return Math.max(60_000, (Number(process.env.FC_NUM_RUNS) || defaultRuns) * msPerRun * 2);
}
