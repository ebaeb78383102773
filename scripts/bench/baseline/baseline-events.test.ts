// The rebuilt original design must behave as the original did: full sync counts every line it
// reads; the incremental sync re-reads from watermark − 2 h and ADDs, so the overlap counts twice.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase } from '../../db/vitest-database.ts';
import { parseLine, writeLines } from '../sample-data.ts';
import { sampleEventLines } from '../../fixtures/sample-events.ts';
import { baselineFullSync, baselineIncrementalSync, baselineTotalEvents, installBaseline, BASELINE_OVERLAP_MS } from './baseline-events.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-baseline-'));
beforeAll(() => installBaseline(db.pool));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});

const end = new Date('2026-11-29T12:00:00Z');
const lines = sampleEventLines({ users: 400, events: 2_000, days: 2, end, seed: 9, msTimeRate: 0.05 });
const ms = (line: string) => {
  const time = Number((JSON.parse(line) as { properties: { time: number } }).properties.time);
  return Math.floor(time >= 1e11 ? time : time * 1000);
};
const cut = [...lines.map(ms)].sort((a, b) => a - b)[1_500]!;
const full = lines.filter((line) => ms(line) <= cut);
const incremental = lines.filter((line) => ms(line) >= cut - BASELINE_OVERLAP_MS);

it('full sync: every line counted, per user and event name, in batches of 250 users', async () => {
  const run = await baselineFullSync(db.pool, await writeLines(path.join(dir, 'full.jsonl'), full));
  expect(run.lines).toBe(full.length);
  expect(run.batches).toBe(Math.ceil(run.users / 250));
  expect(await baselineTotalEvents(db.pool)).toBe(full.length);
  const { rows } = await db.pool.query<{ mismatched: string }>(
    `select count(*)::text as mismatched from bench_baseline.subscribers s
     where s.total_events <> (select sum(c.event_count) from bench_baseline.user_event_counts c where c.distinct_id = s.distinct_id)`,
  );
  expect(rows[0]!.mismatched).toBe('0');
});

it('incremental sync: re-reads from watermark − 2 h and adds, so the overlap is counted twice', async () => {
  const before = await baselineTotalEvents(db.pool);
  const run = await baselineIncrementalSync(db.pool, await writeLines(path.join(dir, 'incremental.jsonl'), incremental));
  const watermark = Math.max(...full.map(ms));
  const reread = incremental.filter((line) => ms(line) >= watermark - BASELINE_OVERLAP_MS);
  const overlap = reread.filter((line) => ms(line) <= watermark).length;
  expect(overlap).toBeGreaterThan(0);
  expect(run.lines).toBe(reread.length);
  expect((await baselineTotalEvents(db.pool)) - before).toBe(reread.length);
  const distinctUsers = new Set(reread.map((line) => parseLine(line).distinctId)).size;
  expect(run.users).toBe(distinctUsers);
});
