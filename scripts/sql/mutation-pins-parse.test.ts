// Pins of the parsing functions (parse_staged_lines, parse_new_staged_events) for mutants the mutation run of issue 15
// (npm run mutate) found surviving. Each test names the mutants it kills ("killed: <operator> line <n>: <change>", as
// npm run mutate prints them); each was seen failing with its mutant applied (npm run mutate -- --only <fn> --match
// <key> --proofs scripts/sql/mutation-pins-parse.test.ts, which writes the mutant into a clone database with create or
// replace) and passes on main. Expectations are written out from the lines each test stages.
import { beforeEach, describe, expect, it } from 'vitest';
import { syncTestDatabase } from './run-fixtures.ts';
import { beginRun, lastStagedLineId, parseNewStagedLines, parseStagedChunk, stageLines, writeSetting, type SyncRun } from './sync-api.ts';

const db = await syncTestDatabase({ dropPartitions: false });
beforeEach(async () => {
  await writeSetting(db.pool, 'events.store_raw', 'off');
});

const clock = '2024-03-10T12:00:00Z';
const second = Date.UTC(2024, 2, 9, 10) / 1000;
const event = (user: string, props: Record<string, unknown> = {}, name = 'open') =>
  JSON.stringify({ event: name, properties: { distinct_id: user, time: second, ...props } });
const run = () => beginRun(db.pool, { source: 'events', clock, forceFull: true });

interface Parsed {
  line_id: string;
  distinct_id: string | null;
  line_no: string | null;
  reject_reason: string | null;
  event_key: string | null;
  legacy_key: string | null;
  processing_time: Date | null;
  lateness_ms: string | null;
  processing_time_ms: string | null;
}
/** The run's staged lines with what parsing made of them (null columns for a line not parsed). */
const parsed = async (r: SyncRun) =>
  (
    await db.pool.query<Parsed & { parsed: boolean }>(
      `select s.line_id::text, s.line_no::text, e.line_id is not null as parsed, e.distinct_id, e.reject_reason,
         e.event_key::text, e.legacy_key::text, e.processing_time, e.lateness_ms::text, e.processing_time_ms::text
       from mixpanel_sync.staged_events s left join mixpanel_sync.run_events e on e.run_id = s.run_id and e.line_id = s.line_id
       where s.run_id = $1 order by s.line_id`,
      [r.id],
    )
  ).rows;
/** Lines staged with a number of their own (as the loader numbers them): line_no given. */
const stageNumbered = (r: SyncRun, lines: [string, number][]) =>
  db.pool.query(
    `insert into mixpanel_sync.staged_events (run_id, line, line_no) select $1, l.line, l.no from unnest($2::text[], $3::bigint[]) with ordinality l (line, no, n) order by l.n`,
    [r.id, lines.map((l) => l[0]), lines.map((l) => l[1])],
  );
const parseOnly = async (r: SyncRun, upTo: string) =>
  Number((await db.pool.query<{ n: string }>('select mixpanel_sync.parse_new_staged_events($1, $2)::text as n', [r.id, upTo])).rows[0]!.n);
const parseAllLeft = async (r: SyncRun) =>
  Number(
    (await db.pool.query<{ n: string }>('select mixpanel_sync.parse_staged_lines($1, only_new => false)::text as n', [r.id])).rows[0]!.n,
  );

describe('parse_staged_lines: which lines a call numbers and parses', () => {
  it('a chunk numbers unnumbered lines only when it holds one, and then numbers them', async () => {
    // killed: relational line 21 (s.line_id >= after), and-or line 21 (#1, #2), drop-conjunct line 21 (s.line_id > after,
    // s.line_no is null), and-or line 22, drop-conjunct line 22 and swap-coalesce line 22 (no upper bound): the chunk
    // (after, up_to], all of whose lines are numbered, numbered the run's other lines
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('u1')]);
    const first = await lastStagedLineId(db.pool, r.id);
    await stageNumbered(r, [[event('u2'), 7]]);
    const second = await lastStagedLineId(db.pool, r.id);
    await stageLines(db.pool, 'events', r.id, [event('u3')]);
    expect(await parseStagedChunk(db.pool, r.id, first, second)).toBe(1);
    expect((await parsed(r)).map((p) => [p.line_no, p.parsed])).toEqual([
      [null, false],
      ['7', true],
      [null, false],
    ]);
    // killed: relational line 22 (s.line_id < up_to) and and-or line 19 (after is null and exists …): a chunk of one
    // unnumbered line was parsed unnumbered (its reject had no line number)
    const third = await lastStagedLineId(db.pool, r.id);
    expect(await parseStagedChunk(db.pool, r.id, second, third)).toBe(1);
    expect((await parsed(r)).map((p) => p.line_no)).toEqual(['8', '7', '9']);
  });

  it('only_new => false parses every line not parsed yet, and only those', async () => {
    // killed (parse_new_staged_events): and-or line 119 #2 ((after_line_id is not null and …): nothing parsed)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('u1'), event('u2')]);
    const first = await lastStagedLineId(db.pool, r.id);
    await stageLines(db.pool, 'events', r.id, [event('u3'), event('u4'), event('u5')]);
    expect(await parseStagedChunk(db.pool, r.id, first, await lastStagedLineId(db.pool, r.id))).toBe(3);
    expect(await parseAllLeft(r)).toBe(2);
    expect((await parsed(r)).every((p) => p.parsed)).toBe(true);
    expect(await parseAllLeft(r)).toBe(0);
  });
});

