// Issue 9, "Done when": seeded crash trials. On a dedicated embedded server, each trial starts from a history H (loaded
// once by the CLI, then cloned from a template database for each trial), starts `npm run sync:events -- --file F`
// (every other trial the command line it execs, without npm: cli-runner's nodeCommand) and, at a seeded moment
// during COPY or finish_run, SIGKILLs the loader's process group, stops the postmaster at once (SIGQUIT:
// `pg_ctl stop -m immediate`, then a restart), or sends SIGINT/SIGTERM to the whole process group.
// A normal run on F follows (the command line without npm). The tables must then equal those of a clean H-then-F,
// compared with EXCEPT both ways in SQL, and every run's status must agree with what its CLI said (exit code).
// After a SIGKILL during finish_run the killed loader's backend may still be running finish_run: the next run
// passes --wait, as a scheduler's next run would (without it, begin_run refuses with MP002, exit 2: correct).
// Seen failing: with one events_daily count bumped after the final run, trial 0 reports {events_daily: 2} (one row
// each way of the EXCEPT); before synchronous_commit was on for the crashable server, the immediate stop lost the
// crashed run's begin_run commit, which the seen-scenarios test caught.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli, summaryOf, type CliProcess, type CliResult } from '../fixtures/cli-runner.ts';
import { startCrashableServer, type CrashableServer } from '../fixtures/postmaster-control.ts';
import { createRandom } from '../fixtures/prng.ts';

const SEED = 4242;
const DAY = 86_400;
const TODAY = Math.floor(Date.now() / 1000 / DAY) * DAY;
const dir = mkdtempSync(path.join(os.tmpdir(), 'crash-trials-'));
let crash: CrashableServer;
beforeAll(async () => {
  crash = await startCrashableServer();
}, 300_000);
afterAll(async () => {
  await crash?.close();
  rmSync(dir, { recursive: true, force: true });
});

function lines(prefix: string, days: number[], perDay: number, offset = 0): string {
  const out: string[] = [];
  for (const d of days) {
    for (let i = 0; i < perDay; i++) {
      const n = i + offset;
      out.push(
        JSON.stringify({
          event: n % 4 ? 'Page View' : 'Purchase',
          properties: { time: TODAY + d * DAY + 600 + n * 2, distinct_id: `${prefix}-${n % 11}`, $insert_id: `${prefix}-${d}-${n}` },
        }),
      );
    }
  }
  return `${out.join('\n')}\n`;
}

const historyFile = path.join(dir, 'history.jsonl');
const inputFile = path.join(dir, 'input.jsonl');
// H: 4 days; F: 3 days, overlapping H by 2,000 events (duplicates) and adding 36,000 new ones
writeFileSync(historyFile, lines('u', [-5, -4, -3, -2], 3_000));
writeFileSync(inputFile, lines('u', [-3, -2, -1], 12_000, 2_000));

const TABLES = {
  events_daily: 'distinct_id, day, event_name, event_count, first_at, last_at',
  event_ledger: 'distinct_id, event_key, day, event_name, event_time',
  subscribers: 'distinct_id, total_events, first_event_at, last_event_at, event_counts',
  sync_watermarks: 'source, watermark, processing_watermark',
} as const;

/** The URL of database `name` on the crashable server (`crash` is the one its start migrated). */
const urlOf = (name: string): string => crash.url.replace(/\/crash$/, `/${name}`);

async function withPool<T>(url: string, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on('error', () => {});
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/** A client on the server's postgres database, for CREATE/DROP DATABASE. */
async function withAdmin<T>(fn: (admin: pg.Client) => Promise<T>): Promise<T> {
  const admin = new pg.Client({ connectionString: urlOf('postgres') });
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.end();
  }
}

/** A database of the trial's own as H left it: a clone of the template beforeAll kept. */
async function restoreHistory(name: string): Promise<string> {
  await withAdmin((admin) => admin.query(`create database ${name} template crash_after_history`));
  return urlOf(name);
}

