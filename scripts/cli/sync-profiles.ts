// npm run sync:profiles -- [--file PATH|-] [--json] [--database-url URL]
// One profiles run: begin_run, COPY one Engage profile per line into staged_profiles, finish_run (which writes
// only the profiles whose content changed), a summary. syncProfiles is also what the demo calls in-process.
//
// Input: a file or stdin (gzip recognised) holding a JSON array of profiles, JSONL of profiles, or saved Engage
// response pages ({"results": […]}, one per line or a JSON array of them), told apart here; without --file, the
// Engage API (scripts/mixpanel/engage-profiles.ts). Profiles are not validated here: finish_run rejects, with a
// reason, whatever is not a profile (mixpanel_sync.sync_rejects).
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { pathToFileURL } from 'node:url';
import { engageProfiles, type EngageProfilesOptions } from '../mixpanel/engage-profiles.ts';
import type { RequestOptions } from '../mixpanel/mixpanel-request.ts';
import { readMixpanelSettings, type MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { withPool, type PoolChoice } from '../loader/database-connection.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';
import { checkInputPath, openInput, peekBytes, type InputSource } from '../loader/open-input.ts';
import type { ProgressLine } from '../loader/progress-line.ts';
import { runStagedSync } from '../loader/staged-sync.ts';
import type { SyncRun } from '../sql/sync-api.ts';

// ---------------------------------------------------------------------------------------------------------------
// The input, as one profile per line
// ---------------------------------------------------------------------------------------------------------------

/** The profiles of an Engage response page, or null when the record is not one (a profile, or not JSON). */
function pageResults(record: string): unknown[] | null {
  if (!record.includes('"results"')) return null; // a profile line is passed on unparsed
  try {
    const value: unknown = JSON.parse(record);
    if (value === null || typeof value !== 'object' || Array.isArray(value) || '$distinct_id' in value) return null;
    const results = (value as { results?: unknown }).results;
    return Array.isArray(results) ? results : null;
  } catch {
    return null;
  }
}

/** A record on one line: pretty-printed JSON is compacted; text that is not JSON keeps its content, joined. */
function oneLine(record: string): string {
  if (!/[\r\n]/.test(record)) return record;
  try {
    return JSON.stringify(JSON.parse(record));
  } catch {
    return record.replace(/[\r\n]+/g, ' ');
  }
}

/** A record as the profiles it holds: the results of a page, else itself. */
function* profilesOf(record: string): Generator<string> {
  const results = pageResults(record);
  if (results === null) yield oneLine(record);
  else for (const profile of results) yield JSON.stringify(profile);
}

/**
 * The JSON values of a text stream, without parsing them: top-level values one after the other (pretty-printed
 * or not), and the elements of a top-level array. Text that does not balance comes out as it is, to be rejected.
 */
async function* jsonValues(text: AsyncIterable<string>): AsyncGenerator<string> {
  let pieces: string[] = [];
  let start = 0;
  let depth = 0;
  let inString = false;
  let escaped = false;
  let inTopArray = false;
  const take = (chunk: string, end: number): string => {
    pieces.push(chunk.slice(start, end));
    const value = pieces.join('').trim();
    pieces = [];
    return value;
  };
  for await (const chunk of text) {
    start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (inString) {
        if (escaped) escaped = false;
        else if (c === '\\') escaped = true;
        else if (c === '"') inString = false;
      } else if (c === '"') {
        inString = true;
      } else if (c === '{' || (c === '[' && (depth > 0 || inTopArray))) {
        depth++;
      } else if (c === '[') {
        inTopArray = true; // its elements are the values
        start = i + 1;
      } else if (c === '}' || (c === ']' && depth > 0)) {
        depth--;
        if (depth <= 0 && !inTopArray) {
          depth = 0;
          const value = take(chunk, i + 1);
          start = i + 1;
          if (value) yield value;
        }
      } else if (depth === 0 && (c === ',' || c === ']')) {
        const value = take(chunk, i);
        start = i + 1;
        if (c === ']') inTopArray = false;
        if (value) yield value;
      }
    }
    pieces.push(chunk.slice(start));
  }
  const rest = pieces.join('').trim();
  if (rest) yield rest;
}

async function* decoded(bytes: Readable): AsyncGenerator<string> {
  const decoder = new StringDecoder('utf8');
  for await (const chunk of bytes) yield decoder.write(chunk as Buffer);
  yield decoder.end();
}

