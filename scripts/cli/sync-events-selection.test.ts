// `npm run sync:events -- --event NAME` (repeatable) and the setting events.only, through the real CLI (npm run, as a
// user starts it), a real database and the fake Mixpanel server on 127.0.0.1, which answers the Export API's `event`
// parameter as Mixpanel does (only those names). The request carries the selection begin_run recorded
// (sync_runs.options->'events'), read back from the run row. Seen failing without each protection (removed once,
// then restored):
//   - events-sync.ts not passing `event` to exportEvents: the request had no `event` parameter (expected
//     '["Sign Up","buy"]', got undefined) and the run applied the other names too;
//   - exportPlan reading the selection from the CLI flags instead of the run row: with events.only set and no
//     --event, the request had no `event` parameter;
//   - sync-events.ts without `events` passed to syncEvents: --event was ignored (options.events absent).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { runCli, summaryOf } from '../fixtures/cli-runner.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { writeSetting } from '../sql/sync-api.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'sync-events-selection-'));
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel();
});
afterAll(async () => {
  await fake?.close();
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});

const now = Math.floor(Date.now() / 1000);
const names = ['buy', 'open', 'Sign Up'];
const lines = Array.from({ length: 30 }, (_, i) =>
  JSON.stringify({
    event: names[i % 3],
    properties: {
      distinct_id: `u${i % 5}`,
      time: now - 3600 - i * 60,
      $insert_id: `e${i}`,
      mp_processing_time_ms: (now - 3590 - i * 60) * 1000,
    },
  }),
);

beforeEach(async () => {
  await db.pool.query(
    `truncate mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers, mixpanel_sync.sync_watermarks,
       mixpanel_sync.sync_runs, mixpanel_sync.sync_rejects cascade`,
  );
  await writeSetting(db.pool, 'events.only', '[]');
  fake.requests.length = 0;
  fake.setEvents(lines);
});

function syncEventsCli(args: string[]) {
  return runCli('sync:events', [...args, '--json'], {
    env: {
      DATABASE_URL: db.url,
      MIXPANEL_SERVICE_ACCOUNT: fake.options.serviceAccount,
      MIXPANEL_SECRET: fake.options.secret,
      MIXPANEL_PROJECT_ID: String(fake.options.projectId),
      MIXPANEL_API_URL: fake.url,
      MIXPANEL_BUDGET_FILE: path.join(dir, `budget-${Math.random()}.json`),
      MIXPANEL_QUERIES_PER_HOUR: 'unlimited',
      MIXPANEL_MAX_TRIES: '1',
    },
  });
}

const storedNames = async () =>
  (
    await db.pool.query<{ event_name: string; events: number }>(
      'select event_name, sum(event_count)::int as events from mixpanel_sync.events_daily group by 1 order by 1',
    )
  ).rows;

const lastRunOptions = async () =>
  (await db.pool.query<{ options: Record<string, unknown> }>('select options from mixpanel_sync.sync_runs order by id desc limit 1'))
    .rows[0]!.options;

describe('npm run sync:events -- --event NAME', () => {
  it('asks the Export API for just those names (its event parameter, a JSON array) and stores only them', async () => {
    const result = await syncEventsCli(['--event', 'Sign Up', '--event', 'buy']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(summaryOf(result)).toMatchObject({ status: 'succeeded', mode: 'full', received: 20, applied: 20 });
    const exports = fake.requests.filter((r) => r.path === '/api/2.0/export');
    expect(exports.length).toBeGreaterThan(0);
    // as begin_run recorded it: sorted (bytewise), no repeats
    for (const request of exports) expect(request.query.event).toBe('["Sign Up","buy"]');
    expect((await lastRunOptions()).events).toEqual(['Sign Up', 'buy']);
    expect(await storedNames()).toEqual([
      { event_name: 'Sign Up', events: 10 },
      { event_name: 'buy', events: 10 },
    ]);
  });

  it('without --event, the setting events.only is what the request carries; without either, no event parameter', async () => {
    await writeSetting(db.pool, 'events.only', '["open"]');
    const selected = await syncEventsCli([]);
    expect(selected.code).toBe(0);
    expect(fake.requests.filter((r) => r.path === '/api/2.0/export').map((r) => r.query.event)).toEqual(['["open"]']);
    expect(await storedNames()).toEqual([{ event_name: 'open', events: 10 }]);

    await writeSetting(db.pool, 'events.only', '[]');
    fake.requests.length = 0;
    const all = await syncEventsCli(['--full']);
    expect(all.code).toBe(0);
    expect(fake.requests.filter((r) => r.path === '/api/2.0/export').map((r) => r.query.event)).toEqual([undefined]);
    expect((await storedNames()).map((r) => r.event_name)).toEqual(['Sign Up', 'buy', 'open']);
  });

  it('with --file, other names in the input are skipped: only the selected ones reach events_daily', async () => {
    const file = path.join(dir, 'events.jsonl');
    writeFileSync(file, `${lines.join('\n')}\n`);
    const result = await syncEventsCli(['--file', file, '--event', 'open']);
    expect(result.code).toBe(0);
    expect(summaryOf(result)).toMatchObject({ status: 'succeeded', received: 30, applied: 10, rejected: 0 });
    expect(fake.requests).toEqual([]);
    expect(await storedNames()).toEqual([{ event_name: 'open', events: 10 }]);
  });

  it('an empty or over-long name: begin_run refuses (MP004), exit 2, nothing started', async () => {
    for (const bad of ['', 'n'.repeat(256)]) {
      const result = await syncEventsCli(['--event', 'buy', '--event', bad]);
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/^sync:events: begin_run refused: .*non-empty event name of at most 255 characters/);
    }
    expect((await db.pool.query('select count(*)::int as runs from mixpanel_sync.sync_runs')).rows[0].runs).toBe(0);
    expect(fake.requests).toEqual([]);
  });

  it('--help documents --event', async () => {
    const result = await runCli('sync:events', ['--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/--event NAME +sync only events of this name \(repeatable/);
  });
});
