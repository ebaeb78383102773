// How input is framed: the ONE rule that turns the loader's input bytes into records, for a file, stdin and the
// Mixpanel Export / Engage APIs alike (README "How input is framed" says the same in prose). Nothing here parses
// JSON on the hot path and nothing is dropped without being counted: every record comes out with the 1-based
// line number an editor shows for its first line, and a `problem` when its bytes cannot be staged as text.
//
// 1. A UTF-8 byte order mark (EF BB BF) at the very start of the input is stripped (counted: bom_stripped).
// 2. The first non-whitespace byte picks the shape of the whole input:
//    - `[`: one JSON array; its elements are the records (counted: array_elements). The array is split by a
//      streaming scanner that tracks strings, escapes and depth, so a big file is never parsed or held whole.
//      Whatever follows the closing `]` is read as lines (rule 3).
//    - `{` alone on its line: pretty-printed JSON values one after the other; each top-level value is a record.
//    - anything else: lines (JSONL), rule 3.
// 3. Lines end at LF; a CR before the LF is dropped. Blank and whitespace-only lines are skipped (counted:
//    blank_lines). A record broken across lines by a stray newline is rejoined (counted: rejoined_records):
//    a line that begins with `{"event"`, `{"$distinct_id"` or `{"results"` always starts a record, and so does a
//    line beginning with `{"` after a record that ends in `}`; any other line continues the record before it when
//    that record is unfinished (does not end in `}`, or, checked only on this rare path, is not valid JSON). The
//    stray newline becomes `\n` when it fell inside a JSON string, and nothing otherwise. A line that continues
//    nothing is a record of its own (SQL rejects it with a reason: it is never dropped).
// 4. Mixpanel's marker for an export it could not finish (`terminated early`, `export terminated early`,
//    `[terminated early]`) on a line of its own is staged as a record and counted (terminated_early): finish_run
//    refuses a run holding it (SQLSTATE MP003, "input incomplete"), whichever path it came by.
// 5. A record is staged with a `problem` instead of its text when its bytes are not valid UTF-8 or hold a NUL
//    byte (line = `\x` + hex of all its bytes), or when it is longer than MAX_RECORD_BYTES (line = `\x` + hex of its
//    first 1 KiB; the rest is streamed past, never buffered). SQL rejects such a record with that reason.
import { isUtf8 } from 'node:buffer';

/** The longest record staged as text: a longer one is staged as a problem row (its first 1 KiB kept). */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;
/** How much of an over-long record is kept (as hex) in its problem row. */
export const OVERLONG_HEAD_BYTES = 1024;

export interface FramedRecord {
  /** The record's bytes (no trailing newline; may hold LF inside when it spans lines), or its hex form when `problem` is set. */
  bytes: Buffer;
  /** 1-based input line number of the record's first line. */
  lineNo: number;
  /** Why the bytes cannot be staged as text (null: they can). */
  problem: string | null;
  /** Mixpanel's `terminated early` marker (rule 4). */
  marker?: true;
}

export interface InputFramerOptions {
  /** Longest record staged as text (default MAX_RECORD_BYTES). */
  maxRecordBytes?: number;
  /**
   * false: records come out as their raw bytes, unchecked (the Export API client watches its body with this framer
   * only to learn where records are; the loader frames and checks the same bytes).
   */
  checkBytes?: boolean;
}

/** The counts recorded on the run (mixpanel_sync.record_framing → sync_runs.options->'framing'). */
export interface FramingCounts {
  records: number;
  blank_lines: number;
  rejoined_records: number;
  bom_stripped: number;
  array_elements: number;
  cr_stripped: number;
  terminated_early: number;
  overlong_records: number;
  invalid_utf8: number;
  nul_bytes: number;
}

export interface InputFramer {
  /** Feed bytes; returns the records now known to be complete. */
  push(chunk: Buffer): FramedRecord[];
  /** End of input: the last records. */
  end(): FramedRecord[];
  readonly counts: FramingCounts;
}

const NL = 0x0a;
const CR = 0x0d;
const TAB = 0x09;
const SPACE = 0x20;
const OPEN = 0x7b; // {
const CLOSE = 0x7d; // }
const OPEN_ARRAY = 0x5b; // [
const CLOSE_ARRAY = 0x5d; // ]
const COMMA = 0x2c;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);
const ESCAPED_NEWLINE = Buffer.from('\\n');
const ALWAYS_STARTS = ['{"event"', '{"$distinct_id"', '{"results"'].map((s) => Buffer.from(s));
const TERMINATED = /^\[?\s*(export\s+)?terminated\s+early\s*\]?\.?$/i;

