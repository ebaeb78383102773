// syncCohorts: one cohorts run in-process (npm run sync:cohorts, npm run sync). The cohort list
// (/api/query/cohorts/list) and each cohort's members (Engage filter_by_cohort) are staged as received, on the run's
// own connection; finish_cohorts_run applies them set-based, writing only what changed. A failure after begin fails
// the run (fail_run) and throws a LoaderFailure, as for events and profiles: nothing of the run is applied.
import { setTimeout as sleep } from 'node:timers/promises';
import { cohortsList } from '../mixpanel/cohorts-list.ts';
import { engageProfiles } from '../mixpanel/engage-profiles.ts';
import type { RequestOptions } from '../mixpanel/mixpanel-request.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { beginCohortsRun, failRun, finishCohortsRun, stageCohortMembers, stageCohorts, type CohortsRun } from '../sql/sync-api.ts';
import { withPool, type PoolChoice } from './database-connection.ts';
import { describeError } from './describe-error.ts';
import { loaderFailure, SQLSTATE, sqlState } from './staged-sync.ts';

/** The --json line of a cohorts run. */
export interface CohortsSummary {
  run_id: number;
  source: 'cohorts';
  status: CohortsRun['status'];
  cohorts: number | null;
  members: number | null;
  added: number | null;
  removed: number | null;
  unchanged: number | null;
  rejected: number | null;
  duration_ms: number;
}

const count = (value: unknown): number | null => (value === null || value === undefined ? null : Number(value));

export function cohortsSummary(run: CohortsRun): CohortsSummary {
  return {
    run_id: Number(run.id),
    source: 'cohorts',
    status: run.status,
    cohorts: count(run.options.cohorts_listed),
    members: count(run.applied),
    added: count(run.inserted),
    removed: count(run.updated),
    unchanged: count(run.unchanged),
    rejected: count(run.rejected),
    duration_ms: run.total_ms === null ? Date.now() - run.started_at.getTime() : Number(run.total_ms),
  };
}

/** "N cohorts, N members: N joined, N left, N unchanged, N rejected" */
export function cohortsSummaryLine(summary: CohortsSummary): string {
  const n = (value: number | null) => String(value ?? 0);
  return `${n(summary.cohorts)} cohorts, ${n(summary.members)} members: ${n(summary.added)} joined, ${n(summary.removed)} left, ${n(summary.unchanged)} unchanged, ${n(summary.rejected)} rejected`;
}

export interface SyncCohortsOptions extends PoolChoice {
  mixpanel: MixpanelSettings;
  /** The project's name (mixpanel_sync.projects; --project, MIXPANEL_PROJECT); absent or null: the only project. */
  project?: string | null;
  /** The run's clock (fetch_to); default now(). */
  clock?: Date;
  /** Profiles per Engage page (default Mixpanel's 1000). */
  pageSize?: number;
  /** When another cohorts run is running (MP002), retry begin for up to this many seconds. */
  waitSeconds?: number;
  signal?: AbortSignal;
  onRetry?: RequestOptions['onRetry'];
}

const isCohortId = (id: unknown): id is number => typeof id === 'number' && Number.isSafeInteger(id) && id > 0;

export async function syncCohorts(options: SyncCohortsOptions): Promise<CohortsSummary> {
  const signal = options.signal ?? new AbortController().signal;
  const request = { settings: options.mixpanel, signal, ...(options.onRetry ? { onRetry: options.onRetry } : {}) };
  return withPool(options, async (pool) => {
    const client = await pool.connect();
    client.on('error', () => {}); // the query in flight rejects with it
    let run: CohortsRun;
    try {
      const deadline = Date.now() + Math.max(0, options.waitSeconds ?? 0) * 1000;
      for (;;) {
        try {
          run = await beginCohortsRun(client, options.clock, options.project ?? null);
          break;
        } catch (error) {
          if (sqlState(error) !== SQLSTATE.runInProgress || Date.now() >= deadline) throw error;
          await sleep(Math.min(1000, Math.max(50, deadline - Date.now())), undefined, { signal });
        }
      }
    } catch (error) {
      client.release(true);
      throw error; // nothing started
    }
    try {
      const list = await cohortsList(request);
      await stageCohorts(client, run.id, list);
      // Members of every cohort SQL can use; a cohort is marked whole only after its last page.
      for (const entry of list) {
        const id = (entry as { id?: unknown } | null)?.id;
        if (!isCohortId(id)) continue;
        for await (const page of engageProfiles({
          ...request,
          cohortId: id,
          ...(options.pageSize ? { pageSize: options.pageSize } : {}),
        })) {
          await stageCohortMembers(client, run.id, id, page.results, false);
        }
        await stageCohortMembers(client, run.id, id, [], true);
      }
      signal.throwIfAborted();
      const finished = await finishCohortsRun(client, run.id);
      client.release();
      return cohortsSummary(finished);
    } catch (error) {
      const code = signal.aborted ? null : sqlState(error);
      const reason = describeError(error, signal);
      let summary: CohortsSummary | null = null;
      try {
        summary = cohortsSummary((await failRun(pool, run.id, reason)) as unknown as CohortsRun);
      } catch {
        // the next begin_cohorts_run abandons it after runs.abandon_after
      }
      client.release(true);
      throw loaderFailure(`cohorts run ${run.id} failed: ${reason}`, summary, code);
    }
  });
}
