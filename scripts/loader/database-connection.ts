// Which database the loader writes to, and a small pool on it.
import net from 'node:net';
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

/**
 * Runs fn with choice.pool, or with a pool of three connections on choice.connectionString: the run's own, and two
 * for the heartbeat and for parsing COPY chunks while the next streams (staged-sync.ts).
 */
export async function withPool<T>(choice: PoolChoice, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  if (choice.pool) return fn(choice.pool);
  if (!choice.connectionString) throw new Error(NO_DATABASE_MESSAGE);
  const pool = new pg.Pool({ connectionString: choice.connectionString, max: 3 });
  pool.on('error', () => {}); // an idle connection dropped by the server: the next query reports it
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/**
 * Asks the server to cancel the statement `client` is running, as libpq's PQcancel does: a CancelRequest carrying the
 * connection's key, on a socket of its own. Unlike `pg_cancel_backend(pid)` it needs no privilege and reaches the
 * right server session through a transaction pooler: pgbouncer routes the key to the server session serving the
 * client at that moment, while a pid read in an earlier transaction may by then belong to another client's session
 * (scripts/loader/pgbouncer.test.ts). Resolves once the server has closed the socket; a statement that already ended
 * is not affected.
 */
export function sendCancelRequest(client: pg.ClientBase): Promise<void> {
  const { host, port, processID, secretKey } = client as unknown as {
    host: string;
    port: number;
    processID: number | null;
    secretKey: number | null;
  };
  if (processID === null || secretKey === null) return Promise.reject(new Error('the connection has no cancel key (not connected)'));
  const message = Buffer.alloc(16);
  message.writeInt32BE(16, 0);
  message.writeInt32BE(80877102, 4); // CancelRequest code
  message.writeInt32BE(processID, 8);
  message.writeInt32BE(secretKey, 12);
  return new Promise((resolve, reject) => {
    const socket = host.startsWith('/') ? net.connect(`${host}/.s.PGSQL.${port}`) : net.connect(port, host);
    socket.once('connect', () => socket.write(message)); // not end(): a pooler may drop a request whose sender hung up
    socket.once('error', reject);
    socket.once('close', () => resolve());
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer to the cancel request within 10 s')));
  });
}
