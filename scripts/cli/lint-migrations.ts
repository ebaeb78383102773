// npm run lint:sql — squawk (the migration linter, config in .squawk.toml) on migrations/committed/*.sql, then on the
// current migration as graphile-migrate will commit it: migrations/current.sql, or migrations/current/*.sql joined in
// numeric order. Joined, because the migration runs as one transaction: `set local lock_timeout` in its first file
// covers every later file. Findings in the joined text are reported at their own file and line.
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { repoRoot } from '../db/paths.ts';

const squawk = path.join(repoRoot, 'node_modules', '.bin', 'squawk');
const migrations = path.join(repoRoot, 'migrations');

interface Part {
  file: string; // relative to the repository
  firstLine: number; // 1-based line of the joined text where this file's text starts
  lines: number;
}

async function exists(file: string): Promise<boolean> {
  return readFile(file).then(
    () => true,
    () => false,
  );
}

/** The current migration's files in the order graphile-migrate applies them (numeric prefix). */
async function currentFiles(): Promise<string[]> {
  if (await exists(path.join(migrations, 'current.sql'))) return ['migrations/current.sql'];
  const names = await readdir(path.join(migrations, 'current')).catch(() => [] as string[]);
  return names
    .filter((name) => /^\d+(-[-_a-zA-Z0-9]*)?\.sql$/.test(name))
    .sort((a, b) => Number.parseInt(a, 10) - Number.parseInt(b, 10))
    .map((name) => `migrations/current/${name}`);
}

function runSquawk(args: string[]): { status: number; output: string } {
  const result = spawnSync(squawk, ['--config', path.join(repoRoot, '.squawk.toml'), '--no-error-on-unmatched-pattern', ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
  });
  if (result.error) throw new Error(`cannot run ${squawk} (${result.error.message}); run npm ci first`);
  return { status: result.status ?? 1, output: `${result.stdout}${result.stderr}` };
}

async function main(): Promise<void> {
  const committed = (await readdir(path.join(migrations, 'committed'))).filter((name) => name.endsWith('.sql')).sort();
  const first = runSquawk(committed.map((name) => `migrations/committed/${name}`));
  // squawk names the files its config excludes as "not found" even with --no-error-on-unmatched-pattern: not news here
  process.stdout.write(first.output.replace(/^Failed to find files for provided patterns: .*\n?/m, ''));

  const files = await currentFiles();
  let status = first.status;
  if (files.length > 0) {
    const parts: Part[] = [];
    let joined = '';
    for (const file of files) {
      const text = `${(await readFile(path.join(repoRoot, file), 'utf8')).trimEnd()}\n`;
      const startsAt = joined.split('\n').length; // the line after what is there (joined ends with '\n')
      parts.push({ file, firstLine: startsAt, lines: text.split('\n').length - 1 });
      joined += text;
    }
    const scratch = path.join(repoRoot, '.tmp', 'current-migration.sql');
    await mkdir(path.dirname(scratch), { recursive: true });
    await writeFile(scratch, joined);
    const current = runSquawk(['--reporter', 'gcc', path.relative(repoRoot, scratch)]);
    const located = current.output.replace(/^\.tmp\/current-migration\.sql:(\d+):/gm, (whole, line: string) => {
      const at = Number(line);
      const part = parts.find((p) => at >= p.firstLine && at < p.firstLine + p.lines);
      return part ? `${part.file}:${at - part.firstLine + 1}:` : whole;
    });
    process.stdout.write(located.endsWith('\n') || located === '' ? located : `${located}\n`);
    if (current.status !== 0) {
      console.error(
        'lint:sql: the current migration has squawk findings (above). Fix them, or excuse a rule with its reason in .squawk.toml. ' +
          'A migration starts with `set local lock_timeout` and `set local statement_timeout` (see migration 000006, part `--! split: 010-timeouts.sql`).',
      );
    }
    status ||= current.status;
  }
  if (status === 0) console.log(`lint:sql: squawk clean on ${committed.length} committed migration(s) and ${files.length} current file(s)`);
  process.exit(status);
}

main().catch((error: Error) => {
  console.error(`lint:sql: ${error.message}`);
  process.exit(2);
});
