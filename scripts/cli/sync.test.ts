// npm run sync: events, then profiles, then cohorts (when asked), against the fake Mixpanel server on 127.0.0.1 and a
// real database, one summary and one exit code. Spawned the way a scheduler starts it (node --import tsx, as
// package.json's script). Seen failing without the protection: with worstExit returning the last step's code, the
// failed-events case exited 0; with the step loop stopping at the first failure, profiles was not run.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { repoRoot } from '../db/paths.ts';
import { nodeCommand } from '../fixtures/cli-runner.ts';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'sync-all-test-'));
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel();
});
afterAll(async () => {
  await fake?.close();
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});
beforeEach(async () => {
  await db.pool.query(
    `truncate mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers, mixpanel_sync.subscriber_properties,
       mixpanel_sync.cohorts, mixpanel_sync.cohort_members, mixpanel_sync.sync_watermarks, mixpanel_sync.sync_runs, mixpanel_sync.sync_rejects cascade`,
  );
  fake.requests.length = 0;
  const now = Math.floor(Date.now() / 1000);
  fake.setEvents(
    Array.from({ length: 30 }, (_, i) =>
      JSON.stringify({
        event: i % 2 ? 'open' : 'buy',
        properties: {
          distinct_id: `u${i % 5}`,
          time: now - 3600 - i * 60,
          $insert_id: `e${i}`,
          mp_processing_time_ms: (now - 3590 - i * 60) * 1000,
        },
      }),
    ),
  );
  fake.setProfiles(Array.from({ length: 5 }, (_, i) => ({ $distinct_id: `u${i}`, $properties: { $email: `u${i}@example.com` } })));
  fake.setCohorts([{ id: 7, name: 'Buyers', count: 2 }], { 7: ['u0', 'u2'] });
});

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runSync(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
  const child = spawn(process.execPath, [...nodeCommand('sync'), ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      DATABASE_URL: db.url,
      MIXPANEL_SERVICE_ACCOUNT: fake.options.serviceAccount,
      MIXPANEL_SECRET: fake.options.secret,
      MIXPANEL_PROJECT_ID: String(fake.options.projectId),
      MIXPANEL_API_URL: fake.url,
      MIXPANEL_BUDGET_FILE: path.join(dir, `budget-${Math.random()}.json`),
      MIXPANEL_QUERIES_PER_HOUR: 'unlimited',
      MIXPANEL_MAX_TRIES: '1',
      MIXPANEL_PROJECT_TIMEZONE: '',
      MIXPANEL_SYNC_COHORTS: '',
      ...env,
    },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

const counts = async () =>
  (
    await db.pool.query(
      `select (select count(*)::int from mixpanel_sync.subscribers) as subscribers,
              (select count(*)::int from mixpanel_sync.subscriber_properties) as profiles,
              (select count(*)::int from mixpanel_sync.cohort_members) as members,
              (select string_agg(source || ':' || status, ' ' order by id) from mixpanel_sync.sync_runs) as runs`,
    )
  ).rows[0];

describe('npm run sync', () => {
  it('events, then profiles, then cohorts (--cohorts): one JSON summary, exit 0', async () => {
    const result = await runSync(['--json', '--cohorts']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const summary = JSON.parse(result.stdout);
    expect(summary).toMatchObject({ status: 'succeeded', exit_code: 0 });
    expect(summary.steps.map((s: { step: string; exit_code: number }) => [s.step, s.exit_code])).toEqual([
      ['events', 0],
      ['profiles', 0],
      ['cohorts', 0],
    ]);
    expect(summary.steps[0].summary).toMatchObject({ source: 'events', mode: 'full', received: 30, applied: 30 });
    expect(summary.steps[1].summary).toMatchObject({ source: 'profiles', inserted: 5 });
    expect(summary.steps[2].summary).toMatchObject({ source: 'cohorts', cohorts: 1, members: 2, added: 2 });
    expect(await counts()).toEqual({
      subscribers: 5,
      profiles: 5,
      members: 2,
      runs: 'events:succeeded profiles:succeeded cohorts:succeeded',
    });
    expect(fake.requests.map((r) => r.path)).toEqual([
      '/api/2.0/export',
      '/api/query/engage',
      '/api/query/cohorts/list',
      '/api/query/engage',
    ]);
    expect(fake.requests[3]!.form.filter_by_cohort).toBe('{"id":7}');
  });

  it('cohorts only when configured (MIXPANEL_SYNC_COHORTS=on, --no-cohorts wins); text summary ends with one line per step', async () => {
    const without = await runSync([]);
    expect(without.code).toBe(0);
    expect(without.stdout.trim().split('\n').at(-1)).toBe('sync: events ok, profiles ok -> exit 0');
    expect((await counts()).members).toBe(0);
    const configured = await runSync([], { MIXPANEL_SYNC_COHORTS: 'on' });
    expect(configured.stdout).toContain('1 cohorts, 2 members: 2 joined, 0 left, 0 unchanged, 0 rejected');
    expect(configured.stdout.trim().split('\n').at(-1)).toBe('sync: events ok, profiles ok, cohorts ok -> exit 0');
    const refused = await runSync(['--no-cohorts'], { MIXPANEL_SYNC_COHORTS: 'on' });
    expect(refused.stdout.trim().split('\n').at(-1)).toBe('sync: events ok, profiles ok -> exit 0');
  });

  it("a failed step does not stop the next; the exit code is the worst step's (1), each step says what happened", async () => {
    fake.queueExport({ status: 400, body: JSON.stringify({ error: 'bad from_date', status: 'error' }) });
    const result = await runSync(['--json']);
    expect(result.code).toBe(1);
    const summary = JSON.parse(result.stdout);
    expect(summary).toMatchObject({ status: 'failed', exit_code: 1 });
    expect(summary.steps[0]).toMatchObject({
      step: 'events',
      exit_code: 1,
      summary: { status: 'failed' },
      error: expect.stringContaining('bad from_date'),
    });
    expect(summary.steps[1]).toMatchObject({ step: 'profiles', exit_code: 0, summary: { status: 'succeeded', inserted: 5 } });
    expect(await counts()).toMatchObject({ subscribers: 0, profiles: 5, runs: 'events:failed profiles:succeeded' });
  });

  it('bad configuration: nothing runs, exit 2 with one line', async () => {
    const result = await runSync([], { MIXPANEL_SECRET: '' });
    expect(result.code).toBe(2);
    expect(result.stderr.trim()).toMatch(/^sync: .*MIXPANEL_SECRET is not set/);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(await counts()).toMatchObject({ runs: null });
  });

  // Several projects (docs/projects.md §5.8): a second Mixpanel project (its own fake server, project id 5678) in
  // project eu_app. Seen failing, each protection removed once: with lookUpProject taking the first project when none
  // is named, the unnamed case synced into default (exit 0); without projectMixpanelSettings' region comparison,
  // MIXPANEL_REGION=us synced eu_app (exit 0, requests made); without its Mixpanel project id comparison, the run was
  // refused only by begin_run (step errors on stdout, no config line); with the steps given `project: null`, the
  // MIXPANEL_PROJECT=eu_app sync failed (begin_run MP004: two projects).
  it('several projects: none named or an unknown one refuses in one line (exit 2); MIXPANEL_PROJECT / --project syncs that project only; a region or Mixpanel project id other than its row is refused before any request', async () => {
    const second = await startFakeMixpanel({ projectId: 5678 });
    await db.pool.query(`select mixpanel_sync.create_project('eu_app', region => 'eu')`);
    try {
      const now = Math.floor(Date.now() / 1000);
      const events = Array.from({ length: 12 }, (_, i) => ({ user: `x${i % 4}`, name: 'open', time: now - 3600 - i * 60 }));
      second.setEvents(
        events.map((e, i) =>
          JSON.stringify({
            event: e.name,
            properties: { distinct_id: e.user, time: e.time, $insert_id: `x${i}`, mp_processing_time_ms: (e.time + 10) * 1000 },
          }),
        ),
      );
      second.setProfiles([{ $distinct_id: 'x0', $properties: { $email: 'x0@example.com' } }]);
      const env = {
        MIXPANEL_SERVICE_ACCOUNT: second.options.serviceAccount,
        MIXPANEL_SECRET: second.options.secret,
        MIXPANEL_PROJECT_ID: '5678',
        MIXPANEL_API_URL: second.url,
      };
      const oneLine = (result: Result, pattern: RegExp) => {
        expect(result).toMatchObject({ code: 2, stdout: '' });
        expect(result.stderr).toMatch(pattern);
        expect(result.stderr.trim().split('\n')).toHaveLength(1);
      };
      oneLine(await runSync([], env), /^sync: no run started: this database holds 2 projects: name one .*one of: default, eu_app /);
      oneLine(await runSync(['--project', 'us_app'], env), /^sync: no run started: unknown project 'us_app' .*one of: default, eu_app;/);
      oneLine(
        await runSync(['--project', 'eu_app'], { ...env, MIXPANEL_REGION: 'us' }),
        /^sync: MIXPANEL_REGION is us, but project eu_app's region is eu: /,
      );
      expect(second.requests).toHaveLength(0);
      expect(await counts()).toMatchObject({ runs: null });

      const synced = await runSync(['--json'], { ...env, MIXPANEL_PROJECT: 'eu_app' });
      expect(synced).toMatchObject({ code: 0, stderr: '' });
      const perProject = async () =>
        (
          await db.pool.query(
            `select p.name, case when p.name = 'eu_app' then p.mixpanel_project_id end as mixpanel_project_id,
               (select string_agg(r.source || ':' || r.status, ' ' order by r.id) from mixpanel_sync.sync_runs r where r.project_id = p.id) as runs,
               (select count(*)::int from mixpanel_sync.subscribers s where s.project_id = p.id) as subscribers
             from mixpanel_sync.projects p order by p.name`,
          )
        ).rows;
      const users = new Set(events.map((e) => e.user)).size;
      expect(await perProject()).toEqual([
        { name: 'default', mixpanel_project_id: null, runs: null, subscribers: 0 },
        { name: 'eu_app', mixpanel_project_id: '5678', runs: 'events:succeeded profiles:succeeded', subscribers: users },
      ]);
      const requests = second.requests.length;
      oneLine(
        await runSync(['--project', 'eu_app'], { ...env, MIXPANEL_PROJECT_ID: '1234' }),
        /^sync: MIXPANEL_PROJECT_ID is 1234, but project eu_app holds Mixpanel project 5678: /,
      );
      expect(second.requests).toHaveLength(requests);
    } finally {
      await db.pool.query(`select mixpanel_sync.drop_project('eu_app')`);
      await second.close();
    }
  });
});
