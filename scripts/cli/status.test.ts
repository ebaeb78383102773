// `npm run status` as a process against a real database: output and exit codes (0 ok, 1 warn, 2 critical, 3 unknown).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, templateDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun } from '../sql/sync-api.ts';
import { exportEvent, minutesBefore, syncEvents } from '../sql/run-fixtures.ts';
import { nodeCommand } from '../fixtures/cli-runner.ts';

const repo = fileURLToPath(new URL('../..', import.meta.url));

function status(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { DATABASE_URL: _ignored, ...rest } = process.env;
  const child = spawn(process.execPath, [...nodeCommand('status'), ...args], { cwd: repo, env: { ...rest, ...env } });
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

  // Several projects (docs/projects.md §5.9): eu_app never synced, with an events run running for 3 hours. The total
  // line's expectation is built here from sync_health(name) in SQL. Seen failing, each removed once: with readStatus
  // always reading one project (the only one), status exited 3 (MP004: two projects); with the exit code of the first
  // project's status instead of the total's, it exited 1 (default: warn); with totalLine listing each check under its
  // own status, eu_app's watermark_lag moved into a warn group.
  it('two projects, none named: one block each, a total line and the worst exit code; --json {projects, total}; --project one as before', async () => {
    await db.pool.query(`select mixpanel_sync.create_project('eu_app')`);
    const stuck = await beginRun(db.pool, { source: 'events', project: 'eu_app' });
    await db.pool.query(`update mixpanel_sync.sync_runs set started_at = now() - interval '3 hours' where id = $1`, [stuck.id]);
    try {
      const { rows } = await db.pool.query<{ project: string; check: string; status: 'warn' | 'critical' }>(
        `select p.name as project, h."check", h.status from mixpanel_sync.projects p cross join lateral mixpanel_sync.sync_health(p.name)
           with ordinality h ("check", status, value, threshold, detail, position)
         where h.status <> 'ok' order by p.name, h.position`,
      );
      const severity = ['ok', 'warn', 'critical'];
      const worst = (project: string) =>
        severity[Math.max(0, ...rows.filter((r) => r.project === project).map((r) => severity.indexOf(r.status)))]!;
      expect(worst('eu_app')).toBe('critical'); // runs.running
      const checksOf = (projects: string[]) =>
        projects
          .map(
            (p) =>
              `${p}: ${rows
                .filter((r) => r.project === p)
                .map((r) => r.check)
                .join(', ')}`,
          )
          .join('; ');
      const groups = severity
        .map((status) => {
          const projects = ['default', 'eu_app'].filter((p) => worst(p) === status);
          if (projects.length === 0) return null;
          return status === 'ok' ? `${projects.length} ok` : `${projects.length} ${status} (${checksOf(projects)})`;
        })
        .filter((group) => group !== null);

      const text = await status(['--database-url', db.url]);
      expect(text).toMatchObject({ code: 2, stderr: '' });
      expect(text.stdout).toMatch(/^Project default \(region us, timezone UTC, Mixpanel project /);
      expect(text.stdout).toContain('\nProject eu_app (region us, timezone UTC, Mixpanel project not recorded yet)\n');
      expect(text.stdout.split('Project eu_app')[1]).toMatch(new RegExp(`\\n\\s+${stuck.id}\\s+events\\s+full\\s+running`));
      expect(text.stdout.trim().split('\n').at(-1)).toBe(`Total: 2 projects: ${groups.join(', ')}`);

      const json = await status(['--database-url', db.url, '--json']);
      expect(json.code).toBe(2);
      const report = JSON.parse(json.stdout);
      expect(report.projects.map((p: { project: string }) => p.project)).toEqual(['default', 'eu_app']);
      expect(report.projects[1].runs.map((r: { id: number }) => r.id)).toEqual([Number(stuck.id)]);
      expect(report.total).toMatchObject({ projects: 2, status: 'critical', critical: 1 });
      expect(report.total.problems).toEqual(rows);

      const one = await status(['--project', 'eu_app', '--json'], { DATABASE_URL: db.url });
      expect(one.code).toBe(2);
      expect(JSON.parse(one.stdout)).toMatchObject({ project: 'eu_app', status: 'critical', runs: [{ id: Number(stuck.id) }] });
    } finally {
      await failRun(db.pool, stuck.id, 'cleanup');
      await db.pool.query(`select mixpanel_sync.drop_project('eu_app')`);
    }
  });
});
