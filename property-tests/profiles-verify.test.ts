// verify/profiles_change_detection.sql, the psql proof of profiles change detection: it passes through pg (as
// `npm run verify` runs it) and through psql, on a database in use, leaves no trace, and names the first difference
// when the implementation is broken.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../scripts/db/paths.ts';
import { runVerifyScript, type VerifyOutcome } from '../scripts/cli/verify.ts';
import { beginRun, finishRun, stageRecords, writeSetting } from '../scripts/sql/sync-api.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';

const script = path.join(repoRoot, 'verify', 'profiles_change_detection.sql');
const psqlOnPath = spawnSync('psql', ['--version']).status === 0;
/** FC_PROJECT (property-tests/db.ts): the script runs for that project, as npm run verify -- --project and PGOPTIONS give it. */
const project = process.env.FC_PROJECT ?? null;

let db: TestDatabase;

/** Everything the script could leave behind. */
async function wholeState(): Promise<unknown> {
  const tables = ['subscriber_properties', 'sync_runs', 'sync_rejects', 'sync_settings', 'staged_profiles'];
  const state: Record<string, unknown> = {};
  for (const table of tables) {
    const { rows } = await db.pool.query(
      `select coalesce(jsonb_agg(to_jsonb(t) order by to_jsonb(t)::text), '[]') as rows from mixpanel_sync.${table} t`,
    );
    state[table] = rows[0].rows;
  }
  return state;
}

beforeAll(async () => {
  db = await createTestDatabase();
  // a database in use: synced profiles (one with an id the proof's numbers are near), rejects, change detection off
  const run = await beginRun(db.pool, { source: 'profiles' });
  await stageRecords(db.pool, 'profiles', run.id, [
    { $distinct_id: 'customer-1', $properties: { $email: 'a@example.com', plan: 'pro' } },
    { $distinct_id: 9007199253999999, $properties: { $name: 'Numbered' } },
    { $properties: {} },
  ]);
  await finishRun(db.pool, run.id);
  await writeSetting(db.pool, 'profiles.change_detection', 'off');
});

afterAll(async () => {
  await db?.drop();
});

/** Runs the script with upsert_subscriber_properties broken on purpose (`find` replaced), then puts it back. */
async function verifyWithBrokenUpsert(find: string, replacement: string): Promise<VerifyOutcome> {
  const { rows } = await db.pool.query(
    `select pg_get_functiondef('mixpanel_sync.upsert_subscriber_properties(bigint, boolean)'::regprocedure) as def`,
  );
  const original: string = rows[0].def;
  const broken = original.replace(find, replacement);
  expect(broken).not.toBe(original);
  await db.pool.query(broken);
  try {
    return await runVerifyScript(db.url, script, project);
  } finally {
    await db.pool.query(original);
  }
}

describe('verify/profiles_change_detection.sql', () => {
  it('passes through pg with one PASS line naming it, on a database in use, and leaves no trace', { timeout: 120_000 }, async () => {
    const before = await wholeState();
    const outcome = await runVerifyScript(db.url, script, project);
    expect(outcome.failure).toBeUndefined();
    expect(outcome.passLines).toEqual([
      expect.stringMatching(/^PASS verify\/profiles_change_detection: .*300 inserted, 450 updated, 1550 unchanged/),
    ]);
    expect(await wholeState()).toEqual(before);
  });

  it.skipIf(!psqlOnPath)('passes through plain psql -f with ON_ERROR_STOP', { timeout: 120_000 }, () => {
    const result = spawnSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', db.url, '-f', 'verify/profiles_change_detection.sql'], {
      cwd: repoRoot,
      encoding: 'utf8',
      env: project ? { ...process.env, PGOPTIONS: `-c mixpanel_sync.project=${project}` } : process.env,
    });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stderr.split('\n').filter((line) => line.includes('NOTICE:  PASS'))).toEqual([
      expect.stringContaining('PASS verify/profiles_change_detection: '),
    ]);
  });

  it('names the first difference when the write-all path moves changed_by_run_id of unchanged rows', { timeout: 120_000 }, async () => {
    const outcome = await verifyWithBrokenUpsert(
      'then excluded.changed_by_run_id else s.changed_by_run_id end',
      'then excluded.changed_by_run_id else excluded.changed_by_run_id end',
    );
    expect(outcome.failure).toMatch(
      /^verify\/profiles_change_detection: change detection on and off leave different rows, first: distinct_id \S+: column changed_by_run_id on \d+, off \d+/,
    );
    expect(outcome.passLines).toEqual([]);
  });

  it('names the first row a second identical sync locked when unchanged profiles reach the insert', { timeout: 120_000 }, async () => {
    const outcome = await verifyWithBrokenUpsert('where not change_detection or not c.is_unchanged', '');
    expect(outcome.failure).toMatch(
      /^verify\/profiles_change_detection: the second identical sync wrote or locked a row, first: distinct_id \S+: \(ctid, xmin, xmax\)/,
    );
    expect(outcome.passLines).toEqual([]);
  });
});
