// A migrated database on a throwaway embedded PostgreSQL, whatever DATABASE_URL says: for the
// demo and measurements that write sample data, which must never land in a real database.
import pg from 'pg';
import { databaseUrl } from './database-url.ts';
import { startEmbeddedPostgres, type EmbeddedPostgres } from './embedded-server.ts';
import { runMigrations } from './migrate.ts';

export interface ThrowawayDatabase {
  url: string;
  server: EmbeddedPostgres;
}

/** Starts the server, creates and migrates database `name`, runs fn, stops the server (also on Ctrl-C: the harness's exit hooks). */
export async function withThrowawayDatabase<T>(name: string, fn: (database: ThrowawayDatabase) => Promise<T>): Promise<T> {
  const server = await startEmbeddedPostgres();
  try {
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    try {
      await admin.query(`create database ${admin.escapeIdentifier(name)}`);
    } finally {
      await admin.end();
    }
    const url = databaseUrl(server.url, name);
    await runMigrations(url);
    return await fn({ url, server });
  } finally {
    await server.stop();
  }
}
