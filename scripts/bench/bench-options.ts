// `npm run bench [-- --quick] [-- --json] [-- --only name,…]`: what to run and at which scale.
import { parseArgs } from 'node:util';

export const SUITES = ['set-vs-loop', 'full-sync', 'incremental', 'profiles', 'loader-rss'] as const;
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
  /** lines the loader reads for the small and the large peak RSS */
  rssLines: { small: number; large: number };
}

export interface BenchOptions {
  quick: boolean;
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
};

const QUICK: Scale = {
  repeats: 3,
  batchUsers: [1000],
  historyUsers: { small: 10_000, big: 30_000 },
  profiles: 10_000,
  rssLines: { small: 10_000, large: 50_000 },
};

export const USAGE = `usage: npm run bench -- [--quick] [--json] [--only ${SUITES.join(',')}]

  --quick   smaller scales (a smoke test, ~3 minutes); writes .tmp/bench/BENCHMARKS.quick.md, never BENCHMARKS.md
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
      only: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) throw Object.assign(new Error(USAGE), { help: true });
  const suites = values.only === undefined ? [...SUITES] : values.only.split(',').map((name) => name.trim());
  for (const name of suites) {
    if (!(SUITES as readonly string[]).includes(name)) throw new Error(`--only: unknown suite "${name}"; choose from ${SUITES.join(', ')}`);
  }
  return { quick: values.quick!, json: values.json!, suites: suites as SuiteName[], scale: values.quick ? QUICK : FULL };
}