describe('parse_staged_lines: only_new takes the lines after the last parsed one', () => {
  it('a second call parses just the lines staged since', async () => {
    // killed: min-max line 15 (after the first parsed line: parsed lines parsed again, duplicate key)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('u1'), event('u2'), event('u3')]);
    expect(await parseNewStagedLines(db.pool, r.id)).toBe(3);
    await stageLines(db.pool, 'events', r.id, [event('u4'), event('u5')]);
    expect(await parseNewStagedLines(db.pool, r.id)).toBe(2);
  });

  it('on its last resort (line by line), only_new => false parses each line not parsed yet once', async () => {
    // killed: and-or line 52 #2 ((after is not null and …): nothing parsed), drop-conjunct line 52 (a parsed line
    // parsed again: duplicate key). A zone no time can be read in makes both set-based paths raise (as in edge-pins).
    const r = await run();
    await db.pool.query(`update mixpanel_sync.sync_runs set project_timezone = 'Pin/No_Such_Zone' where id = $1`, [r.id]);
    await stageLines(db.pool, 'events', r.id, [event('a')]);
    const first = await lastStagedLineId(db.pool, r.id);
    await stageLines(db.pool, 'events', r.id, [JSON.stringify({ event: 'open', properties: { distinct_id: 'b' } }), event('c')]);
    expect(await parseStagedChunk(db.pool, r.id, '0', first)).toBe(1);
    expect(await parseAllLeft(r)).toBe(2);
    // a line that raises is rejected with the error (not read: no distinct_id), the line without a time as usual
    expect((await parsed(r)).map((p) => [p.parsed, p.reject_reason?.slice(0, 18)])).toEqual([
      [true, 'could not be read:'],
      [true, 'missing properties'],
      [true, 'could not be read:'],
    ]);
    expect(await parseAllLeft(r)).toBe(0);
  });
});

describe('parse_new_staged_events: the range of lines', () => {
  it('chunks (after, up_to] parse exactly their lines, in any order', async () => {
    // killed: relational line 115 (<), and-or lines 114, 115 and 119 #1, drop-conjunct lines 114 and 115, swap-coalesce
    // lines 114 and 115: a chunk parsed fewer lines, or the other chunk's too
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('a1'), event('a2'), event('a3')]);
    const a = await lastStagedLineId(db.pool, r.id);
    await stageLines(db.pool, 'events', r.id, [event('b1'), event('b2')]);
    const b = await lastStagedLineId(db.pool, r.id);
    await stageLines(db.pool, 'events', r.id, [event('c1')]);
    expect(await parseStagedChunk(db.pool, r.id, a, b)).toBe(2);
    expect((await parsed(r)).map((p) => p.distinct_id)).toEqual([null, null, null, 'b1', 'b2', null]);
    expect(await parseStagedChunk(db.pool, r.id, '0', a)).toBe(3);
    expect((await parsed(r)).map((p) => p.distinct_id)).toEqual(['a1', 'a2', 'a3', 'b1', 'b2', null]);
  });

  it('up_to_line_id alone parses just that line, and nothing when it is parsed already', async () => {
    // killed: plus-minus line 114 (up_to_line_id + 1: nothing parsed), relational line 114 (>=: the line before it
    // too); drop-conjunct line 119 (a parsed line parsed again: duplicate key)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('u1'), event('u2'), event('u3')]);
    const ids = (await parsed(r)).map((p) => p.line_id);
    expect(await parseOnly(r, ids[1]!)).toBe(1);
    expect((await parsed(r)).map((p) => p.distinct_id)).toEqual([null, 'u2', null]);
    expect(await parseOnly(r, ids[1]!)).toBe(0);
    expect(await parseNewStagedLines(db.pool, r.id)).toBe(1);
  });
});

