// npm run spot-check -- [--users N] [--seed S] [--batch B] [--json] [--database-url URL]
// After a deploy, next to verify/: do the synced tables hold what Mixpanel holds, for N users chosen by a seed?
// Exit 0 they match, 1 a difference (the table says which users, days and events, and why), 2 could not check.
import { parseArgs } from 'node:util';
import { resolveDatabaseUrl } from '../loader/database-connection.ts';
import { describeError } from '../loader/describe-error.ts';
import { chosenProject } from '../loader/loader-cli.ts';
import { spotCheck, spotCheckLines } from '../loader/spot-check.ts';
import { readMixpanelSettings } from '../mixpanel/mixpanel-settings.ts';

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
  --json                 the report as one JSON line
  --database-url URL     default: DATABASE_URL
  --project NAME         the project (mixpanel_sync.projects; default MIXPANEL_PROJECT, else the only one)
  -h, --help

Environment: DATABASE_URL, MIXPANEL_PROJECT (the project's name in this database), MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET, MIXPANEL_PROJECT_ID, MIXPANEL_REGION.
Exit codes: 0 every chosen user matches; 1 at least one differs; 2 could not check (bad flags, nothing synced yet,
Mixpanel or the database unreachable, an incomplete export).
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
      project: { type: 'string' },
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
  const mixpanel = readMixpanelSettings();
  const report = await spotCheck({
    connectionString,
    mixpanel,
    project: chosenProject(values.project),
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
