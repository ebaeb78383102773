// Cuts the raw Export body into clean JSONL without parsing JSON on the hot path.
//
// Output: Buffers holding one or more whole records, each ending in "\n"; no blank lines,
// no CR. Most output Buffers are slices of the input chunks (no copy).
//
// The quirks of Mixpanel's export stream, and what is done about them:
// - CRLF line ends: the CR is dropped. Blank (or whitespace-only) lines are dropped; no other
//   line is trimmed.
// - A record broken across lines by a stray newline: a line is the start of a record when it
//   begins with `{"event"` (Mixpanel writes "event" first), or with `{"` after a record that
//   ends in `}`. Any other line continues the record held before it (rejoined) when that record
//   is not finished (does not end in `}`, or, checked only on this rare path, is not valid
//   JSON). The stray newline becomes `\n` (escaped) when it fell inside a JSON string, where a
//   raw newline is invalid JSON and the stored value most likely had one, and nothing otherwise.
//   A line that continues nothing (a stray line) is passed on alone: Postgres rejects it into
//   sync_rejects, it is never dropped silently.
// - `terminated early` (Mixpanel's marker, e.g. "export terminated early" or "[terminated
//   early]", instead of the rest of the data): a `truncated` error (retryable).
// - The body ends in the middle of a record: also `truncated`.
// The cost per line is one indexOf for the newline and a few byte comparisons.
import { mixpanelError } from './mixpanel-errors.ts';

export interface LineStats {
  /** Lines handed out (records, and stray lines passed on alone). */
  records: number;
  /** Records rebuilt from more than one line. */
  rejoined: number;
  /** Blank or whitespace-only lines dropped. */
  blankLines: number;
  /** Lines whose CR was dropped. */
  crLines: number;
  /** Lines that were neither a record nor part of one (passed on alone). */
  strayLines: number;
}

export interface LineJoiner {
  /** Feed a chunk of the body; returns the records now known to be complete. */
  push(chunk: Buffer): Buffer[];
  /** End of body: returns the last record(s); throws `truncated` if the body stopped mid-record. */
  end(): Buffer[];
  readonly stats: LineStats;
}

const NL = 0x0a;
const CR = 0x0d;
const OPEN = 0x7b; // {
const CLOSE = 0x7d; // }
const QUOTE = 0x22; // "
const BACKSLASH = 0x5c;
const SPACE = 0x20;
const TAB = 0x09;
const NEWLINE_BUFFER = Buffer.from('\n');
const ESCAPED_NEWLINE = Buffer.from('\\n');
const EVENT_PREFIX = Buffer.from('{"event"');
const TERMINATED = /^\[?\s*(export\s+)?terminated\s+early\s*\]?\.?$/i;

export const DEFAULT_MAX_RECORD_BYTES = 32 * 1024 * 1024;

/** True when the bytes end inside a JSON string (an odd number of unescaped quotes). */
export function endsInsideString(bytes: Buffer): boolean {
  let inside = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inside) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inside = false;
    } else if (c === QUOTE) {
      inside = true;
    }
  }
  return inside;
}

/** Mixpanel's marker line for an export it could not finish. */
export function isTerminatedEarlyLine(line: string): boolean {
  return line.length < 64 && TERMINATED.test(line.trim());
}

