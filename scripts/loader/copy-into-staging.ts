// Streams lines into a run's staging table with COPY: `copy <table> (run_id, line) from stdin`,
// text format, each row `<run_id>\t<line escaped>`. Memory stays flat: the pipeline moves
// chunks with back-pressure from the input to the socket.
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { copyLineEncoderStream, type LineEncoderStats } from './copy-line-encoder.ts';

export type StagingTable = 'mixpanel_sync.staged_events' | 'mixpanel_sync.staged_profiles';

export interface CopyIntoStagingOptions {
  table: StagingTable;
  runId: string;
  /** Bytes of JSONL: one record per line. */
  lines: Readable;
  signal?: AbortSignal;
  /** Called with the rows encoded so far, as they go. */
  onRows?: (rows: number) => void;
}

/** COPYs the lines on `client` (a connection of its own); resolves with the rows the server stored. */
export async function copyIntoStaging(client: pg.PoolClient, options: CopyIntoStagingOptions): Promise<{ rows: number; stats: LineEncoderStats }> {
  const encoder = copyLineEncoderStream({ prefix: `${options.runId}\t`, onRows: options.onRows });
  const copy = client.query(copyFrom(`copy ${options.table} (run_id, line) from stdin`));
  await pipeline(options.lines, encoder, copy, options.signal ? { signal: options.signal } : {});
  return { rows: copy.rowCount, stats: encoder.stats };
}
