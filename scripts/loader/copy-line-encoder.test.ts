import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createCopyLineEncoder } from './copy-line-encoder.ts';

function encode(input: Buffer, chunkSize: number, options: { maxLineBytes?: number } = {}) {
  const encoder = createCopyLineEncoder({ prefix: '42\t', ...options });
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += chunkSize) {
    const rows = encoder.push(input.subarray(i, i + chunkSize));
    if (rows) out.push(rows);
  }
  const last = encoder.end();
  if (last) out.push(last);
  return { bytes: Buffer.concat(out), stats: encoder.stats };
}

/** COPY text format, decoded the way PostgreSQL reads it (a raw tab ends a column, a raw CR is an error): the reference the encoder must invert. */
function decodeCopyText(bytes: Buffer): Array<[string, Buffer]> {
  const rows: Array<[string, Buffer]> = [];
  let start = 0;
  for (let nl = bytes.indexOf(0x0a); nl >= 0; nl = bytes.indexOf(0x0a, start)) {
    const row = bytes.subarray(start, nl);
    const tab = row.indexOf(0x09);
    const field = row.subarray(tab + 1);
    const decoded: number[] = [];
    expect(field.includes(0x09) || field.includes(0x0d)).toBe(false);
    for (let i = 0; i < field.length; i++) {
      if (field[i] !== 0x5c) {
        decoded.push(field[i]!);
        continue;
      }
      const next = String.fromCharCode(field[++i]!);
      decoded.push({ '\\': 0x5c, t: 0x09, r: 0x0d, n: 0x0a }[next] ?? Number.NaN);
    }
    rows.push([row.subarray(0, tab).toString(), Buffer.from(decoded)]);
    start = nl + 1;
  }
  expect(start).toBe(bytes.length);
  return rows;
}

const nonBlank = (line: Buffer) => !/^[ \t\r]*$/.test(line.toString('latin1'));

describe('createCopyLineEncoder', () => {
  it('prefixes each line and escapes backslash, tab and CR only', () => {
    const input = Buffer.from('{"a":"x\\\\y"}\n{"b":"t\tab"}\r\n{"c":"é ☕ 東京"}\n');
    const { bytes, stats } = encode(input, input.length);
    expect(bytes.toString()).toBe('42\t{"a":"x\\\\\\\\y"}\n42\t{"b":"t\\tab"}\\r\n42\t{"c":"é ☕ 東京"}\n');
    expect(stats).toEqual({ rows: 3, blankLines: 0 });
  });

  it('skips blank and whitespace-only lines, keeps a last line without newline', () => {
    const { bytes, stats } = encode(Buffer.from('\n{"a":1}\n\r\n  \t \n\n{"b":2}'), 3);
    expect(bytes.toString()).toBe('42\t{"a":1}\n42\t{"b":2}\n');
    expect(stats).toEqual({ rows: 2, blankLines: 4 });
  });

  it('round-trips any bytes through COPY text decoding, whatever the chunking', () => {
    const byte = fc.constantFrom(0x5c, 0x09, 0x0d, 0x0a, 0x20, 0x7b, 0x61, 0xc3, 0xa9, 0x22);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.array(byte, { maxLength: 60 }), fc.integer({ min: 1, max: 64 }), (random, special, chunkSize) => {
        const input = Buffer.concat([Buffer.from(random), Buffer.from(special)]);
        const expected = input
          .toString('latin1')
          .split('\n')
          .map((line) => Buffer.from(line, 'latin1'))
          .filter(nonBlank);
        const rows = decodeCopyText(encode(input, chunkSize).bytes);
        expect(rows.map(([prefix]) => prefix)).toEqual(expected.map(() => '42'));
        expect(rows.map(([, line]) => line.toString('hex'))).toEqual(expected.map((line) => line.toString('hex')));
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a line longer than the limit, with its line number, even when it spans chunks', () => {
    const input = Buffer.from(`{"a":1}\n${'x'.repeat(100)}\n`);
    expect(() => encode(input, 1000, { maxLineBytes: 50 })).toThrow(/input line 2 .*longer than the 50-byte limit/);
    expect(() => encode(input, 7, { maxLineBytes: 50 })).toThrow(/input line 2 .*longer than the 50-byte limit/);
  });
});
