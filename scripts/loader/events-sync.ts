// syncEvents: one events run in-process (the CLI, the demo and the benchmarks call it).
// Input: a file, stdin ('-') or a stream of JSONL (gzip or not); without one, the Mixpanel
// Export API over the run's window (see export-plan.ts).
import { Readable } from 'node:stream';
import { exportEvents } from '../mixpanel/export-events.ts';
import type { RequestOptions } from '../mixpanel/mixpanel-request.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { withPool, type PoolChoice } from './database-connection.ts';
import { exportPlan, type ExportRequest } from './export-plan.ts';
import { checkInputPath, openInput, type InputSource } from './open-input.ts';
import type { ProgressLine } from './progress-line.ts';
import type { RunSummary } from './run-summary.ts';
import { runStagedSync } from './staged-sync.ts';
import { runSelection, type Queryable, type SyncRun } from '../sql/sync-api.ts';

export interface SyncEventsOptions extends PoolChoice {
  /** A file path, '-' for stdin, or a stream. Absent: the Export API with `mixpanel` settings. */
  input?: InputSource;
  /** Mixpanel client settings, for the Export API (readMixpanelSettings()). */
  mixpanel?: MixpanelSettings;
  /** Force a full run (REPLACE over events.full_window). */
  full?: boolean;
  /** A full run over exactly these UTC days, after data was deleted or re-imported in Mixpanel. */
  resync?: { from: string; to?: string | null };
  /** The run's clock (fetch_to); default now(). */
  clock?: Date;
  /** The project's name (mixpanel_sync.projects; --project, MIXPANEL_PROJECT); absent or null: the only project. */
  project?: string | null;
  /** MIXPANEL_PROJECT_TIMEZONE: for projects that export local times. */
  projectTimezone?: string | null;
  /** Let a full run empty or shrink stored days (begin_run allow_shrink => true); without it finish_run refuses (MP001). */
  allowShrink?: boolean;
  /** This run's event names (begin_run events => …); absent: the setting events.only. The Export API is asked for the names begin_run recorded. */
  events?: readonly string[];
  /** When another events run is running (MP002), retry begin_run for up to this many seconds. */
  waitSeconds?: number;
  signal?: AbortSignal;
  progress?: ProgressLine;
  /** Told before each Export API retry. */
  onRetry?: RequestOptions['onRetry'];
  /** Told of each Export API request as it starts. */
  onExport?: (request: ExportRequest) => void;
  /** Parse committed COPY chunks while the next streams (default true; see staged-sync.ts parseWhileStaging). */
  parseWhileStaging?: boolean;
  /** Their size in bytes (default COPY_CHUNK_BYTES). */
  copyChunkBytes?: number;
}

/**
 * The Export API answers of the run's plan, one after the other, as one byte stream: the bodies as Mixpanel sent them,
 * framed by the loader like a file (input-framing.ts), so the same bytes give the same rows, rejects, line numbers and
 * framing counts on every path.
 */
function exportStream(db: Queryable, run: SyncRun, options: SyncEventsOptions, settings: MixpanelSettings, signal: AbortSignal): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    for (const request of exportPlan(run, await runSelection(db, run.id))) {
      options.onExport?.(request);
      const { fromDate, toDate, where, event } = request;
      yield* exportEvents({ fromDate, toDate, where, event, settings, signal, onRetry: options.onRetry });
    }
  }
  return Readable.from(chunks(), { objectMode: false });
}

export async function syncEvents(options: SyncEventsOptions): Promise<RunSummary> {
  const { input, mixpanel } = options;
  if (input === undefined && !mixpanel)
    throw new Error('syncEvents needs an input (file, - or stream) or Mixpanel settings for the Export API');
  if (input !== undefined) await checkInputPath(input);
  return withPool(options, (pool) =>
    runStagedSync({
      pool,
      table: 'mixpanel_sync.staged_events',
      begin: {
        source: 'events',
        forceFull: options.full ?? false,
        clock: options.clock,
        projectTimezone: options.projectTimezone ?? mixpanel?.projectTimezone ?? null,
        resync: options.resync ?? null,
        allowShrink: options.allowShrink ?? false,
        events: options.events ?? null,
        project: options.project ?? null,
        // the Export API's project: recorded on the project's first run, refused (MP004) when it is another
        mixpanelProjectId: input === undefined ? (mixpanel?.projectId ?? null) : null,
      },
      openLines: (run, signal) => (input !== undefined ? openInput(input) : exportStream(pool, run, options, mixpanel!, signal)),
      signal: options.signal,
      progress: options.progress,
      parseWhileStaging: options.parseWhileStaging ?? true,
      ...(options.copyChunkBytes !== undefined ? { copyChunkBytes: options.copyChunkBytes } : {}),
      ...(options.waitSeconds !== undefined ? { waitSeconds: options.waitSeconds } : {}),
    }),
  );
}
