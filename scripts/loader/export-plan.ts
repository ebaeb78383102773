// Which Export API requests an events run makes, from the window begin_run chose.
//
// full:        [day of fetch_from, day of fetch_to]
// incremental: [day of fetch_from, day of fetch_to] whole, plus the late-arrival lookback:
//              [day of lookback_from, day before fetch_from's day] narrowed to events Mixpanel
//              processed after processed_after (`where mp_processing_time_ms > …`). When
//              processed_after is unknown (no processing watermark yet) the lookback days are read whole.
// Days are those of the project's time zone when it has one (projects from before 2023 export
// local days), else UTC. Re-read events are deduplicated by finish_run, never counted twice.
// A run with a selection of event names (begin_run recorded it in options->'events': --event NAME or the setting
// events.only) asks for just those names: every request carries them as the Export API's `event` parameter.
import { lateArrivalWhere, utcDay } from '../mixpanel/export-events.ts';
import type { SyncRun } from '../sql/sync-api.ts';

export interface ExportRequest {
  fromDate: string;
  toDate: string;
  where?: string;
  /** Only these event names (the run's selection as begin_run recorded it); absent: every event. */
  event?: string[];
  /** For messages and measurements: 'window' or 'lookback'. */
  part: 'window' | 'lookback';
}

/** The calendar day of a moment in a time zone (UTC when null), 'YYYY-MM-DD'. */
export function dayIn(moment: Date, timezone: string | null): string {
  if (!timezone) return utcDay(moment);
  // en-CA formats dates as YYYY-MM-DD.
  return new Intl.DateTimeFormat('en-CA', { timeZone: timezone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(moment);
}

export function previousDay(day: string): string {
  return utcDay(new Date(Date.parse(`${day}T00:00:00Z`) - 86_400_000));
}

type PlannedRun = Pick<SyncRun, 'mode' | 'fetch_from' | 'fetch_to' | 'lookback_from' | 'processed_after' | 'project_timezone'>;

/** The requests of a run; `event`: the run's selection as SQL reads it (mixpanel_sync.run_selection), null for every event. */
export function exportPlan(run: PlannedRun, event: readonly string[] | null = null): ExportRequest[] {
  return requestsOf(run).map((request) => (event ? { ...request, event: [...event] } : request));
}

function requestsOf(run: PlannedRun): ExportRequest[] {
  if (!run.fetch_from) throw new Error('an events run without fetch_from: begin_run did not plan a window');
  const zone = run.project_timezone;
  const window: ExportRequest = { fromDate: dayIn(run.fetch_from, zone), toDate: dayIn(run.fetch_to, zone), part: 'window' };
  if (run.mode === 'full' || !run.lookback_from) return [window];
  const lookbackFrom = dayIn(run.lookback_from, zone);
  const lookbackTo = previousDay(window.fromDate);
  if (lookbackFrom > lookbackTo) return [window];
  const lookback: ExportRequest = { fromDate: lookbackFrom, toDate: lookbackTo, part: 'lookback' };
  if (run.processed_after) lookback.where = lateArrivalWhere(run.processed_after);
  return [lookback, window];
}
