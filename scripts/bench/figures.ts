// The figures `npm run bench -- --json` prints (exactly these keys), their targets, and what each suite reports.

export const FIGURE_KEYS = [
  'set_vs_loop_replace',
  'set_vs_loop_add',
  'full_sync_events_per_s',
  'full_sync_vs_copy',
  'incremental_ms',
  'incremental_history_growth',
  'profiles_unchanged_tuples_written',
  'profiles_cd_speedup',
  'loader_rss_growth',
  'baseline_full_speedup',
  'baseline_incremental_speedup',
  'baseline_double_counted',
  'ours_double_counted',
  'first_full_sync_vs_copy',
  'full_sync_cpu_vs_copy',
  'exact_floor_vs_copy',
  'malformed_line_finish_ratio',
  'malformed_2pct_run_ratio',
  'loader_peak_rss_mib',
  'storage_bytes_per_event',
  'resync_bloat_ratio',
  'full_sync_1m_events_per_s',
  'full_sync_1m_vs_copy',
  'scale_storage_bytes_per_event',
  'scale_incremental_ms',
  'identity_mode_cost',
  'raw_storage_time_ratio',
  'raw_storage_bytes_per_event',
] as const;

export type FigureKey = (typeof FIGURE_KEYS)[number];
export type Figures = Record<FigureKey, number | null>;

export interface Target {
  /** how the figure is compared with `value`; 'reported': a figure without a target (no verdict) */
  op: '>=' | '<=' | '=' | 'reported';
  value: number;
  /** the target as written in BENCHMARKS.md */
  text: string;
  /** the verdict is that of another figure (baseline_double_counted is reported; ours must count 0) */
  verdictOf?: FigureKey;
}

export const TARGETS: Record<FigureKey, Target> = {
  set_vs_loop_replace: { op: 'reported', value: 0, text: 'reported (a lean loop reference is fine)' },
  set_vs_loop_add: { op: 'reported', value: 0, text: 'reported (a lean loop reference is fine)' },
  full_sync_events_per_s: { op: '>=', value: 100_000, text: '≥ 100,000 events/s (original: 95,000 events in 90–120 s)' },
  full_sync_vs_copy: { op: '<=', value: 1.5, text: '≤ 1.5× a bare COPY of the file (steady-state re-sync)' },
  incremental_ms: { op: '<=', value: 10_000, text: "under the plan's 10–20 s (≤ 10,000 ms)" },
  incremental_history_growth: { op: '<=', value: 1.5, text: '≤ 1.5× (big history vs 10k users)' },
  profiles_unchanged_tuples_written: { op: '=', value: 0, text: '0 tuples' },
  profiles_cd_speedup: { op: '>=', value: 2, text: '≥ 2× vs change detection off' },
  loader_rss_growth: { op: '<=', value: 1.5, text: '≤ 1.5× (large file vs 10k lines)' },
  baseline_full_speedup: { op: '>=', value: 1, text: "≥ 1.0× (the original design's full sync ÷ ours)" },
  baseline_incremental_speedup: { op: '>=', value: 1, text: "≥ 1.0× (the original design's incremental sync ÷ ours)" },
  baseline_double_counted: {
    op: 'reported',
    value: 0,
    text: 'reported; ours must count 0 (`ours_double_counted`)',
    verdictOf: 'ours_double_counted',
  },
  ours_double_counted: { op: '=', value: 0, text: '0 events counted twice' },
  first_full_sync_vs_copy: { op: '<=', value: 2, text: '≤ 2.0× a bare COPY (first full sync, empty database)' },
  full_sync_cpu_vs_copy: {
    op: 'reported',
    value: 0,
    text: "reported (CPU time of the steady-state full sync, Node and PostgreSQL, ÷ the bare COPY's)",
  },
  exact_floor_vs_copy: {
    op: 'reported',
    value: 0,
    text: "reported (the least work of an exact design that parses in PostgreSQL: the bare COPY's CPU + each line's fields and event_key, the dedup and the per-(user, day, name) counts into a keyed table, spread over the cores, ÷ the bare COPY's time)",
  },
  malformed_line_finish_ratio: { op: '<=', value: 1.1, text: '≤ 1.1× (finish_run with one malformed line ÷ clean)' },
  malformed_2pct_run_ratio: {
    op: '<=',
    value: 1.5,
    text: '≤ 1.5× (a second full sync with 2 % malformed lines ÷ clean, whole run)',
  },
  loader_peak_rss_mib: { op: '<=', value: 128, text: '≤ 128 MiB (`npm run sync:events` under /usr/bin/time)' },
  storage_bytes_per_event: { op: '<=', value: 160, text: '≤ 160 B (tables + indexes per event, after a full sync)' },
  resync_bloat_ratio: { op: '<=', value: 1.2, text: '≤ 1.2× (after 7 steady-state full re-syncs ÷ fresh)' },
  full_sync_1m_events_per_s: { op: '>=', value: 60_000, text: '≥ 60,000 events/s (1M-line file)' },
  full_sync_1m_vs_copy: {
    op: 'reported',
    value: 0,
    text: 'reported (the 1M-line first full sync ÷ a bare COPY of the same file into the same fresh database)',
  },
  scale_storage_bytes_per_event: { op: '<=', value: 160, text: '≤ 160 B (tables + indexes per event, ≥ 30M-event history)' },
  scale_incremental_ms: { op: '<=', value: 10_000, text: '≤ 10,000 ms (on a ≥ 30M-event history)' },
  identity_mode_cost: { op: 'reported', value: 0, text: 'reported (identity.mode simplified ÷ off, full sync time)' },
  raw_storage_time_ratio: { op: 'reported', value: 0, text: 'reported (events.store_raw on ÷ off, time per event)' },
  raw_storage_bytes_per_event: { op: 'reported', value: 0, text: 'reported (bytes per event the raw table adds)' },
};

