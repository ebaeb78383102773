import { chmod, cp, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from './embedded-server.ts';
import { findPostgresBinaries } from './postgres-binaries.ts';
import { isRoot, postgresRunAs } from './postgres-user.ts';
import { binariesRunnableBy, copyBinariesToCache, usableBinaryDir } from './relocate-binaries.ts';

const scratch = await mkdtemp(path.join(os.tmpdir(), 'mps-relocate-test-'));
await chmod(scratch, 0o755); // like /tmp: the postgres user may traverse it (the private "home" below may not)
afterAll(() => rm(scratch, { recursive: true, force: true }));

describe.skipIf(!isRoot())('binaries inside a 0700 checkout (as root)', () => {
  it('are copied once to a shared cache that the postgres user can run, and the server starts from there', async () => {
    const packaged = await findPostgresBinaries();
    const runAs = postgresRunAs();
    // a checkout under a private home, like /root/x/node_modules/...
    const home = await mkdtemp(path.join(scratch, 'home-'));
    expect((await stat(home)).mode & 0o777).toBe(0o700);
    const privateNative = path.join(home, 'native');
    await cp(packaged.nativeDir, privateNative, { recursive: true, verbatimSymlinks: true });
    expect(binariesRunnableBy(privateNative, runAs)).toBe(false);

    const cacheRoot = path.join(scratch, 'cache');
    const usable = await usableBinaryDir({ nativeDir: privateNative, version: packaged.version, runAs, cacheRoot });
    expect(usable).toBe(path.join(cacheRoot, `pg-${packaged.version}`));
    expect(binariesRunnableBy(usable, runAs)).toBe(true);
    expect((await stat(usable)).mode & 0o777).toBe(0o755);
    expect((await stat(cacheRoot)).mode & 0o7777).toBe(0o1777);

    // reused, not copied again: same inode
    const inode = (await stat(path.join(usable, 'bin', 'postgres'))).ino;
    await usableBinaryDir({ nativeDir: privateNative, version: packaged.version, runAs, cacheRoot });
    expect((await stat(path.join(usable, 'bin', 'postgres'))).ino).toBe(inode);

    const server = await startEmbeddedPostgres({
      instancesRoot: path.join(scratch, 'instances'),
      binaryCacheRoot: cacheRoot,
      binaries: { version: packaged.version, nativeDir: privateNative },
    });
    try {
      expect(server.binDir).toBe(path.join(usable, 'bin'));
      const client = new pg.Client(server.url);
      await client.connect();
      expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      await client.end();
    } finally {
      await server.stop();
    }
  });

  it('concurrent copies race safely to one complete cache dir', async () => {
    const packaged = await findPostgresBinaries();
    const cacheRoot = path.join(scratch, 'race');
    const results = await Promise.all([1, 2].map(() => copyBinariesToCache(packaged.nativeDir, packaged.version, cacheRoot)));
    expect(new Set(results).size).toBe(1);
    expect(binariesRunnableBy(results[0]!, postgresRunAs())).toBe(true);
  });
});

describe('binaries in a readable checkout', () => {
  it('are used in place', async () => {
    const packaged = await findPostgresBinaries();
    const runAs = postgresRunAs();
    const usable = await usableBinaryDir({ ...packaged, runAs, cacheRoot: path.join(scratch, 'unused') });
    // node_modules of this checkout is readable by the server's user here unless the checkout is private
    if (binariesRunnableBy(packaged.nativeDir, runAs)) expect(usable).toBe(packaged.nativeDir);
    else expect(usable).toBe(path.join(scratch, 'unused', `pg-${packaged.version}`));
  });
});