function startsWith(buf: Buffer, start: number, end: number, prefix: Buffer): boolean {
  if (end - start < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (buf[start + i] !== prefix[i]) return false;
  return true;
}

function isJson(bytes: Buffer): boolean {
  try {
    JSON.parse(bytes.toString('utf8'));
    return true;
  } catch {
    return false;
  }
}

export function createLineJoiner(options: { maxRecordBytes?: number } = {}): LineJoiner {
  const maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const stats: LineStats = { records: 0, rejoined: 0, blankLines: 0, crLines: 0, strayLines: 0 };

  // Bytes after the last newline seen: the start of a line still arriving.
  let carry: Buffer | null = null;
  // The record held back until the next line shows whether it is complete: buf[start, end),
  // `end` just past its "\n".
  let heldBuf: Buffer | null = null;
  let heldStart = 0;
  let heldEnd = 0;
  let heldPieces = 1;
  // Output being built for the current push: whole-record runs of one input buffer are merged.
  let out: Buffer[] = [];
  let runBuf: Buffer | null = null;
  let runStart = 0;
  let runEnd = 0;

  function flushRun() {
    if (runBuf !== null) out.push(runBuf.subarray(runStart, runEnd));
    runBuf = null;
  }

  function emitHeld() {
    if (heldBuf === null) return;
    stats.records++;
    if (heldPieces > 1) stats.rejoined++;
    if (heldBuf[heldStart] !== OPEN || heldBuf[heldStart + 1] !== QUOTE) stats.strayLines++;
    if (runBuf === heldBuf && runEnd === heldStart) {
      runEnd = heldEnd;
    } else {
      flushRun();
      runBuf = heldBuf;
      runStart = heldStart;
      runEnd = heldEnd;
    }
    heldBuf = null;
  }

  function hold(buf: Buffer, start: number, end: number) {
    heldBuf = buf;
    heldStart = start;
    heldEnd = end;
    heldPieces = 1;
  }

  function heldContent(): Buffer {
    return heldBuf!.subarray(heldStart, heldEnd - 1);
  }

  /** Append the line buf[start, end) (its "\n" included) to the held record. */
  function rejoin(buf: Buffer, start: number, end: number) {
    const previous = heldContent();
    const glue = endsInsideString(previous) ? ESCAPED_NEWLINE : null;
    const size = previous.length + (glue ? glue.length : 0) + (end - start);
    if (size > maxRecordBytes) {
      // Not a record we can rebuild: pass both on as they are.
      emitHeld();
      hold(buf, start, end);
      return;
    }
    const pieces = heldPieces + 1;
    const joined = Buffer.concat(glue ? [previous, glue, buf.subarray(start, end)] : [previous, buf.subarray(start, end)]);
    hold(joined, 0, joined.length);
    heldPieces = pieces;
  }

  /** One raw line: content buf[start, end), buf[end] is its "\n" (or buf ends there for an owned line). */
  function line(buf: Buffer, start: number, end: number) {
    const s = start;
    let e = end;
    let rebuilt = false;
    if (e > s && buf[e - 1] === CR) {
      e--;
      stats.crLines++;
      rebuilt = true;
    }
    if (e === s) {
      stats.blankLines++;
      return;
    }
    const first = buf[s];
    if (first === SPACE || first === TAB || first === CR) {
      // Whitespace-only lines are dropped; other lines are never trimmed (a fragment of a
      // split record may begin or end with a space that belongs to a string).
      let i = s;
      while (i < e && (buf[i] === SPACE || buf[i] === TAB || buf[i] === CR)) i++;
      if (i === e) {
        stats.blankLines++;
        return;
      }
    }
    // The line's bytes with a single "\n" after them.
    let lineBuf = buf;
    let lineStart = s;
    let lineEnd = e + 1;
    if (rebuilt || buf[e] !== NL) {
      lineBuf = Buffer.concat([buf.subarray(s, e), NEWLINE_BUFFER]);
      lineStart = 0;
      lineEnd = lineBuf.length;
    }
    const startsRecord = first === OPEN && buf[s + 1] === QUOTE;

    if (heldBuf === null) {
      if (!startsRecord && first !== OPEN && isTerminatedEarlyLine(buf.toString('utf8', s, e))) throw terminatedEarly(buf.toString('utf8', s, e));
      hold(lineBuf, lineStart, lineEnd);
      return;
    }
    const heldIsRecord = heldBuf[heldStart] === OPEN && heldBuf[heldStart + 1] === QUOTE;
    const heldClosed = heldBuf[heldEnd - 2] === CLOSE;

    if (startsRecord) {
      if (heldClosed || !heldIsRecord || startsWith(buf, s, e, EVENT_PREFIX)) {
        emitHeld();
        hold(lineBuf, lineStart, lineEnd);
      } else {
        rejoin(lineBuf, lineStart, lineEnd);
      }
      return;
    }
    if (first !== OPEN && isTerminatedEarlyLine(buf.toString('utf8', s, Math.min(e, s + 64)))) {
      throw terminatedEarly(buf.toString('utf8', s, e));
    }
    if (!heldIsRecord || (heldClosed && isJson(heldContent()))) {
      // The held record is complete (or itself stray): this line continues nothing.
      emitHeld();
      hold(lineBuf, lineStart, lineEnd);
      return;
    }
    rejoin(lineBuf, lineStart, lineEnd);
  }

  function terminatedEarly(text: string) {
    return mixpanelError(
      'truncated',
      `Mixpanel ended the export with "${text.trim()}" after ${stats.records} complete records: the export is incomplete.`,
      { retryable: true },
    );
  }

  function take(): Buffer[] {
    flushRun();
    const result = out;
    out = [];
    return result;
  }

  function push(chunk: Buffer): Buffer[] {
    let position = 0;
    if (carry !== null) {
      const newline = chunk.indexOf(NL);
      if (newline === -1) {
        if (carry.length + chunk.length > maxRecordBytes) throw tooLong();
        carry = Buffer.concat([carry, chunk]);
        return take();
      }
      const first = Buffer.concat([carry, chunk.subarray(0, newline + 1)]);
      carry = null;
      line(first, 0, first.length - 1);
      position = newline + 1;
    }
    for (;;) {
      const newline = chunk.indexOf(NL, position);
      if (newline === -1) break;
      line(chunk, position, newline);
      position = newline + 1;
    }
    if (position < chunk.length) {
      if (chunk.length - position > maxRecordBytes) throw tooLong();
      carry = chunk.subarray(position);
    }
    return take();
  }

  function tooLong() {
    return mixpanelError('bad_response', `the export has a line longer than ${maxRecordBytes} bytes: not Mixpanel JSONL.`);
  }

  function end(): Buffer[] {
    if (carry !== null) {
      const last = carry;
      carry = null;
      line(last, 0, last.length);
    }
    if (heldBuf !== null) {
      const heldIsRecord = heldBuf[heldStart] === OPEN && heldBuf[heldStart + 1] === QUOTE;
      const heldClosed = heldBuf[heldEnd - 2] === CLOSE;
      if (heldIsRecord && !heldClosed) {
        const records = stats.records;
        heldBuf = null;
        take();
        throw mixpanelError(
          'truncated',
          `the Mixpanel export stopped in the middle of a record after ${records} complete records: the export is incomplete.`,
          { retryable: true },
        );
      }
      emitHeld();
    }
    return take();
  }

  return { push, end, stats };
}