/** The verdict against the target written once above; null when not measured or reported without a target. */
export function meetsTarget(key: FigureKey, value: number | null, figures?: Figures): boolean | null {
  const target = TARGETS[key];
  if (target.verdictOf !== undefined) return figures ? meetsTarget(target.verdictOf, figures[target.verdictOf]) : null;
  if (value === null || target.op === 'reported') return null;
  if (target.op === '>=') return value >= target.value;
  if (target.op === '<=') return value <= target.value;
  return value === target.value;
}

export function emptyFigures(): Figures {
  return Object.fromEntries(FIGURE_KEYS.map((key) => [key, null])) as Figures;
}

/** One suite's part of BENCHMARKS.md. */
export interface Section {
  title: string;
  /** the command that reproduces the section's figures */
  command: string;
  /** what was measured, how */
  method: string[];
  /** a table: the first row is the header */
  table: string[][];
  /** the honest reading: on/off target and why */
  reading: string[];
}

export interface SuiteResult {
  figures: Partial<Figures>;
  section: Section;
  /** why a figure is null, by key */
  missing?: Partial<Record<FigureKey, string>>;
  /** why a figure misses its target, from this run's measurements (step profiles, sizes, floors); printed only when it misses */
  why?: Partial<Record<FigureKey, string>>;
}

/**
 * Why a figure misses its target, written once from earlier profiling: the fallback when its suite did not explain it
 * from this run's own measurements (SuiteResult.why). Printed only when it misses.
 */
export const WHY_MISSED: Partial<Record<FigureKey, string>> = {
  full_sync_events_per_s:
    'parsing in SQL costs more than this target allows on this machine: the jsonb parse alone of 95k 570-byte lines is ≈ 0.72 s and a bare COPY into jsonb ≈ 1 s (≈ 95k lines/s), so ≥ 100k events/s cannot be reached while lines are parsed as jsonb in SQL.',
  full_sync_vs_copy:
    "every line is parsed in SQL (the jsonb parse the bare COPY also pays, plus the field extraction and the event key), chunk by chunk on a second connection while the COPY streams, and finish_run then merges the window into events_daily and the ledger on one connection: the section's table has the times side by side, the suite's own explanation (when it ran) the step profile and CPU time.",
  profiles_cd_speedup:
    'change detection saves only the write; parsing every staged profile (jsonb_to_record, the null/"" strip and two ISO-date regexes per row) is ≈ 80 % of a run whether anything changed or not. Skipping the parse of lines whose hash did not change is the proposed fix.',
  baseline_full_speedup:
    "the original design writes one row per user and event name (≈ 17k rows here) from counts aggregated in TypeScript, while ours parses every line in SQL and keeps an exact per-event ledger (≈ 92k rows) plus per-day counts (≈ 60k rows): the price of dedup and exact REPLACE/ADD. The original's 90–120 s were Mixpanel API and PostgREST time this bench does not have.",
  baseline_incremental_speedup:
    "for ~2.7k lines both finish in a fraction of a second; ours pays a run's fixed costs (begin_run, COPY, parse, ledger dedup, watermark, stats) that the original skipped, and the original is wrong: it double counts the overlap.",
};
