import { spawnSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { chmod, cp, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from './embedded-server.ts';
import { harnessTmpRoot } from './paths.ts';
import { isRoot, postgresRunAs } from './postgres-user.ts';
import { copyPlatformPackage, packagedBinaries } from './relocate-binaries.ts';

const scratch = await mkdtemp(path.join(os.tmpdir(), 'mps-relocate-test-'));
await chmod(scratch, 0o755); // like /tmp: the postgres user may traverse it (the private "home" below may not)
afterAll(() => rm(scratch, { recursive: true, force: true }));

/** Can the postgres user run `postgres --version` from this package copy? */
function runnableByPostgres(packageDir: string): boolean {
  const postgres = path.join(packageDir, 'native', 'bin', 'postgres');
  return spawnSync(postgres, ['--version'], { ...postgresRunAs(), stdio: 'ignore', timeout: 10_000 }).status === 0;
}

describe.skipIf(!isRoot())('binaries inside a 0700 checkout (as root)', () => {
  // Without relocateBinaries in loadEmbeddedPostgres, the postmaster runs from node_modules: seen failing.
  it('the server runs from the shared world-readable copy, not from node_modules', async () => {
    const server = await startEmbeddedPostgres({ instancesRoot: path.join(scratch, 'instances') });
    try {
      expect(readlinkSync(`/proc/${server.pid}/exe`).startsWith(`${harnessTmpRoot()}/`)).toBe(true);
      expect(server.binDir.startsWith(`${harnessTmpRoot()}/`)).toBe(true);
    } finally {
      await server.stop();
    }
  });

  it('a private copy is not runnable by the postgres user; its copy to the cache is, made once', async () => {
    const packaged = await packagedBinaries();
    const home = await mkdtemp(path.join(scratch, 'home-')); // like /root/x
    expect((await stat(home)).mode & 0o777).toBe(0o700);
    const privatePackage = path.join(home, 'package');
    await cp(packaged.dir, privatePackage, { recursive: true, verbatimSymlinks: true });
    expect(runnableByPostgres(privatePackage)).toBe(false);

    const cacheRoot = path.join(scratch, 'cache');
    const copies = await Promise.all([1, 2].map(() => copyPlatformPackage(privatePackage, packaged.version, cacheRoot)));
    expect(new Set(copies).size).toBe(1); // concurrent copies race to one complete folder
    expect(runnableByPostgres(copies[0]!)).toBe(true);
    const inode = (await stat(path.join(copies[0]!, 'native', 'bin', 'postgres'))).ino;
    await copyPlatformPackage(privatePackage, packaged.version, cacheRoot);
    expect((await stat(path.join(copies[0]!, 'native', 'bin', 'postgres'))).ino).toBe(inode); // reused, not copied again
  });
});
