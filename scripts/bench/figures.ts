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
] as const;

export type FigureKey = (typeof FIGURE_KEYS)[number];
export type Figures = Record<FigureKey, number | null>;

export interface Target {
  /** how the figure is compared with `value` */
  op: '>=' | '<=' | '=';
  value: number;
  /** the target as written in BENCHMARKS.md */
  text: string;
}

export const TARGETS: Record<FigureKey, Target> = {
  set_vs_loop_replace: { op: '>=', value: 10, text: '≥ 10×' },
  set_vs_loop_add: { op: '>=', value: 10, text: '≥ 10×' },
  full_sync_events_per_s: { op: '>=', value: 100_000, text: '≥ 100,000 events/s (original: 95,000 events in 90–120 s)' },
  full_sync_vs_copy: { op: '<=', value: 1.5, text: '≤ 1.5× a bare COPY of the file' },
  incremental_ms: { op: '<=', value: 10_000, text: 'under the plan\'s 10–20 s (≤ 10,000 ms)' },
  incremental_history_growth: { op: '<=', value: 1.5, text: '≤ 1.5× (1M users vs 10k users)' },
  profiles_unchanged_tuples_written: { op: '=', value: 0, text: '0 tuples' },
  profiles_cd_speedup: { op: '>=', value: 2, text: '≥ 2× vs change detection off' },
  loader_rss_growth: { op: '<=', value: 1.5, text: '≤ 1.5× (1M lines vs 10k lines)' },
  baseline_full_speedup: { op: '>=', value: 10, text: '≥ 10× (the plan promised 10–50× for the set-based upsert)' },
  baseline_incremental_speedup: { op: '>=', value: 1, text: '> 1× (faster than the original incremental design)' },
  baseline_double_counted: { op: '>=', value: 0, text: 'reported; ours must count 0' },
};

export function meetsTarget(key: FigureKey, value: number | null): boolean | null {
  if (value === null) return null;
  const target = TARGETS[key];
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
}
