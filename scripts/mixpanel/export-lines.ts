// Watches the raw Export body for what the Export client needs for its retries, and hands the body on AS RECEIVED:
// the loader frames it by its one rule (scripts/loader/input-framing.ts: BOM, blank lines, CR, split records rejoined,
// over-long records, line numbers), exactly as it frames the same bytes from a file. Nothing is dropped, joined or
// limited here; the same module reads the body only to learn where its records are:
// - `terminated early` (Mixpanel's marker, instead of the rest of the data): a `truncated` error (retryable while no
//   byte was handed out; otherwise the loader would stage it and finish_run refuse the run, MP003).
// - The body ends in the middle of a record: also `truncated`.
// Bytes are held until the body's first record is known (so that an attempt that fails before it can be retried
// without anything handed out); after that they go on as they are read, cut after a line's newline. A body that does not end in a
// newline gets one, so that the answers of a run, one after the other, never glue two records together.
import {
  createInputFramer,
  endsInsideString,
  isTerminatedEarlyLine,
  MAX_RECORD_BYTES,
  type FramedRecord,
} from '../loader/input-framing.ts';
import { mixpanelError } from './mixpanel-errors.ts';

export { endsInsideString, isTerminatedEarlyLine };

/** What the body held, by the loader's framing rule (the loader counts the same again for the run). */
export interface LineStats {
  /** Records in the body (Mixpanel's marker not counted). */
  records: number;
  /** Records rebuilt from more than one line. */
  rejoined: number;
  /** Blank or whitespace-only lines. */
  blankLines: number;
  /** Lines ending in CR LF. */
  crLines: number;
  /** Records that do not start like one (`{"`): the loader stages them, SQL rejects them with a reason. */
  strayLines: number;
}

export interface ExportBodyWatcher {
  /** Feed a chunk of the body; returns the bytes that may be handed on now (as received). */
  push(chunk: Buffer): Buffer[];
  /** End of body: the bytes still held; throws `truncated` if the body stopped mid-record. */
  end(): Buffer[];
  readonly stats: LineStats;
}

const NL = 0x0a;
const OPEN = 0x7b;
const QUOTE = 0x22;
const CLOSE = 0x7d;
const NEWLINE = Buffer.from('\n');
/** Bytes of one line held at most once the body flows. */
const HOLD_LIMIT = 1024 * 1024;

function lastNonSpace(buf: Buffer): number | undefined {
  let i = buf.length - 1;
  while (i >= 0 && (buf[i] === 0x20 || buf[i] === 0x09 || buf[i] === 0x0d || buf[i] === NL)) i--;
  return i < 0 ? undefined : buf[i];
}

export function createExportBodyWatcher(options: { maxRecordBytes?: number } = {}): ExportBodyWatcher {
  // The loader's framer, unchecked bytes (the loader checks them when it frames the body again): only where records
  // begin and end matters here. An over-long record is no error: the loader stages it as a problem row.
  const framer = createInputFramer({ maxRecordBytes: options.maxRecordBytes ?? MAX_RECORD_BYTES, checkBytes: false });
  const stats: LineStats = { records: 0, rejoined: 0, blankLines: 0, crLines: 0, strayLines: 0 };
  let held: Buffer[] = [];
  let flowing = false; // the first record was seen: bytes go on as they come
  let lastByte: number | undefined;

  function see(records: FramedRecord[]) {
    for (const record of records) {
      if (record.marker) {
        throw mixpanelError(
          'truncated',
          `Mixpanel ended the export with "${record.bytes.toString('utf8').trim()}" after ${stats.records} complete records: the export is incomplete.`,
          { retryable: true },
        );
      }
      stats.records++;
      if (record.bytes[0] !== OPEN || record.bytes[1] !== QUOTE) stats.strayLines++;
    }
    stats.rejoined = framer.counts.rejoined_records;
    stats.blankLines = framer.counts.blank_lines;
    stats.crLines = framer.counts.cr_stripped;
    if (stats.records > 0) flowing = true;
  }

  /**
   * Once flowing: the held bytes up to the last newline, so that each piece handed on ends a line (a line longer than
   * HOLD_LIMIT goes on in pieces: the loader frames a byte stream, pieces are only for readers downstream).
   */
  function handOn(final = false): Buffer[] {
    if (!flowing || held.length === 0) return [];
    const last = held[held.length - 1]!;
    const nl = last.lastIndexOf(NL);
    if (final || heldBytes() > HOLD_LIMIT) {
      const out = Buffer.concat(held);
      held = [];
      return [out];
    }
    if (nl < 0) return [];
    const out = Buffer.concat([...held.slice(0, -1), last.subarray(0, nl + 1)]);
    held = nl + 1 < last.length ? [last.subarray(nl + 1)] : [];
    return [out];
  }

  function heldBytes(): number {
    let n = 0;
    for (const b of held) n += b.length;
    return n;
  }

  return {
    stats,
    push(chunk) {
      if (chunk.length === 0) return [];
      held.push(chunk);
      lastByte = chunk[chunk.length - 1];
      see(framer.push(chunk));
      return handOn();
    },
    end() {
      const records = framer.end();
      const last = records.filter((r) => !r.marker).at(-1);
      if (
        !records.some((r) => r.marker) &&
        last &&
        last.bytes[0] === OPEN &&
        last.bytes[1] === QUOTE &&
        lastNonSpace(last.bytes) !== CLOSE
      ) {
        const complete = stats.records + records.length - 1;
        throw mixpanelError(
          'truncated',
          `the Mixpanel export stopped in the middle of a record after ${complete} complete records: the export is incomplete.`,
          { retryable: true },
        );
      }
      see(records);
      flowing = true;
      if (lastByte !== undefined && lastByte !== NL) held.push(NEWLINE);
      return handOn(true);
    },
  };
}