describe('parse_new_staged_events: what a line becomes', () => {
  it('an mp_processing_time_ms of 1e14 or more, or of 0, is no processing time (raw storage on)', async () => {
    // killed: relational lines 35 and 38 (processing_ms <= 1e14: processing_time and lateness_ms of 1e14),
    // relational line 47 (> 0 -> >= 0, < 1e14 -> <= 1e14: processing_time_ms 0 or 1e14 in raw)
    await writeSetting(db.pool, 'events.store_raw', 'on');
    const r = await run();
    const ms = second * 1000;
    await stageLines(db.pool, 'events', r.id, [
      event('huge', { mp_processing_time_ms: 1e14 }),
      event('zero', { mp_processing_time_ms: 0 }),
      event('fine', { mp_processing_time_ms: ms + 2500 }),
    ]);
    await parseNewStagedLines(db.pool, r.id);
    const rows = await parsed(r);
    expect(rows.map((p) => [p.distinct_id, p.processing_time === null, p.lateness_ms, p.processing_time_ms])).toEqual([
      ['huge', true, null, null],
      ['zero', true, null, null],
      ['fine', false, '2500', String(ms + 2500)],
    ]);
  });

  it('raw processing_time_ms only with raw storage on and for a usable line', async () => {
    // killed: and-or line 47 #2 (… and processing_ms > 0 or processing_ms < 1e14: set with raw off, and for a reject)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [event('off', { mp_processing_time_ms: 5000 })]);
    await parseNewStagedLines(db.pool, r.id);
    await writeSetting(db.pool, 'events.store_raw', 'on');
    await stageLines(db.pool, 'events', r.id, [event('rejected', { mp_processing_time_ms: 5000, time: 'noon' })]);
    await parseNewStagedLines(db.pool, r.id);
    expect((await parsed(r)).map((p) => [p.reject_reason === null, p.processing_time_ms])).toEqual([
      [true, null],
      [false, null],
    ]);
  });

  it('a time of exactly 1e11 is milliseconds, for the lateness too', async () => {
    // killed: relational line 85 (time_raw > 1e11: 1e11 read as seconds for lateness_ms)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [
      JSON.stringify({ event: 'open', properties: { distinct_id: 'u1', time: 1e11, mp_processing_time_ms: 1e11 + 5000 } }),
    ]);
    await parseNewStagedLines(db.pool, r.id);
    expect((await parsed(r)).map((p) => [p.reject_reason, p.lateness_ms])).toEqual([[null, '5000']]);
  });

  it('reject and skip reasons: an absent event, distinct_id or time, bad JSON; one sync_rejects row per rejected line', async () => {
    // killed: distinct-ne lines 62, 66 and 70 (an absent key read as one of the wrong type), and-or line 54 (an absent
    // distinct_id not no_user), swap-coalesce line 60 (bad JSON said 'not a JSON object'), and-or line 135 (a reject
    // joined to every staged line of the run)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [
      JSON.stringify({ properties: { distinct_id: 'u1', time: second } }),
      JSON.stringify({ event: 'open', properties: { time: second } }),
      JSON.stringify({ event: 'open', properties: { distinct_id: 'u3' } }),
      '{"event": "open", ',
      event('u5'),
    ]);
    await parseNewStagedLines(db.pool, r.id);
    const { rows } = await db.pool.query<{ reject_reason: string | null; skip_reason: string | null }>(
      'select reject_reason, skip_reason from mixpanel_sync.run_events where run_id = $1 order by line_id',
      [r.id],
    );
    expect(rows.map((p) => [p.reject_reason?.slice(0, 23) ?? null, p.skip_reason])).toEqual([
      ['missing event name', null],
      [null, 'no_user'],
      ['missing properties.time', null],
      ['not valid JSON: invalid', null],
      [null, null],
    ]);
    const rejects = await db.pool.query<{ line_no: string }>(
      'select line_no::text from mixpanel_sync.sync_rejects where run_id = $1 order by line_no',
      [r.id],
    );
    expect(rejects.rows.map((x) => x.line_no)).toEqual(['1', '3', '4']);
  });

  it('a selection run: a selected name is not skipped; raw columns of a usable line are stored (raw storage on)', async () => {
    // killed: and-or line 53 (every event of a selection run not_selected), distinct-ne lines 42 and 44
    // (skip_reason <> 'not_selected' is null for a usable line: properties and insert_id not stored)
    await writeSetting(db.pool, 'events.store_raw', 'on');
    const r = await beginRun(db.pool, { source: 'events', clock, forceFull: true, events: ['open'] });
    await stageLines(db.pool, 'events', r.id, [event('u1', { $insert_id: 'i-1' }), event('u2', {}, 'other')]);
    await parseNewStagedLines(db.pool, r.id);
    const { rows } = await db.pool.query<{ skip_reason: string | null; insert_id: string | null; has_properties: boolean }>(
      'select skip_reason, insert_id, properties is not null as has_properties from mixpanel_sync.run_events where run_id = $1 order by line_id',
      [r.id],
    );
    expect(rows).toEqual([
      { skip_reason: null, insert_id: 'i-1', has_properties: true },
      { skip_reason: 'not_selected', insert_id: null, has_properties: false },
    ]);
  });

  it('no event key for a line without a time or a name; no legacy key while the legacy ledger is empty', async () => {
    // killed: and-or line 27 (event_time is not null or event_name is not null), and-or line 29 #1 and #2 (a legacy
    // key computed with no legacy ledger rows, or for a line without a time)
    const r = await run();
    await stageLines(db.pool, 'events', r.id, [
      JSON.stringify({ event: 'open', properties: { distinct_id: 'no-time' } }),
      JSON.stringify({ properties: { distinct_id: 'no-name', time: second } }),
      event('fine'),
    ]);
    await parseNewStagedLines(db.pool, r.id);
    expect((await parsed(r)).map((p) => [p.distinct_id, p.reject_reason !== null, p.event_key !== null, p.legacy_key])).toEqual([
      ['no-time', true, false, null],
      ['no-name', true, false, null],
      ['fine', false, true, null],
    ]);
  });
});

