// Each throwaway server lives in <instancesRoot>/<owner pid>-<random>/ with owner.json naming the node process that owns it.
// A SIGKILLed owner leaves its postmaster running: every start removes instances whose owner is dead.
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isProcessAlive, processCommandLine, processStartTime, signalProcess, waitForProcessExit } from './processes.ts';

export interface InstanceOwner {
  pid: number;
  /** kernel start time of the owner, to tell a reused pid apart */
  startTime?: string;
  createdAt: string;
}

export const ownerFileName = 'owner.json';
export const dataDirName = 'data';

/** Creates <root>/<pid>-<random> (755, so the postgres user can traverse it) and records this process as its owner. */
export async function createInstanceDir(root: string): Promise<string> {
  await mkdir(root, { recursive: true, mode: 0o755 });
  await chmod(root, 0o755);
  const dir = path.join(root, `${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { mode: 0o755 });
  await chmod(dir, 0o755);
  const owner: InstanceOwner = { pid: process.pid, startTime: processStartTime(process.pid), createdAt: new Date().toISOString() };
  await writeFile(path.join(dir, ownerFileName), `${JSON.stringify(owner)}\n`);
  return dir;
}

async function readOwner(dir: string): Promise<InstanceOwner | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, ownerFileName), 'utf8')) as InstanceOwner;
  } catch {
    const pid = Number(path.basename(dir).split('-')[0]);
    return Number.isInteger(pid) && pid > 0 ? { pid, createdAt: '' } : undefined;
  }
}

export function ownerIsAlive(owner: InstanceOwner): boolean {
  if (!isProcessAlive(owner.pid)) return false;
  return owner.startTime === undefined || processStartTime(owner.pid) === undefined || processStartTime(owner.pid) === owner.startTime;
}

/** pid of the postmaster running on dataDir, from postmaster.pid, only if that pid really is postgres on this data dir. */
export async function runningPostmaster(dataDir: string): Promise<number | undefined> {
  let pid: number;
  try {
    pid = Number((await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
  } catch {
    return undefined;
  }
  if (!isProcessAlive(pid)) return undefined;
  const commandLine = processCommandLine(pid) ?? '';
  return commandLine.includes('postgres') && commandLine.includes(dataDir) ? pid : undefined;
}

/** Immediate shutdown of the postmaster on dataDir (SIGQUIT, then SIGKILL), if one runs. */
export async function killPostmaster(dataDir: string): Promise<void> {
  const pid = await runningPostmaster(dataDir);
  if (pid === undefined) return;
  signalProcess(pid, 'SIGQUIT');
  if (!(await waitForProcessExit(pid, 5_000))) {
    signalProcess(pid, 'SIGKILL');
    await waitForProcessExit(pid, 5_000);
  }
}

/** Stops and removes every instance under root whose owner process is dead; returns the removed dirs. */
export async function cleanupOrphanInstances(root: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const dir = path.join(root, name);
    const owner = await readOwner(dir);
    if (!owner || ownerIsAlive(owner)) continue;
    await killPostmaster(path.join(dir, dataDirName));
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
