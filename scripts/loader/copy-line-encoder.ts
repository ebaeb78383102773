// Turns framed records (input-framing.ts) into rows of COPY text format for a staging table's columns
// (run_id, line, problem, line_no), without parsing them: the escaping is the only change to a record's bytes
// (backslash → \\, tab → \t, CR → \r, LF → \n). Work per chunk: one indexOf per special byte, one copy of the data.
import { Transform, type TransformCallback } from 'node:stream';
import { createInputFramer, pageElements, type FramedRecord, type FramingCounts } from './input-framing.ts';

const NL = 0x0a;
const CR = 0x0d;
const TAB = 0x09;
const BACKSLASH = 0x5c;
const ESCAPES = new Map<number, Buffer>([
  [BACKSLASH, Buffer.from('\\\\')],
  [TAB, Buffer.from('\\t')],
  [CR, Buffer.from('\\r')],
  [NL, Buffer.from('\\n')],
]);
const SPECIALS = [BACKSLASH, TAB, CR, NL];
const TAB_BUFFER = Buffer.from('\t');
const NULL_FIELD = Buffer.from('\\N');

/** The staging tables' COPY column list. */
export const STAGING_COPY_COLUMNS = '(run_id, line, problem, line_no)';

/** Appends `bytes` escaped for COPY text format to pieces. */
function pushEscaped(bytes: Buffer, pieces: Buffer[]) {
  const next = SPECIALS.map((b) => bytes.indexOf(b));
  let from = 0;
  for (;;) {
    let at = -1;
    let which = -1;
    for (let k = 0; k < next.length; k++) {
      if (next[k]! >= 0 && (at < 0 || next[k]! < at)) (at = next[k]!), (which = k);
    }
    if (at < 0) break;
    if (at > from) pieces.push(bytes.subarray(from, at));
    pieces.push(ESCAPES.get(bytes[at]!)!);
    from = at + 1;
    next[which] = bytes.indexOf(SPECIALS[which]!, from);
  }
  if (from < bytes.length) pieces.push(from === 0 ? bytes : bytes.subarray(from));
}

/** The COPY rows of records, each `<run_id>\t<line>\t<problem or \N>\t<line_no>\n`. */
export function encodeCopyRows(runId: string, records: readonly FramedRecord[]): Buffer | null {
  if (records.length === 0) return null;
  const prefix = Buffer.from(`${runId}\t`);
  const pieces: Buffer[] = [];
  for (const record of records) {
    pieces.push(prefix);
    pushEscaped(record.bytes, pieces);
    pieces.push(TAB_BUFFER);
    if (record.problem === null) pieces.push(NULL_FIELD);
    else pushEscaped(Buffer.from(record.problem), pieces);
    pieces.push(Buffer.from(`\t${record.lineNo}\n`));
  }
  return Buffer.concat(pieces);
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
