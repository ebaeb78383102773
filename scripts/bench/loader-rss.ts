// loader_peak_rss_mib, loader_rss_growth and full_sync_1m_events_per_s: the loader measured the way a user runs it,
// `npm run sync:events -- --file … --full --json` under /usr/bin/time (scripts/bench/cli-rss.ts says why not in a
// child of the bench), for a small and a large generated file; with the floors it sits on: a bare `node -e 0`,
// `node --import tsx -e 0` (tsx's loader hooks run in a worker thread of their own) and the CLI's `--help`.
import { rm } from 'node:fs/promises';
import os from 'node:os';
import pg from 'pg';
import type { Scale } from './bench-options.ts';
import type { BenchServer } from './bench-server.ts';
import { measureCommand, measureSyncCli, timeAvailable, TIME_BINARY } from './cli-rss.ts';
import { copyFileAsJsonb, createCopyTable, dropCopyTable } from './copy-file.ts';
import { copyFloor, cpuSeconds, cpuText, cpuVerdict, medianCpu, startCpu, type CpuUse } from './cpu-time.ts';
import type { SuiteResult } from './figures.ts';
import { writeSampleFile } from './peak-rss.ts';
import { medianProfile, profileText, startProfile, type StepProfile } from './run-profile.ts';
import { benchFile } from './sample-data.ts';
import { log, median, ratio, seconds } from './timing.ts';

interface SizeFigures {
  lines: number;
  peakKiB: number[];
  /** the run's duration as the database recorded it (begin_run to finish_run) */
  durationMs: number[];
  wallMs: number[];
  /** step profiles of the runs (run-profile.ts), read on a connection of the bench's own */
  profiles: (StepProfile | null)[];
  /** CPU of each run: the CLI's processes (GNU time) and the server's (cpu-time.ts); null when the server's is unreadable */
  cpu: (CpuUse | null)[];
  /** a bare COPY of the same file into each trial's fresh database (copy-file.ts), when asked for: wall time and CPU */
  copyMs: number[];
  copyCpu: (CpuUse | null)[];
}

const mib = (kib: number) => `${(kib / 1024).toFixed(1)} MiB`;

/** A bare COPY of the file into the database (its time and CPU: the bench's own Node process and the server's). */
async function bareCopy(pool: pg.Pool, file: string, lines: number): Promise<{ ms: number; cpu: CpuUse | null }> {
  await createCopyTable(pool);
  const cpuProbe = await startCpu(pool);
  const started = performance.now();
  const rows = await copyFileAsJsonb(pool, file);
  const ms = performance.now() - started;
  const cpu = cpuProbe.finish();
  await dropCopyTable(pool);
  if (rows !== lines) throw new Error(`loader-rss: the bare COPY loaded ${rows} of ${lines} lines`);
  return { ms, cpu };
}

/** The CLI's runs of a file of `lines` lines, each on a fresh database; with `withCopy`, a bare COPY of the file into the
 * same database beside each run, alternating which goes first. */
