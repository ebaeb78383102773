// Cuts the raw Export body into clean JSONL, by the loader's one framing rule (scripts/loader/input-framing.ts:
// BOM, blank lines, CR, split records rejoined, the `terminated early` marker): this file only adds what the
// Export client needs on top of it, for its retries:
// - `terminated early` (Mixpanel's marker, instead of the rest of the data): a `truncated` error (retryable
//   before any record was handed out; the loader would otherwise stage it and finish_run refuse the run, MP003).
// - The body ends in the middle of a record: also `truncated`.
// - A line longer than maxRecordBytes: `bad_response`.
// Output: Buffers holding whole records, each ending in "\n" (a raw newline inside a record, possible only as JSON
// whitespace of a pretty-printed value, becomes a space). Bytes are not checked here: the loader frames the output
// again and stages a record that is not valid UTF-8 with its problem.
import { createInputFramer, endsInsideString, isTerminatedEarlyLine, type FramedRecord } from '../loader/input-framing.ts';
import { mixpanelError } from './mixpanel-errors.ts';

export { endsInsideString, isTerminatedEarlyLine };

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

export const DEFAULT_MAX_RECORD_BYTES = 32 * 1024 * 1024;

const NL = 0x0a;
const SPACE = 0x20;
const OPEN = 0x7b;
const QUOTE = 0x22;
const CLOSE = 0x7d;

function lastNonSpace(buf: Buffer): number | undefined {
  let i = buf.length - 1;
  while (i >= 0 && (buf[i] === SPACE || buf[i] === 0x09 || buf[i] === 0x0d || buf[i] === NL)) i--;
  return i < 0 ? undefined : buf[i];
}

export function createLineJoiner(options: { maxRecordBytes?: number } = {}): LineJoiner {
  const maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
  const framer = createInputFramer({
    maxRecordBytes,
    checkBytes: false,
    onOverlong: () => {
      throw mixpanelError('bad_response', `the export has a line longer than ${maxRecordBytes} bytes: not Mixpanel JSONL.`);
    },
  });
  const stats: LineStats = { records: 0, rejoined: 0, blankLines: 0, crLines: 0, strayLines: 0 };

  function handOut(records: FramedRecord[]): Buffer[] {
    const out: Buffer[] = [];
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
      let bytes = record.bytes;
      if (bytes.includes(NL)) bytes = Buffer.from(bytes.map((b) => (b === NL ? SPACE : b)));
      out.push(bytes, Buffer.from('\n'));
    }
    stats.rejoined = framer.counts.rejoined_records;
    stats.blankLines = framer.counts.blank_lines;
    stats.crLines = framer.counts.cr_stripped;
    return out.length === 0 ? [] : [Buffer.concat(out)];
  }

  return {
    stats,
    push: (chunk) => handOut(framer.push(chunk)),
    end() {
      const records = framer.end();
      const last = records[records.length - 1];
      if (last && !last.marker && last.bytes[0] === OPEN && last.bytes[1] === QUOTE && lastNonSpace(last.bytes) !== CLOSE) {
        const complete = stats.records + records.length - 1;
        throw mixpanelError(
          'truncated',
          `the Mixpanel export stopped in the middle of a record after ${complete} complete records: the export is incomplete.`,
          { retryable: true },
        );
      }
      return handOut(records);
    },
  };
}
