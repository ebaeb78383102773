// The one framing rule end to end: the same bytes give the same run from a file, from a stream (stdin) and from the
// Export API of a fake Mixpanel on 127.0.0.1; the framing counts are recorded on the run; profiles are staged from
// bytes (a page nested 10,000 deep does not crash Node) and a profile with invalid UTF-8 is rejected, not altered.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { CLOCK, eventLines, failure, resetEvents } from '../fixtures/test-support.ts';
import { syncProfiles } from './profiles-sync.ts';
import { syncEvents } from './events-sync.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'framing-sync-'));
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel({ chunkSize: 13 });
});
afterAll(async () => {
  await fake.close();
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});
beforeEach(async () => {
  await resetEvents(db.pool);
});

const file = (name: string, content: Buffer | string) => {
  const at = path.join(dir, name);
  writeFileSync(at, content);
  return at;
};
const framing = async (runId: number) =>
  (
    await db.pool.query<{ framing: Record<string, number> }>(
      "select options->'framing' as framing from mixpanel_sync.sync_runs where id = $1",
      [runId],
    )
  ).rows[0]!.framing;
const rejects = async (runId: number) =>
  (
    await db.pool.query<{ line_no: string; reason: string }>(
      'select line_no::text, reason from mixpanel_sync.sync_rejects where run_id = $1 order by line_no',
      [runId],
    )
  ).rows.map((r) => [Number(r.line_no), r.reason]);

const good = eventLines(6);
// one good event split across two lines by a stray newline inside its event name
const splitLine = good[5]!.replace(/"(Page View|Sign Up)"/, (name) => name.replace(' ', '\n'));
const hostile = Buffer.concat([
  Buffer.from('\ufeff'),
  Buffer.from(`${good.slice(0, 3).join('\n')}\n\n`),
  Buffer.from('{"event":"bad","properties":{"x":"'),
  Buffer.from([0xff]),
  Buffer.from(`"}}\n${good[3]}\n${good[4]}\n${good[5]}\n`),
]);

