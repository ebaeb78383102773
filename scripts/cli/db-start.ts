// npm run db:start — a development database: start (or use DATABASE_URL), migrate, print the URLs, run until Ctrl-C.
import pg from 'pg';
import { databaseUrl, redactUrl, resolveDatabaseServer } from '../db/database-url.ts';
import { runMigrations } from '../db/migrate.ts';

const database = 'mixpanel_pg_sync';

async function createDatabases(serverUrl: string, names: string[]): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    for (const name of names) await client.query(`create database ${client.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const server = await resolveDatabaseServer();
  if (server.source === 'DATABASE_URL') {
    const result = await runMigrations(server.url);
    console.log(
      `Migrated the database in DATABASE_URL (${redactUrl(server.url)})${result.currentApplied ? ', current migration included' : ''}.`,
    );
    console.log('Nothing to keep running: DATABASE_URL points at your own server. Unset it to get a throwaway one.');
    return;
  }
  try {
    await createDatabases(server.url, [database, `${database}_shadow`]);
    const url = databaseUrl(server.url, database);
    const result = await runMigrations(url);
    console.log(
      `PostgreSQL (${server.source}) is running; migrations applied${result.currentApplied ? ', current migration included' : ''}.\n`,
    );
    console.log(`DATABASE_URL=${url}`);
    console.log(`SHADOW_DATABASE_URL=${databaseUrl(server.url, `${database}_shadow`)}`);
    console.log(`ROOT_DATABASE_URL=${databaseUrl(server.url, 'postgres')}\n`);
    console.log(`psql "${url}"`);
    console.log(
      'Export the lines above in another shell (graphile-migrate watch/commit read them). Ctrl-C stops the server and deletes its data.',
    );
  } catch (error) {
    await server.stop();
    throw error;
  }
  const keepAlive = setInterval(() => {}, 1 << 30); // the server process is unref'd; stay until a signal
  await new Promise<void>((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(signal, () => resolve());
  });
  clearInterval(keepAlive);
  await server.stop();
  console.log('\nStopped; data removed.');
  process.exit(0);
}

main().catch((error: Error) => {
  console.error(`db:start: ${error.message}`);
  process.exit(1);
});
