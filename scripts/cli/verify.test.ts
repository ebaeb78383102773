import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { repoRoot } from '../db/paths.ts';
import { nodeCommand } from '../fixtures/cli-runner.ts';
import { beginRun, finishRun, setUpsertPath, stageRecords } from '../sql/sync-api.ts';
import { firstMetaCommand, listVerifyScripts, runVerifyScript, runVerifyScripts } from './verify.ts';

// The event scripts (the profiles helper tests its own).
const eventScripts = (await listVerifyScripts()).filter((file) => !path.basename(file).startsWith('profiles'));
const psqlOnPath = spawnSync('psql', ['--version']).status === 0;

let db: TestDatabase;
let scratch: string;

// Everything a verify script could leave behind, in full.
async function wholeState(): Promise<unknown> {
  const tables = [
    'events_daily',
    'event_ledger',
    'subscribers',
    'sync_watermarks',
    'sync_settings',
    'sync_runs',
    'sync_rejects',
    'staged_events',
    'run_events',
  ];
  const state: Record<string, unknown> = {};
  for (const table of tables) {
    const { rows } = await db.pool.query(
      `select coalesce(jsonb_agg(to_jsonb(t) order by to_jsonb(t)::text), '[]') as rows from mixpanel_sync.${table} t`,
    );
    state[table] = rows[0].rows;
  }
  return state;
}

// A database that is in use: a finished sync of 2024 events (watermark, ledger, runs, rejects) and a changed setting.
async function seedProductionLikeData(): Promise<void> {
  const run = await beginRun(db.pool, { source: 'events', clock: '2024-05-10T12:00:00Z' });
  const events = Array.from({ length: 60 }, (_, i) => ({
    event: i % 3 ? 'login' : 'purchase',
    properties: { distinct_id: `customer-${i % 7}`, time: 1715000000 + i * 997, $insert_id: `p${i % 50}` },
  }));
  await stageRecords(db.pool, 'events', run.id, [...events, { event: 'no properties' }]);
  await finishRun(db.pool, run.id);
  await setUpsertPath(db.pool, 'loop');
}

beforeAll(async () => {
  db = await createTestDatabase();
  scratch = await mkdtemp(path.join(os.tmpdir(), 'verify-test-'));
  await seedProductionLikeData();
});

afterAll(async () => {
  await db?.drop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('verify scripts', () => {
  it('has the event proofs', () => {
    expect(eventScripts.map((file) => path.basename(file))).toEqual(
      expect.arrayContaining([
        'replace_loop_equals_set.sql',
        'add_loop_equals_set.sql',
        'replace_then_adds_equal_replace.sql',
        'add_idempotent_order_independent.sql',
        'finish_run_end_to_end.sql',
        'raw_events_match_daily.sql',
      ]),
    );
  });

  it('each passes through pg with one PASS line naming it, on a database in use, and leaves no trace', { timeout: 120_000 }, async () => {
    const before = await wholeState();
    const outcomes = await runVerifyScripts(db.url, eventScripts);
    for (const outcome of outcomes) {
      expect(outcome.failure, outcome.script).toBeUndefined();
      expect(outcome.passLines).toEqual([expect.stringMatching(new RegExp(`^PASS ${outcome.script.replace(/\.sql$/, '')}: `))]);
    }
    expect(await wholeState()).toEqual(before);
  });

  it.skipIf(!psqlOnPath)('each passes through plain psql -f with ON_ERROR_STOP', { timeout: 120_000 }, () => {
    for (const file of eventScripts) {
      const name = path.relative(repoRoot, file);
      const result = spawnSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', db.url, '-f', name], {
        cwd: repoRoot,
        encoding: 'utf8',
      });
      expect(result.status, `${name}: ${result.stderr}`).toBe(0);
      const passes = result.stderr.split('\n').filter((line) => line.includes('NOTICE:  PASS'));
      expect(passes, result.stderr).toEqual([expect.stringContaining(`PASS ${name.replace(/\.sql$/, '')}: `)]);
    }
  });

  it('names the first difference when an implementation is broken', async () => {
    const { rows } = await db.pool.query(
      `select pg_get_functiondef('mixpanel_sync.insert_new_events_loop(bigint, date, date)'::regprocedure) as def`,
    );
    const original: string = rows[0].def;
    const broken = original.replace('first_at = least(d.first_at, excluded.first_at)', 'first_at = excluded.first_at');
    expect(broken).not.toBe(original);
    await db.pool.query(broken);
    try {
      const outcome = await runVerifyScript(db.url, path.join(repoRoot, 'verify', 'add_loop_equals_set.sql'));
      expect(outcome.failure).toMatch(
        /^verify\/add_loop_equals_set: tables after the loop \(expected\) and the set-based ADD \(actual\) differ: events_daily key \[.*\]: column first_at expected ".*", actual ".*"/,
      );
      expect(outcome.passLines).toEqual([]);
    } finally {
      await db.pool.query(original);
    }
  });

  it('fails a script that raises, prints no PASS line or uses psql meta-commands, and exits 1 naming them', async () => {
    const raises = path.join(scratch, 'raises.sql');
    const silent = path.join(scratch, 'silent.sql');
    const meta = path.join(scratch, 'meta.sql');
    await writeFile(
      raises,
      `begin;\ndo $$ begin raise exception 'verify/raises: events_daily key ["verify:u1"]: column event_count expected 2, actual 1'; end $$;\nrollback;\n`,
    );
    await writeFile(silent, `begin;\nselect 1;\nrollback;\n`);
    await writeFile(meta, `begin;\nselect 1 as one \\gset\n\\echo PASS\nrollback;\n`);

    expect(firstMetaCommand(await readFile(meta, 'utf8'))).toBe('line 2: select 1 as one \\gset');
    const result = spawnSync(process.execPath, [...nodeCommand('verify'), raises, silent, meta], {
      cwd: repoRoot,
      encoding: 'utf8',
      env: { ...process.env, DATABASE_URL: db.url },
    });
    expect(result.status).toBe(1);
    expect(result.stderr).toContain(
      `FAIL ${raises}: verify/raises: events_daily key ["verify:u1"]: column event_count expected 2, actual 1`,
    );
    expect(result.stderr).toContain(`FAIL ${silent}: printed 0 PASS lines, expected exactly one`);
    expect(result.stderr).toContain(`FAIL ${meta}: uses a psql meta-command (line 2: select 1 as one \\gset)`);
    expect(result.stdout).toContain(`verify: 0 passed, 3 failed (${raises}, ${silent}, ${meta})`);
  });

  // npm run verify -- --project NAME: the name reaches the script as the session setting mixpanel_sync.project (the
  // channel plain SQL read by psql and pg shares). Seen failing with runVerifyScript's set_config removed ('PASS project -').
  it('gives a script the project as the setting mixpanel_sync.project (none: unset)', async () => {
    const reads = path.join(scratch, 'reads-project.sql');
    await writeFile(
      reads,
      `begin;\ndo $$ begin raise notice 'PASS project %', coalesce(nullif(current_setting('mixpanel_sync.project', true), ''), '-'); end $$;\nrollback;\n`,
    );
    expect((await runVerifyScript(db.url, reads, 'default')).passLines).toEqual(['PASS project default']);
    expect((await runVerifyScript(db.url, reads)).passLines).toEqual(['PASS project -']);
  });
});
