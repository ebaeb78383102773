// Which PostgreSQL to use: DATABASE_URL wins; MIXPANEL_PG_SYNC_DB=docker opts into Docker; otherwise the embedded server.
import { startDockerPostgres } from './docker-database.ts';
import { startEmbeddedPostgres, type EmbeddedPostgresOptions } from './embedded-server.ts';

export type DatabaseSource = 'DATABASE_URL' | 'embedded' | 'docker';

export interface DatabaseServer {
  /** URL to connect to; for embedded and docker it has superuser rights */
  url: string;
  source: DatabaseSource;
  /** stops a server we started; does nothing for DATABASE_URL */
  stop(): Promise<void>;
}

export async function resolveDatabaseServer(
  env: NodeJS.ProcessEnv = process.env,
  embedded: EmbeddedPostgresOptions = {},
): Promise<DatabaseServer> {
  if (env.DATABASE_URL) return { url: env.DATABASE_URL, source: 'DATABASE_URL', stop: async () => {} };
  const choice = env.MIXPANEL_PG_SYNC_DB?.trim().toLowerCase();
  if (choice === 'docker') {
    const docker = await startDockerPostgres({ env });
    return { url: docker.url, source: 'docker', stop: docker.stop };
  }
  if (choice && choice !== 'embedded') {
    throw new Error(`MIXPANEL_PG_SYNC_DB=${env.MIXPANEL_PG_SYNC_DB}: expected "embedded" (default) or "docker"; or set DATABASE_URL.`);
  }
  const server = await startEmbeddedPostgres(embedded);
  return { url: server.url, source: 'embedded', stop: server.stop };
}

/** The same server and credentials, another database. */
export function databaseUrl(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${encodeURIComponent(database)}`;
  return parsed.toString();
}

export function databaseName(url: string): string {
  return decodeURIComponent(new URL(url).pathname.replace(/^\//, ''));
}

/** For printing: the URL without its password. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
