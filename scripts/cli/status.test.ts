// `npm run status` as a process against a real database: output and exit codes (0 ok, 1 warn, 2 critical, 3 unknown).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, templateDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun } from '../sql/sync-api.ts';
import { exportEvent, minutesBefore, syncEvents } from '../sql/run-fixtures.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));

function status(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { DATABASE_URL: _ignored, ...rest } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/cli/status.ts', ...args], { cwd: repo, env: { ...rest, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  child.stderr.on('data', (chunk) => (stderr += chunk));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db.drop();
});

describe('npm run status', () => {
  it('exits with the worst health status: 1 (never synced), 0 after a sync, 2 with a run left running', async () => {
    const never = await status(['--database-url', db.url]);
    expect(never.code).toBe(1);
    expect(never.stdout).toMatch(/Health: WARN\n(?:.*\n)*?\s+warn\s+events\.watermark_lag .*never synced/);

    const now = new Date();
    const run = await syncEvents(db.pool, [exportEvent('u1', 'open', minutesBefore(now, 2), { insertId: 'a' })]);
    const ok = await status([], { DATABASE_URL: db.url });
    expect(ok).toMatchObject({ code: 0, stderr: '' });
    expect(ok.stdout).toContain('Health: OK');
    expect(ok.stdout).toMatch(new RegExp(`\\n\\s+${run.id}\\s+events\\s+full\\s+succeeded\\s+1\\s+1\\s+0\\s+0\\s+0`));

    const stuck = await beginRun(db.pool, { source: 'profiles' });
    await db.pool.query(`update mixpanel_sync.sync_runs set started_at = now() - interval '3 hours' where id = $1`, [stuck.id]);
    const critical = await status(['--database-url', db.url, '--json']);
    expect(critical.code).toBe(2);
    const report = JSON.parse(critical.stdout);
    expect(report.status).toBe('critical');
    expect(report.watermarks).toMatchObject([{ source: 'events', run_id: Number(run.id) }]);
    expect(report.runs.map((r: { id: number; status: string }) => [r.id, r.status])).toEqual([
      [Number(stuck.id), 'running'],
      [Number(run.id), 'succeeded'],
    ]);
    expect(report.health).toHaveLength(17); // one row per sync_health() check (200-health-cohorts.sql adds the plan's six)
    expect(report.health).toContainEqual(expect.objectContaining({ check: 'runs.running', status: 'critical' }));
    await failRun(db.pool, stuck.id, 'cleanup');
  });

  it('exits 3 with one line when it cannot tell: no database, unreachable, not migrated, bad arguments', async () => {
    const none = await status([]);
    expect(none.code).toBe(3);
    expect(none.stderr).toMatch(/^status: no database .*DATABASE_URL.*\n/);

    const unreachable = await status(['--database-url', 'postgres://nobody@127.0.0.1:1/nothing']);
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toMatch(/^status: cannot connect to postgres:\/\/nobody@127\.0\.0\.1:1\/nothing: .*ECONNREFUSED.*\n$/);

    const bare = await status(['--database-url', templateDatabase().serverUrl]);
    expect(bare.code).toBe(3);
    expect(bare.stderr).toMatch(/^status: cannot read the sync status \(.*mixpanel_sync.*\); is the database migrated\?.*\n$/);

    const typo = await status(['--jsn']);
    expect(typo.code).toBe(3);
    expect(typo.stderr).toMatch(/^status: .*--jsn/);
  });
});
