// npm run sync:cohorts -- [--wait SECONDS] [--json] [--database-url URL]
// One cohorts run: the cohort list and each cohort's members from Mixpanel into mixpanel_sync.cohorts and
// mixpanel_sync.cohort_members, only what changed written (scripts/loader/cohorts-sync.ts).
import { cohortsSummaryLine, syncCohorts, type CohortsSummary } from '../loader/cohorts-sync.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';
import { PROJECT_USAGE, projectMixpanelSettings } from '../loader/project-config.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';

const usage = `
npm run sync:cohorts -- [options]

Loads Mixpanel cohorts into mixpanel_sync.cohorts and their members into mixpanel_sync.cohort_members
(cohort_id, distinct_id): one run (begin_cohorts_run, stage, finish_cohorts_run). Cohorts and members that did not
change are not written; members who left a cohort are removed; cohorts no longer listed are removed.

  --wait SECONDS         when another cohorts run of the project is running, retry for up to SECONDS (default 0)
${PROJECT_USAGE}
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL, MIXPANEL_PROJECT (the database-side project name, as --project),
MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET; MIXPANEL_PROJECT_ID and MIXPANEL_REGION fill the project's row where it
has none, and one that differs from the row is a configuration error.
Requests: 1 for the list, then 1 Engage request per cohort per 1000 members (Query API budget, 60 an hour).
Exit codes: 0 succeeded; 1 run failed, nothing applied; 2 nothing started (bad flags or configuration, MP002
another cohorts run is running, an unknown project, or none named while the database holds several);
130 interrupted.
`;

let mixpanel: MixpanelSettings;
await runLoaderCli<CohortsSummary>({
  name: 'sync:cohorts',
  usage,
  options: {},
  prepare(values) {
    if (values.file !== undefined) throw new Error('sync:cohorts reads Mixpanel only: --file is not supported');
  },
  configure(_values, project) {
    mixpanel = projectMixpanelSettings(project);
  },
  run: ({ databaseUrl, project, waitSeconds, signal }) =>
    syncCohorts({
      connectionString: databaseUrl,
      project: project.name,
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
