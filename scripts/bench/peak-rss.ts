// The loader's peak memory, one-off: `npm run sync:events -- --file …` under /usr/bin/time (cli-rss.ts) for a small and a
// large generated file on a throwaway embedded server, and the ratio. The bench's loader-rss suite does the same with
// medians; writeSampleFile is shared with it.
//   npx tsx scripts/bench/peak-rss.ts [--small 10000] [--large 1000000]
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { writeSampleEvents } from '../fixtures/sample-events.ts';
import { withThrowawayDatabase } from '../db/throwaway-database.ts';
import { measureSyncCli } from './cli-rss.ts';

/** A sample export file of `lines` lines whose events end at `end`. */
export async function writeSampleFile(file: string, lines: number, end: Date): Promise<void> {
  const out = createWriteStream(file);
  await writeSampleEvents({ users: Math.max(100, Math.round(lines / 30)), events: lines, days: 30, end, seed: 7 }, out);
  out.end();
  await finished(out);
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { small: { type: 'string', default: '10000' }, large: { type: 'string', default: '1000000' } },
  });
  const sizes = [Number(values.small), Number(values.large)];
  const dir = await mkdtemp(path.join(os.tmpdir(), 'loader-rss-'));
  try {
    await withThrowawayDatabase('loader_rss', async ({ url: databaseUrl }) => {
      const peaks: number[] = [];
      for (const lines of sizes) {
        const file = path.join(dir, `${lines}.jsonl`);
        // the CLI's clock is now: the events end now, so its full window holds them
        await writeSampleFile(file, lines, new Date(Math.floor(Date.now() / 1000) * 1000));
        const result = await measureSyncCli(databaseUrl, file);
        peaks.push(result.peakRssKiB);
        const mib = (result.peakRssKiB / 1024).toFixed(1);
        process.stdout.write(
          `${lines.toLocaleString('en-US')} lines: peak RSS ${mib} MiB (received ${result.summary.received}, ${(result.summary.duration_ms / 1000).toFixed(1)} s)\n`,
        );
        await rm(file);
      }
      process.stdout.write(
        `ratio: ${(peaks[1]! / peaks[0]!).toFixed(2)} (target <= 1.5); peak ${(Math.max(...peaks) / 1024).toFixed(1)} MiB (target <= 128)\n`,
      );
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`peak-rss: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
