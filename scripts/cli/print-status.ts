// `npm run status` for people: aligned tables of watermarks, the last runs and the health checks; with several
// projects, one block per project and a total line.
import { projectsTotalLine, type ProjectsStatus, type RunRow, type SyncStatus, type WatermarkRow } from './read-status.ts';

/** Columns padded to their widest cell, two spaces apart. */
export function formatTable(rows: readonly (readonly string[])[]): string[] {
  const widths = rows.reduce<number[]>((max, row) => row.map((cell, i) => Math.max(max[i] ?? 0, cell.length)), []);
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

const time = (value: Date | null): string => (value ? value.toISOString().replace('.000Z', 'Z') : '-');
const count = (value: number | null): string => (value === null ? '-' : String(value));

function watermarkLines(watermarks: readonly WatermarkRow[]): string[] {
  if (watermarks.length === 0) return ['  none yet'];
  return formatTable([
    ['source', 'watermark', 'lag', 'processing watermark', 'run', 'updated'],
    ...watermarks.map((w) => [w.source, time(w.watermark), w.lag, time(w.processing_watermark), count(w.run_id), time(w.updated_at)]),
  ]).map((line) => `  ${line}`);
}

function runLines(runs: readonly RunRow[]): string[] {
  if (runs.length === 0) return ['  none'];
  return formatTable([
    [
      'id',
      'source',
      'mode',
      'status',
      'received',
      'applied',
      'dup',
      'rejected',
      'too_old',
      'no_user',
      'unselected',
      'ins/upd/same',
      'seconds',
      'started',
      'error',
    ],
    ...runs.map((r) => [
      String(r.id),
      r.source,
      r.mode,
      r.status,
      count(r.received),
      count(r.applied),
      count(r.duplicates),
      count(r.rejected),
      count(r.too_old),
      count(r.no_user),
      count(r.not_selected),
      r.source === 'profiles' ? `${count(r.inserted)}/${count(r.updated)}/${count(r.unchanged)}` : '-',
      r.total_ms === null ? '-' : (r.total_ms / 1000).toFixed(1),
      time(r.started_at),
      r.error ?? '',
    ]),
  ]).map((line) => `  ${line}`);
}

export function printableStatus(status: SyncStatus): string {
  const health = formatTable(status.health.map((h) => [h.status, h.check, h.value ?? '-', h.threshold ?? '', h.detail ?? '']));
  return [
    'Watermarks',
    ...watermarkLines(status.watermarks),
    '',
    'Last runs',
    ...runLines(status.runs),
    '',
    `Health: ${status.status.toUpperCase()}`,
    ...health.map((line) => `  ${line}`),
    '',
  ].join('\n');
}

/** One block per project (its row's region, timezone and Mixpanel project id first), then the total line. */
export function printableProjects(status: ProjectsStatus): string {
  const blocks = status.projects.map((p) =>
    [
      `Project ${p.project} (region ${p.region}, timezone ${p.timezone ?? 'UTC'}, Mixpanel project ${p.mixpanel_project_id ?? 'not recorded yet'})`,
      ...printableStatus(p)
        .split('\n')
        .map((line) => (line ? `  ${line}` : line)),
    ].join('\n'),
  );
  return `${blocks.join('\n')}Total: ${projectsTotalLine(status.total)}\n`;
}
