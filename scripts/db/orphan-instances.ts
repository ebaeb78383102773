// Each throwaway server lives in <root>/<owner pid>-<random>/. A SIGKILLed owner leaves its postmaster running, so
// every start stops and removes the instances whose owner process is gone.
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { isProcessAlive, processCommandLine, waitForProcessExit } from './processes.ts';

const instanceName = /^([0-9]+)-[0-9a-f]+$/;

/** Creates <root>/<pid>-<random>, both 755 whatever the umask: the postgres user (as root) must traverse them. */
export async function createInstanceDir(root: string): Promise<string> {
  const dir = path.join(root, `${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  await chmod(root, 0o755);
  await chmod(dir, 0o755);
  return dir;
}

/** pid of the postmaster running on dataDir (from postmaster.pid), only if that pid is a postgres on this data dir. */
async function runningPostmaster(dataDir: string): Promise<number | undefined> {
  const pid = Number(
    await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8').then(
      (text) => text.split('\n')[0],
      () => undefined,
    ),
  );
  const commandLine = processCommandLine(pid);
  return isProcessAlive(pid) && commandLine.includes('postgres') && commandLine.includes(dataDir) ? pid : undefined;
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // gone already
  }
}

/** Stops (immediate shutdown) and removes every instance under root whose owner process is dead; returns their dirs. */
export async function removeOrphanInstances(root: string): Promise<string[]> {
  const names = await readdir(root).catch(() => [] as string[]);
  const removed: string[] = [];
  for (const name of names) {
    const owner = instanceName.exec(name)?.[1];
    if (!owner || isProcessAlive(Number(owner))) continue;
    const dir = path.join(root, name);
    const pid = await runningPostmaster(path.join(dir, 'data'));
    if (pid) {
      signal(pid, 'SIGQUIT');
      if (!(await waitForProcessExit(pid, 5_000))) signal(pid, 'SIGKILL');
      await waitForProcessExit(pid, 5_000);
    }
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