async function snapshot(url: string): Promise<Record<string, string>> {
  return withPool(url, async (pool) => {
    const result: Record<string, string> = {};
    for (const [table, columns] of Object.entries(TABLES)) {
      const { rows } = await pool.query<{ rows: unknown }>(
        `select coalesce(jsonb_agg(t), '[]') as rows from (select ${columns} from mixpanel_sync.${table}) t`,
      );
      result[table] = JSON.stringify(rows[0]!.rows);
    }
    return result;
  });
}

/** Rows of each table in one side only (EXCEPT both ways), against a reference snapshot. */
async function differences(url: string, reference: Record<string, string>): Promise<Record<string, number>> {
  return withPool(url, async (pool) => {
    const result: Record<string, number> = {};
    for (const [table, columns] of Object.entries(TABLES)) {
      const { rows } = await pool.query<{ n: number }>(
        `with ref as (select ${columns} from jsonb_populate_recordset(null::mixpanel_sync.${table}, $1::jsonb)),
              cur as (select ${columns} from mixpanel_sync.${table})
         select (select count(*) from (select * from cur except all select * from ref) a)::int
              + (select count(*) from (select * from ref except all select * from cur) b)::int as n`,
        [reference[table]],
      );
      result[table] = rows[0]!.n;
    }
    return result;
  });
}

function sync(url: string, file: string, extra: { via?: 'npm' | 'node' } = {}): CliProcess {
  return startCli('sync:events', ['--file', file, '--json'], { env: { DATABASE_URL: url }, via: extra.via });
}

function explain(result: CliResult): string {
  return `exit ${result.code}${result.signal ? ` (${result.signal})` : ''}\nstdout: ${result.stdout.slice(0, 1000)}\nstderr: ${result.stderr.slice(0, 2000)}`;
}

/** A normal run; after a crash it waits (--wait) while the killed loader's backend may still be finishing. */
async function normalRun(url: string, file: string, wait = false): Promise<CliResult> {
  const result = await runCli('sync:events', ['--file', file, '--json', ...(wait ? ['--wait', '300'] : [])], {
    env: { DATABASE_URL: url },
  });
  expect(result.code, explain(result)).toBe(0);
  return result;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForStatement(url: string, pattern: string, done: () => boolean): Promise<boolean> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && !done()) {
      const { rowCount } = await client.query(
        "select 1 from pg_catalog.pg_stat_activity where datname = current_database() and state = 'active' and pid <> pg_backend_pid() and query ilike $1",
        [pattern],
      );
      if (rowCount) return true;
      await sleep(5);
    }
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

type Action = 'sigkill-group' | 'postmaster-immediate' | 'sigint-group' | 'sigterm-group';
interface Trial {
  action: Action;
  moment: 'COPY' | 'finish_run';
  via: 'npm' | 'node';
  delayMs: number;
}

const random = createRandom(SEED);
const TRIALS: Trial[] = (
  [
    ['sigkill-group', 'COPY'],
    ['sigkill-group', 'finish_run'],
    ['postmaster-immediate', 'COPY'],
    ['postmaster-immediate', 'finish_run'],
    ['sigint-group', 'finish_run'],
    ['sigterm-group', 'COPY'],
    ['sigint-group', 'COPY'],
    ['sigterm-group', 'finish_run'],
  ] as const
).map(([action, moment], i) => ({ action, moment, via: i % 2 ? 'node' : 'npm', delayMs: random.int(moment === 'COPY' ? 400 : 800) }));

