// One run, whatever the source: begin_run, COPY the input into the run's staging, record_framing, finish_run — all
// on ONE connection (the run's owner session, which SQL checks). SQL decides what a run may do (the REPLACE guard,
// one run per source, argument checks); this file only reports it truthfully:
// - begin_run refused (MP002 another run is running, MP004 bad arguments): nothing started, no LoaderFailure.
//   With waitSeconds, MP002 is retried until begin_run succeeds or the time is up.
// - any failure after begin_run (input, COPY, HTTP, finish_run refusals MP001/MP003, abort, a lost connection):
//   fail_run with a one-line reason (on the run's connection, else a fresh one), then a LoaderFailure carrying the
//   SQLSTATE. When the database cannot be reached, the run is left to the next begin_run, which abandons it.
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { copyIntoStaging, type StagingTable } from './copy-into-staging.ts';
import { sendCancelRequest } from './database-connection.ts';
import { describeError } from './describe-error.ts';
import type { ProgressLine } from './progress-line.ts';
import { runSummary, type RunSummary } from './run-summary.ts';
import { beginRun, failRun, finishRun, recordFraming, type BeginRunOptions, type SyncRun } from '../sql/sync-api.ts';

/** SQLSTATEs of the project's class MP (see README "Exit codes"). */
export const SQLSTATE = {
  replaceGuard: 'MP001',
  runInProgress: 'MP002',
  inputIncomplete: 'MP003',
  invalidArguments: 'MP004',
} as const;

export interface StagedSyncOptions<S = RunSummary> {
  pool: pg.Pool;
  begin: BeginRunOptions;
  table: StagingTable;
  /** The run's input as bytes, opened once the run (and so its window) is known; framed by input-framing.ts. */
  openLines: (run: SyncRun, signal: AbortSignal) => Promise<Readable> | Readable;
  signal?: AbortSignal;
  progress?: ProgressLine;
  /** On MP002 (another run of this source is running), retry begin_run for up to this many seconds. */
  waitSeconds?: number;
  /** What the run's row becomes for the caller and for a LoaderFailure (default runSummary). */
  summarise?: (run: SyncRun) => S;
  /** Framing counts from before the loader's own framing (the Export client's), added to the recorded ones. */
  moreFramingCounts?: () => Record<string, number>;
}

/** The error a failed run throws: its message is the one-line reason, summary the failed run (null when fail_run could not record it). */
export interface LoaderFailure<S = RunSummary> extends Error {
  summary: S | null;
  /** The SQLSTATE that failed the run, when PostgreSQL raised it. */
  code: string | null;
}

export function loaderFailure<S>(message: string, summary: S | null, code: string | null = null): LoaderFailure<S> {
  return Object.assign(new Error(message), { name: 'LoaderFailure', summary, code });
}

export function isLoaderFailure<S = RunSummary>(error: unknown): error is LoaderFailure<S> {
  return error instanceof Error && error.name === 'LoaderFailure';
}

/** The SQLSTATE of an error PostgreSQL raised (null for any other error). */
export function sqlState(error: unknown): string | null {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : null;
}

/** begin_run on `client`; on MP002 and while waitSeconds allow, tried again every second. */
async function begin(client: pg.ClientBase, options: StagedSyncOptions<unknown>, signal: AbortSignal): Promise<SyncRun> {
  const deadline = Date.now() + Math.max(0, options.waitSeconds ?? 0) * 1000;
  for (;;) {
    try {
      return await beginRun(client, options.begin);
    } catch (error) {
      if (sqlState(error) !== SQLSTATE.runInProgress || Date.now() >= deadline) throw error;
      await sleep(Math.min(1000, Math.max(50, deadline - Date.now())), undefined, { signal });
    }
  }
}

async function stageAndFinish<S>(client: pg.PoolClient, run: SyncRun, options: StagedSyncOptions<S>, signal: AbortSignal): Promise<SyncRun> {
  signal.throwIfAborted();
  const lines = await options.openLines(run, signal);
  const { counts } = await copyIntoStaging(client, {
    table: options.table,
    runId: run.id,
    lines,
    signal,
    onRows: (n) => options.progress?.update(n),
  });
  options.progress?.done();
  signal.throwIfAborted();
  const recorded: Record<string, number> = { ...counts };
  for (const [key, value] of Object.entries(options.moreFramingCounts?.() ?? {})) recorded[key] = (recorded[key] ?? 0) + value;
  await recordFraming(client, run.id, recorded);

  // A signal during finish_run cancels it: the transaction rolls back and fail_run records why. When finish_run
  // committed before the cancel arrived, the run succeeded and that is what is reported.
  // By the connection's cancel key (not a pid read earlier): through a transaction pooler only the key reaches the
  // server session running this finish_run (scripts/loader/pgbouncer.test.ts).
  const cancel = () => void sendCancelRequest(client).catch(() => undefined);
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
  const client = await options.pool.connect();
  // A connection that drops while checked out emits 'error' on the client: the query in flight rejects with it,
  // and this listener keeps Node from crashing on the event itself.
  let lost: Error | null = null;
  const onError = (error: Error) => {
    lost = error;
  };
  client.on('error', onError);
  let released = false;
  const release = (broken: boolean) => {
    if (released) return;
    released = true;
    // A late 'error' (the server going away after release) is the pool's to handle.
    client.off('error', onError);
    client.release(broken || undefined);
  };

  let run: SyncRun;
  try {
    run = await begin(client, options as StagedSyncOptions<unknown>, signal);
  } catch (error) {
    release(lost !== null);
    throw error; // nothing started: the caller reports it (exit 2)
  }
  try {
    const finished = await stageAndFinish(client, run, options, signal);
    release(false);
    return summarise(finished);
  } catch (error) {
    options.progress?.done();
    const code = signal.aborted ? null : sqlState(error);
    const reason = describeError(error, signal);
    const message = `${run.source} run ${run.id} failed: ${reason}`;
    // The run's own connection records the failure when it still works (a COPY cut short leaves it unusable).
    let summary: S | null = null;
    let recorded: unknown = null;
    for (const db of lost === null && code !== null ? [client, options.pool] : [options.pool]) {
      try {
        summary = summarise(await failRun(db, run.id, reason, code));
        recorded = null;
        break;
      } catch (failError) {
        recorded = failError;
      }
    }
    release(true);
    if (recorded !== null) {
      throw loaderFailure(
        `${message}; the failure could not be recorded (${describeError(recorded)}): the next begin_run marks run ${run.id} abandoned`,
        null,
        code,
      );
    }
    throw loaderFailure(message, summary, code);
  }
}
