// npm run sync:events -- [--file PATH|-] [--full | --resync-from DAY [--resync-to DAY]] [--event NAME]... [--allow-shrink] [--wait SECONDS] [--json] [--database-url URL]
// One events run: begin_run, COPY the lines into staging, finish_run, a summary. See loader/events-sync.ts.
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';
import { PROJECT_USAGE, projectMixpanelSettings, projectTimezone } from '../loader/project-config.ts';

const usage = `
npm run sync:events -- [options]

Loads Mixpanel events into PostgreSQL: one run (begin_run, COPY into staging, finish_run).
Without --file it reads the Mixpanel Export API over the run's window.

  --file PATH, -f PATH   raw export events: JSONL or one JSON array (gzip recognised); - reads stdin
                         (framing: README "How input is framed")
  --full                 force a full run: replace the last events.full_window days
  --resync-from DAY      a full run over exactly the UTC days DAY..--resync-to; without --resync-to
  --resync-to DAY        exactly the one day DAY (YYYY-MM-DD), e.g. after events were deleted or
                         re-imported in Mixpanel; refused together with --full
  --event NAME           sync only events of this name (repeatable; default: the setting events.only,
                         [] = every event); the Export API is asked for just these names, other
                         names in the input are skipped (counted not_selected), and a full run
                         replaces only these names in its window. A run that leaves out a name
                         events.only syncs does not move the watermark. A name added to the
                         selection starts with --resync-from DAY --event NAME (README "Choosing
                         which events to sync")
  --allow-shrink         let a full run empty or shrink stored days (finish_run refuses it otherwise,
                         SQLSTATE MP001); --allow-empty is a deprecated alias
  --wait SECONDS         when another events run of the project is running, retry for up to SECONDS
                         (default 0)
${PROJECT_USAGE}
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL; MIXPANEL_PROJECT (the database-side project name, as --project); for the
Export API MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET. The project's row gives its Mixpanel project id,
region and timezone; MIXPANEL_PROJECT_ID, MIXPANEL_REGION (us|eu|in) and MIXPANEL_PROJECT_TIMEZONE (for
projects that export local times) fill a column that is null, and one that differs from the row is a
configuration error (exit 2, before any request).
Exit codes (by SQLSTATE, README "Exit codes"): 0 succeeded; 1 run failed, nothing applied (MP001
replace guard, MP003 input incomplete, a lost connection, any other error after begin_run);
2 nothing started (bad flags or configuration, MP002 another run is running, MP004 invalid run
arguments, an unknown project, or none named while the database holds several);
130 interrupted (Ctrl-C, SIGTERM, SIGHUP: the run is failed, unless it had already committed).
`;

let mixpanel: MixpanelSettings | undefined;
let timezone: string | null = null;

await runLoaderCli({
  name: 'sync:events',
  usage,
  options: {
    full: { type: 'boolean', default: false },
    'resync-from': { type: 'string' },
    'resync-to': { type: 'string' },
    'allow-shrink': { type: 'boolean', default: false },
    'allow-empty': { type: 'boolean', default: false },
    event: { type: 'string', multiple: true },
  },
  prepare(values) {
    for (const flag of ['resync-from', 'resync-to'] as const) {
      const day = values[flag];
      if (day !== undefined && !/^\d{4}-\d{2}-\d{2}$/.test(String(day)))
        throw new Error(`--${flag} wants a day as YYYY-MM-DD, got ${String(day)}`);
    }
    if (values['resync-to'] !== undefined && values['resync-from'] === undefined) throw new Error('--resync-to needs --resync-from');
    // --full with --resync-* is refused by begin_run itself (MP004), so psql and the loader agree.
    if (values['allow-empty'] === true) process.stderr.write('sync:events: --allow-empty is deprecated: use --allow-shrink\n');
  },
  configure(values, project) {
    if (values.file === undefined) mixpanel = projectMixpanelSettings(project);
    timezone = mixpanel ? mixpanel.projectTimezone : projectTimezone(project);
  },
  run: ({ values, databaseUrl, project, waitSeconds, signal, progress }) =>
    syncEvents({
      connectionString: databaseUrl,
      project: project.name,
      input: values.file as string | undefined,
      mixpanel,
      full: values.full === true,
      resync:
        values['resync-from'] === undefined
          ? undefined
          : { from: String(values['resync-from']), to: values['resync-to'] as string | undefined },
      allowShrink: values['allow-shrink'] === true || values['allow-empty'] === true,
      // the names are checked by begin_run (MP004: empty or over 255 characters), as from psql
      ...(values.event === undefined ? {} : { events: values.event as string[] }),
      waitSeconds,
      projectTimezone: timezone,
      signal,
      progress,
      onRetry: ({ attempt, delayMs, error }) =>
        process.stderr.write(`sync:events: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
    }),
});
