// Where a run's time goes, measured on the run itself: the COPY (sync_runs.stage_ms: begin_run to the start of
// finish_run), and finish_run (apply_ms) split by the time PostgreSQL spent in its steps' functions
// (pg_stat_user_functions, track_functions = all: the bench server sets it). Read as deltas around the run.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Queryable } from '../sql/sync-api.ts';
import { median } from './timing.ts';

/** The functions whose time makes each step of finish_run (apply includes refresh). */
const STEP_FUNCTIONS = {
  /** finish_run's parse (of the lines not parsed yet) */
  parse: ['parse_staged_events'],
  /** the leaves every parse goes through, in finish_run or chunk by chunk while the COPY streams (100-parse.sql) */
  parseAll: ['parse_new_staged_events', 'number_staged_lines'],
  identity: ['apply_identity'],
  apply: [
    'upsert_subscribers_incremental',
    'upsert_subscribers_incremental_loop',
    'upsert_subscribers_incremental_add',
    'upsert_subscribers_incremental_add_loop',
  ],
  refresh: ['refresh_subscribers', 'refresh_subscriber_loop'],
  count: ['record_subscriber_count'],
  /** of the rest: the terminated-early probe of every staged line, and the staging cleanup */
  marker: ['is_terminated_early_marker'],
  cleanup: ['drop_staged_rows'],
} as const;

export interface StepProfile {
  /** begin_run to the start of finish_run: the COPY into staging (sync_runs.stage_ms) */
  copyMs: number;
  /**
   * parsing outside finish_run (chunks parsed on another connection while the COPY streams): time spent in the parse
   * functions, on a connection of its own, so it may exceed copyMs (two cores; on a busy machine it includes waiting)
   */
  parseDuringCopyMs: number;
  /** finish_run (sync_runs.apply_ms) */
  finishMs: number;
  parseMs: number;
  identityMs: number;
  /** REPLACE or ADD, refresh included */
  applyMs: number;
  /** of applyMs: subscribers recomputed from events_daily */
  refreshMs: number;
  /** the subscriber count recorded for the health check (its trigger runs after apply_ms and total_ms are taken) */
  countMs: number;
  /** the rest of finish_run: the terminated-early probe, ledger prune, watermark, lateness, staging cleanup */
  restMs: number;
  /** of restMs: the terminated-early probe (is_terminated_early_marker per staged line) */
  markerMs: number;
  /** of restMs: the staging cleanup (drop_staged_rows) */
  cleanupMs: number;
  /** sync_runs.total_ms */
  totalMs: number;
}

type FunctionTimes = Map<string, { calls: number; ms: number }>;

async function functionTimes(db: Queryable): Promise<FunctionTimes> {
  const { rows } = await db.query<{ name: string; calls: string; ms: number }>(
    `select f.funcname as name, sum(f.calls)::bigint as calls, sum(f.total_time)::float8 as ms
     from pg_catalog.pg_stat_user_functions f where f.schemaname = 'mixpanel_sync' group by f.funcname`,
  );
  return new Map(rows.map((r) => [r.name, { calls: Number(r.calls), ms: r.ms }]));
}

const calls = (times: FunctionTimes, name: string) => times.get(name)?.calls ?? 0;
const spent = (before: FunctionTimes, after: FunctionTimes, names: readonly string[]) =>
  names.reduce((sum, name) => sum + (after.get(name)?.ms ?? 0) - (before.get(name)?.ms ?? 0), 0);

export interface ProfileProbe {
  /** the profile of the run `runId` that ended since the probe started; null when the statistics are off or late */
  finish(runId: string | number): Promise<StepProfile | null>;
}

