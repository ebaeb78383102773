// runLoaderCli as a process: what a user sees when the run never settles and nothing is left to wake it.
// Seen failing without the 'beforeExit' handler of loader-cli.ts: exit 13 and nothing on stderr.
// The database is a real one: runLoaderCli reads the project's row before the run begins (--project).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'loader-cli-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});

describe('runLoaderCli', () => {
  it('a run whose promise can no longer settle (the event loop is empty): exit 1 with one line, not exit 13', () => {
    const script = path.join(dir, 'stalled-cli.mts');
    writeFileSync(
      script,
      `import { runLoaderCli } from ${JSON.stringify(path.resolve('scripts/loader/loader-cli.ts'))};
await runLoaderCli({ name: 'stalled', usage: 'stalled', options: {}, run: () => new Promise(() => {}) }, ['--database-url', ${JSON.stringify(db.url)}]);
`,
    );
    const result = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 30_000 });
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr.trim().split('\n'), result.stderr).toEqual([
      expect.stringMatching(/^stalled: the run stopped: .*connection is gone/),
    ]);
  });
});
