// What `npm run status` shows, read from the database: watermarks, the last runs, sync_health() of one project;
// with several projects and none chosen, one such block per project and a total (docs/projects.md §5.9).
import {
  eventCounts,
  listProjects,
  readLastRuns,
  readProject,
  readWatermarks,
  runCount,
  syncHealth,
  type HealthRow,
  type HealthStatus,
  type ProjectRow,
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
  /** the project's name (mixpanel_sync.projects) */
  project: string;
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

/** One project's status (project: its name; null: the only project, MP004 when there are several or the name is unknown). */
export async function readSyncStatus(db: Queryable, runs = 10, project: string | null = null): Promise<SyncStatus> {
  const row = await readProject(db, project);
  return projectStatus(db, row, runs);
}

async function projectStatus(db: Queryable, project: ProjectRow, runs: number): Promise<SyncStatus> {
  const health = await syncHealth(db, project.name);
  return {
    project: project.name,
    status: worstStatus(health),
    watermarks: await readWatermarks(db, project.name),
    runs: (await readLastRuns(db, runs, project.name)).map(runRow),
    health,
  };
}

/** A project's block when several are shown: its row's region, timezone and Mixpanel project id, then its status. */
export interface ProjectBlock extends SyncStatus {
  region: ProjectRow['region'];
  timezone: string | null;
  mixpanel_project_id: number | null;
}

export interface StatusTotal {
  projects: number;
  /** the worst status of all projects */
  status: HealthStatus;
  ok: number;
  warn: number;
  critical: number;
  /** every check that is not ok, by project */
  problems: { project: string; check: string; status: HealthStatus }[];
}

/** `npm run status` with several projects and none chosen (--json prints it as is). */
export interface ProjectsStatus {
  projects: ProjectBlock[];
  total: StatusTotal;
}

export function statusTotal(projects: readonly SyncStatus[]): StatusTotal {
  const count = (status: HealthStatus) => projects.filter((p) => p.status === status).length;
  return {
    projects: projects.length,
    status: worstStatus(projects.map((p) => ({ status: p.status }) as HealthRow)),
    ok: count('ok'),
    warn: count('warn'),
    critical: count('critical'),
    problems: projects.flatMap((p) =>
      p.health.filter((h) => h.status !== 'ok').map((h) => ({ project: p.project, check: h.check, status: h.status })),
    ),
  };
}

/** "3 projects: 2 ok, 1 warn (eu_app: events.watermark_lag)": per status, the projects' checks that are not ok. */
export function projectsTotalLine(total: StatusTotal): string {
  const groups = (['ok', 'warn', 'critical'] as const)
    .filter((status) => total[status] > 0)
    .map((status) => {
      if (status === 'ok') return `${total.ok} ok`;
      // a project counts under its worst check's status, and shows every check of it that is not ok
      const byProject = new Map<string, string[]>();
      for (const p of total.problems) byProject.set(p.project, [...(byProject.get(p.project) ?? []), p.check]);
      const worst = (project: string) =>
        total.problems.some((p) => p.project === project && p.status === 'critical') ? 'critical' : 'warn';
      const which = [...byProject]
        .filter(([project]) => worst(project) === status)
        .map(([project, checks]) => `${project}: ${checks.join(', ')}`)
        .join('; ');
      return `${total[status]} ${status} (${which})`;
    });
  return `${total.projects} projects: ${groups.join(', ')}`;
}

/** Every project's status, by name, and their total. */
export async function readProjectsStatus(db: Queryable, runs = 10): Promise<ProjectsStatus> {
  const projects: ProjectBlock[] = [];
  for (const row of await listProjects(db)) {
    projects.push({
      ...(await projectStatus(db, row, runs)),
      region: row.region,
      timezone: row.timezone,
      mixpanel_project_id: row.mixpanel_project_id === null ? null : Number(row.mixpanel_project_id),
    });
  }
  return { projects, total: statusTotal(projects) };
}

/** The projects `npm run status` shows: the one named, or the only one (a SyncStatus); else every project (ProjectsStatus). */
export async function readStatus(db: Queryable, runs: number, project: string | null): Promise<SyncStatus | ProjectsStatus> {
  if (project === null && (await listProjects(db)).length > 1) return readProjectsStatus(db, runs);
  return readSyncStatus(db, runs, project);
}