const isSpace = (c: number | undefined) => c === SPACE || c === TAB || c === CR || c === NL;

/** Mixpanel's marker line for an export it could not finish. */
export function isTerminatedEarlyLine(line: string): boolean {
  return line.length < 64 && TERMINATED.test(line.trim());
}

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

/** 1-based position of the first byte that breaks UTF-8, or 0 when the bytes are valid. */
export function firstInvalidUtf8Byte(bytes: Buffer): number {
  let i = 0;
  while (i < bytes.length) {
    const c = bytes[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let min: number;
    if (c >= 0xc2 && c <= 0xdf) (need = 1), (min = 0x80);
    else if (c >= 0xe0 && c <= 0xef) (need = 2), (min = 0x800);
    else if (c >= 0xf0 && c <= 0xf4) (need = 3), (min = 0x10000);
    else return i + 1;
    let code = c & (0x3f >> need);
    for (let k = 1; k <= need; k++) {
      const b = bytes[i + k];
      if (b === undefined || (b & 0xc0) !== 0x80) return i + 1;
      code = (code << 6) | (b & 0x3f);
    }
    if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) return i + 1;
    i += need + 1;
  }
  return 0;
}

/** The recoverable text form of bytes that cannot be staged as text: `\x` and their hex. */
export function hexForm(bytes: Buffer): Buffer {
  return Buffer.from(`\\x${bytes.toString('hex')}`);
}

function isJson(bytes: Buffer): boolean {
  try {
    JSON.parse(bytes.toString('utf8'));
    return true;
  } catch {
    return false;
  }
}

