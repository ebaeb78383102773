// npm run spot-check against the fake Mixpanel server on 127.0.0.1 and a real database synced from it: a match, then
// seeded differences it must find (an event lost, a whole day lost, an event Mixpanel no longer has, a summary that
// disagrees), late arrivals shown as pending, the seed's repeatability, batching, and the exit codes.
// Seen failing without the protection (spot_check_differences re-created mutated in a throwaway copy): without the
// dedup (distinct on event_key) the duplicate export line made the matching case report 'missing events'; with
// pending events counted as Mixpanel's, the late arrivals became differences.
// The selection case (events.only): seen failing (exit 1) with the spot-check as it was (schema.sql's begin_spot_check,
// spot_check_differences and spot_check_counts re-created in the test database: no spot_checks.events, so no `event`
// parameter either): u3's buy that Mixpanel has and the sync no longer keeps was 'missing events', u5's stored buy
// that Mixpanel no longer has 'extra events'; and with the filter on the stored side only removed (Mixpanel's side
// still filtered), every stored buy was 'extra events (Mixpanel has none)'.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { repoRoot } from '../db/paths.ts';
import { nodeCommand } from '../fixtures/cli-runner.ts';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { spotCheck, spotCheckLines, type SpotCheckReport } from '../loader/spot-check.ts';
import { writeSetting } from '../sql/sync-api.ts';

const db = await createTestDatabase();
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel();
});
afterAll(async () => {
  await fake?.close();
  await db.drop();
});

const NOW = Math.floor(Date.now() / 1000);
const HOUR = 3600;
const DAY = 86_400;
/** An export line: `ago` seconds before now, processed a minute later (or at `processedAgo`). */
const line = (user: string, name: string, ago: number, id: string, processedAgo = ago - 60) =>
  JSON.stringify({
    event: name,
    properties: { distinct_id: user, time: NOW - ago, $insert_id: id, mp_processing_time_ms: (NOW - processedAgo) * 1000 },
  });
/** 10 users, 3 days each, two event names; plus one line repeated (Mixpanel's dedup must drop it). */
const BASE = [
  ...Array.from({ length: 10 }, (_, u) =>
    [0, 1, 2].flatMap((d) => [
      line(`u${u}`, 'open', d * DAY + 2 * HOUR + u, `o-${u}-${d}`),
      line(`u${u}`, 'buy', d * DAY + 3 * HOUR + u, `b-${u}-${d}`),
    ]),
  ).flat(),
  line('u1', 'open', 2 * HOUR + 1, 'o-1-0'),
];

beforeEach(async () => {
  await db.pool.query(
    'truncate mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers, mixpanel_sync.sync_watermarks, mixpanel_sync.sync_runs, mixpanel_sync.spot_checks cascade',
  );
  await writeSetting(db.pool, 'events.only', '[]');
  fake.setEvents(BASE);
  await syncEvents({ pool: db.pool, mixpanel: fake.settings() });
  fake.requests.length = 0;
});

