// loader_rss_growth: the loader's peak RSS (a child process: the loader engineer's measureLoaderPeakRss)
// for a large file ÷ for a small one. Memory must stay flat whatever the input size.
import { rm } from 'node:fs/promises';
import { measureLoaderPeakRss, writeSampleFile } from './peak-rss.ts';
import type { Scale } from './bench-options.ts';
import type { BenchServer } from './bench-server.ts';
import type { SuiteResult } from './figures.ts';
import { benchFile, SAMPLE_END } from './sample-data.ts';
import { log, median, ratio, seconds } from './timing.ts';

interface SizeFigures {
  lines: number;
  peakBytes: number[];
  durationMs: number[];
}

async function measureSize(server: BenchServer, lines: number, repeats: number): Promise<SizeFigures> {
  const file = await benchFile(`rss-${lines}.jsonl`);
  await writeSampleFile(file, lines, SAMPLE_END);
  const figures: SizeFigures = { lines, peakBytes: [], durationMs: [] };
  try {
    for (let repeat = 0; repeat < repeats; repeat++) {
      const db = await server.freshDatabase();
      try {
        const result = await measureLoaderPeakRss({ databaseUrl: db.url, file, clock: SAMPLE_END });
        if (result.summary.received !== lines) throw new Error(`loader-rss: the loader received ${result.summary.received} of ${lines} lines`);
        figures.peakBytes.push(result.peakRssBytes);
        figures.durationMs.push(result.summary.duration_ms);
        log(`loader-rss: ${lines} lines: peak RSS ${(result.peakRssBytes / 2 ** 20).toFixed(1)} MiB in ${seconds(result.summary.duration_ms)}`);
      } finally {
        await db.drop();
      }
    }
  } finally {
    await rm(file, { force: true });
  }
  return figures;
}

export async function loaderRss(server: BenchServer, scale: Scale, quick: boolean): Promise<SuiteResult> {
  const small = await measureSize(server, scale.rssLines.small, scale.repeats);
  const large = await measureSize(server, scale.rssLines.large, scale.repeats);
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  return {
    figures: { loader_rss_growth: ratio(median(large.peakBytes), median(small.peakBytes)) },
    section: {
      title: 'Loader memory: flat whatever the input size',
      command: 'npm run bench -- --only loader-rss',
      method: [
        'A full events sync of a generated JSONL file in a child process (`measureLoaderPeakRss`, scripts/bench/peak-rss.ts: `syncEvents` in process, as the CLI runs it); its peak RSS is the child\'s `process.resourceUsage().maxRSS`. Each trial on a fresh database.',
        `Medians of ${scale.repeats} trials per size.`,
        ...(quick ? [`**Quick scale**: ${scale.rssLines.large.toLocaleString('en-US')} lines, not 1,000,000.`] : []),
      ],
      table: [
        ['lines', 'peak RSS (median)', 'trials', 'sync time (median)'],
        ...[small, large].map((s) => [s.lines.toLocaleString('en-US'), mib(median(s.peakBytes)), s.peakBytes.map(mib).join(', '), seconds(median(s.durationMs))]),
      ],
      reading: [],
    },
  };
}
