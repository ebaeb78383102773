// The loader's peak memory measured the way a user runs it: `npm run sync:events -- --file …` under
// `/usr/bin/time -f %M` (GNU time: the peak resident set of the largest process of the tree it waited for,
// npm's and the loader's `exec node --import tsx …` alike), started from a small process.
//
// Why not process.resourceUsage().maxRSS inside a child of the bench (the old measurement, 248 MiB): Linux keeps
// a process's RSS high-water mark across exec (signal_struct.maxrss), and a child spawned by the bench begins as
// a fork of the bench, whose RSS (the generated data, ≈ 250 MiB) becomes the child's peak before it even runs.
// /usr/bin/time forks the measured command from its own small process, so only the command's memory counts.
// Run directly: npx tsx scripts/bench/cli-rss.ts <database-url> <file> [--node]
import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { repoRoot } from '../db/paths.ts';
import type { RunSummary } from '../loader/run-summary.ts';

export const TIME_BINARY = '/usr/bin/time';

export interface MeasuredCommand {
  peakRssKiB: number;
  /** user + system CPU time of the command and its children (GNU time's %U + %S) */
  cpuMs: number;
  wallMs: number;
  stdout: string;
  stderr: string;
}

export async function timeAvailable(): Promise<boolean> {
  return access(TIME_BINARY, constants.X_OK).then(
    () => true,
    () => false,
  );
}

/** Runs `argv` under /usr/bin/time (cwd: the repository); its peak RSS in KiB. Rejects on a non-zero exit. */
export function measureCommand(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<MeasuredCommand> {
  const marker = '@@peak-rss-kib=';
  const child = spawn(TIME_BINARY, ['-f', `${marker}%M %U %S`, ...argv], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const started = performance.now();
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      const wallMs = performance.now() - started;
      const at = stderr.lastIndexOf(marker);
      if (code !== 0 || at < 0) {
        return reject(
          new Error(
            `${argv.join(' ')} exited ${code}: ${
              stderr
                .replace(/@@peak-rss-kib=[\d. ]+/, '')
                .trim()
                .split('\n')
                .at(-1) ?? ''
            }`,
          ),
        );
      }
      const [peak, user, system] = stderr
        .slice(at + marker.length)
        .trim()
        .split('\n')[0]!
        .split(' ')
        .map(Number);
      resolve({ peakRssKiB: peak!, cpuMs: ((user ?? 0) + (system ?? 0)) * 1000, wallMs, stdout, stderr: stderr.slice(0, at) });
    });
  });
}

/** `npm run sync:events -- --file <file> --full --json` (or, with direct, the `exec node --import tsx …` it runs). */
export async function measureSyncCli(
  databaseUrl: string,
  file: string,
  direct = false,
): Promise<MeasuredCommand & { summary: RunSummary }> {
  const args = ['--file', file, '--full', '--json', '--database-url', databaseUrl];
  const argv = direct
    ? [process.execPath, '--import', 'tsx', 'scripts/cli/sync-events.ts', ...args]
    : ['npm', 'run', '--silent', 'sync:events', '--', ...args];
  const measured = await measureCommand(argv);
  const line = measured.stdout.trim().split('\n').at(-1) ?? '';
  return { ...measured, summary: JSON.parse(line) as RunSummary };
}

if (process.argv[1]?.endsWith('cli-rss.ts')) {
  const [databaseUrl, file, flag] = process.argv.slice(2);
  measureSyncCli(databaseUrl!, file!, flag === '--node')
    .then((m) =>
      process.stdout.write(
        `peak RSS ${(m.peakRssKiB / 1024).toFixed(1)} MiB, ${m.summary.received} lines in ${(m.wallMs / 1000).toFixed(2)} s\n`,
      ),
    )
    .catch((error: unknown) => {
      process.stderr.write(`cli-rss: ${(error as Error).message}\n`);
      process.exitCode = 1;
    });
}
