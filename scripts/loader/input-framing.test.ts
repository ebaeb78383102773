import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { encodeCopyRows, expandEngagePages } from './copy-line-encoder.ts';
import { createInputFramer, firstInvalidUtf8Byte, pageElements, type FramedRecord } from './input-framing.ts';

function frame(input: Buffer | string, chunkSize = 7, maxRecordBytes?: number) {
  const framer = createInputFramer(maxRecordBytes === undefined ? {} : { maxRecordBytes });
  const bytes = Buffer.isBuffer(input) ? input : Buffer.from(input);
  const records: FramedRecord[] = [];
  for (let i = 0; i < bytes.length; i += chunkSize) records.push(...framer.push(bytes.subarray(i, i + chunkSize)));
  records.push(...framer.end());
  return { records: records.map((r) => [r.lineNo, r.problem, r.bytes.toString('utf8')]), counts: framer.counts };
}

/**
 * COPY's binary rows decoded as PostgreSQL reads them (its documented format: a 16-bit field count, then each field's
 * 32-bit length, -1 for null, and its bytes; bigints 8 bytes big-endian): the reference the encoder must invert. Fields
 * as [run_id, line (hex), problem, line_no].
 */
function decodeCopyBinary(bytes: Buffer): string[][] {
  const rows: string[][] = [];
  let at = 0;
  while (at < bytes.length) {
    const fields = bytes.readInt16BE(at);
    at += 2;
    const row: string[] = [];
    for (let f = 0; f < fields; f++) {
      const length = bytes.readInt32BE(at);
      at += 4;
      if (length === -1) row.push('<null>');
      else {
        const value = bytes.subarray(at, at + length);
        at += length;
        row.push(
          f === 0 || f === 3
            ? length === 8
              ? String(value.readBigInt64BE())
              : `?${length}`
            : f === 1
              ? value.toString('hex')
              : value.toString('utf8'),
        );
      }
    }
    rows.push(row);
  }
  return rows;
}

