// npm run status [-- --json] [--project NAME] [--database-url URL]: watermarks, last runs and
// mixpanel_sync.sync_health() of one project (the one named, or the only one); with several projects and none named,
// one block per project and a total line (--json: {projects: [...], total: {...}}).
// Exit code, the worst project's: 0 all ok, 1 a warning, 2 something critical, 3 status unknown (bad arguments, no
// database, cannot read it, an unknown project).
import { parseArgs } from 'node:util';
import pg from 'pg';
import { resolveDatabaseUrl } from '../loader/database-connection.ts';
import { describeError } from '../loader/describe-error.ts';
import { redactUrl } from '../db/database-url.ts';
import { chosenProject, PROJECT_OPTION } from '../loader/project-config.ts';
import { SQLSTATE, sqlState } from '../loader/staged-sync.ts';
import { printableProjects, printableStatus } from './print-status.ts';
import { readStatus, statusExitCode } from './read-status.ts';

const UNKNOWN = 3;
const USAGE = 'usage: npm run status [-- --json] [--project NAME] [--database-url URL] [--runs N]';
const HELP = `${USAGE}

Watermarks, the last N runs (default 10) and the health checks (mixpanel_sync.sync_health) of one project: the one
named by --project NAME or MIXPANEL_PROJECT, else the database's only project. With several projects and none named:
one block per project, then a total line ("3 projects: 2 ok, 1 warn (eu_app: events.watermark_lag)"); --json prints
{"projects": [...], "total": {...}} instead of one project's object.
Exit code, the worst project's: 0 all ok, 1 warn, 2 critical, 3 unknown (cannot connect or read, an unknown project).`;

function options(argv: string[]): { json: boolean; url: string; runs: number; project: string | null } {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean' },
      'database-url': { type: 'string' },
      runs: { type: 'string' },
      ...PROJECT_OPTION,
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const runs = Number(values.runs ?? 10);
  if (!Number.isInteger(runs) || runs < 0) throw new Error(`--runs must be a whole number, got ${values.runs}`);
  return { json: values.json ?? false, url: resolveDatabaseUrl(values['database-url']), runs, project: chosenProject(values.project) };
}

async function main(): Promise<number> {
  let settings: ReturnType<typeof options>;
  try {
    settings = options(process.argv.slice(2));
  } catch (error) {
    console.error(`status: ${describeError(error)} (${USAGE})`);
    return UNKNOWN;
  }
  const client = new pg.Client({ connectionString: settings.url, connectionTimeoutMillis: 10_000 });
  client.on('error', () => {}); // a dropped connection surfaces as the failing query's error
  try {
    await client.connect();
  } catch (error) {
    console.error(`status: cannot connect to ${redactUrl(settings.url)}: ${describeError(error)}`);
    return UNKNOWN;
  }
  try {
    const status = await readStatus(client, settings.runs, settings.project);
    if (settings.json) process.stdout.write(`${JSON.stringify(status)}\n`);
    else process.stdout.write('total' in status ? printableProjects(status) : printableStatus(status));
    return statusExitCode('total' in status ? status.total.status : status.status);
  } catch (error) {
    // MP004: an unknown project (the names are in the hint)
    if (sqlState(error) === SQLSTATE.invalidArguments) console.error(`status: ${describeError(error)}`);
    else
      console.error(
        `status: cannot read the sync status (${describeError(error)}); is the database migrated? (npx graphile-migrate migrate)`,
      );
    return UNKNOWN;
  } finally {
    await client.end().catch(() => {});
  }
}

process.exitCode = await main();
