// incremental_ms and incremental_history_growth: an incremental sync of 2,500 new events (plus the
// overlap re-read) through the loader, on top of a small history and of a large one.
import { syncEvents } from '../loader/events-sync.ts';
import type { Scale } from './bench-options.ts';
import type { BenchDatabase, BenchServer } from './bench-server.ts';
import type { SuiteResult } from './figures.ts';
import { buildHistory, EVENTS_PER_USER, historyLines, newEventLines, type ExportLine, type HistoryShape } from './history-builder.ts';
import { benchFile, SAMPLE_END, writeLines } from './sample-data.ts';
import { medianReads, startBufferReads, startDiskReads, startReadTime, type TableBlocks } from './buffer-reads.ts';
import { medianProfile, profiled, profileGrowth, profileText, type StepProfile } from './run-profile.ts';
import { eventStorage, storageText, type EventStorage } from './storage.ts';
import { log, median, ratio, seconds, timed } from './timing.ts';

const NEW_EVENTS = 2_500;
const OVERLAP_MS = 2 * 3_600_000;
const HOUR_MS = 3_600_000;
const WARM_UP_RUNS = 2;

interface HistoryFigures {
  users: number;
  events: number;
  buildMs: number;
  sizeBytes: number;
  /** tables + indexes ÷ events counted, right after the build (storage.ts) */
  bytesPerEvent: number;
  storage: EventStorage;
  runMs: number[];
  /** the timed runs' step profiles (run-profile.ts) */
  profiles: (StepProfile | null)[];
  /** the timed runs' blocks read from outside shared_buffers, per table (buffer-reads.ts) */
  reads: TableBlocks[][];
  /** bytes the machine's disks read during each timed run (buffer-reads.ts; none where unreadable) */
  diskBytes: number[];
  /** milliseconds the database spent reading blocks during each timed run (buffer-reads.ts; none without track_io_timing) */
  readMs: number[];
  /** runs whose applied/duplicates differ from what was sent */
  mismatches: string[];
}

/** A built history and the state of its run sequence. */
interface History extends HistoryFigures {
  shape: HistoryShape;
  db: BenchDatabase;
  earlier: ExportLine[];
  watermark: number;
}

async function buildOne(server: BenchServer, users: number): Promise<History> {
  const shape: HistoryShape = { users, end: SAMPLE_END };
  const db = await server.freshDatabase();
  try {
    const build = await timed(() => buildHistory(db.pool, shape, (message) => log(`${users} users: ${message}`)));
    log(`incremental: history of ${users} users built in ${seconds(build.ms)}`);
    const storage = await eventStorage(db.pool);
    return {
      users,
      events: users * EVENTS_PER_USER,
      buildMs: build.ms,
      sizeBytes: storage.bytes,
      bytesPerEvent: storage.bytesPerEvent,
      storage,
      runMs: [],
      profiles: [],
      reads: [],
      diskBytes: [],
      readMs: [],
      mismatches: [],
      shape,
      db,
      earlier: [],
      watermark: shape.end.getTime(),
    };
  } catch (error) {
    await db.drop();
    throw error;
  }
}

/**
 * Run `run` of a history's sequence. Runs 0 and 1 warm up (an hourly sync meets a server that has been serving) and
 * move the overlap past the built history, so every timed run re-reads the same 2 h of earlier runs' events.
 */
