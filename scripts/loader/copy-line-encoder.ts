// Turns framed records (input-framing.ts) into rows of COPY's binary format for a staging table's columns
// (run_id, line, problem, line_no), without parsing them: a record's bytes go out as they are, behind their length.
// Binary, not text: text format makes both ends scan every byte for the four it escapes (backslash, tab, CR, LF), and
// a server-side COPY of the bench's 95,000 staged lines took 390 ms in text against 265 ms in binary (docs/performance.md,
// "The staging COPY in binary"). PostgreSQL's receive function for text checks each value as the text format's input
// does: valid in the database's encoding and free of NUL, which the framer guarantees (a record that is not is staged
// with a problem and its bytes in hex).
import { Transform, type TransformCallback } from 'node:stream';
import { createInputFramer, pageElements, type FramedRecord, type FramingCounts } from './input-framing.ts';

/** The staging tables' COPY column list. */
export const STAGING_COPY_COLUMNS = '(run_id, line, problem, line_no)';

/** The COPY option that goes with the rows encodeCopyRows writes. */
export const STAGING_COPY_FORMAT = '(format binary)';

/** What each COPY of binary rows begins with: the signature "PGCOPY\n\377\r\n\0", flags 0, no header extension. */
export const COPY_BINARY_HEADER = Buffer.from([0x50, 0x47, 0x43, 0x4f, 0x50, 0x59, 0x0a, 0xff, 0x0d, 0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);

/** What each COPY of binary rows ends with: a field count of -1. */
export const COPY_BINARY_TRAILER = Buffer.from([0xff, 0xff]);

/** A row's fixed bytes: field count (2), run_id (4 + 8), the line's length (4), the problem's (4), line_no (4 + 8). */
const ROW_OVERHEAD = 2 + 12 + 4 + 4 + 12;

/** The COPY binary rows of records (without header or trailer: each COPY statement has its own), in one buffer. */
export function encodeCopyRows(runId: string, records: readonly FramedRecord[]): Buffer | null {
  if (records.length === 0) return null;
  const run = BigInt(runId);
  const problems = records.map((record) => (record.problem === null ? null : Buffer.from(record.problem, 'utf8')));
  let size = 0;
  for (let i = 0; i < records.length; i++) size += ROW_OVERHEAD + records[i]!.bytes.length + (problems[i]?.length ?? 0);
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (let i = 0; i < records.length; i++) {
    const record = records[i]!;
    const problem = problems[i] ?? null;
    at = out.writeInt16BE(4, at);
    at = out.writeInt32BE(8, at);
    at = out.writeBigInt64BE(run, at);
    at = out.writeInt32BE(record.bytes.length, at);
    at += record.bytes.copy(out, at);
    if (problem === null) at = out.writeInt32BE(-1, at);
    else {
      at = out.writeInt32BE(problem.length, at);
      at += problem.copy(out, at);
    }
    at = out.writeInt32BE(8, at);
    at = out.writeBigInt64BE(BigInt(record.lineNo), at);
  }
  return out;
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

/** Input bytes in, COPY binary rows out (no header or trailer), framed by input-framing.ts. `counts` and `rows` fill in as it runs. */
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
