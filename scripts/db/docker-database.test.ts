import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveDatabaseServer } from './database-url.ts';
import { assertDockerDaemon } from './docker-database.ts';

const bin = await mkdtemp(path.join(os.tmpdir(), 'mps-docker-test-'));
afterAll(() => rm(bin, { recursive: true, force: true }));

/** A PATH whose only `docker` is the given shell script (plus the system dirs for sh and sleep). */
async function pathWithDocker(name: string, script: string | undefined): Promise<string> {
  const dir = path.join(bin, name);
  if (script !== undefined) {
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'docker'), `#!/bin/sh\n${script}\n`);
    await chmod(path.join(dir, 'docker'), 0o755);
  }
  return [dir, '/usr/bin', '/bin'].join(path.delimiter);
}

async function timed<T>(promise: Promise<T>): Promise<{ error: Error; ms: number }> {
  const started = Date.now();
  const error = await promise.then(
    () => new Error('expected a rejection'),
    (e: Error) => e,
  );
  return { error, ms: Date.now() - started };
}

describe('MIXPANEL_PG_SYNC_DB=docker', () => {
  it('fails fast with what to do when the docker command is missing', async () => {
    const env = { MIXPANEL_PG_SYNC_DB: 'docker', PATH: await pathWithDocker('none', undefined) };
    const { error, ms } = await timed(resolveDatabaseServer(env));
    expect(error.message).toBe(
      'MIXPANEL_PG_SYNC_DB=docker: the docker command is not installed; install Docker, or unset MIXPANEL_PG_SYNC_DB to use the embedded server (or set DATABASE_URL).',
    );
    expect(ms).toBeLessThan(2_000);
  });

  it('fails fast when no daemon runs (docker CLI present)', async () => {
    const script = 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2; exit 1';
    const env = { MIXPANEL_PG_SYNC_DB: 'docker', PATH: await pathWithDocker('nodaemon', script) };
    const { error, ms } = await timed(resolveDatabaseServer(env));
    expect(error.message).toMatch(
      /^MIXPANEL_PG_SYNC_DB=docker: no Docker daemon is running \(Cannot connect to the Docker daemon.*\); start Docker, or unset MIXPANEL_PG_SYNC_DB/,
    );
    expect(error.message).not.toContain('\n');
    expect(ms).toBeLessThan(2_000);
  });

  it('gives up after the timeout when the daemon hangs', async () => {
    const env = { PATH: await pathWithDocker('hang', 'exec sleep 30') };
    const { error, ms } = await timed(assertDockerDaemon({ timeoutMs: 500, env }));
    expect(error.message).toMatch(/Docker daemon did not answer within 0.5s; start Docker, or unset MIXPANEL_PG_SYNC_DB/);
    expect(ms).toBeGreaterThanOrEqual(450);
    expect(ms).toBeLessThan(2_000);
  });

  it('passes when the daemon answers', async () => {
    await assertDockerDaemon({ env: { PATH: await pathWithDocker('ok', 'echo 28.2.2') } });
  });

  it('is overridden by DATABASE_URL, and an unknown value is refused', async () => {
    const server = await resolveDatabaseServer({ DATABASE_URL: 'postgres://u@127.0.0.1:1/x', MIXPANEL_PG_SYNC_DB: 'docker', PATH: '' });
    expect(server).toMatchObject({ url: 'postgres://u@127.0.0.1:1/x', source: 'DATABASE_URL' });
    await expect(resolveDatabaseServer({ MIXPANEL_PG_SYNC_DB: 'podman' })).rejects.toThrow(/expected "embedded" \(default\) or "docker"/);
  });
});
