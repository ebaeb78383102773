// npm run sync:cohorts -- [--wait SECONDS] [--json] [--database-url URL]
// One cohorts run: the cohort list and each cohort's members from Mixpanel into mixpanel_sync.cohorts and
// mixpanel_sync.cohort_members, only what changed written (scripts/loader/cohorts-sync.ts).
import { cohortsSummaryLine, syncCohorts, type CohortsSummary } from '../loader/cohorts-sync.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';
import { readMixpanelSettings, type MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';

const usage = `
npm run sync:cohorts -- [options]

Loads Mixpanel cohorts into mixpanel_sync.cohorts and their members into mixpanel_sync.cohort_members
(cohort_id, distinct_id): one run (begin_cohorts_run, stage, finish_cohorts_run). Cohorts and members that did not
change are not written; members who left a cohort are removed; cohorts no longer listed are removed.

  --wait SECONDS         when another cohorts run is running, retry for up to SECONDS (default 0)
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  --project NAME         the project (mixpanel_sync.projects; default MIXPANEL_PROJECT, else the only one)
  -h, --help

Environment: DATABASE_URL, MIXPANEL_PROJECT (the project's name in this database), MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET, MIXPANEL_PROJECT_ID, MIXPANEL_REGION.
Requests: 1 for the list, then 1 Engage request per cohort per 1000 members (Query API budget, 60 an hour).
Exit codes: 0 succeeded; 1 run failed, nothing applied; 2 nothing started (bad flags, MP002 another cohorts run is
running); 130 interrupted.
`;

let mixpanel: MixpanelSettings;
await runLoaderCli<CohortsSummary>({
  name: 'sync:cohorts',
  usage,
  options: {},
  prepare(values) {
    if (values.file !== undefined) throw new Error('sync:cohorts reads Mixpanel only: --file is not supported');
    mixpanel = readMixpanelSettings();
  },
  run: ({ databaseUrl, project, waitSeconds, signal }) =>
    syncCohorts({
      connectionString: databaseUrl,
      project,
      mixpanel,
      waitSeconds,
      signal,
      onRetry: ({ attempt, delayMs, error }) =>
        process.stderr.write(`sync:cohorts: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
    }),
  print: {
    json: (summary) => JSON.stringify(summary),
    lines: (summary) => [
      `cohorts run ${summary.run_id}: ${summary.status} in ${(summary.duration_ms / 1000).toFixed(1)} s`,
      `  ${cohortsSummaryLine(summary)}`,
    ],
  },
});
