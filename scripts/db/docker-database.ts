// Opt-in Docker path (MIXPANEL_PG_SYNC_DB=docker) through @databases/pg-test, for people who want a specific image
// (PG_TEST_IMAGE, e.g. Supabase's). pg-test waits a long time for a daemon that is not there, so we ask Docker first.
import { spawn } from 'node:child_process';

export interface DockerCheckOptions {
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

const fallback = 'or unset MIXPANEL_PG_SYNC_DB to use the embedded server (or set DATABASE_URL)';

/** Resolves when a Docker daemon answers `docker version` within timeoutMs; otherwise rejects with a one-line reason. */
export function assertDockerDaemon({ timeoutMs = 3_000, env = process.env }: DockerCheckOptions = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['version', '--format', '{{.Server.Version}}'], {
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      reject(
        new Error(`MIXPANEL_PG_SYNC_DB=docker: the Docker daemon did not answer within ${timeoutMs / 1000}s; start Docker, ${fallback}.`),
      );
    }, timeoutMs);
    child.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const reason = error.code === 'ENOENT' ? 'the docker command is not installed' : `cannot run docker (${error.message})`;
      reject(new Error(`MIXPANEL_PG_SYNC_DB=docker: ${reason}; install Docker, ${fallback}.`));
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      const detail =
        stderr
          .split('\n')
          .find((line) => line.trim())
          ?.trim() ?? `exit ${code}`;
      reject(new Error(`MIXPANEL_PG_SYNC_DB=docker: no Docker daemon is running (${detail}); start Docker, ${fallback}.`));
    });
  });
}

export interface DockerPostgres {
  url: string;
  stop(): Promise<void>;
}

type GetDatabase = typeof import('@databases/pg-test')['default'];

/** Starts a container with @databases/pg-test after checking the daemon. */
export async function startDockerPostgres(options: DockerCheckOptions = {}): Promise<DockerPostgres> {
  await assertDockerDaemon(options);
  const imported = (await import('@databases/pg-test')) as unknown as { default: GetDatabase | { default: GetDatabase } };
  const getDatabase = typeof imported.default === 'function' ? imported.default : imported.default.default;
  const { databaseURL, kill } = await getDatabase();
  return { url: databaseURL, stop: kill };
}
