// The profiles loader: one profiles run (begin_run, COPY one Engage profile per line into staged_profiles,
// finish_run, which writes only the profiles whose content changed) and its summary. Called by the sync:profiles
// command (scripts/cli/sync-profiles.ts), the demo and the bench.
//
// Input: a file or stdin (gzip recognised) holding a JSON array of profiles, JSONL of profiles, or saved Engage
// response pages ({"results": […]}, one per line or a JSON array of them), framed by the one rule of
// scripts/loader/input-framing.ts; without --file, the Engage API (scripts/mixpanel/engage-profiles.ts). Profiles are
// not validated here: finish_run rejects, with a reason, whatever is not a profile (mixpanel_sync.sync_rejects).
import { Readable } from 'node:stream';
import { engageProfiles, type EngageProfilesOptions } from '../mixpanel/engage-profiles.ts';
import type { RequestOptions } from '../mixpanel/mixpanel-request.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { runCount, type SyncRun } from '../sql/sync-api.ts';
import { withPool, type PoolChoice } from './database-connection.ts';
import { checkInputPath, openInput, type InputSource } from './open-input.ts';
import type { ProgressLine } from './progress-line.ts';
import { runStagedSync } from './staged-sync.ts';

// ---------------------------------------------------------------------------------------------------------------
// The input: bytes, framed like every other input (scripts/loader/input-framing.ts); Engage pages are expanded into
// their profiles by the COPY encoder, from their bytes (a profile nested 10,000 deep is never parsed or re-serialised)
// ---------------------------------------------------------------------------------------------------------------

/** Every Engage page as its bytes, one page per line (the encoder stages each page's results). */
function engageBytes(options: EngageProfilesOptions): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    for await (const page of engageProfiles(options)) yield Buffer.from(`${page.text.replace(/\r?\n/g, ' ')}\n`);
  }
  return Readable.from(chunks(), { objectMode: false });
}

// ---------------------------------------------------------------------------------------------------------------
// A run
// ---------------------------------------------------------------------------------------------------------------

/** The --json line: exactly these keys. */
export interface ProfilesSummary {
  run_id: number;
  source: 'profiles';
  mode: SyncRun['mode'];
  status: SyncRun['status'];
  received: number | null;
  inserted: number | null;
  updated: number | null;
  unchanged: number | null;
  rejected: number | null;
  duration_ms: number;
}

export function profilesSummary(run: SyncRun): ProfilesSummary {
  return {
    run_id: Number(run.id),
    source: 'profiles',
    mode: run.mode,
    status: run.status,
    received: runCount(run.received),
    inserted: runCount(run.inserted),
    updated: runCount(run.updated),
    unchanged: runCount(run.unchanged),
    rejected: runCount(run.rejected),
    duration_ms: run.total_ms === null ? Date.now() - run.started_at.getTime() : Number(run.total_ms),
  };
}

/** "N inserted, N updated, N unchanged (skipped), N rejected — X% unchanged" */
export function profilesSummaryLine(summary: ProfilesSummary): string {
  const n = (value: number | null) => String(value ?? 0);
  const checked = (summary.inserted ?? 0) + (summary.updated ?? 0) + (summary.unchanged ?? 0);
  const percent = checked === 0 ? 0 : Math.round((1000 * (summary.unchanged ?? 0)) / checked) / 10;
  return `${n(summary.inserted)} inserted, ${n(summary.updated)} updated, ${n(summary.unchanged)} unchanged (skipped), ${n(summary.rejected)} rejected — ${percent}% unchanged`;
}

export interface SyncProfilesOptions extends PoolChoice {
  /** A file path, '-' for stdin, or a stream. Absent: the Engage API with `mixpanel` settings. */
  input?: InputSource;
  /** Mixpanel client settings, for the Engage API (readMixpanelSettings()). */
  mixpanel?: MixpanelSettings;
  /** The project's name (mixpanel_sync.projects; --project, MIXPANEL_PROJECT); absent or null: the only project. */
  project?: string | null;
  /** The Engage query: selector, cohort, properties, page size. */
  engage?: Pick<EngageProfilesOptions, 'where' | 'cohortId' | 'outputProperties' | 'pageSize'>;
  /** $created and $last_seen are read in this zone (default mixpanel.projectTimezone, else UTC). */
  projectTimezone?: string | null;
  /** The run's clock (fetch_to); default now(). */
  clock?: Date;
  signal?: AbortSignal;
  progress?: ProgressLine;
  /** Told before each Engage API retry. */
  onRetry?: RequestOptions['onRetry'];
  /** When another profiles run is running (MP002), retry begin_run for up to this many seconds. */
  waitSeconds?: number;
}

export async function syncProfiles(options: SyncProfilesOptions): Promise<ProfilesSummary> {
  const { input, mixpanel } = options;
  if (input === undefined && !mixpanel)
    throw new Error('syncProfiles needs an input (file, - or stream) or Mixpanel settings for the Engage API');
  if (input !== undefined) await checkInputPath(input);
  return withPool(options, (pool) =>
    runStagedSync({
      pool,
      table: 'mixpanel_sync.staged_profiles',
      begin: {
        source: 'profiles',
        clock: options.clock,
        projectTimezone: options.projectTimezone ?? mixpanel?.projectTimezone ?? null,
        project: options.project ?? null,
        mixpanelProjectId: input === undefined ? (mixpanel?.projectId ?? null) : null,
      },
      openLines: async (_run, signal) =>
        input !== undefined
          ? openInput(input)
          : engageBytes({ ...options.engage, settings: mixpanel!, signal, ...(options.onRetry ? { onRetry: options.onRetry } : {}) }),
      signal: options.signal,
      progress: options.progress,
      ...(options.waitSeconds !== undefined ? { waitSeconds: options.waitSeconds } : {}),
      summarise: profilesSummary,
    }),
  );
}
