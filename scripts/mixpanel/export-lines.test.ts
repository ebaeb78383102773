import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createLineJoiner, endsInsideString, isTerminatedEarlyLine } from './export-lines.ts';
import { isMixpanelError } from './mixpanel-errors.ts';
import { splitLine } from '../fixtures/fake-mixpanel-server.ts';

function run(input: string | Buffer, chunkSize = Infinity) {
  const bytes = typeof input === 'string' ? Buffer.from(input) : input;
  const joiner = createLineJoiner();
  const out: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += chunkSize === Infinity ? bytes.length : chunkSize) {
    out.push(...joiner.push(bytes.subarray(i, chunkSize === Infinity ? bytes.length : i + chunkSize)));
  }
  out.push(...joiner.end());
  return { text: Buffer.concat(out).toString('utf8'), chunks: out, stats: joiner.stats };
}

const event = (i: number, extra = '') =>
  JSON.stringify({ event: 'Page View', properties: { time: 1764000000 + i, distinct_id: `u${i}`, $insert_id: `id${i}`, mp_processing_time_ms: 1764000000123 + i * 1000, ...(extra ? { note: extra } : {}) } });

describe('createLineJoiner', () => {
  it('passes clean JSONL through unchanged, one output buffer per chunk', () => {
    const lines = Array.from({ length: 100 }, (_, i) => event(i));
    const input = Buffer.from(lines.map((l) => `${l}\n`).join(''));
    const joiner = createLineJoiner();
    const out = joiner.push(input);
    // The last line is held until the next line or the end shows it is complete.
    expect(out).toHaveLength(1);
    // (The framing rule now lives in scripts/loader/input-framing.ts; the joiner copies each chunk's records once.)
    const tail = joiner.end();
    expect(Buffer.concat([...out, ...tail]).equals(input)).toBe(true);
    expect(joiner.stats).toMatchObject({ records: 100, rejoined: 0, blankLines: 0, crLines: 0, strayLines: 0 });
  });

  it('gives the same lines whatever the chunking, down to one byte at a time', () => {
    const lines = Array.from({ length: 20 }, (_, i) => event(i, 'ünïcödé ✓'));
    const input = lines.map((l) => `${l}\n`).join('');
    for (const size of [1, 2, 7, 64, 1000]) expect(run(input, size).text).toBe(input);
  });

  it('adds the missing final newline, drops CR and blank or whitespace-only lines', () => {
    const input = `${event(1)}\r\n\r\n   \n${event(2)}\n\n\t\n${event(3)}`;
    const { text, stats } = run(input);
    expect(text).toBe(`${event(1)}\n${event(2)}\n${event(3)}\n`);
    expect(stats).toMatchObject({ records: 3, crLines: 2, blankLines: 4 });
  });

  it('rejoins a record split between two tokens without adding anything', () => {
    const line = event(7);
    const broken = splitLine(line);
    expect(broken).toContain('\n');
    const { text, stats } = run(`${event(6)}\n${broken}\n${event(8)}\n`);
    expect(text).toBe(`${event(6)}\n${line}\n${event(8)}\n`);
    expect(stats.rejoined).toBe(1);
  });

  it('rejoins a record split inside a string with an escaped newline, so the value keeps it', () => {
    const line = event(7, 'first line\nsecond line');
    const broken = splitLine(line); // the escaped \n became a raw newline
    expect(broken.split('\n')).toHaveLength(2);
    const { text } = run(`${broken}\n${event(8)}\n`);
    expect(text).toBe(`${line}\n${event(8)}\n`);
    expect(JSON.parse(text.split('\n')[0]!).properties.note).toBe('first line\nsecond line');
  });

  it('rejoins a record broken into several pieces, even when a piece ends in } or starts with {"', () => {
    const record = '{"event":"A","properties":{"nested":{"a":1},"obj":{"b":"x"},"time":1}}';
    const pieces = '{"event":"A","properties":{"nested":{"a":1}\n,"obj":\n{"b":"x"},"time":1}}\n';
    const { text, stats } = run(`${pieces}${record}\n`, 5);
    expect(text).toBe(`${record}\n${record}\n`);
    expect(stats).toMatchObject({ records: 2, rejoined: 1 });
  });

  it('passes a stray line on alone instead of gluing it to a complete record', () => {
    const { text, stats } = run(`${event(1)}\ngarbage here\n${event(2)}\n`);
    expect(text).toBe(`${event(1)}\ngarbage here\n${event(2)}\n`);
    expect(stats.strayLines).toBe(1);
  });

  it('does not glue a cut-off fragment to the next {"event" record', () => {
    const { text } = run(`{"event":"A","properties":{"time":1\n${event(2)}\n`);
    expect(text).toBe(`{"event":"A","properties":{"time":1\n${event(2)}\n`);
  });

  it('fails with a retryable truncated error on Mixpanel\'s terminated early marker', () => {
    for (const marker of ['terminated early', 'export terminated early', '[terminated early]']) {
      const joiner = createLineJoiner();
      let error: unknown;
      try {
        joiner.push(Buffer.from(`${event(1)}\n${event(2)}\n${marker}\n`));
        joiner.end();
      } catch (e) {
        error = e;
      }
      expect(isMixpanelError(error) && error.code === 'truncated' && error.retryable).toBe(true);
      expect((error as Error).message).toContain(marker);
    }
  });

  it('fails with truncated when the body stops in the middle of a record', () => {
    const joiner = createLineJoiner();
    joiner.push(Buffer.from(`${event(1)}\n{"event":"A","properties":{"ti`));
    expect(() => joiner.end()).toThrow(/middle of a record/);
  });

  it('recognises the marker strictly', () => {
    expect(isTerminatedEarlyLine('terminated early')).toBe(true);
    expect(isTerminatedEarlyLine('"note":"the export terminated early"}}')).toBe(false);
    expect(endsInsideString(Buffer.from('{"a":"b\\"c'))).toBe(true);
    expect(endsInsideString(Buffer.from('{"a":"b\\\\"'))).toBe(false);
  });

  it('property: any chunking of JSONL with split records, CRLF and blank lines gives back the records', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ note: fc.string({ maxLength: 12, unit: fc.constantFrom('a', 'é', ' ', '\n', '"', '\\', '}', '{"') }), split: fc.boolean(), crlf: fc.boolean(), blank: fc.boolean() }), { minLength: 1, maxLength: 25 }),
        fc.integer({ min: 1, max: 300 }),
        (specs, chunkSize) => {
          const records = specs.map((s, i) => event(i, s.note));
          const input = specs
            .map((s, i) => {
              const line = s.split ? splitLine(records[i]!) : records[i]!;
              return `${line}${s.crlf ? '\r\n' : '\n'}${s.blank ? '\n' : ''}`;
            })
            .join('');
          const { text } = run(input, chunkSize);
          expect(text).toBe(records.map((r) => `${r}\n`).join(''));
        },
      ),
      { numRuns: 300 },
    );
  });
});
