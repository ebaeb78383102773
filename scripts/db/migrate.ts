// Applies migrations with graphile-migrate's public API: committed ones (`migrate`), or those and then the current
// migration once (`watch(settings, true)`) when `status` says it is non-empty: migrations/current.sql, or
// migrations/current/*.sql in folder mode. No dist/ imports: graphile-migrate does not export its .gmrc reader, so the
// .gmrc is read here.
import { randomBytes } from 'node:crypto';
import { access, readFile } from 'node:fs/promises';
import pg from 'pg';
import { Logger, migrate, status, watch, type Settings } from 'graphile-migrate';
import { defaultMigrationsFolder, gmrcPath } from './paths.ts';
import { sleep } from './processes.ts';

export interface MigrateOptions {
  /** default: <repo>/migrations */
  migrationsFolder?: string;
  /** .gmrc to take other settings from (placeholders, pgSettings, actions); default <repo>/.gmrc when present */
  gmrc?: string | false;
  /** graphile-migrate's info lines; default: dropped (errors still go to stderr) */
  log?: (line: string) => void;
  /** graphile-migrate's error reports (with the failing SQL's position); default: stderr */
  errorLog?: (line: string) => void;
}

export interface MigrateResult {
  /** true when a non-empty current migration was applied */
  currentApplied: boolean;
}

const toStderr = (line: string): void => {
  process.stderr.write(`graphile-migrate: ${line}\n`);
};

function quietLogger({ log, errorLog = toStderr }: MigrateOptions): Logger {
  return new Logger(() => (level, message) => {
    if (level === 'error') errorLog(message);
    else log?.(message);
  });
}

const exists = (file: string): Promise<boolean> =>
  access(file).then(
    () => true,
    () => false,
  );

/** .gmrc as JSON with comments (graphile-migrate reads JSON5; this project's .gmrc keeps to JSON plus comments). */
async function gmrcSettings(file: string | false | undefined): Promise<Settings> {
  const gmrc = file ?? gmrcPath;
  if (gmrc === false) return {};
  if (!(await exists(gmrc))) {
    if (file) throw new Error(`graphile-migrate config ${file} not found`);
    return {};
  }
  const text = await readFile(gmrc, 'utf8');
  // comments out, strings kept: a string literal, or a comment (replaced by nothing)
  const json = text.replace(/("(?:[^"\\]|\\.)*")|\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, (_comment, string: string | undefined) => string ?? '');
  try {
    return JSON.parse(json) as Settings;
  } catch (error) {
    throw new Error(`${gmrc}: not JSON with comments (${(error as Error).message}); keep .gmrc to JSON plus comments`);
  }
}

/**
 * Whether the current migration (current.sql, or current/*.sql in folder mode) has any SQL, as graphile-migrate's
 * `status` reads it (it also refuses current.sql next to current/, and two current/ files with one number).
 */
export async function hasCurrentMigration(migrationsFolder = defaultMigrationsFolder): Promise<boolean> {
  // status() wants a (distinct) shadow database in its settings even when it connects to nothing
  const settings: Settings = {
    connectionString: 'postgres://offline/current',
    shadowConnectionString: 'postgres://offline/shadow',
    migrationsFolder,
  };
  return (await status(settings, { skipDatabase: true })).hasCurrentMigration;
}

function withApplicationName(url: string, name: string): string | undefined {
  try {
    const parsed = new URL(url);
    parsed.searchParams.set('application_name', name);
    return parsed.toString();
  } catch {
    return undefined;
  }
}

/**
 * graphile-migrate keeps idle pooled connections for 200 ms after use and calls process.exit(1) if the server then
 * terminates one (a server stopping, DROP DATABASE … WITH (FORCE)). So we wait until no connection with our
 * application_name is left (or 10 s).
 */
async function closeGraphileMigratePools(url: string, applicationName: string | undefined): Promise<void> {
  if (!applicationName) return sleep(500);
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  try {
    await client.connect();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const { rows } = await client.query<{ n: number }>(
        'select count(*)::int as n from pg_catalog.pg_stat_activity where application_name = $1',
        [applicationName],
      );
      if (rows[0]!.n === 0) return;
      await sleep(10);
    }
  } catch {
    // the server is gone: so are the pooled connections
  } finally {
    await client.end().catch(() => {});
  }
}

/** Migrates the database at url: committed migrations, then the current one when non-empty. */
export async function runMigrations(url: string, options: MigrateOptions = {}): Promise<MigrateResult> {
  const migrationsFolder = options.migrationsFolder ?? defaultMigrationsFolder;
  const applicationName = `mixpanel-pg-sync-migrate-${process.pid}-${randomBytes(3).toString('hex')}`;
  const taggedUrl = withApplicationName(url, applicationName);
  const settings: Settings = {
    ...(await gmrcSettings(options.gmrc)),
    connectionString: taggedUrl ?? url,
    migrationsFolder,
    logger: quietLogger(options),
  };
  try {
    if (!(await hasCurrentMigration(migrationsFolder))) {
      await migrate(settings);
      return { currentApplied: false };
    }
    await watch(settings, true);
    return { currentApplied: true };
  } finally {
    await closeGraphileMigratePools(url, taggedUrl ? applicationName : undefined);
  }
}