// Seen failing: npm run mutate wrote each of these mutants into a clone database (create or replace) and this file was
// the proof that failed on it (npm run mutate -- --proofs this file, or the mapped proofs with this file first among
// the vitest ones); each passes on main. Keys as in scripts/mutation/equivalent-mutants.json (function|operator|line|n).
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and (after_line_id is not null or s.line_id not in (|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and (after_line_id is not null or s.line_id not in (|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and k.processing_ms > 0 and k.processing_ms < 1e14|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and k.processing_ms > 0 and k.processing_ms < 1e14|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when k.event_time is not null and k.event_name is not null then|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when k.processing_ms > 0 and k.processing_ms < 1e14|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when legacy and k.event_time is not null and k.event_name is not null then|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when legacy and k.event_time is not null and k.event_name is not null then|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|5
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|6
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|when selection is not null and not (r.event_name = any (selection)) then 'not_selected'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|when x.distinct_id is null and jsonb_typeof(x.p_distinct_id) <> 'null'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|when x.event_name is null and jsonb_typeof(x.d_event) <> 'null' then 'event name is not a string'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|when x.event_name is null or x.event_name = '' then 'missing event name'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|and-or|when x.time_raw is null and jsonb_typeof(x.p_time) <> 'null' then 'properties.time is not a number'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|distinct-ne|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|distinct-ne|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|distinct-ne|case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'|3
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|drop-conjunct|and (after_line_id is not null or s.line_id not in (|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|drop-conjunct|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|drop-conjunct|and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|plus-minus|and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|plus-minus|then (k.processing_ms - k.time_seconds * 1000)::bigint end,|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|and k.processing_ms > 0 and k.processing_ms < 1e14|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|and k.processing_ms > 0 and k.processing_ms < 1e14|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|case when k.processing_ms > 0 and k.processing_ms < 1e14|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|case when k.processing_ms > 0 and k.processing_ms < 1e14|2
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|relational|case when v.time_raw >= 1e11 then v.time_raw / 1000 else v.time_raw end as time_seconds|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|swap-coalesce|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|swap-coalesce|and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|swap-coalesce|coalesce(jsonb_typeof(j.doc -> 'properties') = 'object', false) as props_is_object|1
// killed: mixpanel_sync.parse_new_staged_events(bigint,bigint,bigint)|swap-coalesce|when x.doc is null then coalesce(mixpanel_sync.json_problem(x.line), 'not a JSON object')|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|and (after is not null or s.line_id not in (|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|and (after is not null or s.line_id not in (|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|and s.line_id > coalesce(after, 0)|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|if after is null or exists (|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|where s.run_id = parse_staged_lines.run_id and s.line_id = line.line_id;|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|and-or|where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|and (after is not null or s.line_id not in (|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|where s.run_id = parse_staged_lines.run_id and s.line_id = line.line_id;|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|drop-conjunct|where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null|3
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|plus-minus|parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|plus-minus|parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|plus-minus|parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);|3
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|plus-minus|parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);|4
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|relational|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|relational|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|2
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|relational|where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|swap-coalesce|(select max(e.line_id) from mixpanel_sync.run_events e where e.run_id = parse_staged_lines.run_id), 0)|1
// killed: mixpanel_sync.parse_staged_lines(bigint,boolean,bigint,bigint)|swap-coalesce|and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)|1
