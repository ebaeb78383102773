// The exact floor (exact-floor.ts) is a floor of exact designs only if it does the work exactness needs: over the same
// lines it must write the per-(user, day, name) counts, first and last times that our sync leaves in events_daily. The
// lines are generated with more re-sent lines, lines without $insert_id and times in milliseconds than the sample's
// defaults, so the dedup and the key are tested, not only the counting.
// Seen failing with the floor's dedup removed (`distinct on` left out): the re-sent lines were counted twice; and with
// `floor(time)` in place of event_second: the times in milliseconds fell on other days.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { copyFileAsJsonb, createCopyTable, dropCopyTable } from './copy-file.ts';
import { exactFloorRows } from './exact-floor.ts';
import { parseLine, SAMPLE_END, writeLines } from './sample-data.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'exact-floor-'));
afterAll(async () => {
  await db.drop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the exact floor of the bench', () => {
  it('writes the counts, first and last times our sync writes to events_daily for the same lines', async () => {
    const lines = sampleEventLines({
      users: 60,
      events: 3_000,
      days: 6,
      end: SAMPLE_END,
      seed: 5,
      duplicateRate: 0.1,
      missingInsertIdRate: 0.1,
      msTimeRate: 0.05,
    });
    const file = await writeLines(path.join(dir, 'events.jsonl'), lines);
    const clock = new Date((Math.max(...lines.map((line) => parseLine(line).second)) + 1) * 1000);

    await createCopyTable(db.pool);
    await copyFileAsJsonb(db.pool, file);
    const floor = await exactFloorRows(db.pool);
    await dropCopyTable(db.pool);

    const summary = await syncEvents({ pool: db.pool, input: file, full: true, clock });
    expect(summary.status).toBe('succeeded');
    expect(summary.duplicates).toBeGreaterThan(100);
    const { rows: ours } = await db.pool.query(
      `select distinct_id, day::text, event_name, event_count::int, first_at, last_at
       from mixpanel_sync.events_daily order by 1, 2, 3`,
    );
    expect(ours.length).toBeGreaterThan(500);
    expect(floor).toEqual(ours);
  });
});