describe('input framing (one rule for files, stdin and the APIs)', () => {
  it('strips a BOM, skips blank lines, drops CR, numbers records by the line an editor shows', () => {
    // Protection: BOM stripping; without it (the BOM check removed) the first record kept EF BB BF and was rejected (seen).
    const { records, counts } = frame('\ufeff{"event":"a"}\n\n  \t\n{"event":"b"}\r\n{"event":"c"}', 2);
    expect(records).toEqual([
      [1, null, '{"event":"a"}'],
      [4, null, '{"event":"b"}'],
      [5, null, '{"event":"c"}'],
    ]);
    expect(counts).toMatchObject({ bom_stripped: 1, blank_lines: 2, cr_stripped: 1, records: 3 });
  });

  it('rejoins a record split across lines, the same way whatever the chunking', () => {
    // Protection: the rejoin rule; without it (every line a record) this gave 3 records (seen).
    const input = '{"event":"a","properties":{"note":"two\nlines"}}\n{"event":"b",\n"properties":{}}\n';
    for (const chunk of [1, 3, 1000]) {
      const { records, counts } = frame(input, chunk);
      expect(records).toEqual([
        [1, null, '{"event":"a","properties":{"note":"two\\nlines"}}'],
        [3, null, '{"event":"b","properties":{}}'],
      ]);
      expect(counts.rejoined_records).toBe(2);
    }
  });

  it('reads one JSON array as its elements, streaming, then what follows it as lines', () => {
    // Protection: the array splitter; without it the whole array was one record, "not a JSON object" (seen).
    const input = '[{"event":"a","properties":{"s":"],}\\"["}},\n {"event":"b"} , 3, "x,y"]\nterminated early\n';
    for (const chunk of [1, 5, 1000]) {
      const { records, counts } = frame(input, chunk);
      expect(records).toEqual([
        [1, null, '{"event":"a","properties":{"s":"],}\\"["}}'],
        [2, null, '{"event":"b"}'],
        [2, null, '3'],
        [2, null, '"x,y"'],
        [3, null, 'terminated early'],
      ]);
      expect(counts).toMatchObject({ array_elements: 4, terminated_early: 1 });
    }
  });

  it('reads pretty-printed values one after the other, and [terminated early] alone as the marker', () => {
    expect(frame('{\n "a": 1\n}\n{\n "b": [1, {"c": 2}]\n}\n').records).toEqual([
      [1, null, '{\n "a": 1\n}'],
      [4, null, '{\n "b": [1, {"c": 2}]\n}'],
    ]);
    expect(frame('[terminated early]\n', 1)).toMatchObject({ records: [[1, null, '[terminated early]']], counts: { terminated_early: 1 } });
  });

  it('stages invalid UTF-8 and NUL bytes as problems, in recoverable hex, and never stops', () => {
    const input = Buffer.concat([Buffer.from('{"a":"x'), Buffer.from([0xc3, 0x28]), Buffer.from('"}\n{"n":"\0"}\n{"ok":"é"}\n')]);
    const { records, counts } = frame(input, 3);
    expect(records).toEqual([
      [1, 'invalid UTF-8 at byte 8', `\\x${Buffer.from('{"a":"x\xc3("}', 'latin1').toString('hex')}`],
      [2, 'NUL byte at byte 7', `\\x${Buffer.from('{"n":"\0"}').toString('hex')}`],
      [3, null, '{"ok":"é"}'],
    ]);
    expect(counts).toMatchObject({ invalid_utf8: 1, nul_bytes: 1 });
  });

  it('finds the first byte that breaks UTF-8 (overlong forms and surrogates included)', () => {
    expect(firstInvalidUtf8Byte(Buffer.from('aé☕😀'))).toBe(0);
    expect(firstInvalidUtf8Byte(Buffer.from([0x61, 0xc0, 0x80]))).toBe(2);
    expect(firstInvalidUtf8Byte(Buffer.from([0x61, 0x62, 0xed, 0xa0, 0x80]))).toBe(3);
    expect(firstInvalidUtf8Byte(Buffer.from([0xe2, 0x98]))).toBe(1);
    fc.assert(fc.property(fc.string({ unit: 'grapheme' }), (s) => firstInvalidUtf8Byte(Buffer.from(s)) === 0));
  });

  it('streams an over-long line past without holding it, as a problem row with its first 1 KiB, and goes on', () => {
    // Protection: the over-long path; with the old encoder the whole run failed ("longer than the limit", seen).
    const long = 'x'.repeat(5000);
    for (const chunk of [7, 100, 100000]) {
      const { records, counts } = frame(`{"event":"a"}\n${long}\n{"event":"b"}\n[`, chunk, 2048);
      expect(records.map(([line, problem]) => [line, problem])).toEqual([
        [1, null],
        [2, 'line of 5000 bytes is longer than the 2048-byte limit'],
        [3, null],
        [4, null],
      ]);
      expect(records[1]![2]).toBe(`\\x${'78'.repeat(1024)}`);
      expect(counts.overlong_records).toBe(1);
    }
    expect(frame(`[{"a":"${long}"}, {"b":1}]`, 100, 2048).records.map(([l, p]) => [l, p])).toEqual([
      [1, 'line of 5008 bytes is longer than the 2048-byte limit'],
      [1, null],
    ]);
  });

  it('splits an Engage page into its profiles without parsing them (10,000 deep is only bytes)', () => {
    const deep = `${'['.repeat(10000)}${']'.repeat(10000)}`;
    const page = `{"page":0,"results":[{"$distinct_id":"a","$properties":{"d":${deep}}} , {"$distinct_id":"b","$properties":{"s":"],"}}],"total":2}`;
    expect(pageElements(Buffer.from(page))?.map(String)).toEqual([
      `{"$distinct_id":"a","$properties":{"d":${deep}}}`,
      '{"$distinct_id":"b","$properties":{"s":"],"}}',
    ]);
    expect(pageElements(Buffer.from('{"$distinct_id":"r","results":[1]}'))).toBeNull();
    const framed = createInputFramer().push(Buffer.from(`${page}\n{"$distinct_id":"c"}\n`));
    expect(expandEngagePages(framed).map((r) => [r.lineNo, r.bytes.toString().slice(0, 20)])).toEqual([
      [1, '{"$distinct_id":"a",'],
      [1, '{"$distinct_id":"b",'],
    ]);
  });

  it('encodes any bytes as COPY binary rows (run_id, line, problem, line_no) that decode back, whatever the chunking', () => {
    const byte = fc.constantFrom(0x5c, 0x09, 0x0d, 0x0a, 0x20, 0x7b, 0x22, 0x61, 0xc3, 0xa9, 0x00, 0xff);
    fc.assert(
      fc.property(fc.array(byte, { maxLength: 200 }), fc.integer({ min: 1, max: 40 }), (bytes, chunk) => {
        const input = Buffer.from([0x61, ...bytes]); // starts as lines
        const framer = createInputFramer();
        const records: FramedRecord[] = [];
        for (let i = 0; i < input.length; i += chunk) records.push(...framer.push(input.subarray(i, i + chunk)));
        records.push(...framer.end());
        const rows = decodeCopyBinary(encodeCopyRows('42', records) ?? Buffer.alloc(0));
        expect(rows.map((r) => r.length)).toEqual(records.map(() => 4));
        expect(rows).toEqual(records.map((r) => ['42', r.bytes.toString('hex'), r.problem ?? '<null>', String(r.lineNo)]));
      }),
      { numRuns: 300 },
    );
  });
});
