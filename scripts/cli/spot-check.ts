// npm run spot-check -- [--users N] [--seed S] [--batch B] [--project NAME] [--json] [--database-url URL]
// After a deploy, next to verify/: do the synced tables hold what Mixpanel holds, for N users chosen by a seed?
// Exit 0 they match, 1 a difference (the table says which users, days and events, and why), 2 could not check.
import { parseArgs } from 'node:util';
import { resolveDatabaseUrl } from '../loader/database-connection.ts';
import { describeError } from '../loader/describe-error.ts';
import { spotCheck, spotCheckLines } from '../loader/spot-check.ts';
import { chosenProject, lookUpProject, PROJECT_OPTION, PROJECT_USAGE, projectMixpanelSettings } from '../loader/project-config.ts';

const usage = `
npm run spot-check -- [options]

Compares N subscribers' events in PostgreSQL with Mixpanel's own (Export API, a where on distinct_id), counted with
the sync's dedup rule, per user, UTC day and event name (events_daily) and per user and event name (subscribers),
over the synced window: the events.full_window days ending with the watermark. Events after the watermark, or
processed by Mixpanel after the last run, are shown as pending, not as differences. Only the event names the setting
events.only keeps are compared (asked of the Export API, and of the stored rows; [] = every name). Writes nothing
but its own record (mixpanel_sync.spot_checks).

  --users N              how many users (default 20)
  --seed S               which users: the same seed picks the same users (default: today's UTC date)
  --batch B              users per Export request (default 25; each request counts against the Export budget)
${PROJECT_USAGE}
  --json                 the report as one JSON line
  --database-url URL     default: DATABASE_URL
  -h, --help

Environment: DATABASE_URL, MIXPANEL_PROJECT (the database-side project name, as --project),
MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET; MIXPANEL_PROJECT_ID and MIXPANEL_REGION fill the project's row where it
has none, and one that differs from the row is a configuration error.
Exit codes: 0 every chosen user matches; 1 at least one differs; 2 could not check (bad flags or configuration, an
unknown project or none named while the database holds several, nothing synced yet, Mixpanel or the database
unreachable, an incomplete export).
`;

const positive = (value: string | undefined, flag: string, fallback: number): number => {
  if (value === undefined) return fallback;
  if (!/^[1-9][0-9]*$/.test(value)) throw new Error(`--${flag} wants a positive integer, got ${value}`);
  return Number(value);
};

let exitCode = 2;
try {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      users: { type: 'string' },
      seed: { type: 'string' },
      batch: { type: 'string' },
      json: { type: 'boolean', default: false },
      'database-url': { type: 'string' },
      ...PROJECT_OPTION,
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(`${usage.trim()}\n`);
    process.exit(0);
  }
  const users = positive(values.users, 'users', 20);
  const batch = positive(values.batch, 'batch', 25);
  const seed = values.seed ?? new Date().toISOString().slice(0, 10);
  const connectionString = resolveDatabaseUrl(values['database-url']);
  const project = await lookUpProject(connectionString, chosenProject(values.project));
  const mixpanel = projectMixpanelSettings(project);
  const report = await spotCheck({
    connectionString,
    project: project.name,
    mixpanel,
    users,
    seed,
    batch,
    onRetry: ({ attempt, delayMs, error }) =>
      process.stderr.write(`spot-check: ${error.message} Retry ${attempt} in ${Math.ceil(delayMs / 1000)} s.\n`),
  });
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${spotCheckLines(report).join('\n')}\n`);
  exitCode = report.differing_users.length === 0 ? 0 : 1;
} catch (error) {
  process.stderr.write(`spot-check: could not check: ${describeError(error).split('\n')[0]}\n`);
  exitCode = 2;
}
process.exit(exitCode);