describe('seeded crash trials (seed 4242)', () => {
  let reference: Record<string, string>;
  beforeAll(async () => {
    // A run whose loader was SIGKILLed keeps a fresh heartbeat: begin_run abandons it only once the heartbeat is older
    // than runs.heartbeat_timeout (default 2 minutes), so the next run's --wait would sit out those 2 minutes. The
    // trials test what the crash leaves, not that timeout (scripts/sql/safety-followups.test.ts does): 1 second here.
    // No live run is judged dead by it: begin_run abandons a run only when its owner session is gone too, and a live
    // loader (or the backend of a SIGKILLed loader still running finish_run) keeps that session. (It was 10 seconds:
    // trial 0's --wait then sat out about 10 s of the file's 45.)
    await withPool(crash.url, (pool) =>
      pool.query(`update mixpanel_sync.sync_settings set value = '1 second' where key = 'runs.heartbeat_timeout'`),
    );
    await normalRun(crash.url, historyFile);
    // the state after H, kept as a template: each trial starts from a clone of it instead of loading H again
    await withAdmin((admin) => admin.query('create database crash_after_history template crash'));
    await normalRun(crash.url, inputFile);
    reference = await snapshot(crash.url);
  }, 600_000);

  // Each trial has a database of its own (a clone of H), so two trials that only signal their own loader's process
  // group run at the same time (it.concurrent: trials 0 and 1, 4 and 5, 6 and 7); a trial that stops the postmaster
  // (2, 3) stops every connection of the server, so it runs alone, between those pairs.
  for (const i of [0, 1, 2, 4, 5, 3, 6, 7]) {
    const trial = TRIALS[i]!;
    const alone = trial.action === 'postmaster-immediate';
    (alone ? it : it.concurrent)(
      `trial ${i}: ${trial.action} during ${trial.moment} (${trial.via}, +${trial.delayMs} ms), then a normal run: equal to a clean run`,
      async () => {
        const url = await restoreHistory(`crash_trial_${i}`);
        const cli = sync(url, inputFile, { via: trial.via });
        let over = false;
        cli.child.on('exit', () => (over = true));
        const seen = await waitForStatement(url, trial.moment === 'COPY' ? 'copy %' : '%finish_run%', () => over);
        if (seen) await sleep(trial.delayMs);
        if (trial.action === 'sigkill-group') cli.signalGroup('SIGKILL');
        else if (trial.action === 'sigint-group') cli.signalGroup('SIGINT');
        else if (trial.action === 'sigterm-group') cli.signalGroup('SIGTERM');
        else await crash.stopImmediately();
        const result = await cli.result;
        if (trial.action === 'postmaster-immediate') await crash.restart();

        const crashed = await withPool(
          url,
          async (pool) =>
            (
              await pool.query<{ id: string; status: string; error: string | null }>(
                'select id, status, error from mixpanel_sync.sync_runs order by id desc limit 1',
              )
            ).rows[0]!,
        );
        const context = `${JSON.stringify(trial)} seen=${seen} run=${JSON.stringify(crashed)}\n${explain(result)}`;
        // what the CLI said agrees with the run's row
        if (trial.action === 'sigint-group' || trial.action === 'sigterm-group') {
          const signal = trial.action === 'sigint-group' ? 'SIGINT' : 'SIGTERM';
          if (crashed.status === 'succeeded') expect(result.code, context).toBe(0);
          else {
            expect(crashed.status, context).toBe('failed');
            expect(result.code === 130 || result.signal === signal, context).toBe(true);
            expect(summaryOf(result)?.status, context).toBe('failed');
          }
        } else if (result.code === 0) {
          // the run ended (finish_run committed, the CLI exited 0) before the crash reached it: a clean run, and said so
          expect(crashed.status, context).toBe('succeeded');
          expect(summaryOf(result)?.status, context).toBe('succeeded');
        } else if (trial.action === 'postmaster-immediate') {
          if (seen) {
            expect(result.code, context).toBe(1);
            expect(result.stderr.trim().split('\n'), context).toHaveLength(1);
          }
        } else {
          expect(result.signal, context).toBe('SIGKILL');
        }

        await normalRun(url, inputFile, true);
        const runs = await withPool(url, async (pool) =>
          (await pool.query<{ status: string }>('select status from mixpanel_sync.sync_runs order by id')).rows.map((r) => r.status),
        );
        expect(runs, context).not.toContain('running');
        expect(await differences(url, reference), context).toEqual({
          events_daily: 0,
          event_ledger: 0,
          subscribers: 0,
          sync_watermarks: 0,
        });
      },
      600_000,
    );
  }
});