async function measureSize(server: BenchServer, lines: number, repeats: number, withCopy: boolean): Promise<SizeFigures> {
  const file = await benchFile(`rss-${lines}.jsonl`);
  // the CLI has no clock option: the events end now, so its full window holds them
  await writeSampleFile(file, lines, new Date(Math.floor(Date.now() / 1000) * 1000));
  const figures: SizeFigures = { lines, peakKiB: [], durationMs: [], wallMs: [], profiles: [], cpu: [], copyMs: [], copyCpu: [] };
  try {
    for (let repeat = 0; repeat < repeats; repeat++) {
      const db = await server.freshDatabase();
      try {
        await db.end();
        const statistics = new pg.Pool({ connectionString: db.url, max: 1 });
        // db.drop() force-drops the database: a connection still closing may get 57P01, which must not crash the bench
        statistics.on('error', () => {});
        let result: Awaited<ReturnType<typeof measureSyncCli>>;
        const copy = async () => {
          const { ms, cpu } = await bareCopy(statistics, file, lines);
          figures.copyMs.push(ms);
          figures.copyCpu.push(cpu);
          log(`loader-rss: ${lines} lines: bare COPY ${seconds(ms)}`);
        };
        try {
          if (withCopy && repeat % 2 === 1) await copy();
          const probe = await startProfile(statistics);
          const cpuProbe = await startCpu(statistics);
          result = await measureSyncCli(db.url, file);
          const server = cpuProbe.finish();
          figures.cpu.push(server === null ? null : { nodeMs: result.cpuMs, serverMs: server.serverMs });
          figures.profiles.push(await probe.finish(result.summary.run_id));
          if (withCopy && repeat % 2 === 0) await copy();
        } finally {
          await statistics.end();
        }
        if (result.summary.received !== lines) throw new Error(`loader-rss: the CLI received ${result.summary.received} of ${lines} lines`);
        figures.peakKiB.push(result.peakRssKiB);
        figures.durationMs.push(result.summary.duration_ms);
        figures.wallMs.push(result.wallMs);
        log(
          `loader-rss: ${lines} lines: peak RSS ${mib(result.peakRssKiB)}, run ${seconds(result.summary.duration_ms)}, command ${seconds(result.wallMs)}`,
        );
      } finally {
        await db.drop();
      }
    }
  } finally {
    await rm(file, { force: true });
  }
  return figures;
}

async function floors(repeats: number): Promise<Array<{ what: string; kib: number[]; cpuMs: number[] }>> {
  const commands: Array<{ what: string; argv: string[] }> = [
    { what: '`node -e 0` (bare Node)', argv: [process.execPath, '-e', '0'] },
    { what: '`node --import tsx -e 0` (the TypeScript loader)', argv: [process.execPath, '--import', 'tsx', '-e', '0'] },
    {
      what: '`npm run sync:events -- --help` (npm, tsx and every module the CLI imports)',
      argv: ['npm', 'run', '--silent', 'sync:events', '--', '--help'],
    },
  ];
  const out: Array<{ what: string; kib: number[]; cpuMs: number[] }> = [];
  for (const command of commands) {
    const kib: number[] = [];
    const cpuMs: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const measured = await measureCommand(command.argv);
      kib.push(measured.peakRssKiB);
      cpuMs.push(measured.cpuMs);
    }
    out.push({ what: command.what, kib, cpuMs });
  }
  return out;
}

