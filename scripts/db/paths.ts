// Where the harness finds the repository's migrations and keeps its throwaway files.
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export const defaultMigrationsFolder = path.join(repoRoot, 'migrations');

export const gmrcPath = path.join(repoRoot, '.gmrc');

/** This user's throwaway files: /tmp/mixpanel-pg-sync-<uid> (servers in instances/; as root, the relocated binaries). */
export function harnessTmpRoot(): string {
  return path.join(os.tmpdir(), `mixpanel-pg-sync-${os.userInfo().uid}`);
}
