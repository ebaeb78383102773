// Mixpanel raw event Export API client: GET /api/2.0/export, its body streamed on as received (the loader frames it
// by its one rule, scripts/loader/input-framing.ts, exactly as the same bytes from a file).
//
// Failures and what the caller sees:
// - 429 / 5xx / connection refused / a body that drops or ends with `terminated early`
//   before any byte was handed out (bytes are held until the body's first record is known): retried (Retry-After, else back-off), MIXPANEL_MAX_TRIES
//   tries in all, each one a query taken from the hourly budget.
// - The same after bytes were handed out: an `interrupted` error. The export cannot resume
//   mid-stream (Mixpanel has no cursor) and re-sending lines already passed on would double
//   them in this run, so the run is failed and run again whole (the SQL side changes nothing
//   for a failed run).
import { Readable } from 'node:stream';
import { isMixpanelError, mixpanelError, type MixpanelError } from './mixpanel-errors.ts';
import { bodyError, sendChecked, type HttpAnswer } from './http-request.ts';
import { createExportBodyWatcher, type ExportBodyWatcher, type LineStats } from './export-lines.ts';
import { requestHeaders, withRetries, type RequestOptions } from './mixpanel-request.ts';
import { exportUrl, readMixpanelSettings, type MixpanelSettings } from './mixpanel-settings.ts';
import { abortError } from './retry-policy.ts';

export interface ExportEventsOptions extends RequestOptions {
  /** First UTC day, 'YYYY-MM-DD', inclusive. */
  fromDate: string;
  /** Last UTC day, 'YYYY-MM-DD', inclusive. */
  toDate: string;
  /** Segmentation expression, e.g. lateArrivalWhere(…). */
  where?: string;
  /** Only these event names. */
  event?: string[];
  /** At most this many events (Mixpanel caps it at 100000). */
  limit?: number;
  /** Default: readMixpanelSettings() from the environment. */
  settings?: MixpanelSettings;
}

export interface ExportStats extends LineStats {
  /** Requests sent (1 unless retried). */
  attempts: number;
  /** Decoded body bytes read. */
  bytes: number;
  /** The URL asked (no credentials in it). */
  url: string;
}

export type ExportStream = Readable & { readonly stats: ExportStats };

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;

/** Check a 'YYYY-MM-DD' calendar day. */
export function assertUtcDay(value: string, name: string): void {
  const match = DAY.exec(value);
  const valid = match !== null && new Date(`${value}T00:00:00Z`).toISOString().slice(0, 10) === value;
  if (!valid) throw mixpanelError('bad_request', `${name} must be a UTC day 'YYYY-MM-DD', got ${JSON.stringify(value)}.`);
}

/** The UTC day of a moment, 'YYYY-MM-DD'. */
export function utcDay(moment: Date): string {
  return moment.toISOString().slice(0, 10);
}

/**
 * The `where` of a late-arrival lookback: events Mixpanel processed after `processedAfter`.
 * Segmentation-expression syntax: `properties["mp_processing_time_ms"] > 1764417600000`.
 */
export function lateArrivalWhere(processedAfter: Date | number): string {
  const ms = typeof processedAfter === 'number' ? processedAfter : processedAfter.getTime();
  if (!Number.isFinite(ms) || ms < 0) throw mixpanelError('bad_request', `lateArrivalWhere needs a time, got ${String(processedAfter)}.`);
  return `properties["mp_processing_time_ms"] > ${Math.floor(ms)}`;
}

/** Combine expressions with `and` (empty ones skipped). */
export function andWhere(...expressions: Array<string | null | undefined>): string | undefined {
  const parts = expressions.filter((e): e is string => !!e && e.trim() !== '');
  if (parts.length === 0) return undefined;
  if (parts.length === 1) return parts[0];
  return parts.map((p) => `(${p})`).join(' and ');
}

