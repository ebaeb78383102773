// The demo's proofs of the plan's headline claim, "same results, faster" (issue 14, part 6):
// - one verify/ script passing, with its PASS line;
// - the set-based REPLACE and its `_loop` reference on the same staged run, both timed, tables compared whole;
// - what the original design (scripts/bench/baseline) counts on the same demo inputs: its double counts.
// Each step is a DemoStep of scripts/cli/demo.ts; none changes what the demo's syncs stored (the paths run in
// transactions rolled back, the staged run is failed, the baseline lives in its own schema bench_baseline).
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { baselineFullSync, baselineIncrementalSync, installBaseline } from '../bench/baseline/baseline-events.ts';
import { sampleEventLines, type SampleEventOptions } from '../fixtures/sample-events.ts';
import {
  applyReplace,
  beginRun,
  eventSeconds,
  failRun,
  parseStagedEvents,
  readLastRuns,
  stageLines,
  tablesChecksum,
  type PathImplementation,
} from '../sql/sync-api.ts';
import { repoRoot } from '../db/paths.ts';
import { runVerifyScript } from './verify.ts';

/** What these steps read of the demo's context. */
export interface ProofContext {
  pool: pg.Pool;
  url: string;
  dir: string;
  now: Date;
  sample: SampleEventOptions;
  say(line?: string): void;
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

/**
 * The lines whose event second (mixpanel_sync.event_second, the parser's rule) is at or after `since`. Lines whose raw
 * properties.time (in seconds) is more than a day before are left out first, so SQL sees only the few near the edge.
 */
async function linesSince(pool: pg.Pool, lines: readonly string[], since: number): Promise<string[]> {
  const times = lines.map((line) => Number(/"time":(\d+)/.exec(line)?.[1]));
  const near = lines.map((_, i) => i).filter((i) => !(times[i]! < since - 86_400));
  const secondsOf = await eventSeconds(
    pool,
    near.map((i) => times[i]!),
  );
  return near.filter((_, k) => (secondsOf[k] ?? Number.NEGATIVE_INFINITY) >= since).map((i) => lines[i]!);
}
const TABLES = ['events_daily', 'event_ledger', 'subscribers'] as const;

export const verifyPass = {
  title: 'proof: a verify/ script (plain SQL, rolled back; npm run verify runs them all)',
  async run(context: ProofContext) {
    const outcome = await runVerifyScript(context.url, path.join(repoRoot, 'verify', 'finish_run_end_to_end.sql'));
    if (outcome.failure) throw new Error(`${outcome.script} failed: ${outcome.failure}`);
    for (const line of outcome.passLines) context.say(`  ${line}`);
  },
};

export const setVsLoop = {
  title: 'proof: set-based REPLACE vs its row-at-a-time _loop reference, on the same staged run (the last 3 days)',
  async run(context: ProofContext) {
    const { pool, now } = context;
    const to = now.toISOString().slice(0, 10);
    const from = new Date(now.getTime() - 2 * 86_400_000).toISOString().slice(0, 10);
    const run = await beginRun(pool, { source: 'events', resync: { from, to }, clock: now });
    try {
      // what Mixpanel holds for those days: the sample's and the next day's lines, as synced
      const next = (await readFile(path.join(context.dir, 'next-day.jsonl'), 'utf8')).split('\n').filter(Boolean);
      const staged = await linesSince(pool, [...sampleEventLines(context.sample), ...next], Date.parse(`${from}T00:00:00Z`) / 1000);
      await stageLines(pool, 'events', run.id, staged);
      await parseStagedEvents(pool, run.id);
      const results: Record<PathImplementation, { ms: number; applied: number; digest: string }> = {} as never;
      for (const implementation of ['set', 'loop'] as const) {
        const client = await pool.connect();
        try {
          await client.query('begin');
          const started = performance.now();
          const result = await applyReplace(client, run.id, run.window_from_day!, run.window_to_day!, implementation);
          const ms = performance.now() - started;
          results[implementation] = { ms, applied: result.applied, digest: await tablesChecksum(client, TABLES, ['updated_at']) };
        } finally {
          await client.query('rollback');
          client.release();
        }
      }
      const { set, loop } = results;
      context.say(
        `  ${staged.length.toLocaleString('en-US')} staged lines, REPLACE of ${run.window_from_day}..${run.window_to_day}, each path in a transaction rolled back`,
      );
      context.say(
        `  set  (upsert_subscribers_incremental):      ${seconds(set.ms)}  ${set.applied.toLocaleString('en-US')} events applied`,
      );
      context.say(
        `  loop (upsert_subscribers_incremental_loop): ${seconds(loop.ms)}  ${loop.applied.toLocaleString('en-US')} events applied  (${(loop.ms / set.ms).toFixed(1)}x the set path)`,
      );
      if (set.digest !== loop.digest || set.applied !== loop.applied)
        throw new Error(`set and loop differ: ${set.digest} vs ${loop.digest}`);
      context.say(`  tables identical: ${set.digest} (checksum of every row, set = loop)`);
    } finally {
      await failRun(pool, run.id, 'demo: the set-vs-loop proof only, nothing applied');
    }
  },
};

export const originalDoubleCounts = {
  title: 'proof: the original design on the same inputs (scripts/bench/baseline: TypeScript aggregates, loop upserts, no dedup)',
  async run(context: ProofContext) {
    const { pool } = context;
    // the same window as this toolkit's full run: the original had a 45-day window too
    const full = (await readLastRuns(pool, 20)).find(
      (r) => r.source === 'events' && r.mode === 'full' && r.status === 'succeeded' && r.options.mode_reason !== 'resync',
    );
    if (!full?.window_from_day) throw new Error('no full events run to compare with');
    const since = Date.parse(`${full.window_from_day}T00:00:00Z`) / 1000;
    const lines = (await readFile(path.join(context.dir, 'events.jsonl'), 'utf8')).split('\n').filter(Boolean);
    const windowFile = path.join(context.dir, 'events-window.jsonl');
    await writeFile(windowFile, `${(await linesSince(pool, lines, since)).join('\n')}\n`);
    await installBaseline(pool);
    await baselineFullSync(pool, windowFile);
    await baselineIncrementalSync(pool, path.join(context.dir, 'next-day.jsonl'));
    // per user and event name: what the original counts against this toolkit's exact counts
    const { rows } = await pool.query<{ original: string; ours: string; over: string; under: string }>(
      `with o as (select distinct_id, event_name, sum(event_count) as n from bench_baseline.user_event_counts group by 1, 2),
            m as (select distinct_id, event_name, sum(event_count) as n from mixpanel_sync.events_daily group by 1, 2)
       select coalesce(sum(o.n), 0) as original, coalesce(sum(m.n), 0) as ours,
              coalesce(sum(greatest(coalesce(o.n, 0) - coalesce(m.n, 0), 0)), 0) as over,
              coalesce(sum(greatest(coalesce(m.n, 0) - coalesce(o.n, 0), 0)), 0) as under
       from o full join m on m.distinct_id = o.distinct_id and m.event_name = o.event_name`,
    );
    const r = rows[0]!;
    const n = (v: string) => Number(v).toLocaleString('en-US');
    context.say(`  events counted: original design ${n(r.original)}, this toolkit ${n(r.ours)} (each event once)`);
    context.say(`  the original counts ${n(r.over)} events more than once (re-sent lines, and the re-read 2-hour overlap added again)`);
    context.say(`  and misses ${n(r.under)} (late arrivals older than its overlap; the late lookback here finds them)`);
  },
};

export const proofSteps = [verifyPass, setVsLoop, originalDoubleCounts];
