// npm run status [-- --json] [--database-url URL] [--project NAME]: watermarks, last runs and mixpanel_sync.sync_health().
// Several projects in the database and none chosen (--project, MIXPANEL_PROJECT): one block per project and a total line.
// Exit code: 0 all ok, 1 a warning, 2 something critical, 3 status unknown (bad arguments, no database, cannot read it).
import { parseArgs } from 'node:util';
import pg from 'pg';
import { resolveDatabaseUrl } from '../loader/database-connection.ts';
import { describeError } from '../loader/describe-error.ts';
import { redactUrl } from '../db/database-url.ts';
import { printableStatus } from './print-status.ts';
import { chosenProject } from '../loader/loader-cli.ts';
import { projectsTotalLine, readProjectsStatus, readSyncStatus, statusExitCode } from './read-status.ts';
import { listProjects } from '../sql/sync-api.ts';

const UNKNOWN = 3;
const USAGE = 'usage: npm run status [-- --json] [--database-url URL] [--runs N] [--project NAME (default MIXPANEL_PROJECT)]';

function options(argv: string[]): { json: boolean; url: string; runs: number; project: string | null } {
  const { values } = parseArgs({
    args: argv,
    options: {
      json: { type: 'boolean' },
      'database-url': { type: 'string' },
      runs: { type: 'string' },
      project: { type: 'string' },
      help: { type: 'boolean' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(`${USAGE}\nExit code: 0 all ok, 1 warn, 2 critical, 3 unknown (cannot connect or read).`);
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
    if (settings.project === null && (await listProjects(client)).length > 1) {
      const all = await readProjectsStatus(client, settings.runs);
      process.stdout.write(
        settings.json
          ? `${JSON.stringify(all)}\n`
          : `${all.projects.map((p) => `Project ${p.project}\n\n${printableStatus(p)}`).join('\n')}\n${projectsTotalLine(all.total)}\n`,
      );
      return statusExitCode(all.total.status);
    }
    const status = await readSyncStatus(client, settings.runs, settings.project);
    process.stdout.write(settings.json ? `${JSON.stringify(status)}\n` : printableStatus(status));
    return statusExitCode(status.status);
  } catch (error) {
    console.error(
      `status: cannot read the sync status (${describeError(error)}); is the database migrated? (npx graphile-migrate migrate)`,
    );
    return UNKNOWN;
  } finally {
    await client.end().catch(() => {});
  }
}

process.exitCode = await main();
