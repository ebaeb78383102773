// Which database the loader writes to, and a small pool on it.
import pg from 'pg';

export const NO_DATABASE_MESSAGE =
  'no database to sync into: set DATABASE_URL (or pass --database-url URL); `npm run db:start` starts a local one and prints its DATABASE_URL';

/** --database-url wins, then DATABASE_URL; none is a one-line error saying what to set. */
export function resolveDatabaseUrl(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const url = flag?.trim() || env.DATABASE_URL?.trim();
  if (!url) throw new Error(NO_DATABASE_MESSAGE);
  return url;
}

export interface PoolChoice {
  /** A pool the caller owns (kept open). */
  pool?: pg.Pool;
  /** Or a URL: a pool is opened for the call and closed after it. */
  connectionString?: string;
}

/** Runs fn with choice.pool, or with a pool of two connections on choice.connectionString. */
export async function withPool<T>(choice: PoolChoice, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  if (choice.pool) return fn(choice.pool);
  if (!choice.connectionString) throw new Error(NO_DATABASE_MESSAGE);
  const pool = new pg.Pool({ connectionString: choice.connectionString, max: 2 });
  pool.on('error', () => {}); // an idle connection dropped by the server: the next query reports it
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}
