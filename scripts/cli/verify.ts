// npm run verify [-- [--project NAME] verify/a.sql …] — runs the plain-SQL proofs in verify/ (every *.sql, or the files
// named) against DATABASE_URL as it is (a migrated database; each script rolls back), or, when unset, against a
// throwaway embedded server migrated for the occasion. Prints each script's PASS line; exits 1 naming the scripts that
// failed. Uses pg, not psql: each file is sent as one multi-statement query and its NOTICEs are collected.
// --project NAME (or MIXPANEL_PROJECT): the project must exist; its name is given to every script as the session
// setting mixpanel_sync.project (psql: PGOPTIONS='-c mixpanel_sync.project=NAME'), the one channel that plain SQL run
// by both psql and pg can read (current_setting('mixpanel_sync.project', true)).
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { withDatabase } from '../db/index.ts';
import { repoRoot } from '../db/paths.ts';
import { describeError } from '../loader/describe-error.ts';
import { chosenProject, lookUpProject, PROJECT_OPTION, PROJECT_USAGE } from '../loader/project-config.ts';

export const verifyDir = path.join(repoRoot, 'verify');

export interface VerifyOutcome {
  /** path relative to the repository (or as given) */
  script: string;
  /** the NOTICE lines starting with PASS */
  passLines: string[];
  /** why it failed, one line; undefined when it passed */
  failure?: string;
}

/** verify/*.sql, sorted by name. */
export async function listVerifyScripts(dir = verifyDir): Promise<string[]> {
  const names = await readdir(dir);
  return names
    .filter((name) => name.endsWith('.sql'))
    .sort()
    .map((name) => path.join(dir, name));
}

function displayName(file: string): string {
  const relative = path.relative(repoRoot, path.resolve(file));
  return relative.startsWith('..') ? file : relative;
}

/** The first psql meta-command line (\set, \gset, \echo …), which a plain-SQL verify script must not have. */
export function firstMetaCommand(sql: string): string | undefined {
  const lines = sql.split('\n');
  const index = lines.findIndex((line) => /^\s*\\/.test(line) || /\\g?set\s*$/.test(line));
  return index < 0 ? undefined : `line ${index + 1}: ${lines[index]!.trim()}`;
}

/**
 * Runs one script in a connection of its own; a script passes when it raises nothing and prints exactly one PASS line.
 * project: given to the script as the session setting mixpanel_sync.project (null: not set, the only project).
 */
export async function runVerifyScript(url: string, file: string, project: string | null = null): Promise<VerifyOutcome> {
  const script = displayName(file);
  const sql = await readFile(file, 'utf8');
  const meta = firstMetaCommand(sql);
  if (meta)
    return {
      script,
      passLines: [],
      failure: `uses a psql meta-command (${meta}); verify scripts must be plain SQL that psql and pg both run`,
    };
  const notices: string[] = [];
  const client = new pg.Client({ connectionString: url });
  client.on('notice', (notice) => notices.push(notice.message ?? ''));
  client.on('error', () => {}); // a server going away is reported by the query that was running
  await client.connect();
  try {
    if (project !== null) await client.query(`select pg_catalog.set_config('mixpanel_sync.project', $1, false)`, [project]);
    await client.query(sql);
  } catch (error) {
    await client.query('rollback').catch(() => {});
    return { script, passLines: notices.filter((n) => n.startsWith('PASS')), failure: describeError(error) };
  } finally {
    await client.end();
  }
  const passLines = notices.filter((n) => n.startsWith('PASS'));
  if (passLines.length !== 1) {
    return { script, passLines, failure: `printed ${passLines.length} PASS lines, expected exactly one` };
  }
  return { script, passLines };
}

/** Runs the scripts one after the other against url, reporting each outcome as it comes. */
export async function runVerifyScripts(
  url: string,
  files: string[],
  report: (outcome: VerifyOutcome) => void = () => {},
  project: string | null = null,
): Promise<VerifyOutcome[]> {
  const outcomes: VerifyOutcome[] = [];
  for (const file of files) {
    const outcome = await runVerifyScript(url, file, project);
    report(outcome);
    outcomes.push(outcome);
  }
  return outcomes;
}

function printOutcome(outcome: VerifyOutcome): void {
  if (outcome.failure) console.error(`FAIL ${outcome.script}: ${outcome.failure}`);
  else for (const line of outcome.passLines) console.log(line);
}

const USAGE = `
npm run verify [-- [options] [verify/SCRIPT.sql …]]

Runs the plain-SQL proofs in verify/ (every *.sql, or the files named), each in a transaction it rolls back, against
DATABASE_URL as it is (migrated already), or without DATABASE_URL against a throwaway embedded server migrated for the
occasion. Prints each script's PASS line; exit 0 all passed, 1 a script failed (named) or the project is unknown.

${PROJECT_USAGE}
                         its name reaches each script as the session setting mixpanel_sync.project
                         (psql: PGOPTIONS='-c mixpanel_sync.project=NAME' psql -f verify/SCRIPT.sql)
  -h, --help
`;

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...PROJECT_OPTION, help: { type: 'boolean', short: 'h' } },
    strict: true,
    allowPositionals: true,
  });
  if (values.help) {
    console.log(USAGE.trim());
    return 0;
  }
  const project = chosenProject(values.project);
  const files = positionals.length > 0 ? positionals : await listVerifyScripts();
  if (files.length === 0) throw new Error(`no verify scripts: ${displayName(verifyDir)} holds no *.sql file`);
  const run = async (url: string) => {
    // an unknown name, or none while the database holds several projects: MP004, the names in its hint
    if (project !== null) await lookUpProject(url, project).catch((error: unknown) => Promise.reject(new Error(describeError(error))));
    return runVerifyScripts(url, files, printOutcome, project);
  };
  const outcomes = process.env.DATABASE_URL ? await run(process.env.DATABASE_URL) : await withDatabase(run);
  const failed = outcomes.filter((outcome) => outcome.failure);
  console.log(
    `verify: ${outcomes.length - failed.length} passed, ${failed.length} failed${failed.length ? ` (${failed.map((o) => o.script).join(', ')})` : ''}`,
  );
  return failed.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(`verify: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    },
  );
}
