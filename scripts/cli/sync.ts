// npm run sync -- [--project NAME] [--cohorts | --no-cohorts] [--wait SECONDS] [--json] [--database-url URL]
// For schedulers: events, then profiles, then cohorts when configured, each one ordinary run of the loader library
// (syncEvents, syncProfiles, syncCohorts: the same code as sync:events, sync:profiles and sync:cohorts), with one
// summary and one exit code. A step that fails does not stop the next (they are independent sources); Ctrl-C does.
import { parseArgs } from 'node:util';
import { syncCohorts, cohortsSummaryLine, type CohortsSummary } from '../loader/cohorts-sync.ts';
import { resolveDatabaseUrl } from '../loader/database-connection.ts';
import { describeError } from '../loader/describe-error.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { EXIT, failureOutcome, interruptOnSignals } from '../loader/loader-cli.ts';
import { progressLine } from '../loader/progress-line.ts';
import { summaryLines, type RunSummary } from '../loader/run-summary.ts';
import {
  chosenProject,
  lookUpProject,
  PROJECT_OPTION,
  PROJECT_USAGE,
  projectMixpanelSettings,
  type ProjectRow,
} from '../loader/project-config.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { profilesSummaryLine, syncProfiles, type ProfilesSummary } from '../loader/profiles-sync.ts';

const usage = `
npm run sync -- [options]

One scheduled sync of one project: events, then profiles, then cohorts when configured; one summary, one exit
code. Each step is the same run as npm run sync:events / sync:profiles / sync:cohorts against the Mixpanel APIs.
Several projects: one scheduled process per project, each with its own credentials (README "Several projects").

  --cohorts              also sync cohorts (default: MIXPANEL_SYNC_COHORTS=on)
  --no-cohorts           do not, whatever MIXPANEL_SYNC_COHORTS says
  --wait SECONDS         when another run of a source is running, retry begin_run for up to SECONDS (default 0)
${PROJECT_USAGE}
  --json                 print the summary as one JSON line: {"status", "exit_code", "steps": [...]}
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL, MIXPANEL_PROJECT (the database-side project name, as --project),
MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET, MIXPANEL_SYNC_COHORTS (on|off). The project's row gives its Mixpanel
project id, region and timezone; MIXPANEL_PROJECT_ID, MIXPANEL_REGION and MIXPANEL_PROJECT_TIMEZONE fill a column
that is null, and one that differs from the row is a configuration error (exit 2, before any request).
Exit code, the worst step's: 0 every step succeeded; 1 a step's run failed (nothing of that step applied; the
others ran); 2 a step did not start (MP002 another run of that source is running, MP004, unreachable database)
or bad flags/configuration (an unknown project, or none named while the database holds several); 130 interrupted
(the running step is failed, the next ones are not started).
`;

type StepName = 'events' | 'profiles' | 'cohorts';

export interface StepResult {
  step: StepName;
  exit_code: number;
  summary: RunSummary | ProfilesSummary | CohortsSummary | null;
  error: string | null;
}

export interface SyncAllSummary {
  status: 'succeeded' | 'failed';
  exit_code: number;
  steps: StepResult[];
}

/** The worst exit code: interrupted, then a failed run, then a step that did not start. */
export function worstExit(codes: readonly number[]): number {
  for (const code of [EXIT.interrupted, EXIT.failed, EXIT.notStarted]) if (codes.includes(code)) return code;
  return EXIT.ok;
}

function fail(code: number, message: string): never {
  process.stderr.write(`sync: ${message}\n`);
  process.exit(code);
}