const check = (users = 10, seed = 's', batch?: number) =>
  spotCheck({ pool: db.pool, mixpanel: fake.settings(), users, seed, ...(batch ? { batch } : {}) });

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [...nodeCommand('spot-check'), ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      DATABASE_URL: db.url,
      MIXPANEL_SERVICE_ACCOUNT: fake.options.serviceAccount,
      MIXPANEL_SECRET: fake.options.secret,
      MIXPANEL_PROJECT_ID: String(fake.options.projectId),
      MIXPANEL_API_URL: fake.url,
      MIXPANEL_BUDGET_FILE: path.join(repoRoot, 'node_modules', `.spot-check-test-budget-${process.pid}-${Math.random()}.json`),
      MIXPANEL_QUERIES_PER_HOUR: 'unlimited',
      MIXPANEL_MAX_TRIES: '1',
    },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('spot-check', () => {
  it('matches what was synced: exit 0, every group compared, the duplicate line counted once', async () => {
    const report = await check();
    expect(report).toMatchObject({ differing_users: [], pending: 0, requests: 1, events_fetched: 61, compared: 60 });
    expect(report.differences).toEqual([]);
    expect(spotCheckLines(report).at(-1)).toMatch(
      /10 users, 60 \(user, day, event\) groups .* 61 events fetched in 1 requests, 0 pending: match$/,
    );
    const result = await cli(['--users', '10', '--seed', 's']);
    expect(result).toMatchObject({ code: 0, stderr: '' });
  });

  it('finds seeded differences and says why: missing events, a missing day, extra events, a summary that disagrees', async () => {
    fake.setEvents([
      ...BASE.filter((l) => !l.includes('"b-5-1"')), // Mixpanel no longer has u5's buy of day 1: extra here
      line('u3', 'open', DAY + 2 * HOUR, 'lost-1', DAY), // processed long ago, yet not synced: missing
      line('u4', 'open', 5 * DAY, 'lost-day', 5 * DAY - 60), // a day u4 has nothing stored for
    ]);
    await db.pool.query(`update mixpanel_sync.subscribers set event_counts = event_counts || '{"open": 99}' where distinct_id = 'u7'`);
    const report = await check();
    expect(report.differing_users.sort()).toEqual(['u3', 'u4', 'u5', 'u7']);
    const why = Object.fromEntries(
      report.differences.map((d) => [`${d.distinct_id} ${d.day === null ? 'all' : 'day'} ${d.event_name}`, [d.mixpanel, d.ours, d.reason]]),
    );
    expect(why['u3 day open']).toEqual([2, 1, 'missing events']);
    expect(why['u4 day open']).toEqual([1, 0, 'missing day']);
    expect(why['u5 day buy']).toEqual([0, 1, 'extra events (Mixpanel has none)']);
    expect(why['u7 all open']).toEqual([3, 99, 'subscribers.event_counts differs (99 stored, 3 expected)']);
    expect(why['u3 all open']).toEqual([4, 3, 'subscribers.event_counts differs (3 stored, 4 expected)']);
    const result = await cli(['--users', '10', '--seed', 's']);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^user +day +event +mixpanel +ours +pending +why$/m);
    expect(result.stdout).toMatch(/^u4 +\d{4}-\d\d-\d\d +open +1 +0 +0 +missing day$/m);
    expect(result.stdout.trim().split('\n').at(-1)).toMatch(/: 4 of 10 users differ$/);
  });

  it('late arrivals after the watermark are pending, not differences (exit 0)', async () => {
    // u2's event one second after the watermark (BASE's newest event, 2 h ago), so on the watermark's day at any time
    // of day: the check compares the days up to the watermark's (an event of a later day is outside its window)
    fake.setEvents([...BASE, line('u2', 'open', 2 * HOUR - 1, 'after-watermark', 10), line('u6', 'buy', 4 * HOUR, 'processed-late', 20)]);
    const report = await check();
    expect(report.differing_users).toEqual([]);
    expect(report.pending).toBe(2);
    expect(report.differences.map((d) => [d.distinct_id, d.pending, d.differs, d.reason])).toEqual([
      ['u2', 1, false, 'late arrivals after the watermark (the next run syncs them)'],
      ['u6', 1, false, 'late arrivals after the watermark (the next run syncs them)'],
    ]);
  });

  it('the seed picks the users, again and again; batches of users per request, a where on distinct_id', async () => {
    const a = await check(4, 'monday', 2);
    const b = await check(4, 'monday', 2);
    const c = await check(4, 'tuesday', 2);
    expect(b.users).toEqual(a.users);
    expect(c.users).not.toEqual(a.users);
    expect(a.requests).toBe(2);
    const wheres = fake.requests.slice(0, 2).map((r) => r.query.where);
    expect(wheres).toEqual([
      `properties["distinct_id"] == ${JSON.stringify(a.users[0])} or properties["distinct_id"] == ${JSON.stringify(a.users[1])}`,
      `properties["distinct_id"] == ${JSON.stringify(a.users[2])} or properties["distinct_id"] == ${JSON.stringify(a.users[3])}`,
    ]);
  });

  it('compares only what events.only keeps: the Export asked for those names, stored rows of other names left out (exit 0)', async () => {
    // BASE was synced with every name; now the sync keeps only open: buy's rows stay stored (not forgotten), Mixpanel
    // has a buy the sync no longer fetches (u3) and no longer has a stored one (u5). Neither is a difference.
    await writeSetting(db.pool, 'events.only', '["open"]');
    fake.setEvents([...BASE.filter((l) => !l.includes('"b-5-1"')), line('u3', 'buy', DAY + 2 * HOUR, 'b-new', DAY)]);
    const result = await cli(['--users', '10', '--seed', 's', '--json']);
    expect(result).toMatchObject({ code: 0, stderr: '' });
    const report = JSON.parse(result.stdout) as SpotCheckReport;
    // 10 users x 3 days of open, the duplicate open line fetched too; no buy fetched
    expect(report).toMatchObject({ differing_users: [], differences: [], events: ['open'], compared: 30, events_fetched: 31 });
    const exports = fake.requests.filter((r) => r.path === '/api/2.0/export');
    expect(exports.map((r) => r.query.event)).toEqual(['["open"]']);
    const { rows } = await db.pool.query('select events from mixpanel_sync.spot_checks where id = $1', [report.check_id]);
    expect(rows).toEqual([{ events: ['open'] }]);
    expect(spotCheckLines(report).at(-1)).toMatch(/10 users, 30 \(user, day, event\) groups of open \(events\.only\) over .*: match$/);

    // with every name again, the same data differs where it should: buy is compared on both sides
    await writeSetting(db.pool, 'events.only', '[]');
    const all = await check();
    expect(all.events).toEqual([]);
    expect(all.differing_users.sort()).toEqual(['u3', 'u5']);
  });

  it('could not check: exit 2 with one line (nothing synced; an incomplete export)', async () => {
    fake.queueExport({ terminatedEarlyAfterLines: 3 });
    const incomplete = await cli(['--users', '3']);
    expect(incomplete.code).toBe(2);
    expect(incomplete.stderr).toMatch(/^spot-check: could not check: .*terminated early/);
    await db.pool.query('truncate mixpanel_sync.sync_watermarks, mixpanel_sync.subscribers cascade');
    const empty = await cli([]);
    expect(empty).toMatchObject({ code: 2, stdout: '' });
    expect(empty.stderr.trim()).toMatch(
      /^spot-check: could not check: begin_spot_check: nothing synced yet \(no events watermark\).* hint: run npm run sync:events first$/,
    );
  });
});
