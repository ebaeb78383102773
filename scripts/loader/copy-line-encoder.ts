// Turns a byte stream of lines (JSONL) into rows of COPY text format without parsing them:
// each non-blank line becomes `<prefix><line escaped>\n`, where the escaping is the only change
// (backslash → \\, tab → \t, CR → \r; a line holds no LF). Blank and whitespace-only lines are
// skipped. Work per chunk: one indexOf per newline and per special byte, one copy of the data.
import { Transform, type TransformCallback } from 'node:stream';

const NL = 0x0a;
const CR = 0x0d;
const TAB = 0x09;
const SPACE = 0x20;
const BACKSLASH = 0x5c;
const ESCAPES = new Map<number, Buffer>([
  [BACKSLASH, Buffer.from('\\\\')],
  [TAB, Buffer.from('\\t')],
  [CR, Buffer.from('\\r')],
]);
const NEWLINE = Buffer.from('\n');

export const DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024;

export interface LineEncoderStats {
  /** Rows produced (non-blank lines). */
  rows: number;
  /** Blank or whitespace-only lines skipped. */
  blankLines: number;
}

export interface CopyLineEncoder {
  /** Encodes the whole lines now complete; a trailing partial line is kept for the next chunk. */
  push(chunk: Buffer): Buffer | null;
  /** End of input: encodes a last line that had no newline. */
  end(): Buffer | null;
  readonly stats: LineEncoderStats;
}

function isBlank(bytes: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = bytes[i];
    if (c !== SPACE && c !== TAB && c !== CR) return false;
  }
  return true;
}

/** The next special byte at or after `from` in one buffer; each kind is searched again only once passed, so each byte is scanned once. */
function specialFinder(bytes: Buffer): (from: number) => number {
  const find = (byte: number, from: number): number => {
    const at = bytes.indexOf(byte, from);
    return at < 0 ? Infinity : at;
  };
  let backslash = -1;
  let tab = -1;
  let cr = -1;
  return (from) => {
    if (backslash < from) backslash = find(BACKSLASH, from);
    if (tab < from) tab = find(TAB, from);
    if (cr < from) cr = find(CR, from);
    return Math.min(backslash, tab, cr);
  };
}

export function createCopyLineEncoder(options: { prefix: string; maxLineBytes?: number }): CopyLineEncoder {
  const prefix = Buffer.from(options.prefix);
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const stats: LineEncoderStats = { rows: 0, blankLines: 0 };
  let carry: Buffer[] = [];
  let carryBytes = 0;
  let lineNo = 0;

  function tooLong(line: number, bytes: number): Error {
    return new Error(`input line ${line} is over ${bytes} bytes, longer than the ${maxLineBytes}-byte limit: is the input JSONL (one record per line)?`);
  }

  /** Appends the row for bytes[start, end) (no newline in it) to pieces. */
  function encodeLine(bytes: Buffer, start: number, end: number, nextSpecial: (from: number) => number, pieces: Buffer[]) {
    lineNo++;
    if (end - start > maxLineBytes) throw tooLong(lineNo, end - start);
    if (start === end || (bytes[start] !== 0x7b && isBlank(bytes, start, end))) {
      stats.blankLines++;
      return;
    }
    stats.rows++;
    pieces.push(prefix);
    let from = start;
    for (let at = nextSpecial(from); at < end; at = nextSpecial(from)) {
      if (at > from) pieces.push(bytes.subarray(from, at));
      pieces.push(ESCAPES.get(bytes[at]!)!);
      from = at + 1;
    }
    if (from < end) pieces.push(bytes.subarray(from, end));
    pieces.push(NEWLINE);
  }

  function encodeBuffer(bytes: Buffer, pieces: Buffer[], finalLine: boolean) {
    const nextSpecial = specialFinder(bytes);
    let start = 0;
    for (let nl = bytes.indexOf(NL); nl >= 0; nl = bytes.indexOf(NL, start)) {
      encodeLine(bytes, start, nl, nextSpecial, pieces);
      start = nl + 1;
    }
    if (finalLine && start < bytes.length) encodeLine(bytes, start, bytes.length, nextSpecial, pieces);
    return start;
  }

  function output(pieces: Buffer[]): Buffer | null {
    return pieces.length === 0 ? null : Buffer.concat(pieces);
  }

  return {
    stats,
    push(chunk) {
      const pieces: Buffer[] = [];
      let bytes = chunk;
      if (carryBytes > 0) {
        const nl = chunk.indexOf(NL);
        if (nl < 0) {
          carry.push(chunk);
          carryBytes += chunk.length;
          if (carryBytes > maxLineBytes) throw tooLong(lineNo + 1, carryBytes);
          return null;
        }
        // The line that spans chunks gets its own small buffer; the rest is encoded in place.
        const line = Buffer.concat([...carry, chunk.subarray(0, nl)]);
        carry = [];
        carryBytes = 0;
        encodeBuffer(line, pieces, true);
        bytes = chunk.subarray(nl + 1);
      }
      const consumed = encodeBuffer(bytes, pieces, false);
      if (consumed < bytes.length) {
        carry = [bytes.subarray(consumed)];
        carryBytes = bytes.length - consumed;
      }
      return output(pieces);
    },
    end() {
      if (carryBytes === 0) return null;
      const pieces: Buffer[] = [];
      encodeBuffer(Buffer.concat(carry), pieces, true);
      carry = [];
      carryBytes = 0;
      return output(pieces);
    },
  };
}

/** The encoder as a stream: bytes in, COPY text rows out. `stats` fills in as it runs; onRows sees the row count after each chunk. */
export function copyLineEncoderStream(options: {
  prefix: string;
  maxLineBytes?: number;
  onRows?: (rows: number) => void;
}): Transform & { stats: LineEncoderStats } {
  const encoder = createCopyLineEncoder(options);
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        const rows = encoder.push(chunk);
        options.onRows?.(encoder.stats.rows);
        callback(null, rows ?? undefined);
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback: TransformCallback) {
      try {
        callback(null, encoder.end() ?? undefined);
      } catch (error) {
        callback(error as Error);
      }
    },
  });
  return Object.assign(stream, { stats: encoder.stats });
}
