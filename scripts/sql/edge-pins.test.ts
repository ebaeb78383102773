// Pins of edges the mutation run of this session found unpinned (MUTATION.md, "Survivors"): each test names the
// mutant it kills. Each was seen failing with its mutant applied (`create or replace` of the mutated function in a
// scratch database) and passing on main.
//   1. parse_staged_lines' last resort (line by line) parses exactly the lines of the chunk it was given
//      (kills `line.line_id - 1` -> `line.line_id + 1`, twice: the chunk's lines were left unparsed, 0 returned).
//   2. An incremental run after a change of project timezone finds an event's ledger row on another day
//      (kills the ±2-day search narrowed to `w.day + 2 .. w.day + 2` in upsert_subscribers_incremental_add and the same
//      in the _loop path: the re-read event was applied twice).
//   3. A run whose options.events is [] means every event, for the REPLACE and for its guard
//      (kills `jsonb_array_length(...) > 0` -> `>= 0` and `and` -> `or` in run_selection and replace_guard: the
//      other name's rows stayed, the guard never refused, its message named a selection of []).
import { beforeEach, describe, expect, it } from 'vitest';
import { exportEvent, syncTestDatabase } from './run-fixtures.ts';
import {
  beginRun,
  finishRun,
  lastStagedLineId,
  parseStagedChunk,
  readSetting,
  setUpsertPath,
  stageLines,
  stageRecords,
  writeSetting,
} from './sync-api.ts';

const db = await syncTestDatabase();
beforeEach(async () => {
  await setUpsertPath(db.pool, 'set');
});

const parsedLines = async (runId: string) =>
  (
    await db.pool.query<{ line_id: string; reason: string | null }>(
      `select line_id::text, left(reject_reason, 18) as reason from mixpanel_sync.run_events where run_id = $1 order by line_id`,
      [runId],
    )
  ).rows;

describe('parse_staged_lines, chunk by chunk, on its last resort', () => {
  it('parses each chunk (after, up_to] exactly, line by line when every line raises', async () => {
    const clock = new Date('2024-03-10T12:00:00Z');
    const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true });
    // a zone no line can be read in: the fast and careful paths both raise, so every line is read on its own
    await db.pool.query(`update mixpanel_sync.sync_runs set project_timezone = 'Pin/No_Such_Zone' where id = $1`, [run.id]);
    const line = (user: string, withTime: boolean) =>
      JSON.stringify({ event: 'open', properties: { distinct_id: user, ...(withTime ? { time: 1_710_000_000 } : {}) } });
    await stageLines(db.pool, 'events', run.id, [line('a', true), line('b', false), line('c', true)]);
    const first = await lastStagedLineId(db.pool, run.id);
    await stageLines(db.pool, 'events', run.id, [line('d', false), line('e', true)]);
    const second = await lastStagedLineId(db.pool, run.id);

    expect(await parseStagedChunk(db.pool, run.id, '0', first)).toBe(3);
    const afterFirst = await parsedLines(run.id);
    expect(afterFirst.map((r) => r.reason)).toEqual(['could not be read:', 'missing properties', 'could not be read:']);
    expect(afterFirst.at(-1)!.line_id).toBe(first);

    expect(await parseStagedChunk(db.pool, run.id, first, second)).toBe(2);
    const all = await parsedLines(run.id);
    expect(all).toHaveLength(5);
    expect(all.at(-1)!.line_id).toBe(second);
    expect(all.slice(3).map((r) => r.reason)).toEqual(['missing properties', 'could not be read:']);
  });
});

describe('a change of project timezone between runs', () => {
  for (const path of ['set', 'loop'] as const) {
    it(`an incremental run finds the re-read event on its old day (${path})`, async () => {
      await setUpsertPath(db.pool, path);
      // one raw second, read as local time at UTC+14 (2024-03-09 15:00Z) and then as UTC (2024-03-10 05:00Z)
      const event = exportEvent('u1', 'open', new Date('2024-03-10T05:00:00Z'), { insertId: 'tz-1' });
      const first = await beginRun(db.pool, {
        source: 'events',
        clock: new Date('2024-03-10T12:00:00Z'),
        forceFull: true,
        projectTimezone: 'Pacific/Kiritimati',
      });
      await stageRecords(db.pool, 'events', first.id, [event]);
      expect(await finishRun(db.pool, first.id)).toMatchObject({ status: 'succeeded', applied: '1' });

      const second = await beginRun(db.pool, { source: 'events', clock: new Date('2024-03-10T13:00:00Z') });
      expect(second.mode).toBe('incremental');
      await stageRecords(db.pool, 'events', second.id, [event]);
      expect(await finishRun(db.pool, second.id)).toMatchObject({ status: 'succeeded', applied: '0', duplicates: '1' });
      const { rows } = await db.pool.query<{ n: string }>('select sum(event_count)::text as n from mixpanel_sync.events_daily');
      expect(rows[0]!.n).toBe('1');
    });
  }
});

describe('a run whose options.events is [] (every event)', () => {
  const clock = new Date('2024-03-10T12:00:00Z');
  const events = (name: string, n: number) =>
    Array.from({ length: n }, (_, i) =>
      exportEvent(`u${i % 3}`, name, new Date(clock.getTime() - (i + 1) * 600_000), { insertId: `${name}-${i}` }),
    );
  const fullRunWithEmptySelection = async (lines: ReturnType<typeof events>, allowShrink: boolean) => {
    const run = await beginRun(db.pool, { source: 'events', clock, forceFull: true, allowShrink, events: [] });
    await db.pool.query(`update mixpanel_sync.sync_runs set options = options || '{"events": []}' where id = $1`, [run.id]);
    await stageRecords(db.pool, 'events', run.id, lines);
    return finishRun(db.pool, run.id);
  };
  const storedNames = async () =>
    (
      await db.pool.query<{ event_name: string; n: string }>(
        'select event_name, sum(event_count)::text as n from mixpanel_sync.events_daily group by 1 order by 1',
      )
    ).rows;

  it('REPLACE replaces every name of its window', async () => {
    expect(await fullRunWithEmptySelection([...events('open', 6), ...events('buy', 4)], false)).toMatchObject({ status: 'succeeded' });
    const run = await fullRunWithEmptySelection(events('open', 6), true);
    expect(run).toMatchObject({ status: 'succeeded', applied: '6', not_selected: '0' });
    expect(await storedNames()).toEqual([{ event_name: 'open', n: '6' }]);
  });

  it('the REPLACE guard weighs every name (MP001 on a day it would shrink)', async () => {
    const saved = await readSetting(db.pool, 'events.replace_guard_min_events');
    await writeSetting(db.pool, 'events.replace_guard_min_events', '5');
    try {
      expect(await fullRunWithEmptySelection([...events('open', 3), ...events('buy', 60)], false)).toMatchObject({ status: 'succeeded' });
      // the message names a selection only when there is one (kills `> 0` -> `>= 0` / `and` -> `or` in its `names`)
      await expect(fullRunWithEmptySelection(events('open', 3), false)).rejects.toMatchObject({
        code: 'MP001',
        message: expect.not.stringContaining("run's selection"),
      });
    } finally {
      await writeSetting(db.pool, 'events.replace_guard_min_events', saved);
    }
  });
});