describe('one framing for files, streams and the Export API', () => {
  it('the same bytes give the same run on every path; counts recorded on the file run', async () => {
    // Protection: the shared framing in copy-into-staging.ts; with the loader's framing bypassed (raw lines staged),
    // the BOM cost the first event and COPY failed the run on the 0xff byte (seen).
    const results = [];
    for (const input of ['file', 'stream', 'api'] as const) {
      await resetEvents(db.pool);
      if (input === 'api') fake.options.exportSource = () => [hostile];
      const summary = await syncEvents({
        pool: db.pool,
        clock: CLOCK,
        ...(input === 'file'
          ? { input: file('hostile.jsonl', hostile) }
          : input === 'stream'
            ? { input: Readable.from([hostile]) }
            : { mixpanel: fake.settings() }),
      });
      results.push([input, summary.status, summary.received, summary.applied, summary.rejected]);
      const reasons = (await rejects(summary.run_id)).map(([, reason]) => reason);
      expect(reasons, input).toEqual([expect.stringContaining('invalid UTF-8 at byte 35')]);
      if (input === 'file') {
        expect(await rejects(summary.run_id)).toEqual([[5, expect.any(String)]]);
        expect(await framing(summary.run_id)).toMatchObject({ bom_stripped: 1, blank_lines: 1, invalid_utf8: 1, records: 7 });
      }
      // the Export client frames its answers first: what it skipped is in the run's counts all the same
      expect(await framing(summary.run_id), input).toMatchObject({ blank_lines: 1, invalid_utf8: 1 });
    }
    fake.options.exportSource = null;
    expect(results).toEqual([
      ['file', 'succeeded', 7, 6, 1],
      ['stream', 'succeeded', 7, 6, 1],
      ['api', 'succeeded', 7, 6, 1],
    ]);
  });

  it('rejoins a record split across lines from a file, as the Export API path does', async () => {
    // Protection: the rejoin rule in input-framing.ts; with it only in the Export client (as before) the file gave
    // 2 rejects for this record (seen).
    const summary = await syncEvents({
      pool: db.pool,
      clock: CLOCK,
      input: file('split.jsonl', `${good.slice(0, 5).join('\n')}\n${splitLine}\n`),
    });
    expect(summary).toMatchObject({ status: 'succeeded', received: 6, applied: 6, rejected: 0 });
    expect(await framing(summary.run_id)).toMatchObject({ rejoined_records: 1 });
  });

  it('reads a file holding one JSON array of events as its elements', async () => {
    // Protection: array mode in input-framing.ts; without it the array was one reject, "not a JSON object" (seen).
    const summary = await syncEvents({
      pool: db.pool,
      clock: CLOCK,
      input: file(
        'array.json',
        JSON.stringify(
          good.map((l) => JSON.parse(l)),
          null,
          2,
        ),
      ),
    });
    expect(summary).toMatchObject({ status: 'succeeded', received: 6, applied: 6, rejected: 0 });
    expect(await framing(summary.run_id)).toMatchObject({ array_elements: 6 });
  });

  it('a saved export ending in the terminated-early marker fails the run as incomplete (MP003), from a file too', async () => {
    const error = await failure(
      syncEvents({ pool: db.pool, clock: CLOCK, full: true, input: file('cut.jsonl', `${good.join('\n')}\nterminated early\n`) }),
    );
    expect(error.code).toBe('MP003');
    expect(error.summary).toMatchObject({ status: 'failed' });
  });

  it('an over-long line is rejected with its reason and the rest of the file applies', async () => {
    const long = `{"event":"big","properties":{"x":"${'x'.repeat(1 << 20)}"}}`;
    const summary = await syncEvents({ pool: db.pool, clock: CLOCK, input: file('long.jsonl', `${good[0]}\n${long}\n${good[1]}\n`) });
    // the 64 MiB limit is a named constant; a 1 MiB line passes it, so this is a good event
    expect(summary).toMatchObject({ status: 'succeeded', received: 3, rejected: 1 });
  });
});

describe('profiles are staged from bytes', () => {
  it('an Engage page holding a profile nested 10,000 deep does not crash Node; the other profiles apply', async () => {
    // Protection: pages split by pageElements (no JSON.parse/JSON.stringify in Node); with the old profileLines
    // (JSON.stringify of each parsed profile) this threw "Maximum call stack size exceeded" (seen).
    const deep = `${'['.repeat(10000)}${']'.repeat(10000)}`;
    const page = `{"page":0,"page_size":1000,"session_id":"s","status":"ok","total":2,"results":[{"$distinct_id":"deep","$properties":{"d":${deep}}},{"$distinct_id":"fine","$properties":{"$email":"f@example.com"}}]}`;
    const summary = await syncProfiles({ pool: db.pool, input: file('deep-page.json', `${page}\n`) });
    expect(summary.status).toBe('succeeded');
    expect(summary.received).toBe(2);
    const { rows } = await db.pool.query("select distinct_id from mixpanel_sync.subscriber_properties where distinct_id = 'fine'");
    expect(rows).toHaveLength(1);
  });

  it('a profile with invalid UTF-8 is rejected with the reason, never stored altered', async () => {
    const bytes = Buffer.concat([
      Buffer.from('{"$distinct_id":"ok","$properties":{"$name":"A"}}\n{"$distinct_id":"bad","$properties":{"$name":"'),
      Buffer.from([0xc3, 0x28]),
      Buffer.from('"}}\n'),
    ]);
    const summary = await syncProfiles({ pool: db.pool, input: file('bad-profiles.jsonl', bytes) });
    expect(summary).toMatchObject({ status: 'succeeded', received: 2, rejected: 1 });
    const { rows } = await db.pool.query("select distinct_id from mixpanel_sync.subscriber_properties where distinct_id = 'bad'");
    expect(rows).toHaveLength(0);
    expect(await rejects(summary.run_id)).toEqual([[2, expect.stringContaining('invalid UTF-8 at byte')]]);
  });
});
