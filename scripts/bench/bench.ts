// npm run bench [-- --quick] [-- --scale] [-- --json] [-- --only suite,…]: the figures of BENCHMARKS.md.
// A full run of every suite writes BENCHMARKS.md; --quick writes .tmp/bench/BENCHMARKS.quick.md.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { repoRoot } from '../db/paths.ts';
import { parseBenchArgs, SUITES, type BenchOptions, type SuiteName } from './bench-options.ts';
import { describeMachine, startBenchServer, type BenchServer } from './bench-server.ts';
import { emptyFigures, FIGURE_KEYS, type FigureKey, type Section, type SuiteResult } from './figures.ts';
import { renderMarkdown, renderSummary } from './report.ts';
import { benchFile } from './sample-data.ts';
import { incrementalHistory } from './incremental-history.ts';
import { loaderRss } from './loader-rss.ts';
import { malformedLine } from './malformed.ts';
import { originalScenario } from './original-scenario.ts';
import { profilesSuite } from './profiles.ts';
import { settingsCost } from './settings-cost.ts';
import { setVsLoop } from './set-vs-loop.ts';
import { log } from './timing.ts';

type Suite = (server: BenchServer, options: BenchOptions) => Promise<SuiteResult>;

/** The figures each suite measures: null, with the suite's error as the reason, when it fails. */
const SUITE_FIGURES: Record<SuiteName, FigureKey[]> = {
  'set-vs-loop': ['set_vs_loop_replace', 'set_vs_loop_add'],
  'full-sync': [
    'full_sync_events_per_s',
    'full_sync_vs_copy',
    'first_full_sync_vs_copy',
    'baseline_full_speedup',
    'baseline_incremental_speedup',
    'baseline_double_counted',
    'ours_double_counted',
    'storage_bytes_per_event',
    'resync_bloat_ratio',
  ],
  incremental: ['incremental_ms', 'incremental_history_growth', 'scale_storage_bytes_per_event', 'scale_incremental_ms'],
  profiles: ['profiles_unchanged_tuples_written', 'profiles_cd_speedup'],
  'loader-rss': ['loader_peak_rss_mib', 'loader_rss_growth', 'full_sync_1m_events_per_s'],
  malformed: ['malformed_line_finish_ratio', 'malformed_2pct_run_ratio'],
  'settings-cost': ['identity_mode_cost', 'raw_storage_time_ratio', 'raw_storage_bytes_per_event'],
};

const RUNNERS: Record<SuiteName, Suite> = {
  'set-vs-loop': (server, options) => setVsLoop(server, options.scale),
  'full-sync': (server, options) => originalScenario(server, options.scale),
  incremental: (server, options) => incrementalHistory(server, options.scale, options.quick),
  profiles: (server, options) => profilesSuite(server, options.scale),
  'loader-rss': (server, options) => loaderRss(server, options.scale, options.quick),
  malformed: (server, options) => malformedLine(server, options.scale),
  'settings-cost': (server, options) => settingsCost(server, options.scale),
};

async function main(): Promise<void> {
  let options: BenchOptions;
  try {
    options = parseBenchArgs(process.argv.slice(2));
  } catch (error) {
    const e = error as Error & { help?: boolean };
    if (e.help) {
      process.stdout.write(e.message);
      return;
    }
    process.stderr.write(`bench: ${e.message}\n`);
    process.exitCode = 2;
    return;
  }
  const startedAt = new Date();
  const server = await startBenchServer();
  const figures = emptyFigures();
  const sections: Section[] = [];
  const missing: Partial<Record<FigureKey, string>> = {};
  const why: Partial<Record<FigureKey, string>> = {};
  const failed: SuiteName[] = [];
  try {
    const probe = await server.freshDatabase();
    const machine = await describeMachine(probe.pool, server.source);
    await probe.drop();
    log(
      `${machine.cores} cores, PostgreSQL ${machine.postgres} (${server.source})${options.quick ? ', quick scale' : ''}${options.scaleHistory ? ', 30M-event history' : ''}`,
    );
    for (const name of options.suites) {
      log(`suite ${name}`);
      try {
        const result = await RUNNERS[name](server, options);
        Object.assign(figures, result.figures);
        Object.assign(missing, result.missing ?? {});
        Object.assign(why, result.why ?? {});
        sections.push(result.section);
      } catch (error) {
        // the other suites still run; the bench exits non-zero at the end
        const reason = `the ${name} suite failed: ${(error as Error).message.split('\n')[0]}`;
        log(reason);
        failed.push(name);
        for (const key of SUITE_FIGURES[name]) missing[key] = reason;
      }
    }
    for (const key of FIGURE_KEYS) {
      if (figures[key] === null && missing[key] === undefined) {
        const suite = SUITES.find((name) => SUITE_FIGURES[name].includes(key));
        missing[key] = suite && !options.suites.includes(suite) ? `the ${suite} suite was not run` : 'not measured by its suite';
      }
    }
    const markdown = renderMarkdown({
      machine,
      quick: options.quick,
      startedAt,
      totalMs: Date.now() - startedAt.getTime(),
      figures,
      sections,
      missing,
      why,
    });
    const everySuite = SUITES.every((name) => options.suites.includes(name));
    const target =
      !options.quick && everySuite
        ? path.join(repoRoot, 'BENCHMARKS.md')
        : await benchFile(options.quick ? 'BENCHMARKS.quick.md' : 'BENCHMARKS.partial.md');
    await writeFile(target, markdown);
    log(`wrote ${path.relative(repoRoot, target)}`);
    process.stderr.write(`${renderSummary(figures, missing)}\n`);
    if (options.json) process.stdout.write(`${JSON.stringify(figures)}\n`);
    if (failed.length > 0) {
      process.stderr.write(`bench: ${failed.length} suite(s) failed: ${failed.join(', ')}\n`);
      process.exitCode = 1;
    }
  } finally {
    await server.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${(error as Error).message}\n`);
  process.exitCode = 1;
});
