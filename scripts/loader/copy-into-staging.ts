// Streams the input into a run's staging table with COPY: `copy <table> (run_id, line, problem, line_no) from
// stdin (format binary)`, framed by input-framing.ts (one rule for every path). Memory stays flat: the pipeline moves
// chunks with back-pressure from the input to the socket. No single line can make COPY fail: a line that cannot be
// staged as text is staged with a `problem` and its bytes in hex (SQL rejects it with that reason).
// With chunkBytes, the rows go in several COPY statements of about that many bytes each, every one committed before
// the next starts (onCommitted is told), so that the committed lines can be parsed while the next chunk streams
// (chunk-parser.ts). A failure rolls back only the chunk in flight; the run is failed as a whole by the caller.
import { once } from 'node:events';
import { pipeline, finished } from 'node:stream/promises';
import { Writable, type Readable } from 'node:stream';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { COPY_BINARY_HEADER, COPY_BINARY_TRAILER, copyRowStream, STAGING_COPY_COLUMNS, STAGING_COPY_FORMAT } from './copy-line-encoder.ts';
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
  /** End each COPY (its rows committed) once it holds about this many bytes, and go on in a new one (default: one COPY). */
  chunkBytes?: number;
  /**
   * Called (and awaited, before the next chunk) after each COPY chunk committed, with the rows stored so far; `last`
   * when the chunk was ended by the end of the input (not by its size), so that no other chunk follows.
   */
  onCommitted?: (rows: number, last: boolean) => void | Promise<void>;
}

/**
 * A writable of COPY binary rows (whole rows per chunk, as copyRowStream writes them) that runs `sql` (a COPY … from
 * stdin) on `client` once per chunkBytes (Infinity: one COPY), each COPY with the binary header and trailer: it ends
 * the COPY, waits for the server to commit it, tells onCommitted and starts the next on the next write (onCommitted runs on `client` between two COPYs, e.g. to read the chunk's last line_id). Destroyed, it destroys the COPY in flight (pg-copy-streams sends CopyFail).
 */
function chunkedCopy(
  client: pg.ClientBase,
  sql: string,
  chunkBytes: number,
  onCommitted: (rows: number, last: boolean) => void | Promise<void>,
): Writable & { rowCount: () => number; settled: () => Promise<void> } {
  let current: ReturnType<typeof copyFrom> | null = null;
  // the chunk commit in flight (ended COPY, then onCommitted): an abort must not leave it running past fail_run
  let inFlight: Promise<void> = Promise.resolve();
  let failure: Error | null = null;
  let bytes = 0;
  let rows = 0;
  const open = () => {
    const copy = client.query(copyFrom(sql));
    copy.on('error', (error: Error) => {
      failure ??= error;
    });
    copy.write(COPY_BINARY_HEADER);
    bytes = 0;
    return copy;
  };
  const commit = (last: boolean) => {
    const copy = current;
    if (copy === null) return inFlight;
    current = null;
    const done = (async () => {
      copy.end(COPY_BINARY_TRAILER);
      await finished(copy);
      rows += copy.rowCount;
      await onCommitted(rows, last);
    })();
    inFlight = done.catch(() => undefined);
    return done;
  };
  const writable = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      void (async () => {
        if (failure) throw failure;
        current ??= open();
        bytes += chunk.length;
        if (!current.write(chunk)) await once(current, 'drain');
        if (failure) throw failure;
        if (bytes >= chunkBytes) await commit(false);
      })().then(() => callback(), callback);
    },
    final(callback) {
      commit(true).then(() => callback(), callback);
    },
    destroy(error, callback) {
      if (current !== null && !current.destroyed) current.destroy(error ?? undefined);
      callback(error);
    },
  });
  return Object.assign(writable, { rowCount: () => rows, settled: () => inFlight });
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
  const sql = `copy ${options.table} ${STAGING_COPY_COLUMNS} from stdin ${STAGING_COPY_FORMAT}`;
  const pipelineOptions = options.signal ? { signal: options.signal } : {};
  const copy = chunkedCopy(client, sql, options.chunkBytes ?? Number.POSITIVE_INFINITY, options.onCommitted ?? (() => undefined));
  try {
    await pipeline(options.lines, encoder, copy, pipelineOptions);
  } catch (error) {
    // An abort rejects the pipeline at once, while a chunk's COMMIT may still be on its way: wait for it, so that the
    // caller's fail_run (which drops the run's staged rows) comes after it, not before (seen: 28,500 staged rows left
    // behind a failed run when the COMMIT landed after fail_run).
    await copy.settled();
    throw error;
  }
  return { rows: copy.rowCount(), counts: encoder.counts };
}
