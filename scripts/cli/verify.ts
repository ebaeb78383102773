// npm run verify [-- verify/a.sql …] — runs the plain-SQL proofs in verify/ (every *.sql, or the files named)
// against DATABASE_URL as it is (a migrated database; each script rolls back), or, when unset, against a throwaway
// embedded server migrated for the occasion. Prints each script's PASS line; exits 1 naming the scripts that failed.
// Uses pg, not psql: each file is sent as one multi-statement query and its NOTICEs are collected.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { withDatabase } from '../db/index.ts';
import { repoRoot } from '../db/paths.ts';
import { describeError } from '../loader/describe-error.ts';

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

/** Runs one script in a connection of its own; a script passes when it raises nothing and prints exactly one PASS line. */
export async function runVerifyScript(url: string, file: string): Promise<VerifyOutcome> {
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
): Promise<VerifyOutcome[]> {
  const outcomes: VerifyOutcome[] = [];
  for (const file of files) {
    const outcome = await runVerifyScript(url, file);
    report(outcome);
    outcomes.push(outcome);
  }
  return outcomes;
}

function printOutcome(outcome: VerifyOutcome): void {
  if (outcome.failure) console.error(`FAIL ${outcome.script}: ${outcome.failure}`);
  else for (const line of outcome.passLines) console.log(line);
}

async function main(args: string[]): Promise<number> {
  const files = args.length > 0 ? args : await listVerifyScripts();
  if (files.length === 0) throw new Error(`no verify scripts: ${displayName(verifyDir)} holds no *.sql file`);
  const run = (url: string) => runVerifyScripts(url, files, printOutcome);
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
