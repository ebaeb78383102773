// One run, whatever the source: begin_run, COPY the input into the run's staging, record_framing, finish_run — all
// on ONE connection (the run's owner session, which SQL checks). SQL decides what a run may do (the REPLACE guard,
// one run per source, argument checks); this file only reports it truthfully:
// - begin_run refused (MP002 another run is running, MP004 bad arguments): nothing started, no LoaderFailure.
//   With waitSeconds, MP002 is retried until begin_run succeeds or the time is up.
// - any failure after begin_run (input, COPY, HTTP, finish_run refusals MP001/MP003, abort, a lost connection):
//   fail_run with a one-line reason (on the run's connection, else a fresh one), then a LoaderFailure carrying the
//   SQLSTATE. When the database cannot be reached, the run is left to the next begin_run, which abandons it.
// - while the run is in progress, heartbeat_run every HEARTBEAT_INTERVAL_MS on another pooled connection: through a
//   transaction pooler the server session of begin_run (the run's recorded owner) may be closed while this loader
//   works on another, and begin_run abandons such a run only once its heartbeat is older than runs.heartbeat_timeout.
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { startChunkParser, type ChunkParser } from './chunk-parser.ts';
import { copyIntoStaging, type StagingTable } from './copy-into-staging.ts';
import { sendCancelRequest } from './database-connection.ts';
import { describeError } from './describe-error.ts';
import { isMixpanelError } from '../mixpanel/mixpanel-errors.ts';
import type { ProgressLine } from './progress-line.ts';
import { runSummary, type RunSummary } from './run-summary.ts';
import {
  beginRun,
  failRun,
  finishRun,
  heartbeatRun,
  lastStagedLineId,
  recordFraming,
  type BeginRunOptions,
  type SyncRun,
} from '../sql/sync-api.ts';

/** SQLSTATEs of the project's class MP (see README "Exit codes"). */
export const SQLSTATE = {
  replaceGuard: 'MP001',
  runInProgress: 'MP002',
  inputIncomplete: 'MP003',
  invalidArguments: 'MP004',
} as const;

/**
 * How often a run in progress tells SQL it is alive (mixpanel_sync.heartbeat_run). Well under the default
 * runs.heartbeat_timeout (2 minutes), so that a few missed beats (a busy server, a pooler queue) do not make a live
 * run look dead.
 */
export const HEARTBEAT_INTERVAL_MS = 30_000;

/**
 * With parseWhileStaging, the size of each committed COPY chunk: its lines are parsed on another connection while the
 * next chunk streams. Small enough that the last chunk (parsed by finish_run, not overlapped) is short, large enough
 * that a chunk's fixed costs (a commit, a parse call) stay negligible.
 */
export const COPY_CHUNK_BYTES = 4 * 1024 * 1024;

/** With parseWhileStaging, how many chunks are parsed at once (each on a pooled connection of its own). */
export const PARSE_CONNECTIONS = 2;

/**
 * With parseWhileStaging, what becomes of the chunks still queued when the input ends: each is cut into this many line
 * ranges (chunk-parser.ts, drain), so that the parse connections end together. The parse is slower than the COPY, so
 * a 95,000-line full sync ends its COPY with four or five chunks to parse (~0.9 s); whole, the last one often ran alone
 * for ~200 ms on one core (docs/performance.md, "The parse's tail").
 */
export const DRAIN_PIECES = 4;

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
  /** Heartbeat interval (default HEARTBEAT_INTERVAL_MS; tests use a shorter one). */
  heartbeatIntervalMs?: number;
  /**
   * Events: COPY in committed chunks of COPY_CHUNK_BYTES and parse each (mixpanel_sync.parse_staged_lines) on another
   * pooled connection while the next one streams. Needs a pool of at least two connections (else it is off).
   */
  parseWhileStaging?: boolean;
  /** The chunk size for parseWhileStaging (default COPY_CHUNK_BYTES; tests use a small one). */
  copyChunkBytes?: number;
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

