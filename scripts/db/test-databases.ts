// One migrated template database per test run, one clone per test file (CREATE DATABASE … TEMPLATE …),
// so files run in parallel without sharing state. Works on any server where our user may create databases.
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { databaseName, databaseUrl, resolveDatabaseServer } from './database-url.ts';
import { runMigrations, type MigrateOptions } from './migrate.ts';
import { sleep } from './processes.ts';

export interface TemplateDatabase {
  /** URL of a database on the server used for CREATE/DROP DATABASE (never the template) */
  serverUrl: string;
  /** migrated template database name */
  template: string;
  /** every database of this run starts with it; dropDatabasesWithPrefix removes leftovers */
  prefix: string;
}

const quote = (name: string): string => pg.Client.prototype.escapeIdentifier(name);

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {}); // a server shutting down must not crash the caller
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

function maintenanceUrl(url: string, template: string): string {
  return databaseName(url) === template ? databaseUrl(url, 'postgres') : url;
}

/** A fresh, unique prefix like mps_lx2a9f_3b1c (lower case, short enough for 63-byte names). */
export function newRunPrefix(): string {
  return `mps_${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;
}

async function waitForNoConnections(client: pg.Client, database: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await client.query<{ n: number }>('select count(*)::int as n from pg_catalog.pg_stat_activity where datname = $1', [
      database,
    ]);
    if (rows[0]!.n === 0) return;
    if (Date.now() > deadline) throw new Error(`database ${database} still has ${rows[0]!.n} connection(s); it cannot serve as a template`);
    await sleep(20);
  }
}

/** Creates <prefix>_template on the server of serverUrl, migrates it, and closes it to connections. */
export async function createTemplateDatabase(
  serverUrl: string,
  options: MigrateOptions & { prefix?: string } = {},
): Promise<TemplateDatabase> {
  const prefix = options.prefix ?? newRunPrefix();
  const template = `${prefix}_template`;
  await withClient(serverUrl, async (client) => {
    await client.query(`create database ${quote(template)}`).catch((error: Error) => {
      throw new Error(
        `cannot create a test database on ${databaseName(serverUrl)}'s server (${error.message}); the user in DATABASE_URL needs CREATEDB.`,
      );
    });
  });
  try {
    await runMigrations(databaseUrl(serverUrl, template), options);
    await withClient(serverUrl, async (client) => {
      await waitForNoConnections(client, template);
      await client.query(`alter database ${quote(template)} with is_template true allow_connections false`);
    });
  } catch (error) {
    await dropDatabase(serverUrl, template).catch(() => {});
    throw error;
  }
  return { serverUrl, template, prefix };
}

/** CREATE DATABASE <name> TEMPLATE <template>; returns the new database's URL. */
export async function cloneDatabase(
  template: TemplateDatabase,
  name = `${template.prefix}_${randomBytes(4).toString('hex')}`,
): Promise<string> {
  await withClient(template.serverUrl, async (client) => {
    for (let attempt = 1; ; attempt++) {
      try {
        await client.query(`create database ${quote(name)} template ${quote(template.template)}`);
        return;
      } catch (error) {
        // 55006 "source database is being accessed by other users": a concurrent clone; try again shortly
        if ((error as { code?: string }).code !== '55006' || attempt >= 50) throw error;
        await sleep(50 + Math.random() * 100);
      }
    }
  });
  return databaseUrl(template.serverUrl, name);
}

/** Drops a database even when connections are open (WITH (FORCE), PG 13+); also drops templates. */
export async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  await withClient(maintenanceUrl(serverUrl, name), async (client) => {
    await client.query(`alter database ${quote(name)} with is_template false`).catch(() => {});
    await client.query(`drop database if exists ${quote(name)} with (force)`);
  });
}

/** Drops every database whose name starts with prefix + "_" (a run's template and forgotten clones). */
export async function dropDatabasesWithPrefix(serverUrl: string, prefix: string): Promise<string[]> {
  const names = await withClient(serverUrl, async (client) => {
    const { rows } = await client.query<{ datname: string }>(
      "select datname from pg_catalog.pg_database where starts_with(datname, $1 || '_') order by datname desc",
      [prefix],
    );
    return rows.map((row) => row.datname);
  });
  for (const name of names) await dropDatabase(serverUrl, name);
  return names;
}

/**
 * Runs fn with the URL of a migrated database, then cleans up.
 * DATABASE_URL set: that database is migrated and used as it is (never dropped).
 * Otherwise: a throwaway server (embedded, or Docker with MIXPANEL_PG_SYNC_DB=docker), database mixpanel_pg_sync, stopped afterwards.
 */
export async function withDatabase<T>(
  fn: (url: string) => Promise<T>,
  options: MigrateOptions & { env?: NodeJS.ProcessEnv } = {},
): Promise<T> {
  const server = await resolveDatabaseServer(options.env ?? process.env);
  try {
    let url = server.url;
    if (server.source !== 'DATABASE_URL') {
      await withClient(server.url, (client) => client.query('create database mixpanel_pg_sync'));
      url = databaseUrl(server.url, 'mixpanel_pg_sync');
    }
    await runMigrations(url, options);
    return await fn(url);
  } finally {
    await server.stop();
  }
}