/** JSONL unless the input starts with '[' or with a line that is only '{' (pretty-printed JSON). */
function isJsonLines(head: string): boolean {
  const start = head.trimStart();
  return !(start.startsWith('[') || /^\{\s*(\n|$)/.test(start));
}

/** The profiles of a file or stdin, one per line, whatever the format (see the top of this file). */
export async function* profileLines(input: Readable): AsyncGenerator<string> {
  const peeked = await peekBytes(input, 1);
  const head = peeked.head.toString('utf8');
  if (head === '') return; // an empty input (the stream has ended)
  const bytes = peeked.stream;
  const records = isJsonLines(head) ? createInterface({ input: bytes, crlfDelay: Infinity }) : jsonValues(decoded(bytes));
  for await (const record of records) if (record.trim()) yield* profilesOf(record);
}

/** Every profile the Engage API returns, one per line. */
async function* engageLines(options: EngageProfilesOptions): AsyncGenerator<string> {
  for await (const page of engageProfiles(options)) {
    for (const profile of page.results) yield JSON.stringify(profile);
  }
}

/** Lines as the bytes of JSONL, in chunks of about 64 KiB. */
function jsonlStream(lines: AsyncIterable<string>): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    let batch: string[] = [];
    let size = 0;
    for await (const line of lines) {
      batch.push(line, '\n');
      size += line.length + 1;
      if (size >= 64 * 1024) {
        yield Buffer.from(batch.join(''));
        batch = [];
        size = 0;
      }
    }
    if (batch.length) yield Buffer.from(batch.join(''));
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

const count = (value: string | null): number | null => (value === null ? null : Number(value));

export function profilesSummary(run: SyncRun): ProfilesSummary {
  return {
    run_id: Number(run.id),
    source: 'profiles',
    mode: run.mode,
    status: run.status,
    received: count(run.received),
    inserted: count(run.inserted),
    updated: count(run.updated),
    unchanged: count(run.unchanged),
    rejected: count(run.rejected),
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
}

export async function syncProfiles(options: SyncProfilesOptions): Promise<ProfilesSummary> {
  const { input, mixpanel } = options;
  if (input === undefined && !mixpanel) throw new Error('syncProfiles needs an input (file, - or stream) or Mixpanel settings for the Engage API');
  if (input !== undefined) await checkInputPath(input);
  return withPool(options, (pool) =>
    runStagedSync({
      pool,
      table: 'mixpanel_sync.staged_profiles',
      begin: { source: 'profiles', clock: options.clock, projectTimezone: options.projectTimezone ?? mixpanel?.projectTimezone ?? null },
      openLines: async (_run, signal) =>
        jsonlStream(
          input !== undefined
            ? profileLines(await openInput(input))
            : engageLines({ ...options.engage, settings: mixpanel!, signal, ...(options.onRetry ? { onRetry: options.onRetry } : {}) }),
        ),
      signal: options.signal,
      progress: options.progress,
      // no profiles is a run that changes nothing (profiles missing from a run are kept)
      allowEmpty: true,
      summarise: profilesSummary,
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------------------------

const usage = `
npm run sync:profiles -- [options]

Loads Mixpanel user profiles into mixpanel_sync.subscriber_properties: one run (begin_run, COPY into staging,
finish_run). Only profiles whose content changed are written; the rest are counted unchanged.
Without --file it reads the Mixpanel Engage API.

  --file PATH, -f PATH   a JSON array of profiles, JSONL of profiles, or saved Engage response pages
                         (one per line or a JSON array of them); gzip recognised; - reads stdin
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL; for the Engage API MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET, MIXPANEL_PROJECT_ID,
MIXPANEL_REGION (us|eu|in); MIXPANEL_PROJECT_TIMEZONE: the zone $created and $last_seen are read in (default UTC).
Exit codes: 0 succeeded, 1 run failed (nothing applied), 2 nothing started, 130 interrupted.
`;

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  let mixpanel: MixpanelSettings | undefined;
  await runLoaderCli<ProfilesSummary>({
    name: 'sync:profiles',
    usage,
    options: {},
    prepare(values) {
      if (values.file === undefined) mixpanel = readMixpanelSettings();
    },
    run: ({ values, databaseUrl, signal, progress }) =>
      syncProfiles({
        connectionString: databaseUrl,
        input: values.file as string | undefined,
        mixpanel,
        projectTimezone: process.env.MIXPANEL_PROJECT_TIMEZONE?.trim() || null,
        signal,
        progress,
        onRetry: ({ attempt, delayMs, error }) =>
          process.stderr.write(`sync:profiles: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
      }),
    print: { json: (summary) => JSON.stringify(summary), lines: (summary) => [profilesSummaryLine(summary)] },
  });
}
