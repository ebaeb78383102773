// sync:events tells the truth: exit code, message and sync_runs.status agree, for SQL refusals (matched by SQLSTATE),
// a lost connection, and signals to the whole process group, with the CLI spawned exactly as users run it.
import { spawn, type SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../db/paths.ts';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { startCrashableServer } from '../fixtures/postmaster-control.ts';
import { createRandom } from '../fixtures/prng.ts';
import { syncLines } from '../sql/run-fixtures.ts';
import { beginRun, failRun } from '../sql/sync-api.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'sync-events-truth-'));
const script = fileURLToPath(new URL('./sync-events.ts', import.meta.url));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});

interface Result {
  code: number | null;
  /** The signal that killed the process (npm, when the group's signal came after the loader had exited). */
  signal?: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function collect(
  command: string,
  args: string[],
  options: SpawnOptions & { stdin?: string; databaseUrl?: string } = {},
): { done: Promise<Result>; pid: number; write: (s: string) => void } {
  const child = spawn(command, args, {
    ...options,
    env: { ...process.env, DATABASE_URL: options.databaseUrl ?? db.url, MIXPANEL_PROJECT_TIMEZONE: '', ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdin!.on('error', () => {});
  if (options.stdin !== undefined) child.stdin!.end(options.stdin);
  return {
    pid: child.pid!,
    write: (s) => child.stdin!.write(s),
    done: new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }))),
  };
}

const cli = (args: string[], stdin = '') => collect(process.execPath, ['--import', 'tsx', script, ...args], { stdin }).done;

const now = Math.floor(Date.now() / 1000);
const lines = (n: number, tag: string) =>
  Array.from({ length: n }, (_, i) =>
    JSON.stringify({ event: 'Page View', properties: { time: now - 3600 + i, distinct_id: `u${i % 5}`, $insert_id: `${tag}-${i}` } }),
  );
const file = (name: string, content: string) => {
  const at = path.join(dir, name);
  writeFileSync(at, content);
  return at;
};
const runs = async () => (await db.pool.query('select count(*)::int as n from mixpanel_sync.sync_runs')).rows[0].n as number;
const lastRun = async (pool: pg.Pool = db.pool) =>
  (
    await pool.query<{ id: string; status: string; error: string | null }>(
      'select r.id::text as id, r.status, r.error from mixpanel_sync.sync_runs r order by r.id desc limit 1',
    )
  ).rows[0]!;
/** Lines of stderr that are not the progress line (only drawn on a TTY) or npm's own. */
const ourLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('sync:events:'));

/** The history the tests start from: 20 lines in one run through SQL (begin_run, the lines staged, finish_run). */
async function seedHistory(pool: pg.Pool): Promise<void> {
  expect((await syncLines(pool, lines(20, 'seed'))).status).toBe('succeeded');
}

beforeAll(async () => {
  await seedHistory(db.pool);
});

