// Blocks a step read from outside shared_buffers, per table of mixpanel_sync (a partition counted under its partitioned
// table, TOAST and indexes with their table): the cumulative I/O statistics (pg_statio_user_tables) before and after.
// What separates "the same number of probes" from "the same time": a probe that misses shared_buffers waits for the
// kernel (its page cache, or the disk) instead of reading memory. A backend publishes its counters when it ends a
// transaction and has been idle about a second, or when it exits: read them after the step's statistics are in
// (run-profile.ts waits for finish_run's call to appear, which the same report carries).
import { readdirSync, readFileSync } from 'node:fs';
import type { Queryable } from '../sql/sync-api.ts';
import { median } from './timing.ts';

export interface TableBlocks {
  table: string;
  /** blocks read from outside shared_buffers (heap, indexes, TOAST) */
  read: number;
  /** blocks found in shared_buffers */
  hit: number;
}

export interface BufferReadsProbe {
  /** blocks per table since the probe started, largest reads first (tables with neither left out) */
  finish(): Promise<TableBlocks[]>;
}

async function blocksByTable(db: Queryable): Promise<Map<string, { read: number; hit: number }>> {
  const { rows } = await db.query<{ table: string; read: string; hit: string }>(
    `select coalesce(pg_catalog.pg_partition_root(s.relid), s.relid)::regclass::text as table,
       sum(coalesce(s.heap_blks_read, 0) + coalesce(s.idx_blks_read, 0) + coalesce(s.toast_blks_read, 0) + coalesce(s.tidx_blks_read, 0))::bigint as read,
       sum(coalesce(s.heap_blks_hit, 0) + coalesce(s.idx_blks_hit, 0) + coalesce(s.toast_blks_hit, 0) + coalesce(s.tidx_blks_hit, 0))::bigint as hit
     from pg_catalog.pg_statio_user_tables s
     where s.schemaname = 'mixpanel_sync'
     group by 1`,
  );
  return new Map(rows.map((r) => [r.table.replace(/^mixpanel_sync\./, ''), { read: Number(r.read), hit: Number(r.hit) }]));
}

export async function startBufferReads(db: Queryable): Promise<BufferReadsProbe> {
  const before = await blocksByTable(db);
  return {
    finish: async () => {
      const after = await blocksByTable(db);
      return [...after]
        .map(([table, a]) => ({
          table,
          read: a.read - (before.get(table)?.read ?? 0),
          hit: a.hit - (before.get(table)?.hit ?? 0),
        }))
        .filter((t) => t.read > 0 || t.hit > 0)
        .sort((x, y) => y.read - x.read || x.table.localeCompare(y.table));
    },
  };
}

export interface ReadTimeProbe {
  /** milliseconds this database's sessions spent reading blocks in since the probe started; null without track_io_timing */
  finish(): Promise<number | null>;
}

const readTime = async (db: Queryable) =>
  (
    await db.query<{ ms: number; on: boolean }>(
      `select d.blk_read_time::float8 as ms, pg_catalog.current_setting('track_io_timing')::boolean as on
       from pg_catalog.pg_stat_database d where d.datname = pg_catalog.current_database()`,
    )
  ).rows[0]!;

/**
 * The time the blocks read took (pg_stat_database.blk_read_time: counted only by sessions with track_io_timing on, which
 * the bench's server sets), for the whole database: what a block read from outside shared_buffers costs on this machine.
 */
export async function startReadTime(db: Queryable): Promise<ReadTimeProbe> {
  const before = await readTime(db);
  return {
    finish: async () => {
      const after = await readTime(db);
      return before.on && after.on ? after.ms - before.ms : null;
    },
  };
}

/** The blocks read per table of several runs: the median of each table's reads (a table absent from a run read 0). */
export function medianReads(runs: readonly TableBlocks[][]): Map<string, number> {
  const tables = new Set(runs.flatMap((run) => run.map((t) => t.table)));
  return new Map([...tables].map((table) => [table, median(runs.map((run) => run.find((t) => t.table === table)?.read ?? 0))] as const));
}

export interface DiskReadsProbe {
  /** bytes the machine's disks read since the probe started; null where /proc/diskstats cannot be read */
  finish(): number | null;
}

/** Bytes read so far by the machine's disks (whole disks of /sys/block; not loop, RAM or zram devices). */
function diskBytesRead(): number | null {
  if (process.platform !== 'linux') return null;
  let disks: Set<string>;
  let stats: string;
  try {
    disks = new Set(readdirSync('/sys/block').filter((name) => !/^(loop|ram|zram)/.test(name)));
    stats = readFileSync('/proc/diskstats', 'utf8');
  } catch {
    return null;
  }
  let sectors = 0;
  for (const line of stats.split('\n')) {
    // major minor name reads merged sectors-read …: sectors of 512 bytes, whatever the device's own size
    const fields = line.trim().split(/\s+/);
    if (fields.length > 5 && disks.has(fields[2]!)) sectors += Number(fields[5]);
  }
  return sectors * 512;
}

/**
 * What the machine's disks read during a step: the blocks a step read from outside shared_buffers come from the
 * kernel's page cache (memory) or, when the kernel no longer holds them, from the disk. Machine-wide: run it on an
 * otherwise idle machine.
 */
export function startDiskReads(): DiskReadsProbe {
  const before = diskBytesRead();
  return {
    finish: () => {
      const after = diskBytesRead();
      return before === null || after === null ? null : after - before;
    },
  };
}
