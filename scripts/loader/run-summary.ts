// What a run did, from its sync_runs row: the `--json` line (fixed keys) and the human lines.
import { eventCounts, runCount, type SyncRun } from '../sql/sync-api.ts';

export interface RunSummary {
  run_id: number;
  source: SyncRun['source'];
  mode: SyncRun['mode'];
  status: SyncRun['status'];
  received: number | null;
  applied: number | null;
  duplicates: number | null;
  rejected: number | null;
  too_old: number | null;
  /** valid events with no distinct_id (kept in the raw table when events.store_raw is on; not rejects) */
  no_user: number | null;
  /** valid events whose name is outside the run's selection (--event, events.only) */
  not_selected: number | null;
  users_touched: number | null;
  watermark_before: string | null;
  watermark_after: string | null;
  duration_ms: number;
}

const moment = (value: Date | null): string | null => (value === null ? null : value.toISOString());

/** duration_ms: the run's total_ms as recorded by the database, else the time since it started. */
export function runSummary(run: SyncRun): RunSummary {
  return {
    run_id: Number(run.id),
    source: run.source,
    mode: run.mode,
    status: run.status,
    ...eventCounts(run),
    users_touched: runCount(run.users_touched),
    watermark_before: moment(run.watermark_before),
    watermark_after: moment(run.watermark_after),
    duration_ms: run.total_ms === null ? Date.now() - run.started_at.getTime() : Number(run.total_ms),
  };
}

/** Exactly one line of JSON. */
export function summaryJson(summary: RunSummary): string {
  return JSON.stringify(summary);
}

const number = (value: number | null): string => (value === null ? '-' : value.toLocaleString('en-US'));

export function summaryLines(summary: RunSummary, extra: Array<[string, number | null]> = []): string[] {
  const seconds = (summary.duration_ms / 1000).toFixed(1);
  const counts: Array<[string, number | null]> = [
    ['received', summary.received],
    ['applied', summary.applied],
    ['duplicates', summary.duplicates],
    ['rejected', summary.rejected],
    ['too old', summary.too_old],
    ...(summary.no_user ? [['no user', summary.no_user] as [string, number | null]] : []),
    ...(summary.not_selected ? [['not selected', summary.not_selected] as [string, number | null]] : []),
    ['users touched', summary.users_touched],
    ...extra,
  ];
  const lines = [
    `${summary.source} run ${summary.run_id} (${summary.mode}): ${summary.status} in ${seconds} s`,
    `  ${counts.map(([label, value]) => `${label} ${number(value)}`).join(', ')}`,
    summary.status === 'succeeded'
      ? `  watermark ${summary.watermark_before ?? 'none'} -> ${summary.watermark_after ?? 'none'}`
      : '  nothing applied; watermark unchanged',
  ];
  if (summary.rejected)
    lines.push(`  rejects: select line_no, reason, payload from mixpanel_sync.sync_rejects where run_id = ${summary.run_id};`);
  return lines;
}
