// Streams the input into a run's staging table with COPY: `copy <table> (run_id, line, problem, line_no) from
// stdin`, text format, framed by input-framing.ts (one rule for every path). Memory stays flat: the pipeline moves
// chunks with back-pressure from the input to the socket. No single line can make COPY fail: a line that cannot be
// staged as text is staged with a `problem` and its bytes in hex (SQL rejects it with that reason).
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { copyRowStream, STAGING_COPY_COLUMNS } from './copy-line-encoder.ts';
import type { FramingCounts } from './input-framing.ts';

export type StagingTable = 'mixpanel_sync.staged_events' | 'mixpanel_sync.staged_profiles';

export interface CopyIntoStagingOptions {
  table: StagingTable;
  runId: string;
  /** The input's bytes (JSONL, a JSON array, pages…: see input-framing.ts). */
  lines: Readable;
  signal?: AbortSignal;
  /** Called with the rows encoded so far, as they go. */
  onRows?: (rows: number) => void;
  /** Records longer than this are staged as problem rows (default MAX_RECORD_BYTES). */
  maxRecordBytes?: number;
}

/** COPYs the input on `client` (the run's own connection); resolves with the rows the server stored and the framing counts. */
export async function copyIntoStaging(
  client: pg.ClientBase,
  options: CopyIntoStagingOptions,
): Promise<{ rows: number; counts: FramingCounts }> {
  const encoder = copyRowStream({
    runId: options.runId,
    expandPages: options.table === 'mixpanel_sync.staged_profiles',
    ...(options.onRows ? { onRows: options.onRows } : {}),
    ...(options.maxRecordBytes !== undefined ? { maxRecordBytes: options.maxRecordBytes } : {}),
  });
  const copy = client.query(copyFrom(`copy ${options.table} ${STAGING_COPY_COLUMNS} from stdin`));
  await pipeline(options.lines, encoder, copy, options.signal ? { signal: options.signal } : {});
  return { rows: copy.rowCount, counts: encoder.counts };
}
