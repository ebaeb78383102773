// The bench's truth (distinctEvents: Mixpanel's dedup identity computed in TypeScript) must agree
// with what the event core counts, or "ours counted exactly the truth" would mean nothing.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { distinctEvents, parseLine, writeLines } from './sample-data.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-truth-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});

it('counts the distinct events of a generated file exactly as the core applies them', async () => {
  const end = new Date('2026-11-29T12:00:00Z');
  // a high duplicate rate and some lines without $insert_id, so the dedup rule matters
  const lines = sampleEventLines({ users: 150, events: 3_000, days: 50, end, seed: 3, duplicateRate: 0.2, missingInsertIdRate: 0.2 });
  const clock = new Date((Math.max(...lines.map((line) => parseLine(line).second)) + 1) * 1000);
  const summary = await syncEvents({ pool: db.pool, input: await writeLines(path.join(dir, 'events.jsonl'), lines), full: true, clock });
  const { rows } = await db.pool.query<{ total: string; from_day: string }>(
    `select (select sum(total_events) from mixpanel_sync.subscribers)::text as total, window_from_day::text as from_day
     from mixpanel_sync.sync_runs where id = $1`,
    [summary.run_id],
  );
  const truth = distinctEvents(lines, rows[0]!.from_day).size;
  expect(summary.too_old).toBeGreaterThan(0); // 50 days of data, a 45-day window: the day filter is exercised
  expect(truth).toBeLessThan(lines.length - summary.too_old!); // and so is the dedup
  expect(Number(rows[0]!.total)).toBe(truth);
  expect(summary.applied).toBe(truth);
});