describe('SQL refusals, matched by SQLSTATE', () => {
  it('--full with --resync-from: refused by begin_run (MP004), exit 2, nothing started', async () => {
    // Protection: begin_run's MP004 check (the CLI no longer checks it itself); a CLI-side refusal would have a
    // different message, and with neither the run would have started (seen: exit 0 before the SQL landed).
    const before = await runs();
    const result = await cli(['--file', file('a.jsonl', `${lines(3, 'a').join('\n')}\n`), '--full', '--resync-from', '2026-11-01']);
    expect(result.code).toBe(2);
    expect(ourLines(result.stderr)).toEqual([expect.stringMatching(/^sync:events: begin_run refused: .*resync/)]);
    expect(await runs()).toBe(before);
  });

  it('another run is running (MP002): exit 2 naming it; --wait retries until it ends', async () => {
    // Protection: the --wait retry loop in staged-sync.ts; without it (waitSeconds ignored) the second call exited 2 (seen).
    const holder = await db.pool.connect();
    try {
      const running = await beginRun(holder, { source: 'events' });
      const input = file('b.jsonl', `${lines(3, 'b').join('\n')}\n`);
      // The three loaders start together (they were started one after the other, with 1.5 s before the release): the
      // run is released only once the one without --wait and the one with --wait 1 have been refused, more than a
      // second after the waiting one started, which has then been refused at least once and is retrying.
      const waiting = cli(['--file', input, '--wait', '60', '--json']);
      const [refused, timedOut] = await Promise.all([cli(['--file', input]), cli(['--file', input, '--wait', '1'])]);
      expect(refused.code).toBe(2);
      expect(ourLines(refused.stderr)).toEqual([
        expect.stringMatching(new RegExp(`^sync:events: begin_run refused: .*\\b${running.id}\\b`)),
      ]);
      expect(timedOut.code).toBe(2);

      await failRun(holder, running.id, 'test: released');
      const waited = await waiting;
      expect(waited.code).toBe(0);
      expect(JSON.parse(waited.stdout)).toMatchObject({ status: 'succeeded', received: 3 });
    } finally {
      holder.release();
    }
  });

  it('the REPLACE guard (MP001): exit 1, the run failed with the hint; --allow-empty still works, with a notice', async () => {
    const empty = file('empty.jsonl', '\n');
    const refused = await cli(['--file', empty, '--full', '--json']);
    expect(refused.code).toBe(1);
    expect(ourLines(refused.stderr)).toEqual([expect.stringMatching(/^sync:events: events run \d+ failed: .*allow-shrink/)]);
    expect(JSON.parse(refused.stdout)).toMatchObject({ status: 'failed' });
    expect((await lastRun()).status).toBe('failed');

    const allowed = await cli(['--file', empty, '--full', '--allow-empty', '--json']);
    expect(allowed.code).toBe(0);
    expect(ourLines(allowed.stderr)).toEqual(['sync:events: --allow-empty is deprecated: use --allow-shrink']);
    expect((await lastRun()).status).toBe('succeeded');
    // put the data back for the tests after this one
    expect((await cli(['--file', file('seed.jsonl', `${lines(20, 'seed').join('\n')}\n`), '--full'])).code).toBe(0);
  });

  it('the terminated-early marker (MP003) from a file: exit 1, the run failed as incomplete', async () => {
    const result = await cli(['--file', file('cut.jsonl', `${lines(5, 'cut').join('\n')}\nterminated early\n`), '--json']);
    expect(result.code).toBe(1);
    const summary = JSON.parse(result.stdout) as { run_id: number };
    expect(summary).toMatchObject({ status: 'failed' });
    const { rows } = await db.pool.query('select status, error from mixpanel_sync.sync_runs where id = $1', [summary.run_id]);
    expect(
      rows[0],
      JSON.stringify((await db.pool.query('select id, status, error from mixpanel_sync.sync_runs order by id')).rows),
    ).toMatchObject({ status: 'failed', error: expect.stringContaining('terminated early') });
  });
});

describe('a lost connection: one line, exit 1, the run failed', () => {
  async function terminateWhen(pattern: string): Promise<void> {
    for (let i = 0; i < 600; i++) {
      const { rows } = await db.pool.query<{ pid: number }>(
        `select pid from pg_catalog.pg_stat_activity where datname = current_database() and pid <> pg_catalog.pg_backend_pid() and query ilike $1 and state = 'active'`,
        [pattern],
      );
      if (rows.length > 0) {
        await db.pool.query('select pg_catalog.pg_terminate_backend($1)', [rows[0]!.pid]);
        return;
      }
      await sleep(20);
    }
    throw new Error(`no backend ran ${pattern}`);
  }

  it('mid-COPY', async () => {
    // Protection: the client 'error' listener in staged-sync.ts; without it Node died on an unhandled 'error' event
    // with a stack trace (seen), and the run stayed running.
    const child = collect(process.execPath, ['--import', 'tsx', script, '--file', '-', '--json']);
    const feed = setInterval(() => child.write(`${lines(50, `copy-${Date.now()}`).join('\n')}\n`), 5);
    await terminateWhen('copy mixpanel_sync.staged_events%');
    const result = await child.done;
    clearInterval(feed);
    expect(result.code).toBe(1);
    expect(ourLines(result.stderr)).toHaveLength(1);
    expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
    const run = await lastRun();
    expect(run.status).toBe('failed');
    expect(ourLines(result.stderr)[0]).toContain(`events run ${run.id} failed: `);
  });

  it('mid-finish', async () => {
    await db.pool.query(`create or replace function public.test_slow_finish() returns trigger language plpgsql set search_path = '' as $$
      begin perform pg_catalog.pg_sleep(0.5); return new; end $$`);
    await db.pool.query(`create trigger test_slow_finish before update on mixpanel_sync.sync_runs for each row
      when (old.status = 'running' and new.status = 'succeeded') execute function public.test_slow_finish()`);
    try {
      const child = collect(process.execPath, [
        '--import',
        'tsx',
        script,
        '--file',
        file('f.jsonl', `${lines(10, 'fin').join('\n')}\n`),
        '--json',
      ]);
      await terminateWhen('%mixpanel_sync.finish_run%');
      const result = await child.done;
      expect(result.code).toBe(1);
      expect(ourLines(result.stderr)).toHaveLength(1);
      expect(result.stderr).not.toMatch(/\n\s+at /);
      expect((await lastRun()).status).toBe('failed');
    } finally {
      await db.pool.query('drop trigger test_slow_finish on mixpanel_sync.sync_runs');
    }
  });
});

