// One run, whatever the source: begin_run, COPY the lines into the run's staging, finish_run.
// Any failure after begin_run (input, COPY, HTTP, finish, abort) calls fail_run with a one-line
// reason and throws it: finish_run is one transaction, so the data and the watermark are untouched.
import type { Readable } from 'node:stream';
import type pg from 'pg';
import { copyIntoStaging, type StagingTable } from './copy-into-staging.ts';
import { describeError } from './describe-error.ts';
import type { ProgressLine } from './progress-line.ts';
import { runSummary, type RunSummary } from './run-summary.ts';
import { backendPid, beginRun, cancelBackend, failRun, finishRun, type BeginRunOptions, type SyncRun } from '../sql/sync-api.ts';

export interface StagedSyncOptions<S = RunSummary> {
  pool: pg.Pool;
  begin: BeginRunOptions;
  table: StagingTable;
  /** The run's input as bytes of JSONL, opened once the run (and so its window) is known. */
  openLines: (run: SyncRun, signal: AbortSignal) => Promise<Readable> | Readable;
  signal?: AbortSignal;
  progress?: ProgressLine;
  /** A full run with no input would empty its whole window: refused unless this is set. */
  allowEmpty?: boolean;
  /** What the run's row becomes for the caller and for a LoaderFailure (default runSummary). */
  summarise?: (run: SyncRun) => S;
}

/** The error a failed run throws: its message is the one-line reason, summary the failed run (null when fail_run could not record it). */
export interface LoaderFailure<S = RunSummary> extends Error {
  summary: S | null;
}

export function loaderFailure<S>(message: string, summary: S | null): LoaderFailure<S> {
  return Object.assign(new Error(message), { name: 'LoaderFailure', summary });
}

export function isLoaderFailure<S = RunSummary>(error: unknown): error is LoaderFailure<S> {
  return error instanceof Error && error.name === 'LoaderFailure';
}

function emptyInputError(run: SyncRun): Error {
  return new Error(
    `the input has no lines: a full run would empty every day from ${run.window_from_day} to ${run.window_to_day}; ` +
      'check the input, or allow it explicitly (--allow-empty)',
  );
}

async function stageAndFinish<S>(client: pg.PoolClient, run: SyncRun, options: StagedSyncOptions<S>, signal: AbortSignal): Promise<SyncRun> {
  signal.throwIfAborted();
  const lines = await options.openLines(run, signal);
  const { rows } = await copyIntoStaging(client, {
    table: options.table,
    runId: run.id,
    lines,
    signal,
    onRows: (n) => options.progress?.update(n),
  });
  options.progress?.done();
  if (rows === 0 && run.mode === 'full' && !options.allowEmpty) throw emptyInputError(run);

  // Ctrl-C during finish_run cancels it: the transaction rolls back and fail_run records why.
  const pid = await backendPid(client);
  const cancel = () => void cancelBackend(options.pool, pid).catch(() => undefined);
  signal.addEventListener('abort', cancel, { once: true });
  try {
    signal.throwIfAborted();
    return await finishRun(client, run.id);
  } finally {
    signal.removeEventListener('abort', cancel);
  }
}

export async function runStagedSync<S = RunSummary>(options: StagedSyncOptions<S>): Promise<S> {
  const summarise = options.summarise ?? (runSummary as unknown as (run: SyncRun) => S);
  const signal = options.signal ?? new AbortController().signal;
  signal.throwIfAborted();
  const run = await beginRun(options.pool, options.begin);
  let client: pg.PoolClient | undefined;
  try {
    client = await options.pool.connect();
    const finished = await stageAndFinish(client, run, options, signal);
    client.release();
    client = undefined;
    return summarise(finished);
  } catch (error) {
    client?.release(true); // a connection cut mid-COPY is not reused
    options.progress?.done();
    const reason = describeError(error, signal);
    let summary: S | null = null;
    let message = `${run.source} run ${run.id} failed: ${reason}`;
    try {
      summary = summarise(await failRun(options.pool, run.id, reason));
    } catch (failError) {
      message += `; recording the failure failed too (${describeError(failError)}): the run is marked abandoned after runs.abandon_after`;
    }
    throw loaderFailure(message, summary);
  }
}
