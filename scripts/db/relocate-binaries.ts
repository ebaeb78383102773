// As root, postgres runs as the postgres user, which cannot read binaries inside a 0700 home (e.g. /root/x/node_modules).
// Then the package's native/ dir is copied once into a shared cache (/tmp/mixpanel-pg-sync/pg-<version>, 755) and run from there.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, cp, lstat, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ensureSharedDir } from './paths.ts';
import { binPath } from './postgres-binaries.ts';
import type { RunAs } from './postgres-user.ts';

/** Can `runAs` (or we, when undefined) execute `postgres --version` from nativeDir? */
export function binariesRunnableBy(nativeDir: string, runAs: RunAs | undefined): boolean {
  const result = spawnSync(binPath(nativeDir, 'postgres'), ['--version'], {
    ...(runAs ?? {}),
    stdio: 'ignore',
    timeout: 10_000,
  });
  return result.status === 0;
}

async function makeWorldReadable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await makeWorldReadable(full);
    else if (entry.isFile()) {
      const mode = (await lstat(full)).mode;
      await chmod(full, mode & 0o100 ? 0o755 : 0o644);
    }
  }
}

/** Copies nativeDir to <cacheRoot>/pg-<version> (atomic rename; a finished copy is reused) and returns the copy. */
export async function copyBinariesToCache(nativeDir: string, version: string, cacheRoot: string): Promise<string> {
  await ensureSharedDir(cacheRoot);
  const target = path.join(cacheRoot, `pg-${version}`);
  const exists = await stat(target).then(
    () => true,
    () => false,
  );
  if (exists) return target;
  const temporary = `${target}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await cp(nativeDir, temporary, { recursive: true, verbatimSymlinks: true });
    await makeWorldReadable(temporary);
    await rename(temporary, target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST' && code !== 'ENOTEMPTY') throw error; // another process finished first: use theirs
  } finally {
    await rm(temporary, { recursive: true, force: true });
  }
  return target;
}

export interface UsableBinaryOptions {
  nativeDir: string;
  version: string;
  runAs: RunAs | undefined;
  cacheRoot: string;
}

/** nativeDir itself when the server's user can run it, else the shared cached copy. */
export async function usableBinaryDir({ nativeDir, version, runAs, cacheRoot }: UsableBinaryOptions): Promise<string> {
  if (binariesRunnableBy(nativeDir, runAs)) return nativeDir;
  if (!runAs) {
    throw new Error(`cannot run ${binPath(nativeDir, 'postgres')}; reinstall with \`npm ci\` or set DATABASE_URL.`);
  }
  const copy = await copyBinariesToCache(nativeDir, version, cacheRoot);
  if (!binariesRunnableBy(copy, runAs)) {
    throw new Error(
      `the postgres user cannot run the binaries copied to ${copy}: check that every folder above it is traversable (chmod 755) or remove it and retry; or set DATABASE_URL.`,
    );
  }
  return copy;
}