export async function loaderRss(server: BenchServer, scale: Scale, quick: boolean): Promise<SuiteResult> {
  if (!(await timeAvailable())) {
    const reason = `${TIME_BINARY} is not installed (apt-get install time): the CLI's peak RSS is measured with it`;
    return {
      figures: {},
      missing: {
        loader_peak_rss_mib: reason,
        loader_rss_growth: reason,
        full_sync_1m_events_per_s: reason,
        full_sync_1m_vs_copy: reason,
      },
      section: { title: 'Loader memory', command: 'npm run bench -- --only loader-rss', method: [reason], table: [], reading: [] },
    };
  }
  const base = await floors(quick ? 1 : 3);
  const small = await measureSize(server, scale.rssLines.small, scale.repeats, false);
  const large = await measureSize(server, scale.rssLines.large, scale.repeats, true);
  const peak = Math.max(median(small.peakKiB), median(large.peakKiB));
  const isMillion = large.lines >= 1_000_000;
  const largeProfile = medianProfile(large.profiles);
  const largeMs = median(large.durationMs);
  const largeCpu = medianCpu(large.cpu);
  const largeWall = median(large.wallMs);
  const copyMs = median(large.copyMs);
  const copyCpu = medianCpu(large.copyCpu);
  const targetMs = (large.lines / 60_000) * 1000;
  const perSecond = (ms: number) => Math.round(large.lines / (ms / 1000)).toLocaleString('en-US');
  // the floor of any design that parses every line in PostgreSQL, against the target's time
  const floorWhy = (() => {
    const copied = `A bare COPY of the same file into the same fresh database (one jsonb column) takes ${seconds(copyMs)} (${perSecond(copyMs)} lines/s)`;
    if (copyCpu === null) return ` ${copied}; the run is ${(largeMs / copyMs).toFixed(2)}× it.`;
    const floor = copyFloor(copyCpu);
    const verdict =
      floor.ms > targetMs
        ? `above the ${seconds(targetMs)} that ≥ 60,000 events/s allows: no design that parses every line in PostgreSQL meets it on this machine`
        : `under the ${seconds(targetMs)} that ≥ 60,000 events/s allows, which leaves ${(((targetMs - floor.ms) * os.availableParallelism()) / 1000).toFixed(2)} s of CPU for everything else (the staging, the fields and key of each line, the ledger, events_daily and subscribers)`;
    return ` ${copied}, with ${cpuText(copyCpu)}; the run is ${(largeMs / copyMs).toFixed(2)}× it and used ${largeCpu ? `${(cpuSeconds(largeCpu) / cpuSeconds(copyCpu)).toFixed(2)}×` : 'an unread share of'} its CPU. ${floor.text}: ${seconds(floor.ms)} (${perSecond(floor.ms)} events/s) before any ledger or aggregate is written, ${verdict}.`;
  })();
  // the CLI's own start (npm, tsx and its imports), measured as its `--help`: part of the command's Node time
  const startCpuMs = median(base.at(-1)!.cpuMs);
  const cpuWhy = largeCpu
    ? ` CPU: the command used ${cpuText(largeCpu)} in ${seconds(largeWall)}, ${seconds(startCpuMs)} of it the CLI's start (its \`--help\`); ${cpuVerdict(largeCpu.nodeMs + largeCpu.serverMs, largeWall, { text: `≥ 60,000 events/s (${seconds(targetMs)})`, wallMs: targetMs }, largeProfile?.finishMs)}.`
    : '';
  const memoryWhy = `the floors it sits on: ${base.map((b) => `${b.what} ${mib(median(b.kib))}`).join(', ')}; the loader's runs peak at ${mib(median(small.peakKiB))} for ${small.lines.toLocaleString('en-US')} lines and ${mib(median(large.peakKiB))} for ${large.lines.toLocaleString('en-US')}.`;
  return {
    ...(largeProfile
      ? {
          why: {
            loader_peak_rss_mib: memoryWhy,
            loader_rss_growth: memoryWhy,
            full_sync_1m_events_per_s: `the ${large.lines.toLocaleString('en-US')}-line first full sync runs ${seconds(largeMs)}: ${profileText(largeProfile)}. The COPY stage (begin_run to finish_run, chunk parsing alongside on a second connection) runs at ${Math.round(large.lines / (largeProfile.copyMs / 1000)).toLocaleString('en-US')} lines/s; the parse takes ${seconds(largeProfile.parseMs + largeProfile.parseDuringCopyMs)} of database time in all (${Math.round(large.lines / ((largeProfile.parseMs + largeProfile.parseDuringCopyMs) / 1000)).toLocaleString('en-US')} lines/s), the apply ${seconds(largeProfile.applyMs)} (${Math.round(large.lines / (largeProfile.applyMs / 1000)).toLocaleString('en-US')} lines/s). The COPY stage and finish_run (${seconds(largeProfile.finishMs)}) follow each other: finish_run needs every line.${cpuWhy}${floorWhy}`,
          },
        }
      : { why: { loader_peak_rss_mib: memoryWhy, loader_rss_growth: memoryWhy } }),
    figures: {
      loader_peak_rss_mib: peak / 1024,
      loader_rss_growth: ratio(median(large.peakKiB), median(small.peakKiB)),
      ...(isMillion ? { full_sync_1m_events_per_s: large.lines / (largeMs / 1000), full_sync_1m_vs_copy: ratio(largeMs, copyMs) } : {}),
    },
    ...(isMillion
      ? {}
      : {
          missing: {
            full_sync_1m_events_per_s: `quick scale: the large file has ${large.lines.toLocaleString('en-US')} lines, not 1,000,000`,
            full_sync_1m_vs_copy: `quick scale: the large file has ${large.lines.toLocaleString('en-US')} lines, not 1,000,000`,
          },
        }),
    section: {
      title: 'Loader memory and 1M-line throughput, measured as a user runs the CLI',
      command: 'npm run bench -- --only loader-rss',
      method: [
        `\`npm run sync:events -- --file F --full --json --database-url …\` (npm runs \`exec node --import tsx scripts/cli/sync-events.ts\`) under \`${TIME_BINARY} -f %M\`: the peak resident set of the largest process of the tree (npm or the loader), as a user would see it. Each trial on a fresh database; the generated file's events end at the moment it is written, so the full window holds them.`,
        "Why the old figure was 248 MiB: it was `process.resourceUsage().maxRSS` of a child spawned by the bench. Linux keeps a process's RSS high-water mark across exec (signal_struct.maxrss), and a spawned child starts as a fork of the bench, so the child's \"peak\" was at least the bench's own RSS at the fork (≈ 250 MiB of generated data), whatever the loader used. Shown on this machine: a node that allocates 300 MiB and then spawns `node -e …` sees the child report maxRSS ≈ 303 MiB; the same child under /usr/bin/time reports ≈ 39 MiB. /usr/bin/time forks the measured command from its own small process.",
        "full_sync_1m_events_per_s: lines ÷ the run's duration as the database recorded it (sync_runs.total_ms: begin_run to the end of finish_run), a first full sync into an empty database, median of the large-file trials.",
        "full_sync_1m_vs_copy: that duration ÷ a bare COPY of the same file (copy-file.ts: an UNLOGGED one-column jsonb table, each line parsed once) into the same fresh database, streamed by the bench, beside each large-file run (alternating which goes first; the COPY's table is dropped after it); medians. Its CPU (the bench's Node process and the server's) gives the floor of any design that parses every line in PostgreSQL.",
        `Medians of ${scale.repeats} trials per size; the floors are medians of ${quick ? '1 (quick)' : '3'}.`,
        ...(quick ? [`**Quick scale**: ${scale.rssLines.large.toLocaleString('en-US')} lines, not 1,000,000.`] : []),
      ],
      table: [
        ['what', 'peak RSS (median)', 'trials', 'run (median)', 'command wall time (median)', 'step profile (medians)'],
        ...base.map((b) => [b.what, mib(median(b.kib)), b.kib.map(mib).join(', '), '', '', '']),
        ...[small, large].map((s) => [
          `\`npm run sync:events\`, ${s.lines.toLocaleString('en-US')} lines`,
          mib(median(s.peakKiB)),
          s.peakKiB.map(mib).join(', '),
          `${seconds(median(s.durationMs))} (${Math.round(s.lines / (median(s.durationMs) / 1000)).toLocaleString('en-US')} events/s)`,
          seconds(median(s.wallMs)),
          profileText(medianProfile(s.profiles)),
        ]),
        [
          `a bare COPY of the ${large.lines.toLocaleString('en-US')}-line file into the same fresh database (copy-file.ts)`,
          '',
          '',
          `${seconds(copyMs)} (${perSecond(copyMs)} lines/s; ${large.copyMs.map(seconds).join(', ')})`,
          '',
          copyCpu ? `${cpuText(copyCpu)} (medians)` : '',
        ],
      ],
      reading: [
        `Above the TypeScript loader's floor the loader adds ${mib(median(small.peakKiB) - median(base[1]!.kib))} for ${small.lines.toLocaleString('en-US')} lines and ${mib(median(large.peakKiB) - median(base[1]!.kib))} for ${large.lines.toLocaleString('en-US')}: its buffers and pg, flat in the input size (streams with back-pressure).`,
      ],
    },
  };
}