let values: Record<string, string | boolean | undefined>;
let databaseUrl: string;
let mixpanel: MixpanelSettings;
let project: ProjectRow;
let waitSeconds = 0;
try {
  values = parseArgs({
    args: process.argv.slice(2),
    options: {
      cohorts: { type: 'boolean' },
      'no-cohorts': { type: 'boolean' },
      wait: { type: 'string' },
      json: { type: 'boolean', default: false },
      'database-url': { type: 'string' },
      ...PROJECT_OPTION,
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
  if (values.help) {
    process.stdout.write(`${usage.trim()}\n`);
    process.exit(EXIT.ok);
  }
  if (values.wait !== undefined) {
    waitSeconds = Number(values.wait);
    if (!/^\d+(\.\d+)?$/.test(String(values.wait))) throw new Error(`--wait wants a number of seconds, got ${String(values.wait)}`);
  }
  databaseUrl = resolveDatabaseUrl(values['database-url'] as string | undefined);
  const name = chosenProject(values.project);
  try {
    project = await lookUpProject(databaseUrl, name);
  } catch (error) {
    // MP004: an unknown name, or none while the database holds several projects (the names are in the hint)
    throw new Error(`no run started: ${describeError(error)}`);
  }
  mixpanel = projectMixpanelSettings(project);
} catch (error) {
  fail(EXIT.notStarted, `${describeError(error).split('\n')[0]} (see npm run sync -- --help)`);
}

const cohortsSetting = process.env.MIXPANEL_SYNC_COHORTS?.trim().toLowerCase();
if (cohortsSetting && !['on', 'off'].includes(cohortsSetting))
  fail(EXIT.notStarted, `MIXPANEL_SYNC_COHORTS is "${cohortsSetting}": set it to on or off`);
const withCohorts = values['no-cohorts'] === true ? false : values.cohorts === true || cohortsSetting === 'on';
const projectTimezone = mixpanel.projectTimezone;
const projectName = project.name;

const controller = new AbortController();
const release = interruptOnSignals(controller, 'sync');
const retryNote =
  (step: string) =>
  ({ attempt, delayMs, error }: { attempt: number; delayMs: number; error: Error }) =>
    process.stderr.write(`sync ${step}: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`);

const steps: Array<{ step: StepName; run: () => Promise<StepResult['summary']>; lines: (summary: never) => string[] }> = [
  {
    step: 'events',
    run: () =>
      syncEvents({
        connectionString: databaseUrl,
        project: projectName,
        mixpanel,
        projectTimezone,
        waitSeconds,
        signal: controller.signal,
        progress: progressLine(process.stderr, 'sync events'),
        onRetry: retryNote('events'),
      }),
    lines: (summary: RunSummary) => summaryLines(summary),
  },
  {
    step: 'profiles',
    run: () =>
      syncProfiles({
        connectionString: databaseUrl,
        project: projectName,
        mixpanel,
        projectTimezone,
        waitSeconds,
        signal: controller.signal,
        progress: progressLine(process.stderr, 'sync profiles'),
        onRetry: retryNote('profiles'),
      }),
    lines: (summary: ProfilesSummary) => [
      `profiles run ${summary.run_id}: ${summary.status} in ${(summary.duration_ms / 1000).toFixed(1)} s`,
      `  ${profilesSummaryLine(summary)}`,
    ],
  },
  ...(withCohorts
    ? [
        {
          step: 'cohorts' as const,
          run: () =>
            syncCohorts({
              connectionString: databaseUrl,
              project: projectName,
              mixpanel,
              waitSeconds,
              signal: controller.signal,
              onRetry: retryNote('cohorts'),
            }),
          lines: (summary: CohortsSummary) => [
            `cohorts run ${summary.run_id}: ${summary.status} in ${(summary.duration_ms / 1000).toFixed(1)} s`,
            `  ${cohortsSummaryLine(summary)}`,
          ],
        },
      ]
    : []),
];

const results: StepResult[] = [];
for (const { step, run, lines } of steps) {
  if (controller.signal.aborted) break;
  try {
    const summary = await run();
    results.push({ step, exit_code: EXIT.ok, summary, error: null });
    if (!values.json) process.stdout.write(`${lines(summary as never).join('\n')}\n`);
  } catch (error) {
    const outcome = failureOutcome(error, controller.signal);
    results.push({ step, exit_code: outcome.exitCode, summary: outcome.summary as StepResult['summary'], error: outcome.message });
    if (!values.json) {
      if (outcome.summary) process.stdout.write(`${lines(outcome.summary as never).join('\n')}\n`);
      process.stdout.write(`${step}: ${outcome.message}\n`);
    }
  }
}
release();

const exitCode = worstExit(results.map((r) => r.exit_code));
const total: SyncAllSummary = { status: exitCode === EXIT.ok ? 'succeeded' : 'failed', exit_code: exitCode, steps: results };
if (values.json) process.stdout.write(`${JSON.stringify(total)}\n`);
else
  process.stdout.write(
    `sync: ${results.map((r) => `${r.step} ${r.exit_code === EXIT.ok ? 'ok' : `exit ${r.exit_code}`}`).join(', ')}${controller.signal.aborted ? ', interrupted' : ''} -> exit ${exitCode}\n`,
  );
process.exit(exitCode);
