// What `npm run status` shows, read from the database: watermarks, the last runs, sync_health().
import type pg from 'pg';

export type HealthStatus = 'ok' | 'warn' | 'critical';

export interface HealthRow {
  check: string;
  status: HealthStatus;
  value: string | null;
  threshold: string | null;
  detail: string | null;
}

export interface WatermarkRow {
  source: string;
  watermark: Date;
  processing_watermark: Date | null;
  /** now() - watermark, as PostgreSQL prints an interval */
  lag: string;
  run_id: number | null;
  updated_at: Date;
}

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

type Queryable = Pick<pg.ClientBase, 'query'>;

const SEVERITY: readonly HealthStatus[] = ['ok', 'warn', 'critical'];

// bigint columns as numbers: counts and ids stay far below 2^53.
const bigintAsNumber = ['received', 'applied', 'duplicates', 'rejected', 'too_old', 'inserted', 'updated', 'unchanged', 'total_ms']
  .map((column) => `r.${column}::float8 as ${column}`)
  .join(', ');

export async function readWatermarks(db: Queryable): Promise<WatermarkRow[]> {
  const { rows } = await db.query<WatermarkRow>(
    `select w.source, w.watermark, w.processing_watermark,
       justify_interval(date_trunc('second', now() - w.watermark))::text as lag, w.run_id::float8 as run_id, w.updated_at
     from mixpanel_sync.sync_watermarks w order by w.source`,
  );
  return rows;
}

export async function readLastRuns(db: Queryable, limit: number): Promise<RunRow[]> {
  const { rows } = await db.query<RunRow>(
    `select r.id::float8 as id, r.source, r.mode, r.status, ${bigintAsNumber}, r.started_at, r.finished_at, r.error
     from mixpanel_sync.sync_runs r order by r.id desc limit $1`,
    [limit],
  );
  return rows;
}

export async function readHealth(db: Queryable): Promise<HealthRow[]> {
  const { rows } = await db.query<HealthRow>('select h."check", h.status, h.value, h.threshold, h.detail from mixpanel_sync.sync_health() h');
  return rows;
}

export function worstStatus(health: readonly HealthRow[]): HealthStatus {
  return health.reduce<HealthStatus>((worst, row) => (SEVERITY.indexOf(row.status) > SEVERITY.indexOf(worst) ? row.status : worst), 'ok');
}

/** Exit code of `npm run status`: 0 ok, 1 warn, 2 critical (3, status unknown, is the caller's). */
export function statusExitCode(status: HealthStatus): number {
  return SEVERITY.indexOf(status);
}

export async function readSyncStatus(db: Queryable, runs = 10): Promise<SyncStatus> {
  const health = await readHealth(db);
  return { status: worstStatus(health), watermarks: await readWatermarks(db), runs: await readLastRuns(db, runs), health };
}
