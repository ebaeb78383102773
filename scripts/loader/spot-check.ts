// spotCheck: the plan's "same user counts" test against Mixpanel itself. N subscribers chosen by a seed (SQL:
// begin_spot_check), their events over the synced window fetched again from the Export API (`where` on distinct_id,
// a batch of users per request, each request taken from the Export budget like the sync's own), staged as received,
// and compared in SQL (spot_check_differences: the sync's event_key dedup, events_daily per day and event name,
// subscribers per event name). Nothing of the sync's tables is written. Only the event names the sync keeps are compared:
// begin_spot_check records the setting events.only on the check, the Export API is asked for just those names (its
// `event` parameter, as a run does) and spot_check_differences leaves other names out on both sides.
import { exportEvents } from '../mixpanel/export-events.ts';
import type { RequestOptions } from '../mixpanel/mixpanel-request.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import {
  beginSpotCheck,
  finishSpotCheck,
  spotCheckResult,
  stageSpotCheck,
  type SpotCheck,
  type SpotCheckDifference,
} from '../sql/sync-api.ts';
import { withPool, type PoolChoice } from './database-connection.ts';

export interface SpotCheckOptions extends PoolChoice {
  mixpanel: MixpanelSettings;
  /** The project's name (mixpanel_sync.projects; --project, MIXPANEL_PROJECT); absent or null: the only project. */
  project?: string | null;
  users: number;
  seed: string;
  /** Users per Export request (default 25): fewer requests, within the budget. */
  batch?: number;
  signal?: AbortSignal;
  onRetry?: RequestOptions['onRetry'];
}

export interface SpotCheckReport {
  check_id: number;
  seed: string;
  users: string[];
  window: { from_day: string; to_day: string; watermark: string };
  /** The event names compared (the setting events.only); []: every event. */
  events: string[];
  requests: number;
  events_fetched: number;
  compared: number;
  pending: number;
  /** Groups that differ (and groups whose only news is pending events, differs false). */
  differences: SpotCheckDifference[];
  /** The users with at least one real difference. */
  differing_users: string[];
}

/** Mixpanel segmentation expression: any of these distinct_ids (string literals JSON-escaped). */
export function distinctIdWhere(users: readonly string[]): string {
  return users.map((user) => `properties["distinct_id"] == ${JSON.stringify(user)}`).join(' or ');
}

const addDays = (day: string, days: number) => new Date(Date.parse(`${day}T00:00:00Z`) + days * 86_400_000).toISOString().slice(0, 10);

/** Export days around the window: one more on each side, for projects that export local days (never past today). */
function exportDays(check: SpotCheck): { fromDate: string; toDate: string } {
  const today = new Date().toISOString().slice(0, 10);
  const after = addDays(check.to_day, 1);
  return { fromDate: addDays(check.from_day, -1), toDate: [after, today].sort()[0]! }; // the earlier of two YYYY-MM-DD days
}

export async function spotCheck(options: SpotCheckOptions): Promise<SpotCheckReport> {
  if (!Number.isInteger(options.users) || options.users < 1) throw new Error(`--users wants a positive integer, got ${options.users}`);
  const batch = options.batch ?? 25;
  return withPool(options, async (pool) => {
    const check = await beginSpotCheck(pool, options.users, options.seed, options.project ?? null);
    const { fromDate, toDate } = exportDays(check);
    let requests = 0;
    let fetched = 0;
    for (let i = 0; i < check.users.length; i += batch) {
      const users = check.users.slice(i, i + batch);
      requests++;
      const stream = exportEvents({
        fromDate,
        toDate,
        where: distinctIdWhere(users),
        ...(check.events.length > 0 ? { event: check.events } : {}),
        settings: options.mixpanel,
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onRetry ? { onRetry: options.onRetry } : {}),
      });
      let pending: string[] = [];
      for await (const chunk of stream) {
        for (const line of (chunk as Buffer).toString('utf8').split('\n')) {
          if (line === '') continue;
          if (/^\s*terminated early/i.test(line))
            throw new Error(
              `Mixpanel's export for users ${i + 1}..${i + users.length} ended with "terminated early": the answer is incomplete, nothing compared`,
            );
          pending.push(line);
        }
        if (pending.length >= 5000) {
          await stageSpotCheck(pool, check.id, pending);
          fetched += pending.length;
          pending = [];
        }
      }
      await stageSpotCheck(pool, check.id, pending);
      fetched += pending.length;
    }
    const { differences, compared, pending } = await spotCheckResult(pool, check.id);
    const differing = [...new Set(differences.filter((d) => d.differs).map((d) => d.distinct_id))];
    await finishSpotCheck(pool, check.id, compared, differences.filter((d) => d.differs).length, pending);
    return {
      check_id: Number(check.id),
      seed: check.seed,
      users: check.users,
      window: { from_day: check.from_day, to_day: check.to_day, watermark: check.watermark.toISOString() },
      events: check.events,
      requests,
      events_fetched: fetched,
      compared,
      pending,
      differences,
      differing_users: differing,
    };
  });
}

/** The table a DBA reads: one line per group that differs or waits, then one summary line. */
export function spotCheckLines(report: SpotCheckReport): string[] {
  const rows = report.differences.map((d) => [
    d.distinct_id,
    d.day ?? '(all days)',
    d.event_name,
    String(d.mixpanel),
    String(d.ours),
    String(d.pending),
    d.reason,
  ]);
  const header = ['user', 'day', 'event', 'mixpanel', 'ours', 'pending', 'why'];
  const widths = header.map((h, i) => Math.min(40, Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  const format = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  const lines = rows.length ? [format(header), ...rows.map(format)] : [];
  const verdict = report.differing_users.length === 0 ? 'match' : `${report.differing_users.length} of ${report.users.length} users differ`;
  lines.push(
    `spot-check ${report.check_id} (seed ${report.seed}): ${report.users.length} users, ${report.compared} (user, day, event) groups` +
      `${report.events.length > 0 ? ` of ${report.events.join(', ')} (events.only)` : ''} over ` +
      `${report.window.from_day}..${report.window.to_day} (watermark ${report.window.watermark}), ${report.events_fetched} events fetched in ` +
      `${report.requests} requests, ${report.pending} pending: ${verdict}`,
  );
  return lines;
}
