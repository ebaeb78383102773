// The README's psql recipes on raw events ("psql recipes on raw events"), run as written on generated data
// (scripts/fixtures/sample-events.ts) synced with events.store_raw = on, each compared with an independent
// computation in TypeScript over the same lines (Mixpanel's dedup rule applied here, not by the database).
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { repoRoot } from '../db/paths.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { beginRun, finishRun, stageLines, writeSetting } from './sync-api.ts';

let db: TestDatabase;
const end = new Date('2026-11-30T12:00:00Z');
const lines = sampleEventLines({ users: 300, events: 8000, days: 40, end, seed: 13 });

interface Event {
  user: string;
  name: string;
  second: number;
  day: string;
  properties: Record<string, unknown>;
}

/** The distinct events of the lines, by Mixpanel's rule (same user, name, second and $insert_id; else same line). */
function distinctEvents(): Event[] {
  const seen = new Set<string>();
  const events: Event[] = [];
  for (const line of lines) {
    const { event, properties } = JSON.parse(line) as { event: string; properties: Record<string, unknown> };
    const time = Number(properties.time);
    const second = Math.floor(time >= 1e11 ? time / 1000 : time);
    const user = String(properties.distinct_id);
    const insertId = properties.$insert_id;
    const key = insertId ? JSON.stringify([user, event, second, String(insertId)]) : line;
    if (seen.has(key)) continue;
    seen.add(key);
    events.push({ user, name: event, second, day: new Date(second * 1000).toISOString().slice(0, 10), properties });
  }
  return events;
}

/** The SQL block of the README that starts with `-- recipe: <name>`. */
async function recipe(name: string): Promise<string> {
  const readme = await readFile(path.join(repoRoot, 'README.md'), 'utf8');
  const start = readme.indexOf(`-- recipe: ${name}\n`);
  if (start < 0) throw new Error(`README.md has no "-- recipe: ${name}" block`);
  return readme.slice(start, readme.indexOf('```', start));
}

const inNovember = (day: string) => day >= '2026-11-01' && day <= '2026-11-30';

beforeAll(async () => {
  db = await createTestDatabase();
  await writeSetting(db.pool, 'events.store_raw', 'on');
  const run = await beginRun(db.pool, { source: 'events', clock: end, forceFull: true });
  await stageLines(db.pool, 'events', run.id, lines);
  const finished = await finishRun(db.pool, run.id);
  expect(finished.status).toBe('succeeded');
}, 120_000);
afterAll(async () => {
  await db?.drop();
});

describe('README recipes on raw events', () => {
  it('the data holds what the recipes look at', async () => {
    const { rows } = await db.pool.query('select count(*)::int as n from mixpanel_sync.raw_events');
    expect(rows[0].n).toBe(distinctEvents().length);
  });

  it('funnel: View Item, then Purchase within 7 days of the first view', async () => {
    const events = distinctEvents();
    const firstView = new Map<string, number>();
    for (const e of events) {
      if (e.name === 'View Item' && inNovember(e.day)) firstView.set(e.user, Math.min(firstView.get(e.user) ?? Infinity, e.second));
    }
    let purchased = 0;
    for (const [user, first] of firstView) {
      if (events.some((e) => e.user === user && e.name === 'Purchase' && e.second > first && e.second <= first + 7 * 86_400)) purchased++;
    }
    expect(purchased, 'the data has conversions').toBeGreaterThan(0);
    const { rows } = await db.pool.query(await recipe('funnel'));
    expect(rows).toEqual([{ viewed: String(firstView.size), purchased_within_7_days: String(purchased) }]);
  });

  it('breakdown: page views by $browser', async () => {
    const byBrowser = new Map<string, { views: number; users: Set<string> }>();
    for (const e of distinctEvents()) {
      if (e.name !== '$mp_web_page_view' || !inNovember(e.day)) continue;
      const browser = typeof e.properties.$browser === 'string' ? e.properties.$browser : '(none)';
      const entry = byBrowser.get(browser) ?? { views: 0, users: new Set() };
      entry.views++;
      entry.users.add(e.user);
      byBrowser.set(browser, entry);
    }
    expect(byBrowser.size, 'several browsers').toBeGreaterThan(1);
    const expected = [...byBrowser].map(([browser, { views, users }]) => ({
      browser,
      page_views: String(views),
      users: String(users.size),
    }));
    const { rows } = await db.pool.query(await recipe('breakdown'));
    const byKey = (a: { browser: string }, b: { browser: string }) => (a.browser < b.browser ? -1 : a.browser > b.browser ? 1 : 0);
    expect([...rows].sort(byKey)).toEqual(expected.sort(byKey));
    const counts = rows.map((r) => Number(r.page_views));
    expect(counts, 'ordered by page views').toEqual([...counts].sort((a, b) => b - a));
  });

  it('daily active users', async () => {
    const users = new Map<string, Set<string>>();
    for (const e of distinctEvents()) {
      if (!inNovember(e.day)) continue;
      const day = users.get(e.day) ?? new Set<string>();
      day.add(e.user);
      users.set(e.day, day);
    }
    const expected = [...users].sort(([a], [b]) => (a < b ? -1 : 1)).map(([day, set]) => ({ day, active_users: String(set.size) }));
    expect(expected.length).toBe(30);
    const { rows } = await db.pool.query(
      `select day::text, active_users from (${(await recipe('daily active users')).replace(/;\s*$/, '')}) r`,
    );
    expect(rows).toEqual(expected);
  });
});