/** Takes the function statistics before a run (one sync that ends with finish_run, in process or in a child). */
export async function startProfile(db: Queryable): Promise<ProfileProbe> {
  const { rows: setting } = await db.query<{ value: string }>("select pg_catalog.current_setting('track_functions') as value");
  if (setting[0]?.value !== 'all') return { finish: async () => null }; // a server of DATABASE_URL may not track them
  const before = await functionTimes(db);
  return {
    finish: async (runId) => {
      // a backend flushes its statistics when idle (at most once a second) or when it exits
      let after = await functionTimes(db);
      for (let wait = 0; calls(after, 'finish_run') <= calls(before, 'finish_run') && wait < 50; wait++) {
        await sleep(100);
        after = await functionTimes(db);
      }
      if (calls(after, 'finish_run') <= calls(before, 'finish_run')) return null;
      const { rows } = await db.query<{ stage_ms: string; apply_ms: string; total_ms: string }>(
        'select r.stage_ms, r.apply_ms, r.total_ms from mixpanel_sync.sync_runs r where r.id = $1',
        [String(runId)],
      );
      const recorded = rows[0];
      if (!recorded) return null;
      const step = (names: readonly string[]) => Math.max(0, spent(before, after, names));
      const finishMs = Number(recorded.apply_ms);
      const parseMs = step(STEP_FUNCTIONS.parse);
      const identityMs = step(STEP_FUNCTIONS.identity);
      const applyMs = step(STEP_FUNCTIONS.apply);
      const countMs = step(STEP_FUNCTIONS.count);
      return {
        copyMs: Number(recorded.stage_ms),
        parseDuringCopyMs: Math.max(0, step(STEP_FUNCTIONS.parseAll) - parseMs),
        finishMs,
        parseMs,
        identityMs,
        applyMs,
        refreshMs: Math.min(step(STEP_FUNCTIONS.refresh), applyMs),
        countMs,
        // the count trigger fires on finish_run's closing UPDATE, after apply_ms was computed: not part of finishMs
        restMs: Math.max(0, finishMs - parseMs - identityMs - applyMs),
        markerMs: step(STEP_FUNCTIONS.marker),
        cleanupMs: step(STEP_FUNCTIONS.cleanup),
        totalMs: Number(recorded.total_ms),
      };
    },
  };
}

/** Runs `run` and profiles it (startProfile); time `run` inside it, as the wait for the statistics is not the run's. */
export async function profiled<T>(
  db: Queryable,
  run: () => Promise<T>,
  runId: (value: T) => string | number,
): Promise<{ value: T; profile: StepProfile | null }> {
  const probe = await startProfile(db);
  const value = await run();
  return { value, profile: await probe.finish(runId(value)) };
}

/** The median of each step over the profiles measured (null when none was). */
export function medianProfile(profiles: readonly (StepProfile | null)[]): StepProfile | null {
  const measured = profiles.filter((p): p is StepProfile => p !== null);
  if (measured.length === 0) return null;
  const keys = Object.keys(measured[0]!) as (keyof StepProfile)[];
  return Object.fromEntries(keys.map((key) => [key, median(measured.map((p) => p[key]))])) as unknown as StepProfile;
}

const s = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);

/** "COPY 0.81 s · parse 0.72 s · identity 3 ms · apply 1.20 s (refresh 0.30 s) · count 1 ms · rest 0.10 s" (parse: finish_run's) */
export function profileText(p: StepProfile | null): string {
  if (p === null) return 'not profiled (function statistics off)';
  return [
    `COPY ${s(p.copyMs)}${p.parseDuringCopyMs >= 1 ? ` (and ${s(p.parseDuringCopyMs)} of chunk parsing alongside, on a second connection)` : ''}`,
    `parse ${s(p.parseMs)}`,
    `identity ${s(p.identityMs)}`,
    `apply ${s(p.applyMs)}${p.refreshMs > 0 ? ` (refresh ${s(p.refreshMs)})` : ''}`,
    `count ${s(p.countMs)}`,
    `rest ${s(p.restMs)}${p.markerMs + p.cleanupMs >= 1 ? ` (terminated-early probe ${s(p.markerMs)}, staging cleanup ${s(p.cleanupMs)})` : ''}`,
  ].join(' · ');
}

/** Which steps grew most from `small` to `big`: "apply +812 ms, parse +40 ms, …" (the largest first). */
export function profileGrowth(small: StepProfile, big: StepProfile): string {
  const steps: [string, number][] = [
    ['COPY', big.copyMs - small.copyMs],
    ['parse', big.parseMs - small.parseMs],
    ['identity', big.identityMs - small.identityMs],
    ['apply', big.applyMs - small.applyMs],
    ['count', big.countMs - small.countMs],
    ['rest of finish_run', big.restMs - small.restMs],
  ];
  return steps
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .map(([name, ms]) => `${name} ${ms >= 0 ? '+' : '−'}${s(Math.abs(ms))}`)
    .join(', ');
}
