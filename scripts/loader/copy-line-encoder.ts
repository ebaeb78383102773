// Turns framed records (input-framing.ts) into rows of COPY text format for a staging table's columns
// (run_id, line, problem, line_no), without parsing them: the escaping is the only change to a record's bytes
// (backslash → \\, tab → \t, CR → \r, LF → \n). Work per chunk: one indexOf per special byte, one copy of the data.
import { Transform, type TransformCallback } from 'node:stream';
import { createInputFramer, pageElements, type FramedRecord, type FramingCounts } from './input-framing.ts';

const NL = 0x0a;
const CR = 0x0d;
const TAB = 0x09;
const BACKSLASH = 0x5c;
const SPECIALS = [BACKSLASH, TAB, CR, NL];

/** The staging tables' COPY column list. */
export const STAGING_COPY_COLUMNS = '(run_id, line, problem, line_no)';

/** The letter after the backslash, by SPECIALS index: \\ \t \r \n */
const ESCAPE_LETTER = [0x5c, 0x74, 0x72, 0x6e];

/** Writes `bytes` escaped for COPY text format into out at `at`; returns the new end. out has room for 2 × bytes. */
function writeEscaped(bytes: Buffer, out: Buffer, at: number): number {
  const next = [bytes.indexOf(BACKSLASH), bytes.indexOf(TAB), bytes.indexOf(CR), bytes.indexOf(NL)];
  let from = 0;
  for (;;) {
    let pos = -1;
    let which = -1;
    for (let k = 0; k < 4; k++) {
      const n = next[k]!;
      if (n >= 0 && (pos < 0 || n < pos)) (pos = n), (which = k);
    }
    if (pos < 0) break;
    if (pos > from) {
      out.set(bytes.subarray(from, pos), at);
      at += pos - from;
    }
    out[at++] = BACKSLASH;
    out[at++] = ESCAPE_LETTER[which]!;
    from = pos + 1;
    next[which] = bytes.indexOf(SPECIALS[which]!, from);
  }
  if (from < bytes.length) out.set(from === 0 ? bytes : bytes.subarray(from), at);
  return at + bytes.length - from;
}

/** The COPY rows of records, each `<run_id>\t<line>\t<problem or \N>\t<line_no>\n`, in one buffer. */
export function encodeCopyRows(runId: string, records: readonly FramedRecord[]): Buffer | null {
  if (records.length === 0) return null;
  const prefix = `${runId}\t`;
  let size = 0;
  for (const record of records)
    size += 2 * record.bytes.length + (record.problem === null ? 0 : 2 * Buffer.byteLength(record.problem)) + 32;
  const out = Buffer.allocUnsafe(size + records.length * prefix.length);
  let at = 0;
  for (const record of records) {
    at += out.write(prefix, at, 'latin1');
    at = writeEscaped(record.bytes, out, at);
    if (record.problem === null) at += out.write(`\t\\N\t${record.lineNo}\n`, at, 'latin1');
    else {
      out[at++] = TAB;
      at = writeEscaped(Buffer.from(record.problem), out, at);
      at += out.write(`\t${record.lineNo}\n`, at, 'latin1');
    }
  }
  return out.subarray(0, at);
}

/** Engage pages stand for their profiles: each element of a page's `results` is a record (same line number). */
export function expandEngagePages(records: FramedRecord[]): FramedRecord[] {
  if (!records.some((r) => r.problem === null && pageElements(r.bytes) !== null)) return records;
  const expanded: FramedRecord[] = [];
  for (const record of records) {
    const elements = record.problem === null ? pageElements(record.bytes) : null;
    if (elements === null) expanded.push(record);
    else for (const bytes of elements) expanded.push({ bytes, lineNo: record.lineNo, problem: null });
  }
  return expanded;
}

export interface CopyRowStreamOptions {
  runId: string;
  /** Records longer than this are staged as problem rows (default MAX_RECORD_BYTES). */
  maxRecordBytes?: number;
  /** Profiles: Engage pages are expanded into their profiles. */
  expandPages?: boolean;
  /** Called with the rows encoded so far, as they go. */
  onRows?: (rows: number) => void;
}

/** Input bytes in, COPY text rows out, framed by input-framing.ts. `counts` and `rows` fill in as it runs. */
export function copyRowStream(options: CopyRowStreamOptions): Transform & { counts: FramingCounts; rows: () => number } {
  const framer = createInputFramer(options.maxRecordBytes === undefined ? {} : { maxRecordBytes: options.maxRecordBytes });
  let rows = 0;
  const encode = (records: FramedRecord[]): Buffer | undefined => {
    const all = options.expandPages ? expandEngagePages(records) : records;
    rows += all.length;
    options.onRows?.(rows);
    return encodeCopyRows(options.runId, all) ?? undefined;
  };
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, callback: TransformCallback) {
      try {
        callback(null, encode(framer.push(chunk)));
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback: TransformCallback) {
      try {
        callback(null, encode(framer.end()));
      } catch (error) {
        callback(error as Error);
      }
    },
  });
  return Object.assign(stream, { counts: framer.counts, rows: () => rows });
}
