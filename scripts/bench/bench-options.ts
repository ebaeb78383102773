// `npm run bench [-- --quick] [-- --json] [-- --only name,…]`: what to run and at which scale.
import { parseArgs } from 'node:util';

export const SUITES = ['set-vs-loop', 'full-sync', 'incremental', 'profiles', 'loader-rss', 'malformed', 'settings-cost'] as const;
export type SuiteName = (typeof SUITES)[number];

export interface Scale {
  /** repetitions behind every median (at least 3) */
  repeats: number;
  /** users per batch for set_vs_loop (1,000 carries the JSON key) */
  batchUsers: number[];
  /** users of the incremental suite's small and big histories (30 events each) */
  historyUsers: { small: number; big: number };
  /** profiles re-synced unchanged */
  profiles: number;
  /** lines the loader reads for the small and the large peak RSS (the large one is also the 1M-line throughput) */
  rssLines: { small: number; large: number };
  /** lines of the malformed-line file (one of them malformed) */
  malformedLines: number;
  /** full re-syncs of the same file before the bloat is measured (0: resync_bloat_ratio is skipped) */
  resyncs: number;
  /** events of the original scenario's full file (95,000; a quick run uses fewer at the same density) */
  scenarioEvents: number;
  /** events of the identity / raw storage scenario (the original scenario has 95,000) */
  settingsEvents: number;
}

export interface BenchOptions {
  quick: boolean;
  /** --scale: the incremental suite's big history is 1M users (30M events), whatever else is quick */
  scaleHistory: boolean;
  json: boolean;
  suites: SuiteName[];
  scale: Scale;
}

const FULL: Scale = {
  repeats: 3,
  batchUsers: [250, 1000, 10_000],
  historyUsers: { small: 10_000, big: 1_000_000 },
  profiles: 100_000,
  rssLines: { small: 10_000, large: 1_000_000 },
  malformedLines: 200_000,
  scenarioEvents: 95_000,
  resyncs: 7,
  settingsEvents: 95_000,
};

const QUICK: Scale = {
  repeats: 3,
  batchUsers: [1000],
  historyUsers: { small: 10_000, big: 30_000 },
  profiles: 10_000,
  rssLines: { small: 10_000, large: 50_000 },
  malformedLines: 20_000,
  scenarioEvents: 30_000,
  resyncs: 0,
  settingsEvents: 20_000,
};

/** The ≥ 30M-event history of --scale (and of a full run). */
export const SCALE_HISTORY_USERS = 1_000_000;

export const USAGE = `usage: npm run bench -- [--quick] [--scale] [--json] [--only ${SUITES.join(',')}]

  --quick   smaller scales (a smoke test, < 3 minutes); writes .tmp/bench/BENCHMARKS.quick.md, never BENCHMARKS.md
  --scale   storage per event and incremental time on a 30M-event history (1M users; ~10 min to build):
            runs the incremental suite only (unless --only says otherwise); a full run does it anyway
  --json    print one JSON object with the figures on stdout (progress goes to stderr)
  --only    run only these suites (comma-separated); BENCHMARKS.md is written only by a full run of every suite
`;

export function parseBenchArgs(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      scale: { type: 'boolean', default: false },
      only: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) throw Object.assign(new Error(USAGE), { help: true });
  const all: string[] = values.scale ? ['incremental'] : [...SUITES];
  const suites = values.only === undefined ? all : values.only.split(',').map((name) => name.trim());
  for (const name of suites) {
    if (!(SUITES as readonly string[]).includes(name)) throw new Error(`--only: unknown suite "${name}"; choose from ${SUITES.join(', ')}`);
  }
  const scale = values.quick ? QUICK : FULL;
  const scaleHistory = values.scale! || !values.quick;
  return {
    quick: values.quick!,
    scaleHistory,
    json: values.json!,
    suites: suites as SuiteName[],
    scale: scaleHistory ? { ...scale, historyUsers: { ...scale.historyUsers, big: SCALE_HISTORY_USERS } } : scale,
  };
}
