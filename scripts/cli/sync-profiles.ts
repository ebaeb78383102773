// npm run sync:profiles -- [--file PATH|-] [--json] [--database-url URL]: one profiles run through the profiles
// loader (scripts/loader/profiles-sync.ts), its summary, an exit code by SQLSTATE.
import { pathToFileURL } from 'node:url';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { runLoaderCli } from '../loader/loader-cli.ts';
import { PROJECT_USAGE, projectMixpanelSettings, projectTimezone } from '../loader/project-config.ts';
import { profilesSummaryLine, syncProfiles, type ProfilesSummary } from '../loader/profiles-sync.ts';

const usage = `
npm run sync:profiles -- [options]

Loads Mixpanel user profiles into mixpanel_sync.subscriber_properties: one run (begin_run, COPY into staging,
finish_run). Only profiles whose content changed are written; the rest are counted unchanged.
Without --file it reads the Mixpanel Engage API.

  --file PATH, -f PATH   a JSON array of profiles, JSONL of profiles, or saved Engage response pages
                         (one per line or a JSON array of them); gzip recognised; - reads stdin
  --wait SECONDS         when another profiles run of the project is running, retry for up to SECONDS (default 0)
${PROJECT_USAGE}
  --json                 print the summary as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL; MIXPANEL_PROJECT (the database-side project name, as --project); for the Engage API
MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET. The project's row gives its Mixpanel project id, region and timezone
(the zone $created and $last_seen are read in; null: UTC); MIXPANEL_PROJECT_ID, MIXPANEL_REGION (us|eu|in) and
MIXPANEL_PROJECT_TIMEZONE fill a column that is null, and one that differs from the row is a configuration error.
Exit codes (by SQLSTATE, README "Exit codes"): 0 succeeded; 1 run failed, nothing applied; 2 nothing started
(bad flags or configuration, MP002 another profiles run is running, an unknown project, or none named while the
database holds several); 130 interrupted (the run is failed unless it had committed).
`;

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  let mixpanel: MixpanelSettings | undefined;
  let timezone: string | null = null;
  await runLoaderCli<ProfilesSummary>({
    name: 'sync:profiles',
    usage,
    options: {},
    configure(values, project) {
      if (values.file === undefined) mixpanel = projectMixpanelSettings(project);
      timezone = mixpanel ? mixpanel.projectTimezone : projectTimezone(project);
    },
    run: ({ values, databaseUrl, project, waitSeconds, signal, progress }) =>
      syncProfiles({
        waitSeconds,
        connectionString: databaseUrl,
        project: project.name,
        input: values.file as string | undefined,
        mixpanel,
        projectTimezone: timezone,
        signal,
        progress,
        onRetry: ({ attempt, delayMs, error }) =>
          process.stderr.write(`sync:profiles: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
      }),
    print: { json: (summary) => JSON.stringify(summary), lines: (summary) => [profilesSummaryLine(summary)] },
  });
}