function startsWithAt(buf: Buffer, prefix: Buffer): boolean {
  return buf.length >= prefix.length && buf.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

function lastNonSpace(buf: Buffer): number | undefined {
  let i = buf.length - 1;
  while (i >= 0 && isSpace(buf[i])) i--;
  return i < 0 ? undefined : buf[i];
}

/** A JSON splitter state: where we are in strings and nesting. */
interface ScanState {
  depth: number;
  inString: boolean;
  escaped: boolean;
}

export function createInputFramer(options: InputFramerOptions = {}): InputFramer {
  const maxRecordBytes = options.maxRecordBytes ?? MAX_RECORD_BYTES;
  const checkBytes = options.checkBytes ?? true;
  const counts: FramingCounts = {
    records: 0,
    blank_lines: 0,
    rejoined_records: 0,
    bom_stripped: 0,
    array_elements: 0,
    cr_stripped: 0,
    terminated_early: 0,
    overlong_records: 0,
    invalid_utf8: 0,
    nul_bytes: 0,
  };
  let out: FramedRecord[] = [];
  let mode: 'start' | 'lines' | 'array' | 'values' = 'start';
  let started = false; // BOM checked
  let pending: Buffer = Buffer.alloc(0); // bytes held while the BOM or the shape is undecided
  let lineNo = 1; // the line the next byte is on

  // ---- records out: the problem check (NUL, UTF-8) and over-long records
  /** `clean`: the bytes are already known to be valid UTF-8 without NUL (checked for a whole chunk at once). */
  function emit(bytes: Buffer, at: number, marker = false, clean = false) {
    counts.records++;
    if (marker) {
      out.push({ bytes, lineNo: at, problem: null, marker: true });
    } else if (!checkBytes || clean) {
      out.push({ bytes, lineNo: at, problem: null });
    } else if (bytes.indexOf(0) >= 0) {
      counts.nul_bytes++;
      out.push({ bytes: hexForm(bytes), lineNo: at, problem: `NUL byte at byte ${bytes.indexOf(0) + 1}` });
    } else if (!isUtf8(bytes)) {
      counts.invalid_utf8++;
      out.push({ bytes: hexForm(bytes), lineNo: at, problem: `invalid UTF-8 at byte ${firstInvalidUtf8Byte(bytes)}` });
    } else {
      out.push({ bytes, lineNo: at, problem: null });
    }
  }

  function emitOverlong(head: Buffer, total: number, at: number) {
    counts.records++;
    counts.overlong_records++;
    const limit = maxRecordBytes % (1024 * 1024) === 0 ? `${maxRecordBytes / (1024 * 1024)} MiB` : `${maxRecordBytes}-byte`;
    out.push({
      bytes: hexForm(head.subarray(0, OVERLONG_HEAD_BYTES)),
      lineNo: at,
      problem: `line of ${total} bytes is longer than the ${limit} limit`,
    });
  }

  // ---- rule 3: lines
  let carry: Buffer[] = [];
  let carryBytes = 0;
  let overlong: { head: Buffer; total: number; lineNo: number } | null = null;
  let held: { buf: Buffer; lineNo: number; clean: boolean; joined?: true } | null = null;

  function emitHeld() {
    if (held === null) return;
    emit(held.buf, held.lineNo, false, held.clean);
    held = null;
  }

  function lineContent(content: Buffer, at: number, clean = false) {
    if (content.length > maxRecordBytes) {
      emitHeld();
      emitOverlong(content.subarray(0, OVERLONG_HEAD_BYTES), content.length, at);
      return;
    }
    let line = content;
    if (line.length > 0 && line[line.length - 1] === CR) {
      line = line.subarray(0, line.length - 1);
      counts.cr_stripped++;
    }
    let first = 0;
    while (first < line.length && (line[first] === SPACE || line[first] === TAB || line[first] === CR)) first++;
    if (first === line.length) {
      counts.blank_lines++;
      return;
    }
    const startsRecord = line[0] === OPEN && line[1] === QUOTE;
    if (!startsRecord && line[0] !== OPEN && line.length < 64 && isTerminatedEarlyLine(line.toString('latin1'))) {
      emitHeld();
      counts.terminated_early++;
      emit(line, at, true);
      return;
    }
    if (held === null) {
      held = { buf: line, lineNo: at, clean };
      return;
    }
    const heldIsRecord = held.buf[0] === OPEN && held.buf[1] === QUOTE;
    const heldClosed = lastNonSpace(held.buf) === CLOSE;
    const newRecord = startsRecord
      ? heldClosed || !heldIsRecord || ALWAYS_STARTS.some((p) => startsWithAt(line, p))
      : !heldIsRecord || (heldClosed && isJson(held.buf));
    if (newRecord) {
      emitHeld();
      held = { buf: line, lineNo: at, clean };
      return;
    }
    const glue = endsInsideString(held.buf) ? ESCAPED_NEWLINE : null;
    const size = held.buf.length + (glue ? glue.length : 0) + line.length;
    if (size > maxRecordBytes) {
      emitHeld(); // not a record we can rebuild: both go on as they are
      held = { buf: line, lineNo: at, clean };
      return;
    }
    if (!held.joined) counts.rejoined_records++;
    held = {
      buf: Buffer.concat(glue ? [held.buf, glue, line] : [held.buf, line]),
      lineNo: held.lineNo,
      clean: held.clean && clean,
      joined: true,
    };
  }

  /** An over-long line: its first 1 KiB is kept, the rest only counted. */
  function overlongBytes(bytes: Buffer) {
    const o = overlong!;
    if (o.head.length < OVERLONG_HEAD_BYTES) o.head = Buffer.concat([o.head, bytes.subarray(0, OVERLONG_HEAD_BYTES - o.head.length)]);
    o.total += bytes.length;
  }

  function pushLines(chunk: Buffer) {
    let position = 0;
    // The whole lines of this chunk checked at once (one native pass each): when clean, no per-line check.
    let region = -2; // end of the checked region: the chunk's last newline (-2: not checked yet)
    let regionClean = false;
    const lineIsClean = (start: number, end: number): boolean => {
      if (!checkBytes) return false;
      if (region === -2) {
        region = chunk.lastIndexOf(NL);
        const zero = chunk.indexOf(0, start);
        regionClean = region > start && (zero < 0 || zero > region) && isUtf8(chunk.subarray(start, region));
      }
      return regionClean && end <= region;
    };
    for (;;) {
      const nl = chunk.indexOf(NL, position);
      if (nl < 0) break;
      const at = lineNo;
      lineNo++;
      if (overlong !== null) {
        overlongBytes(chunk.subarray(position, nl));
        emitHeld();
        emitOverlong(overlong.head, overlong.total, overlong.lineNo);
        overlong = null;
      } else if (carryBytes > 0) {
        const line = Buffer.concat([...carry, chunk.subarray(position, nl)]);
        carry = [];
        carryBytes = 0;
        lineContent(line, at);
      } else {
        lineContent(chunk.subarray(position, nl), at, lineIsClean(position, nl));
      }
      position = nl + 1;
      if (mode !== 'lines') return switchFrom(chunk.subarray(position));
    }
    if (position >= chunk.length) return;
    const rest = chunk.subarray(position);
    if (overlong !== null) return overlongBytes(rest);
    carry.push(rest);
    carryBytes += rest.length;
    if (carryBytes > maxRecordBytes) {
      overlong = { head: Buffer.alloc(0), total: 0, lineNo };
      const all = Buffer.concat(carry);
      carry = [];
      carryBytes = 0;
      overlongBytes(all);
    }
  }

  function endLines() {
    if (overlong !== null) {
      emitHeld();
      emitOverlong(overlong.head, overlong.total, overlong.lineNo);
      overlong = null;
    } else if (carryBytes > 0) {
      const line = Buffer.concat(carry);
      carry = [];
      carryBytes = 0;
      lineContent(line, lineNo);
    }
    emitHeld();
  }

  // ---- rule 2: an array's elements, or top-level values, by a streaming scanner
  const scan: ScanState = { depth: 0, inString: false, escaped: false };
  let inArray = false; // inside the top-level array (mode 'array')
  let value: { pieces: Buffer[]; bytes: number; lineNo: number; head: Buffer | null } | null = null;
  let scalar = false; // the value being read is a scalar (ends at , ] or whitespace outside a string)

  function valueAppend(bytes: Buffer) {
    const v = value!;
    v.bytes += bytes.length;
    if (v.head !== null) {
      if (v.head.length < OVERLONG_HEAD_BYTES) v.head = Buffer.concat([v.head, bytes.subarray(0, OVERLONG_HEAD_BYTES - v.head.length)]);
      return;
    }
    v.pieces.push(bytes);
    if (v.bytes > maxRecordBytes) {
      v.head = Buffer.concat(v.pieces).subarray(0, OVERLONG_HEAD_BYTES);
      v.pieces = [];
    }
  }

  function valueEnd() {
    const v = value!;
    value = null;
    scalar = false;
    if (mode === 'array') counts.array_elements++;
    if (v.head !== null) emitOverlong(v.head, v.bytes, v.lineNo);
    else emit(Buffer.concat(v.pieces), v.lineNo);
  }

  function pushValues(chunk: Buffer) {
    let from = 0; // start of the current value's bytes in this chunk
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (c === NL) lineNo++;
      if (value !== null) {
        if (scan.inString) {
          if (scan.escaped) scan.escaped = false;
          else if (c === BACKSLASH) scan.escaped = true;
          else if (c === QUOTE) {
            scan.inString = false;
            if (scalar && scan.depth === 0) {
              valueAppend(chunk.subarray(from, i + 1));
              valueEnd();
            }
          }
          continue;
        }
        if (c === QUOTE) scan.inString = true;
        else if (c === OPEN || c === OPEN_ARRAY) scan.depth++;
        else if ((c === CLOSE || c === CLOSE_ARRAY) && scan.depth > 0) {
          scan.depth--;
          if (scan.depth === 0 && !scalar) {
            valueAppend(chunk.subarray(from, i + 1));
            valueEnd();
          }
        } else if (scalar && scan.depth === 0 && (c === COMMA || c === CLOSE_ARRAY || isSpace(c))) {
          valueAppend(chunk.subarray(from, i));
          valueEnd();
          i--; // the separator is read again outside the value
          if (c === NL) lineNo--;
        }
        continue;
      }
      // between values
      if (isSpace(c)) continue;
      if (mode === 'array' && !inArray) {
        if (c === OPEN_ARRAY) {
          inArray = true;
          continue;
        }
        // what follows the array is read as lines
        mode = 'lines';
        return pushLines(chunk.subarray(i));
      }
      if (mode === 'array' && c === COMMA) continue;
      if (mode === 'array' && c === CLOSE_ARRAY) {
        inArray = false;
        continue;
      }
      if (mode === 'values' && c !== OPEN && c !== OPEN_ARRAY) {
        // not a JSON value: the rest is read as lines
        mode = 'lines';
        return pushLines(chunk.subarray(i));
      }
      value = { pieces: [], bytes: 0, lineNo, head: null };
      from = i;
      scan.depth = 0;
      scan.inString = false;
      scan.escaped = false;
      if (c === OPEN || c === OPEN_ARRAY) scan.depth = 1;
      else if (c === QUOTE) (scan.inString = true), (scalar = true);
      else scalar = true;
    }
    if (value !== null && from < chunk.length) valueAppend(chunk.subarray(from));
  }

  function endValues() {
    if (value !== null) valueEnd(); // an unbalanced value goes on as it is, to be rejected
  }

  // ---- rule 1 and 2: the start
  function switchFrom(rest: Buffer) {
    if (rest.length > 0) dispatch(rest);
  }

  function dispatch(chunk: Buffer) {
    if (mode === 'lines') pushLines(chunk);
    else pushValues(chunk);
  }

  /** Decides the shape from the held start bytes; false when more bytes are needed. */
  function decide(final: boolean): boolean {
    let i = 0;
    while (i < pending.length && isSpace(pending[i])) i++;
    if (i === pending.length) {
      if (!final) return false;
      mode = 'lines';
      return true;
    }
    const c = pending[i];
    if (c === OPEN_ARRAY) {
      // `[terminated early]` is Mixpanel's marker, not an array
      const nl = pending.indexOf(NL, i);
      if (nl < 0 && !final && pending.length - i < 64) return false;
      const first = pending.subarray(i, nl < 0 ? pending.length : nl);
      mode = first.length < 64 && isTerminatedEarlyLine(first.toString('latin1')) ? 'lines' : 'array';
    } else if (c === OPEN) {
      let j = i + 1;
      while (j < pending.length && (pending[j] === SPACE || pending[j] === TAB || pending[j] === CR)) j++;
      if (j === pending.length && !final) return false;
      mode = j < pending.length && pending[j] === NL ? 'values' : 'lines';
    } else mode = 'lines';
    return true;
  }

  function take(): FramedRecord[] {
    const result = out;
    out = [];
    return result;
  }

  return {
    counts,
    push(chunk) {
      if (mode === 'start') {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        if (!started) {
          if (pending.length < BOM.length && BOM.subarray(0, pending.length).equals(pending)) return take();
          started = true;
          if (startsWithAt(pending, BOM)) {
            pending = pending.subarray(BOM.length);
            counts.bom_stripped++;
          }
        }
        if (!decide(false) && pending.length < 64 * 1024) return take();
        if (mode === 'start') mode = 'lines';
        const bytes = pending;
        pending = Buffer.alloc(0);
        dispatch(bytes);
        return take();
      }
      dispatch(chunk);
      return take();
    },
    end() {
      if (mode === 'start') {
        if (!started && startsWithAt(pending, BOM)) {
          pending = pending.subarray(BOM.length);
          counts.bom_stripped++;
        }
        decide(true);
        const bytes = pending;
        pending = Buffer.alloc(0);
        if (bytes.length > 0) dispatch(bytes);
      }
      if (mode === 'lines') endLines();
      else endValues();
      return take();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Engage pages: a record {"results": [...], "page": …} stands for its profiles. The results array is split by the
// same kind of scanner (no JSON.parse, so a profile nested 10,000 deep is only bytes here).

/**
 * The elements of the top-level `results` array of a page object, as views of `record`; null when the record is not
 * a page (not an object, no `results` array, or a profile: it has `$distinct_id`).
 */
export function pageElements(record: Buffer): Buffer[] | null {
  let i = 0;
  while (i < record.length && isSpace(record[i])) i++;
  if (record[i] !== OPEN || record.indexOf('"results"') < 0) return null;
  let depth = 0;
  let inString = false;
  let keyStart = -1;
  let lastKey = '';
  let expectKey = false;
  let inResults = false;
  let elements: Buffer[] | null = null;
  let elementStart = -1;
  let sawDistinctId = false;
  for (; i < record.length; i++) {
    const c = record[i]!;
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) {
        inString = false;
        if (keyStart >= 0) {
          lastKey = record.toString('utf8', keyStart, i);
          if (lastKey === '$distinct_id') sawDistinctId = true;
          keyStart = -1;
        }
      }
      continue;
    }
    if (c === QUOTE) {
      inString = true;
      if (depth === 1 && expectKey) keyStart = i + 1;
      if (inResults && depth === 2 && elementStart < 0) elementStart = i;
      expectKey = false;
      continue;
    }
    if (isSpace(c)) continue;
    if (depth === 1 && (c === OPEN || c === COMMA)) expectKey = c === COMMA;
    if (c === OPEN || c === OPEN_ARRAY) {
      depth++;
      if (depth === 1) expectKey = true;
      if (depth === 2 && c === OPEN_ARRAY && lastKey === 'results' && elements === null) {
        inResults = true;
        elements = [];
        continue;
      }
      if (inResults && depth === 3 && elementStart < 0) elementStart = i;
      continue;
    }
    if (c === CLOSE || c === CLOSE_ARRAY) {
      if (inResults && depth === 2) {
        if (elementStart >= 0) elements!.push(trimEnd(record.subarray(elementStart, i)));
        elementStart = -1;
        inResults = false;
      }
      depth--;
      continue;
    }
    if (inResults && depth === 2) {
      if (c === COMMA) {
        if (elementStart >= 0) elements!.push(trimEnd(record.subarray(elementStart, i)));
        elementStart = -1;
      } else if (elementStart < 0) elementStart = i;
    }
  }
  if (sawDistinctId || elements === null) return null;
  return elements;
}

function trimEnd(buf: Buffer): Buffer {
  let end = buf.length;
  while (end > 0 && isSpace(buf[end - 1])) end--;
  return buf.subarray(0, end);
}
