// buffer-reads.ts counts, per table of mixpanel_sync, the blocks a step read from outside shared_buffers and those it
// found there, a partition's under its partitioned table. Seen failing with the partitions left ungrouped (the rows came
// back as bench_probe_a and bench_probe_b) and with the read counter taken from heap_blks_hit (the big table's scan
// then counted 4,096 blocks of its 8,020). startReadTime: seen failing with blk_write_time read instead of blk_read_time
// (0 ms), and with a figure returned where track_io_timing is off (0, not null). startDiskReads: seen failing with the
// sectors written counted instead of those read.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { medianReads, startBufferReads, startDiskReads, startReadTime, type BufferReadsProbe, type TableBlocks } from './buffer-reads.ts';

const db = await createTestDatabase();
afterAll(() => db.drop());

/** The probe's tables once `done` holds: a backend publishes its I/O counters about a second after its last one. */
async function settled(probe: BufferReadsProbe, done: (tables: TableBlocks[]) => boolean): Promise<TableBlocks[]> {
  for (let wait = 0; ; wait++) {
    const tables = await probe.finish();
    if (done(tables) || wait >= 60) return tables;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

describe('startBufferReads', () => {
  it('counts the blocks a partitioned table found in shared_buffers under the partitioned table', async () => {
    await db.pool.query(`create table mixpanel_sync.bench_probe (d int not null, pad text) partition by range (d);
      create table mixpanel_sync.bench_probe_a partition of mixpanel_sync.bench_probe for values from (0) to (100);
      create table mixpanel_sync.bench_probe_b partition of mixpanel_sync.bench_probe for values from (100) to (200);
      insert into mixpanel_sync.bench_probe select g % 200, repeat('x', 200) from generate_series(1, 4000) g;`);
    const probe = await startBufferReads(db.pool);
    const { rows } = await db.pool.query<{ n: string }>('select count(*) as n from mixpanel_sync.bench_probe');
    expect(Number(rows[0]!.n)).toBe(4000);
    const tables = await settled(probe, (t) => t.some((x) => x.table === 'bench_probe'));
    const probed = tables.filter((t) => t.table.startsWith('bench_probe'));
    expect(probed.map((t) => t.table)).toEqual(['bench_probe']);
    // 4,000 rows of ~230 bytes: at least one block of each partition, every one of them read or found
    expect(probed[0]!.read + probed[0]!.hit).toBeGreaterThanOrEqual(2);
  });

  it('counts as read the blocks a scan had to fetch from outside shared_buffers', async () => {
    // A table written in bulk (CREATE TABLE AS) keeps at most its ring of 16 MB of blocks in shared_buffers, whatever
    // their size: a scan of a ~60 MB one must read most of its blocks in. One session, no parallel workers (each
    // publishes its own counters), its counters published before the probe starts and after the scan.
    const client = await db.pool.connect();
    try {
      await client.query('set max_parallel_workers_per_gather = 0');
      await client.query(
        "create table mixpanel_sync.bench_probe_big as select g, repeat('y', 500) as pad from generate_series(1, 120000) g",
      );
      const { rows: size } = await client.query<{ blocks: string }>(
        "select pg_catalog.pg_relation_size('mixpanel_sync.bench_probe_big') / 8192 as blocks",
      );
      const blocks = Number(size[0]!.blocks);
      await client.query('select pg_catalog.pg_stat_force_next_flush()');
      await settledCount('bench_probe_big', 120_000);
      // the read time is counted by sessions with track_io_timing on: the scanning one here, every one on the bench's server
      await client.query('set track_io_timing = on');
      const off = await startReadTime(db.pool);
      expect(await off.finish()).toBeNull(); // the pool's sessions have it off: no figure, rather than a false 0
      const probe = await startBufferReads(db.pool);
      const clock = await startReadTime(client);
      const { rows } = await client.query<{ n: string }>('select count(*) as n from mixpanel_sync.bench_probe_big');
      expect(Number(rows[0]!.n)).toBe(120_000);
      await client.query('select pg_catalog.pg_stat_force_next_flush()');
      const tables = await settled(probe, (t) => t.some((x) => x.table === 'bench_probe_big' && x.read + x.hit >= blocks));
      const big = tables.find((t) => t.table === 'bench_probe_big');
      expect(big).toBeDefined();
      expect(big!.read + big!.hit).toBe(blocks);
      // the ring keeps at most 2,048 of the table's ~8,000 blocks
      expect(big!.read).toBeGreaterThan(blocks / 2);
      expect(big!.hit).toBeLessThan(blocks / 2);
      // thousands of blocks read in: some time, however fast the kernel
      const readMs = await clock.finish();
      expect(readMs).not.toBeNull();
      expect(readMs!).toBeGreaterThan(0);
    } finally {
      client.release();
    }
  });
});

/** Waits until the statistics show the rows a table took (its writer's counters are published). */
async function settledCount(table: string, rows: number): Promise<void> {
  for (let wait = 0; wait < 60; wait++) {
    const { rows: seen } = await db.pool.query<{ n: string }>(
      "select coalesce(sum(n_tup_ins), 0) as n from pg_catalog.pg_stat_user_tables where schemaname = 'mixpanel_sync' and relname = $1",
      [table],
    );
    if (Number(seen[0]!.n) >= rows) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

describe('medianReads', () => {
  it('takes the median of each table over the runs, a table absent from a run counting 0', () => {
    const runs: TableBlocks[][] = [
      [
        { table: 'events_daily', read: 10, hit: 5 },
        { table: 'subscribers', read: 4, hit: 1 },
      ],
      [{ table: 'events_daily', read: 30, hit: 5 }],
      [
        { table: 'events_daily', read: 20, hit: 5 },
        { table: 'subscribers', read: 8, hit: 1 },
      ],
    ];
    expect(Object.fromEntries(medianReads(runs))).toEqual({ events_daily: 20, subscribers: 4 });
  });
});

describe('startDiskReads', () => {
  it.runIf(process.platform === 'linux')('counts what a read that bypasses the page cache fetched from the disk', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'disk-reads-'));
    try {
      const file = path.join(dir, 'eight-mib');
      writeFileSync(file, Buffer.alloc(8 * 2 ** 20, 7));
      execFileSync('sync');
      const probe = startDiskReads();
      // O_DIRECT (dd iflag=direct): the bytes come from the disk, whatever the page cache holds
      execFileSync('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M', 'iflag=direct'], { stdio: 'ignore' });
      const bytes = probe.finish();
      expect(bytes).not.toBeNull();
      expect(bytes!).toBeGreaterThanOrEqual(8 * 2 ** 20);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