/** Socket errors of a connection that broke or could not be made. */
const CONNECTION_ERRORS = new Set([
  'EPIPE',
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ENOTCONN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

/**
 * True when the error says the connection to the database is gone (a socket error, pg's "Connection terminated", or
 * SQLSTATE class 08 / 57P01-57P03: the server shut down or is starting), not that a statement failed.
 */
export function isConnectionLoss(error: unknown): boolean {
  if (isMixpanelError(error)) return false; // Mixpanel's connection, not the database's
  const fields = (error ?? {}) as { code?: unknown; message?: unknown };
  const code = typeof fields.code === 'string' ? fields.code : '';
  if (CONNECTION_ERRORS.has(code) || code.startsWith('08') || ['57P01', '57P02', '57P03'].includes(code)) return true;
  const message = typeof fields.message === 'string' ? fields.message : '';
  return /^Connection terminated|^Client has encountered a connection error/.test(message);
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

/**
 * Calls heartbeat_run every intervalMs on the pool (a connection other than the run's, which may be busy for minutes),
 * one beat at a time; the first beat is runStagedSync's, on the run's own connection. A beat that fails (the
 * database briefly unreachable) is only skipped: the run's own statements report a lost connection. stop() ends the
 * beats; settled() resolves when the last one sent has ended.
 */
function startHeartbeat(pool: pg.Pool, runId: string, intervalMs: number): { stop: () => void; settled: () => Promise<void> } {
  let stopped = false;
  let inFlight: Promise<void> | null = null;
  const beat = () => {
    if (stopped || inFlight !== null) return;
    inFlight = heartbeatRun(pool, runId)
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        inFlight = null;
      });
  };
  const timer = setInterval(beat, intervalMs);
  timer.unref();
  return {
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
    settled: async () => {
      await inFlight;
    },
  };
}

async function stageAndFinish<S>(
  client: pg.PoolClient,
  run: SyncRun,
  options: StagedSyncOptions<S>,
  signal: AbortSignal,
): Promise<SyncRun> {
  signal.throwIfAborted();
  // Chunks are parsed on the pool's other connections, two at a time when it has them (the run's own is busy).
  const poolSize = (options.pool as unknown as { options?: { max?: number } }).options?.max ?? 10;
  const parser: ChunkParser | null =
    options.parseWhileStaging && poolSize >= 2 ? startChunkParser(options.pool, run.id, Math.min(PARSE_CONNECTIONS, poolSize - 1)) : null;
  // Each chunk is the lines after the previous chunk's last line_id (staged_events.line_id is in staging order).
  // (read before the input is opened: an input stream must not error with no pipeline listening to it)
  let chunkAfter = parser ? await lastStagedLineId(client, run.id) : '0';
  let chunksHandedOver = 0;
  const onCommitted = async (_rows: number, last: boolean) => {
    // An input that fits in one chunk is left to finish_run, which parses it on the run's own connection: handing it to
    // another connection overlaps nothing (the COPY is over) and costs that session's start and the parse function's
    // first call there (an incremental run of 2,559 lines: medians ~370 → ~345 ms; docs/performance.md).
    if (last && chunksHandedOver === 0) return;
    chunksHandedOver += 1;
    const upTo = await lastStagedLineId(client, run.id);
    parser!.add(chunkAfter, upTo);
    chunkAfter = upTo;
  };
  const lines = await options.openLines(run, signal);
  const stopParser = () => parser?.stop();
  signal.addEventListener('abort', stopParser, { once: true });
  let counts: Awaited<ReturnType<typeof copyIntoStaging>>['counts'];
  try {
    ({ counts } = await copyIntoStaging(client, {
      table: options.table,
      runId: run.id,
      lines,
      signal,
      onRows: (n) => options.progress?.update(n),
      ...(parser ? { chunkBytes: options.copyChunkBytes ?? COPY_CHUNK_BYTES, onCommitted } : {}),
    }));
    options.progress?.done();
    parser?.drain(DRAIN_PIECES);
    // finish_run parses what is left: never while a chunk parse of the same run still runs.
    await parser?.settled();
  } catch (error) {
    parser?.stop();
    await parser?.settled();
    throw error;
  } finally {
    signal.removeEventListener('abort', stopParser);
  }
  signal.throwIfAborted();
  await recordFraming(client, run.id, { ...counts });

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
  const heartbeat = startHeartbeat(options.pool, run.id, options.heartbeatIntervalMs ?? HEARTBEAT_INTERVAL_MS);
  try {
    // The first beat, at once, on the run's own connection (idle until its COPY): through a transaction pooler the
    // begin_run session may close at any moment, and the run must have a heartbeat by then. A run shorter than the
    // interval so opens no second connection (each one a backend forked on the server). A failure is left to the run's
    // next statement to report.
    await heartbeatRun(client, run.id).catch(() => undefined);
    const finished = await stageAndFinish(client, run, options, signal);
    heartbeat.stop();
    release(false);
    // after the release: with a pool of one connection the last beat waits for the run's
    await heartbeat.settled();
    return summarise(finished);
  } catch (error) {
    heartbeat.stop();
    options.progress?.done();
    const code = signal.aborted ? null : sqlState(error);
    const reason =
      !signal.aborted && (lost !== null || isConnectionLoss(error))
        ? `the connection to the database was lost (${describeError(lost ?? error)})`
        : describeError(error, signal);
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
    await heartbeat.settled();
    if (recorded !== null) {
      const why = isConnectionLoss(recorded) ? 'the database cannot be reached' : describeError(recorded);
      throw loaderFailure(
        `${message}; the failure could not be recorded (${why}): the next begin_run marks run ${run.id} abandoned`,
        null,
        code,
      );
    }
    throw loaderFailure(message, summary, code);
  }
}