interface Opened {
  answer: HttpAnswer;
  iterator: AsyncIterator<Buffer>;
  joiner: ExportBodyWatcher;
  first: Buffer[];
  done: boolean;
}

async function* exportChunks(settings: MixpanelSettings, options: ExportEventsOptions, stats: ExportStats): AsyncGenerator<Buffer> {
  const url = exportUrl(settings, options);
  const { signal } = options;
  let joiner: ExportBodyWatcher | null = null;
  const syncStats = () => {
    if (joiner) Object.assign(stats, joiner.stats);
  };

  // One attempt: send, then read until the body's first record is known (or the body ends).
  // Everything up to there can fail and be retried, since nothing was handed out yet.
  const opened = await withRetries(settings, 'export', options, async (tryNumber): Promise<Opened> => {
    stats.attempts = tryNumber;
    const answer = await sendChecked(
      { method: 'GET', url, headers: requestHeaders(settings), ...(signal ? { signal } : {}), idleTimeoutMs: settings.idleTimeoutMs },
      'export',
      settings.projectId,
    );
    joiner = createExportBodyWatcher();
    const iterator = answer.body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    try {
      for (;;) {
        const next = await iterator.next();
        if (next.done) return { answer, iterator, joiner, first: joiner.end(), done: true };
        stats.bytes += next.value.length;
        const first = joiner.push(next.value);
        if (first.length > 0) return { answer, iterator, joiner, first, done: false };
      }
    } catch (error) {
      answer.body.destroy();
      throw isMixpanelError(error) ? error : bodyError(url, error, signal);
    }
  });

  try {
    syncStats();
    for (const chunk of opened.first) yield chunk;
    if (opened.done) return;
    for (;;) {
      const next = await opened.iterator.next();
      if (next.done) break;
      stats.bytes += next.value.length;
      const out = opened.joiner.push(next.value);
      syncStats();
      for (const chunk of out) yield chunk;
    }
    const last = opened.joiner.end();
    syncStats();
    for (const chunk of last) yield chunk;
  } catch (error) {
    syncStats();
    if (signal?.aborted) throw abortError(signal);
    const cause: MixpanelError = isMixpanelError(error) ? error : bodyError(url, error, signal);
    throw mixpanelError(
      'interrupted',
      `the Mixpanel export ${options.fromDate}..${options.toDate} broke after ${stats.records} lines were passed on (${cause.message}) ` +
        'It cannot resume mid-stream: fail this run and run it again.',
      { retryable: true, cause },
    );
  } finally {
    opened.answer.body.destroy();
  }
}

/**
 * Stream the raw events of [fromDate, toDate] (UTC days, inclusive): the body's bytes as Mixpanel sent them (a final
 * newline added when missing), for the loader's framing (input-framing.ts). Memory stays flat: the body is never held
 * whole. `stats` (records, rejoined, blank lines… by the same framing rule) fills in as the stream is read.
 */
export function exportEvents(options: ExportEventsOptions): ExportStream {
  assertUtcDay(options.fromDate, 'fromDate');
  assertUtcDay(options.toDate, 'toDate');
  if (options.fromDate > options.toDate) {
    throw mixpanelError('bad_request', `fromDate ${options.fromDate} is after toDate ${options.toDate}.`);
  }
  if (options.limit !== undefined && !(Number.isInteger(options.limit) && options.limit > 0 && options.limit <= 100_000)) {
    throw mixpanelError('bad_request', `limit must be an integer from 1 to 100000, got ${options.limit}.`);
  }
  const settings = options.settings ?? readMixpanelSettings();
  const stats: ExportStats = {
    attempts: 0,
    bytes: 0,
    url: exportUrl(settings, options).toString(),
    records: 0,
    rejoined: 0,
    blankLines: 0,
    crLines: 0,
    strayLines: 0,
  };
  const stream = Readable.from(exportChunks(settings, options, stats), { objectMode: false, highWaterMark: 256 * 1024 });
  return Object.assign(stream, { stats });
}