// The last two groups use a server or databases of their own: they run at the same time (describe.concurrent).
describe.concurrent('the server stops at once mid-COPY (pg_ctl stop -m immediate)', () => {
  it('one line saying the connection was lost, exit 1, the failure could not be recorded; the next run abandons the dead run and succeeds', {
    timeout: 300_000,
  }, async () => {
    // Protection: the client 'error' listener and the "could not be recorded" path of staged-sync.ts; without the
    // listener the loader died on an unhandled 'error' event with a stack trace (seen, mid-COPY test above).
    // The line says plainly that the connection was lost (isConnectionLoss in staged-sync.ts); without it the line was
    // "events run 1 failed: write EPIPE; the failure could not be recorded (connect ECONNREFUSED 127.0.0.1:…): …" (seen).
    const crash = await startCrashableServer();
    try {
      const child = collect(process.execPath, ['--import', 'tsx', script, '--file', '-'], { databaseUrl: crash.url });
      const feed = setInterval(() => child.write(`${lines(50, `stop-${Date.now()}`).join('\n')}\n`), 5);
      const watcher = new pg.Client({ connectionString: crash.url });
      watcher.on('error', () => {});
      await watcher.connect();
      for (let i = 0; i < 500; i++) {
        const { rowCount } = await watcher.query("select 1 from mixpanel_sync.sync_runs where status = 'running'");
        if (rowCount) break;
        await sleep(20);
      }
      await watcher.end();
      await sleep(200);
      await crash.stopImmediately();
      const result = await child.done;
      clearInterval(feed);
      expect(result.code).toBe(1);
      expect(ourLines(result.stderr)).toEqual([
        expect.stringMatching(
          /^sync:events: events run (\d+) failed: the connection to the database was lost \(.*\); the failure could not be recorded \(the database cannot be reached\): the next begin_run marks run \1 abandoned$/,
        ),
      ]);
      expect(result.stderr).not.toMatch(/\n\s+at /);

      await crash.restart();
      const next = await collect(process.execPath, ['--import', 'tsx', script, '--file', '-', '--json'], {
        databaseUrl: crash.url,
        stdin: `${lines(5, 'after').join('\n')}\n`,
      }).done;
      expect(next.code, next.stderr).toBe(0);
      const check = new pg.Client({ connectionString: crash.url });
      await check.connect();
      const { rows } = await check.query<{ status: string }>('select status from mixpanel_sync.sync_runs order by id');
      await check.end();
      expect(rows.map((r) => r.status)).toEqual(['abandoned', 'succeeded']);
    } finally {
      await crash.close();
    }
  });
});

