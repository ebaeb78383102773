// Where the harness keeps things: the repository's migrations, and its throwaway files under the OS temp dir.
import { chmod, mkdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export const defaultMigrationsFolder = path.join(repoRoot, 'migrations');

export const gmrcPath = path.join(repoRoot, '.gmrc');

/** Shared by every user and checkout of this machine: /tmp/mixpanel-pg-sync. */
export function harnessTmpRoot(): string {
  return path.join(os.tmpdir(), 'mixpanel-pg-sync');
}

/** Instance dirs of the current user's throwaway servers. */
export function defaultInstancesRoot(): string {
  return path.join(harnessTmpRoot(), `instances-${os.userInfo().uid}`);
}

/** Where binaries are copied when the checkout is unreadable for the postgres user. */
export function defaultBinaryCacheRoot(): string {
  return harnessTmpRoot();
}

/** mkdir -p, and make it shared like /tmp (1777: anyone adds entries, nobody removes another's) when we own it. */
export async function ensureSharedDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const info = await stat(dir);
  if (info.uid === process.getuid?.() && (info.mode & 0o1777) !== 0o1777) await chmod(dir, 0o1777);
}
