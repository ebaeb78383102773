// Applies migrations with graphile-migrate: committed ones (`migrate`), then the current migration once
// (`watch(settings, true)`) when it is non-empty: migrations/current.sql, or migrations/current/*.sql in folder mode.
import { randomBytes } from 'node:crypto';
import { access } from 'node:fs/promises';
import pg from 'pg';
import { Logger, migrate, watch, type Settings } from 'graphile-migrate';
import { getSettings } from 'graphile-migrate/dist/commands/_common.js';
import { getCurrentMigrationLocation, readCurrentMigration } from 'graphile-migrate/dist/current.js';
import { clearAllPools } from 'graphile-migrate/dist/pgReal.js';
import type { ParsedSettings } from 'graphile-migrate/dist/settings.js';
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

async function gmrcSettings(file: string | false | undefined): Promise<Settings> {
  const path = file ?? gmrcPath;
  if (path === false) return {};
  const present = await access(path).then(() => true, () => false);
  if (!present) {
    if (file) throw new Error(`graphile-migrate config ${file} not found`);
    return {};
  }
  return getSettings({ configFile: path });
}

/** SQL with comments and whitespace removed is empty (graphile-migrate's "empty-ish"). */
export function isEmptySql(sql: string): boolean {
  return sql.replace(/\/\*[\s\S]*?\*\//g, '').replace(/--.*$/gm, '').trim() === '';
}

/** The current migration's text (current.sql or current/*.sql joined), '' when there is none. */
export async function readCurrentMigrationText(migrationsFolder = defaultMigrationsFolder): Promise<string> {
  const settings = { migrationsFolder } as ParsedSettings; // only migrationsFolder is read
  const location = await getCurrentMigrationLocation(settings);
  if (!location.exists) return '';
  return readCurrentMigration(settings, location);
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
 * terminates one (a server stopping, DROP DATABASE … WITH (FORCE)). Its clearAllPools() does not wait, so we do:
 * until no connection with our application_name is left (or 10 s).
 */
async function closeGraphileMigratePools(url: string, applicationName: string | undefined): Promise<void> {
  clearAllPools();
  if (!applicationName) return sleep(500);
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  try {
    await client.connect();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const { rows } = await client.query<{ n: number }>('select count(*)::int as n from pg_catalog.pg_stat_activity where application_name = $1', [applicationName]);
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
    await migrate(settings);
    if (isEmptySql(await readCurrentMigrationText(migrationsFolder))) return { currentApplied: false };
    await watch(settings, true);
    return { currentApplied: true };
  } finally {
    await closeGraphileMigratePools(url, taggedUrl ? applicationName : undefined);
  }
}
