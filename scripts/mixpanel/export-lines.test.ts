// The Export body watcher hands the body on as received (the loader frames it: input-framing.ts) and only learns
// from it what the Export client's retries need. The previous export-lines.ts framed the body itself (blank lines
// dropped, split records rejoined before the loader numbered lines) and threw bad_response on a line over its own
// 32 MiB limit; its API differed, so these tests were not run against it: the protection was seen failing end to end
// in scripts/cli/hostile-corpus-api.test.ts (the previous files restored: "broke after 165 lines were passed on (the
// export has a line longer than 33554432 bytes …)").
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createExportBodyWatcher, endsInsideString, isTerminatedEarlyLine } from './export-lines.ts';
import { isMixpanelError } from './mixpanel-errors.ts';
import { createInputFramer } from '../loader/input-framing.ts';
import { splitLine } from '../fixtures/fake-mixpanel-server.ts';

function run(input: string | Buffer, chunkSize = Infinity, maxRecordBytes?: number) {
  const bytes = typeof input === 'string' ? Buffer.from(input) : input;
  const watcher = createExportBodyWatcher(maxRecordBytes === undefined ? {} : { maxRecordBytes });
  const out: Buffer[] = [];
  const step = chunkSize === Infinity ? Math.max(1, bytes.length) : chunkSize;
  for (let i = 0; i < bytes.length; i += step) out.push(...watcher.push(bytes.subarray(i, i + step)));
  out.push(...watcher.end());
  return { bytes: Buffer.concat(out), text: Buffer.concat(out).toString('utf8'), chunks: out, stats: watcher.stats };
}

/** The records the loader frames from these bytes (text, line number, problem). */
function framed(bytes: Buffer) {
  const framer = createInputFramer();
  return [...framer.push(bytes), ...framer.end()].map((r) => ({ text: r.bytes.toString('utf8'), lineNo: r.lineNo, problem: r.problem }));
}

const event = (i: number, extra = '') =>
  JSON.stringify({
    event: 'Page View',
    properties: {
      time: 1764000000 + i,
      distinct_id: `u${i}`,
      $insert_id: `id${i}`,
      mp_processing_time_ms: 1764000000123 + i * 1000,
      ...(extra ? { note: extra } : {}),
    },
  });

describe('createExportBodyWatcher', () => {
  it('passes clean JSONL through unchanged and counts its records', () => {
    const input = Array.from({ length: 100 }, (_, i) => `${event(i)}\n`).join('');
    const { text, stats } = run(input);
    expect(text).toBe(input);
    expect(stats).toMatchObject({ records: 100, rejoined: 0, blankLines: 0, crLines: 0, strayLines: 0 });
  });

  it('holds bytes until the first record is known, then hands on whole lines', () => {
    const watcher = createExportBodyWatcher();
    expect(watcher.push(Buffer.from(`${event(1)}\n{"event":"Pa`))).toEqual([]); // the first line may still go on
    const next = watcher.push(Buffer.from(`ge View","properties":{}}\n${event(3)}\n${event(4)}`));
    expect(Buffer.concat(next).toString()).toBe(`${event(1)}\n{"event":"Page View","properties":{}}\n${event(3)}\n`);
    // the end: the rest, with the newline the body lacked
    expect(Buffer.concat(watcher.end()).toString()).toBe(`${event(4)}\n`);
  });

  it('hands the body on as received: CR, blank lines and split records stay for the loader, which frames them like a file', () => {
    const line = event(7, 'first line\nsecond line');
    const input = `${event(1)}\r\n\r\n   \n${splitLine(line)}\n\n\t\n${event(3)}`;
    const { text, stats } = run(input, 7);
    expect(text).toBe(`${input}\n`);
    expect(stats).toMatchObject({ records: 3, crLines: 2, blankLines: 4, rejoined: 1 });
    // the loader's records and line numbers are those of the same bytes from a file
    expect(framed(Buffer.from(text))).toEqual(framed(Buffer.from(input)));
    expect(framed(Buffer.from(text)).map((r) => [r.lineNo, JSON.parse(r.text).properties.note ?? null])).toEqual([
      [1, null],
      [4, 'first line\nsecond line'],
      [8, null],
    ]);
  });

  it('an over-long record is no error: it goes on, and the loader stages it as a problem row', () => {
    const long = `{"event":"Big","properties":{"time":1764000000,"distinct_id":"big","blob":"${'x'.repeat(5000)}"}}`;
    const input = `${event(1)}\n${long}\n${event(2)}\n`;
    const { text, stats } = run(input, 1000, 1024);
    expect(text).toBe(input);
    expect(stats.records).toBe(3);
    const framer = createInputFramer({ maxRecordBytes: 1024 });
    const records = [...framer.push(Buffer.from(text)), ...framer.end()];
    expect(records.map((r) => [r.lineNo, r.problem])).toEqual([
      [1, null],
      [2, `line of ${long.length} bytes is longer than the 1024-byte limit`],
      [3, null],
    ]);
  });

  it('passes a stray line on, counted', () => {
    const { text, stats } = run(`${event(1)}\ngarbage here\n${event(2)}\n`);
    expect(text).toBe(`${event(1)}\ngarbage here\n${event(2)}\n`);
    expect(stats.strayLines).toBe(1);
  });

  it("fails with a retryable truncated error on Mixpanel's terminated early marker", () => {
    for (const marker of ['terminated early', 'export terminated early', '[terminated early]']) {
      const watcher = createExportBodyWatcher();
      let error: unknown;
      try {
        watcher.push(Buffer.from(`${event(1)}\n${event(2)}\n${marker}\n`));
        watcher.end();
      } catch (e) {
        error = e;
      }
      expect(isMixpanelError(error) && error.code === 'truncated' && error.retryable).toBe(true);
      expect((error as Error).message).toContain(marker);
    }
  });

  it('fails with truncated when the body stops in the middle of a record', () => {
    const watcher = createExportBodyWatcher();
    watcher.push(Buffer.from(`${event(1)}\n{"event":"A","properties":{"ti`));
    expect(() => watcher.end()).toThrow(/middle of a record/);
  });

  it('recognises the marker strictly', () => {
    expect(isTerminatedEarlyLine('terminated early')).toBe(true);
    expect(isTerminatedEarlyLine('"note":"the export terminated early"}}')).toBe(false);
    expect(endsInsideString(Buffer.from('{"a":"b\\"c'))).toBe(true);
    expect(endsInsideString(Buffer.from('{"a":"b\\\\"'))).toBe(false);
  });

  it('property: any chunking of JSONL with split records, CRLF and blank lines gives back the same bytes', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            note: fc.string({ maxLength: 12, unit: fc.constantFrom('a', 'é', ' ', '\n', '"', '\\', '}', '{"') }),
            split: fc.boolean(),
            crlf: fc.boolean(),
            blank: fc.boolean(),
          }),
          { minLength: 1, maxLength: 25 },
        ),
        fc.integer({ min: 1, max: 300 }),
        (specs, chunkSize) => {
          const records = specs.map((s, i) => event(i, s.note));
          const input = specs
            .map((s, i) => {
              const line = s.split ? splitLine(records[i]!) : records[i]!;
              return `${line}${s.crlf ? '\r\n' : '\n'}${s.blank ? '\n' : ''}`;
            })
            .join('');
          const { text, stats } = run(input, chunkSize);
          expect(text).toBe(input);
          expect(stats.records).toBe(records.length);
          expect(framed(Buffer.from(text)).map((r) => r.text)).toEqual(records);
        },
      ),
      { numRuns: 300 },
    );
  });
});
