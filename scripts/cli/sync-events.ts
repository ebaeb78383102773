// npm run sync:events -- [--file PATH|-] [--full | --resync-from DAY [--resync-to DAY]] [--allow-empty] [--json] [--database-url URL]
// One events run: begin_run, COPY the lines into staging, finish_run, a summary. See loader/events-sync.ts.
import { readMixpanelSettings, type MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';

const usage = `
npm run sync:events -- [options]

Loads Mixpanel events into PostgreSQL: one run (begin_run, COPY into staging, finish_run).
Without --file it reads the Mixpanel Export API over the run's window.

  --file PATH, -f PATH   JSONL file of raw export events (gzip recognised); - reads stdin
  --full                 force a full run: replace the last events.full_window days
  --resync-from DAY      a full run over exactly the UTC days DAY..--resync-to (default today),
  --resync-to DAY        e.g. after events were deleted or re-imported in Mixpanel (YYYY-MM-DD)
  --allow-empty          let a full run with no input empty its window
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL; for the Export API MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET,
MIXPANEL_PROJECT_ID, MIXPANEL_REGION (us|eu|in); MIXPANEL_PROJECT_TIMEZONE for projects that
export local times. Exit codes: 0 succeeded, 1 run failed (nothing applied), 2 nothing started,
130 interrupted.
`;

let mixpanel: MixpanelSettings | undefined;

await runLoaderCli({
  name: 'sync:events',
  usage,
  options: {
    full: { type: 'boolean', default: false },
    'resync-from': { type: 'string' },
    'resync-to': { type: 'string' },
    'allow-empty': { type: 'boolean', default: false },
  },
  prepare(values) {
    for (const flag of ['resync-from', 'resync-to'] as const) {
      const day = values[flag];
      if (day !== undefined && !/^\d{4}-\d{2}-\d{2}$/.test(String(day))) throw new Error(`--${flag} wants a day as YYYY-MM-DD, got ${String(day)}`);
    }
    if (values['resync-to'] !== undefined && values['resync-from'] === undefined) throw new Error('--resync-to needs --resync-from');
    if (values['resync-from'] !== undefined && values.full === true) throw new Error('--full and --resync-from are two kinds of full run: pick one');
    if (values.file === undefined) mixpanel = readMixpanelSettings();
  },
  run: ({ values, databaseUrl, signal, progress }) =>
    syncEvents({
      connectionString: databaseUrl,
      input: values.file as string | undefined,
      mixpanel,
      full: values.full === true,
      resync: values['resync-from'] === undefined ? undefined : { from: String(values['resync-from']), to: values['resync-to'] as string | undefined },
      allowEmpty: values['allow-empty'] === true,
      projectTimezone: process.env.MIXPANEL_PROJECT_TIMEZONE?.trim() || null,
      signal,
      progress,
      onRetry: ({ attempt, delayMs, error }) => process.stderr.write(`sync:events: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
    }),
});
