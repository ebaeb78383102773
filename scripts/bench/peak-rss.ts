// Memory stays flat: the loader's peak RSS for a big input against a small one.
//
// measureLoaderPeakRss runs one full events sync of a file in a child process (this file with
// --child: syncEvents in-process, as the CLI does) and reads the child's peak resident set size
// from process.resourceUsage().maxRSS at its end. Run directly, it measures a 10k-line and a
// 1M-line sample file on a throwaway embedded server and prints the ratio:
//   npx tsx scripts/bench/peak-rss.ts [--small 10000] [--large 1000000]
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { writeSampleEvents } from '../fixtures/sample-events.ts';
import { syncEvents } from '../loader/events-sync.ts';
import type { RunSummary } from '../loader/run-summary.ts';
import { withThrowawayDatabase } from '../db/throwaway-database.ts';

export interface PeakRss {
  file: string;
  peakRssBytes: number;
  summary: RunSummary;
}

const self = fileURLToPath(import.meta.url);

/** One full sync of `file` (clock: the run's fetch_to) in a child process; its peak RSS. */
export function measureLoaderPeakRss(options: { databaseUrl: string; file: string; clock: Date }): Promise<PeakRss> {
  const child = spawn(process.execPath, ['--import', 'tsx', self, '--child', options.databaseUrl, options.file, options.clock.toISOString()], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`the measured loader exited ${code}: ${stderr.trim().split('\n').at(-1) ?? ''}`));
      const { summary, maxRssKiB } = JSON.parse(stdout) as { summary: RunSummary; maxRssKiB: number };
      resolve({ file: options.file, peakRssBytes: maxRssKiB * 1024, summary });
    });
  });
}

/** A sample export file of `lines` lines whose events end at `end`. */
export async function writeSampleFile(file: string, lines: number, end: Date): Promise<void> {
  const out = createWriteStream(file);
  await writeSampleEvents({ users: Math.max(100, Math.round(lines / 30)), events: lines, days: 30, end, seed: 7 }, out);
  out.end();
  await finished(out);
}

async function child(databaseUrl: string, file: string, clock: string): Promise<void> {
  const summary = await syncEvents({ connectionString: databaseUrl, input: file, full: true, clock: new Date(clock) });
  process.stdout.write(JSON.stringify({ summary, maxRssKiB: process.resourceUsage().maxRSS }));
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { small: { type: 'string', default: '10000' }, large: { type: 'string', default: '1000000' } } });
  const sizes = [Number(values.small), Number(values.large)];
  const dir = await mkdtemp(path.join(os.tmpdir(), 'loader-rss-'));
  const clock = new Date(Math.floor(Date.now() / 1000) * 1000);
  try {
    await withThrowawayDatabase('loader_rss', async ({ url: databaseUrl }) => {
      const results: PeakRss[] = [];
      for (const lines of sizes) {
        const file = path.join(dir, `${lines}.jsonl`);
        await writeSampleFile(file, lines, clock);
        const result = await measureLoaderPeakRss({ databaseUrl, file, clock });
        results.push(result);
        const mib = (result.peakRssBytes / 2 ** 20).toFixed(1);
        process.stdout.write(`${lines.toLocaleString('en-US')} lines: peak RSS ${mib} MiB (received ${result.summary.received}, ${(result.summary.duration_ms / 1000).toFixed(1)} s)\n`);
        await rm(file);
      }
      process.stdout.write(`ratio: ${(results[1]!.peakRssBytes / results[0]!.peakRssBytes).toFixed(2)} (target <= 1.5)\n`);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [flag, ...rest] = process.argv.slice(2);
  const done = flag === '--child' ? child(rest[0]!, rest[1]!, rest[2]!) : main(process.argv.slice(2));
  done.catch((error: unknown) => {
    process.stderr.write(`peak-rss: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