describe.concurrent('signals to the whole process group during finish_run (npm run sync:events, as users run it)', () => {
  it('exit code, message and sync_runs.status agree in every trial', { timeout: 900_000 }, async () => {
    // Protection: SIGNAL_GROUP_WINDOW_MS in loader-cli.ts; with the window set to 0 a group delivery plus npm's
    // re-send took the "quit at once" path: exit 130 with the run left running (seen).
    // The 20 seeded trials (each its signal, then its delay, drawn in trial order as when they ran one after the other)
    // run in two lanes at once, each on a database of its own seeded like this file's (20 lines through SQL), the
    // trials of a lane one after the other: half the wall time, every trial still a spawned `npm run sync:events`.
    const random = createRandom(20261201);
    const trials = Array.from({ length: 20 }, (_, trial) => ({
      trial,
      signal: random.pick(['SIGINT', 'SIGTERM'] as const),
      delayMs: random.int(450),
    }));
    const input = file('trial.jsonl', `${lines(30, 'trial').join('\n')}\n`);
    const outcomes: Record<string, number> = {};
    const lanes: TestDatabase[] = [];
    try {
      for (let lane = 0; lane < 2; lane++) {
        const laneDb = await createTestDatabase();
        lanes.push(laneDb);
        await seedHistory(laneDb.pool);
        await laneDb.pool.query(`create function public.test_slow_finish() returns trigger language plpgsql set search_path = '' as $$
          begin perform pg_catalog.pg_sleep(0.3); return new; end $$`);
        await laneDb.pool.query(`create trigger test_slow_finish before update on mixpanel_sync.sync_runs for each row
          when (old.status = 'running' and new.status = 'succeeded') execute function public.test_slow_finish()`);
      }
      // allSettled: a lane that fails lets the other finish before the databases are dropped
      const runTrial = async (
        laneDb: TestDatabase,
        { trial, signal, delayMs }: { trial: number; signal: 'SIGINT' | 'SIGTERM'; delayMs: number },
      ) => {
        const child = collect('npm', ['run', '--silent', 'sync:events', '--', '--file', input, '--json'], {
          cwd: repoRoot,
          detached: true,
          databaseUrl: laneDb.url,
        });
        // wait for finish_run, then signal the process group at a seeded moment within (or just after) it
        for (let i = 0; i < 1000; i++) {
          const { rowCount } = await laneDb.pool.query(
            `select 1 from pg_catalog.pg_stat_activity where datname = current_database() and query ilike '%mixpanel_sync.finish_run%' and state = 'active' and pid <> pg_catalog.pg_backend_pid()`,
          );
          if (rowCount) break;
          await sleep(10);
        }
        await sleep(delayMs);
        try {
          process.kill(-child.pid, signal);
        } catch {
          // the group already exited
        }
        const result = await child.done;
        const run = await lastRun(laneDb.pool);
        const mine = ourLines(result.stderr);
        const label = `trial ${trial} (${signal}): exit ${result.code} ${result.signal}, status ${run.status}, stderr ${JSON.stringify(mine)}`;
        if (result.code === null) {
          // The signal came after the loader had exited (having printed its success): only npm, still winding down
          // and no longer forwarding signals, was left to die of it. The loader never saw it.
          expect(result.signal, label).toBe(signal);
          expect(mine, label).toEqual([]);
          expect(run.status, label).toBe('succeeded');
          expect(JSON.parse(result.stdout), label).toMatchObject({ status: 'succeeded', run_id: Number(run.id) });
        } else if (result.code === 0) {
          expect(run.status, label).toBe('succeeded');
          expect(JSON.parse(result.stdout), label).toMatchObject({ status: 'succeeded', run_id: Number(run.id) });
        } else {
          expect(result.code, label).toBe(130);
          expect(run.status, label).toBe('failed');
          expect(run.error, label).toBe(`interrupted: ${signal} received`);
          expect(mine.at(-1), label).toBe(`sync:events: events run ${run.id} failed: interrupted: ${signal} received`);
          expect(JSON.parse(result.stdout), label).toMatchObject({ status: 'failed' });
        }
        const outcome = result.code === null ? '0' : String(result.code); // after the loader's exit 0
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
      };
      const settled = await Promise.allSettled(
        lanes.map(async (laneDb, lane) => {
          for (const t of trials.filter((t) => t.trial % lanes.length === lane)) await runTrial(laneDb, t);
        }),
      );
      for (const lane of settled) if (lane.status === 'rejected') throw lane.reason;
      // a machine much slower or faster than usual can put all 20 seeded moments on one side of the commit: then a few
      // more trials at a moment surely after it (2 s) or surely before it (at once), so both paths are still exercised
      for (const [missing, delayMs] of [
        ['0', 2000],
        ['130', 0],
      ] as const)
        for (let extra = 0; extra < 3 && !outcomes[missing]; extra++)
          await runTrial(lanes[0]!, { trial: 20 + extra, signal: 'SIGINT', delayMs });
    } finally {
      for (const laneDb of lanes) await laneDb.drop();
    }
    // both outcomes were exercised (the moments straddle the commit)
    expect(Object.keys(outcomes).sort(), JSON.stringify(outcomes)).toEqual(['0', '130']);
  });
});
