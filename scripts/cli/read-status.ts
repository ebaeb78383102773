// What `npm run status` shows, read from the database: watermarks, the last runs, sync_health().
import {
  eventCounts,
  listProjects,
  readLastRuns,
  readWatermarks,
  runCount,
  syncHealth,
  type HealthRow,
  type HealthStatus,
  type Queryable,
  type SyncRun,
  type WatermarkRow,
} from '../sql/sync-api.ts';

export type { HealthRow, HealthStatus, WatermarkRow };

/** A run as `npm run status` shows it (--json too): counts and ids as numbers. */
export interface RunRow {
  id: number;
  source: string;
  mode: string;
  status: string;
  received: number | null;
  applied: number | null;
  duplicates: number | null;
  rejected: number | null;
  too_old: number | null;
  no_user: number | null;
  not_selected: number | null;
  inserted: number | null;
  updated: number | null;
  unchanged: number | null;
  total_ms: number | null;
  started_at: Date;
  finished_at: Date | null;
  error: string | null;
}

export interface SyncStatus {
  /** the worst health status */
  status: HealthStatus;
  watermarks: WatermarkRow[];
  runs: RunRow[];
  health: HealthRow[];
}

const SEVERITY: readonly HealthStatus[] = ['ok', 'warn', 'critical'];

// bigint columns as numbers: counts and ids stay far below 2^53.
function runRow(run: SyncRun): RunRow {
  return {
    id: Number(run.id),
    source: run.source,
    mode: run.mode,
    status: run.status,
    ...eventCounts(run),
    inserted: runCount(run.inserted),
    updated: runCount(run.updated),
    unchanged: runCount(run.unchanged),
    total_ms: runCount(run.total_ms),
    started_at: run.started_at,
    finished_at: run.finished_at,
    error: run.error,
  };
}

export function worstStatus(health: readonly HealthRow[]): HealthStatus {
  return health.reduce<HealthStatus>((worst, row) => (SEVERITY.indexOf(row.status) > SEVERITY.indexOf(worst) ? row.status : worst), 'ok');
}

/** Exit code of `npm run status`: 0 ok, 1 warn, 2 critical (3, status unknown, is the caller's). */
export function statusExitCode(status: HealthStatus): number {
  return SEVERITY.indexOf(status);
}

/** One project's status (null: the only project; MP004 when there are several). */
export async function readSyncStatus(db: Queryable, runs = 10, project: string | null = null): Promise<SyncStatus> {
  const health = await syncHealth(db, project);
  return {
    status: worstStatus(health),
    watermarks: await readWatermarks(db, project),
    runs: (await readLastRuns(db, runs, project)).map(runRow),
    health,
  };
}

/** Every project's status, and the total: how many are ok, warn, critical, and which checks are not ok. */
export interface ProjectsStatus {
  projects: (SyncStatus & { project: string })[];
  total: { status: HealthStatus; projects: number; ok: number; warn: number; critical: number; not_ok: string[] };
}

export async function readProjectsStatus(db: Queryable, runs = 10): Promise<ProjectsStatus> {
  const projects: ProjectsStatus['projects'] = [];
  for (const { name } of await listProjects(db)) projects.push({ project: name, ...(await readSyncStatus(db, runs, name)) });
  const statuses = projects.map((p) => p.status);
  return {
    projects,
    total: {
      status: statuses.reduce<HealthStatus>((worst, s) => (SEVERITY.indexOf(s) > SEVERITY.indexOf(worst) ? s : worst), 'ok'),
      projects: projects.length,
      ok: statuses.filter((s) => s === 'ok').length,
      warn: statuses.filter((s) => s === 'warn').length,
      critical: statuses.filter((s) => s === 'critical').length,
      not_ok: projects.flatMap((p) => p.health.filter((h) => h.status !== 'ok').map((h) => `${p.project}: ${h.check}`)),
    },
  };
}

/** The total line of several projects: "3 projects: 2 ok, 1 warn (eu_app: events.watermark_lag)". */
export function projectsTotalLine(total: ProjectsStatus['total']): string {
  const counts = (['ok', 'warn', 'critical'] as const).filter((s) => total[s] > 0).map((s) => `${total[s]} ${s}`);
  return `${total.projects} projects: ${counts.join(', ')}${total.not_ok.length > 0 ? ` (${total.not_ok.join(', ')})` : ''}`;
}
