// Opt-in Docker path (MIXPANEL_PG_SYNC_DB=docker) through @databases/pg-test, for people who want a specific image
// (PG_TEST_IMAGE, e.g. Supabase's). pg-test waits a long time for a daemon that is not there, so we ask Docker first.
import { execFile } from 'node:child_process';

export interface DockerCheckOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

const fallback = 'or unset MIXPANEL_PG_SYNC_DB to use the embedded server (or set DATABASE_URL)';

/** Resolves when a Docker daemon answers `docker version` within timeoutMs; otherwise rejects with a one-line reason. */
export function assertDockerDaemon({ timeoutMs = 3_000, env = process.env }: DockerCheckOptions = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const args = ['version', '--format', '{{.Server.Version}}'];
    execFile('docker', args, { env, timeout: timeoutMs, killSignal: 'SIGKILL' }, (error, _stdout, stderr) => {
      if (!error) return resolve();
      const fail = (what: string) => reject(new Error(`MIXPANEL_PG_SYNC_DB=docker: ${what}, ${fallback}.`));
      if (error.code === 'ENOENT') return fail('the docker command is not installed; install Docker');
      if (error.killed) return fail(`the Docker daemon did not answer within ${timeoutMs / 1000}s; start Docker`);
      const detail =
        stderr
          .split('\n')
          .find((line) => line.trim())
          ?.trim() ?? error.message;
      fail(`no Docker daemon is running (${detail}); start Docker`);
    });
  });
}

type GetDatabase = typeof import('@databases/pg-test')['default'];

/** Starts a container with @databases/pg-test after checking the daemon. */
export async function startDockerPostgres(options: DockerCheckOptions = {}): Promise<{ url: string; stop(): Promise<void> }> {
  await assertDockerDaemon(options);
  const imported = (await import('@databases/pg-test')) as unknown as { default: GetDatabase | { default: GetDatabase } };
  const getDatabase = typeof imported.default === 'function' ? imported.default : imported.default.default;
  const { databaseURL, kill } = await getDatabase();
  return { url: databaseURL, stop: kill };
}