async function runOnce(h: History, run: number): Promise<void> {
  const { db, shape, users } = h;
  const clock = new Date(h.watermark + HOUR_MS);
  const from = new Date(h.watermark - OVERLAP_MS);
  const fresh = await newEventLines(db.pool, shape, NEW_EVENTS, new Date(h.watermark), clock, run + 1);
  const overlap = [
    ...(await historyLines(db.pool, shape, from, new Date(h.watermark))),
    ...h.earlier.filter((e) => e.second * 1000 >= from.getTime() && e.second * 1000 <= h.watermark),
  ];
  const file = await writeLines(
    await benchFile(`incremental-${users}-${run}.jsonl`),
    [...overlap, ...fresh].map((e) => e.line),
  );
  // timed inside: the profile's wait for the statistics is not the run's time; warm-up runs are not profiled
  const sync = () => timed(() => syncEvents({ pool: db.pool, input: file, clock }));
  const reads = run < WARM_UP_RUNS ? null : await startBufferReads(db.pool);
  const readClock = run < WARM_UP_RUNS ? null : await startReadTime(db.pool);
  const disk = startDiskReads();
  const {
    value: { ms, value: summary },
    profile,
  } = run < WARM_UP_RUNS ? { value: await sync(), profile: null } : await profiled(db.pool, sync, (t) => t.value.run_id);
  // read after profiled(): it waits until the run's statistics (the I/O counters with them) are published
  const blocks = reads ? await reads.finish() : null;
  const diskBytes = disk.finish();
  const readMs = readClock ? await readClock.finish() : null;
  if (summary.mode !== 'incremental' || summary.applied !== fresh.length || summary.duplicates !== overlap.length) {
    h.mismatches.push(
      `run ${run}: ${summary.mode}, applied ${summary.applied} of ${fresh.length} new, ${summary.duplicates} duplicates of ${overlap.length} re-read`,
    );
  }
  log(
    `incremental: ${users} users, run ${run}${run < WARM_UP_RUNS ? ' (warm-up)' : ''}: ${seconds(ms)}, ${fresh.length} new + ${overlap.length} overlap`,
  );
  if (run >= WARM_UP_RUNS) {
    h.runMs.push(ms);
    h.profiles.push(profile);
    if (blocks) h.reads.push(blocks);
    if (diskBytes !== null) h.diskBytes.push(diskBytes);
    if (readMs !== null) h.readMs.push(readMs);
  }
  h.earlier.push(...fresh);
  h.watermark = Math.max(...fresh.map((e) => e.second)) * 1000;
}

/** The median blocks each table read from outside shared_buffers per timed run, largest first. */
function readsText(h: History): string {
  if (h.reads.length === 0) return 'not measured';
  const tables = [...medianReads(h.reads)].filter(([, read]) => read > 0).sort((a, b) => b[1] - a[1]);
  if (tables.length === 0) return 'none';
  return tables.map(([table, read]) => `${table} ${Math.round(read).toLocaleString('en-US')}`).join(' · ');
}

const totalReads = (h: History): number => [...medianReads(h.reads).values()].reduce((sum, read) => sum + read, 0);

/** The ≥ 30M-event history of the scale figures (--scale, or a full run). */
const SCALE_EVENTS = 30_000_000;

export async function incrementalHistory(server: BenchServer, scale: Scale, quick: boolean): Promise<SuiteResult> {
  // Both histories are built first, then their runs alternate (small first on even runs, big first on odd ones), so
  // that the ratio compares runs made side by side on a shared machine.
  const small = await buildOne(server, scale.historyUsers.small);
  let big: History;
  try {
    big = await buildOne(server, scale.historyUsers.big);
  } catch (error) {
    await small.db.drop();
    throw error;
  }
  let sharedBuffers = '?';
  let blockSize = 8192;
  try {
    const { rows: server } = await big.db.pool.query<{ shared_buffers: string; block_size: string }>(
      "select pg_catalog.current_setting('shared_buffers') as shared_buffers, pg_catalog.current_setting('block_size') as block_size",
    );
    sharedBuffers = server[0]!.shared_buffers;
    blockSize = Number(server[0]!.block_size);
    for (let run = 0; run < WARM_UP_RUNS + scale.repeats; run++) {
      for (const h of run % 2 === 0 ? [small, big] : [big, small]) await runOnce(h, run);
    }
  } finally {
    await small.db.drop();
    await big.db.drop();
  }
  const smallMs = median(small.runMs);
  const bigMs = median(big.runMs);
  const growth = ratio(bigMs, smallMs);
  const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  const mismatches = [...small.mismatches, ...big.mismatches];
  const smallProfile = medianProfile(small.profiles);
  const bigProfile = medianProfile(big.profiles);
  const scaleKey = big.events >= SCALE_EVENTS;
  const daily = big.storage.tables.find((t) => t.table === 'events_daily');
  const aggregatesBytes = big.storage.tables
    .filter((t) => t.table === 'events_daily' || t.table === 'subscribers')
    .reduce((sum, t) => sum + t.bytes, 0);
  const bigReads = totalReads(big);
  const readTimeText =
    big.readMs.length > 0 && small.readMs.length > 0
      ? ` Reading them took ${Math.round(median(big.readMs))} ms of a big run and ${Math.round(median(small.readMs))} ms of a small one (medians, pg_stat_database.blk_read_time with track_io_timing on)${bigReads > 0 ? `: ${Math.round((median(big.readMs) * 1000) / bigReads)} µs a block in the big run` : ''}; the big run's apply took ${bigProfile && smallProfile ? `${Math.round(bigProfile.applyMs - smallProfile.applyMs)} ms` : 'its time'} more.`
      : '';
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  const fromDisk =
    big.diskBytes.length > 0 && small.diskBytes.length > 0
      ? ` The machine's disk read ${mib(median(big.diskBytes))} during a big run and ${mib(median(small.diskBytes))} during a small one (medians, /proc/diskstats), against ${mib(bigReads * blockSize)} of blocks the big run read from outside shared_buffers: ${median(big.diskBytes) >= (bigReads * blockSize) / 2 ? 'most of them came from the disk, not from the page cache of the kernel' : 'most of them came from the page cache of the kernel'}.`
      : '';
  const why = {
    incremental_history_growth:
      smallProfile && bigProfile
        ? `the median run takes ${Math.round(bigMs)} ms on ${big.users.toLocaleString('en-US')} users (${gib(big.sizeBytes)} of tables) against ${Math.round(smallMs)} ms on ${small.users.toLocaleString('en-US')}; step by step (median step profiles of the same runs): ${profileGrowth(smallProfile, bigProfile)}. Big: ${profileText(bigProfile)}; small: ${profileText(smallProfile)}. The apply step is ADD's index probes (ledger dedup, events_daily and subscribers upserts) for ~2,500 random users: the same number of probes in both, into B-trees a level deeper and pages farther away in the big one. Blocks read from outside shared_buffers (${sharedBuffers}) per run, medians by table: big ${readsText(big)}; small ${readsText(small)}.${readTimeText}${fromDisk} Each new event of a random user updates that user's events_daily and subscribers rows: pages spread over ${gib(big.sizeBytes)} of tables, against ${sharedBuffers} of shared_buffers (docs/scaling.md, "ADD on a history larger than memory": the ADD's plan, and the same runs with 6 GB of shared_buffers).`
        : `the median run takes ${Math.round(bigMs)} ms on ${big.users.toLocaleString('en-US')} users against ${Math.round(smallMs)} ms on ${small.users.toLocaleString('en-US')} (no step profile: function statistics off).`,
    ...(scaleKey
      ? {
          scale_storage_bytes_per_event: `per event and table: ${storageText(big.storage)}. This history is events_daily's worst case: every event is its own (user, day, name) row${daily ? ` (${Math.round(daily.bytes / Math.max(1, daily.rows))} B a row with its primary key)` : ''}, where the original project's density (the full-sync suite's storage_bytes_per_event) puts ~1.5 events in a row; the ledger holds only the ledger retention's days. The aggregates alone, without any ledger, are ${Math.round(aggregatesBytes / big.storage.events)} B per event here (events_daily + subscribers): the floor of this shape with today's rows; below it only narrower rows (events_daily's first_at/last_at, event names as ids) or fewer rows per event.`,
        }
      : {}),
  };
  return {
    why,
    figures: {
      incremental_ms: smallMs,
      incremental_history_growth: growth,
      ...(big.events >= SCALE_EVENTS ? { scale_storage_bytes_per_event: big.bytesPerEvent, scale_incremental_ms: bigMs } : {}),
    },
    ...(big.events >= SCALE_EVENTS
      ? {}
      : {
          missing: {
            scale_storage_bytes_per_event: `the big history has ${big.events.toLocaleString('en-US')} events, not ≥ 30M: run with --scale`,
            scale_incremental_ms: `the big history has ${big.events.toLocaleString('en-US')} events, not ≥ 30M: run with --scale`,
          },
        }),
    section: {
      title: 'Incremental sync as history grows',
      command: big.events >= SCALE_EVENTS ? 'npm run bench -- --scale' : 'npm run bench -- --only incremental',
      method: [
        `History built with set-based SQL (generate_series, scripts/bench/history.sql) straight into event_ledger, events_daily and subscribers, indexes re-created after, VACUUM ANALYZE: each user has ${EVENTS_PER_USER} events on distinct days of the 45-day window with distinct names, so events_daily holds one row per event. The ledger holds what finish_run leaves in it: the events of the days from the ledger horizon on (events.ledger_retention, 7 days by default; day partitions created by mixpanel_sync.ensure_ledger_partitions when the ledger is partitioned).`,
        `Each run: ${NEW_EVENTS.toLocaleString('en-US')} new events for random existing users over the hour after the watermark, plus every event of the last 2 h re-read (exact duplicates of the ledger's), through \`syncEvents\` from a JSONL file, timed end to end.`,
        `Runs are an hour apart; two warm-up runs (so the overlap re-read lies past the built history, the same 5,000 events in both), then ${scale.repeats} timed runs; medians. Both histories are built first, then their runs alternate (the small history's run first, then the big one's, then the other way round), so the growth compares runs made side by side.`,
        'Step profile of each timed run (scripts/bench/run-profile.ts): COPY = sync_runs.stage_ms (begin_run to finish_run); parse, identity, apply (REPLACE/ADD, refresh of subscribers included), count (the subscriber count recorded for sync_health, by a trigger on the closing UPDATE, after apply_ms is taken) = the time PostgreSQL spent in those functions during the run (pg_stat_user_functions, track_functions = all); rest = the rest of finish_run (sync_runs.apply_ms): the terminated-early probe, ledger prune, watermark, lateness, staging cleanup. Medians per step.',
        'Storage: pg_total_relation_size (heap, TOAST, indexes) of event_ledger, events_daily, subscribers and all their partitions, right after the build, ÷ the events counted (storage.ts). scale_storage_bytes_per_event and scale_incremental_ms come from the ≥ 30M-event history (`--scale`, or a full run).',
        "Blocks read (scripts/bench/buffer-reads.ts), each timed run: the blocks each table read from outside shared_buffers (pg_statio_user_tables heap, index and TOAST reads, a partition counted under its partitioned table), read after the run's statistics are published; the time the database spent reading blocks (pg_stat_database.blk_read_time, with track_io_timing on); the bytes the machine's disks read meanwhile (/proc/diskstats), which tells reads from the disk from reads out of the kernel's page cache. Medians per table.",
        quick && big.events < SCALE_EVENTS
          ? `**Quick scale**: the "big" history is ${scale.historyUsers.big.toLocaleString('en-US')} users, not 1,000,000.`
          : `The big history is ${big.users.toLocaleString('en-US')} users, ${big.events.toLocaleString('en-US')} events.`,
      ],
      table: [
        [
          'history',
          'events',
          'tables + indexes',
          'per event',
          'built in',
          'incremental run (median)',
          'runs',
          'step profile (medians)',
          'blocks read outside shared_buffers per run (medians)',
        ],
        ...[small, big].map((h) => [
          `${h.users.toLocaleString('en-US')} users`,
          h.events.toLocaleString('en-US'),
          gib(h.sizeBytes),
          `${Math.round(h.bytesPerEvent)} B`,
          seconds(h.buildMs),
          `${Math.round(median(h.runMs)).toLocaleString('en-US')} ms`,
          `${h.runMs.map((ms) => `${Math.round(ms)}`).join(', ')} ms`,
          profileText(medianProfile(h.profiles)),
          readsText(h),
        ]),
      ],
      reading: [
        ...[small, big].map((h) => `${h.users.toLocaleString('en-US')} users, bytes per event by table: ${storageText(h.storage)}.`),
        ...(mismatches.length > 0 ? [`**Counts off** (applied/duplicates): ${mismatches.join('; ')}`] : []),
      ],
    },
  };
}
