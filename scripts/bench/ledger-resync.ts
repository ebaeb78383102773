// One-off measurement of the ledger design (docs/ledger.md; the part `--! split: 400-ledger.sql` of committed migration
// 000006), side by side in one run on one server: "merge" = the migrations as they are; "previous" = the same without
// that part (delete-and-reinsert REPLACE, 45-day ledger): 000006 is unfolded into a current/ folder of its parts there,
// less 400-ledger.sql. Each database gets the same generated history, then:
//   - a first full sync (REPLACE over the 45-day window) and its bytes per event (tables + indexes);
//   - 7 steady-state full re-syncs of the same events (forced full runs), each timed, then the bytes per event again
//     (autovacuum as configured; no manual VACUUM);
//   - an incremental run (ADD) that re-reads 2 hours of overlap and brings new events, timed.
// The two databases alternate which goes first at each step. Usage:
//   npx tsx scripts/bench/ledger-resync.ts [events=95000] [users=3000]
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { databaseUrl, resolveDatabaseServer } from '../db/database-url.ts';
import { runMigrations } from '../db/migrate.ts';
import { EMBEDDED_SETTINGS } from './bench-server.ts';

const events = Number(process.argv[2] ?? 95_000);
const users = Number(process.argv[3] ?? 3_000);
const clock = '2024-06-30T12:00:00Z';
const log = (line: string) => process.stderr.write(`[ledger-resync] ${line}\n`);

// Events spread over the 45 days before the clock; 1 in 30 without $insert_id; 2 % sent twice.
const stageSql = `
  insert into mixpanel_sync.staged_events (run_id, line_no, line)
  select $1, row_number() over (order by h.g), h.line
  from (
    select g, t, jsonb_build_object('event', 'e' || (g % 12),
      'properties', jsonb_build_object('distinct_id', 'user-' || (g * 7919 % $3), 'time', t,
        'mp_processing_time_ms', t * 1000 + 5000, '$browser', 'b' || (g % 5), 'plan', 'p' || (g % 3))
        || case when g % 30 = 0 then '{}'::jsonb else jsonb_build_object('$insert_id', 'i-' || g) end)::text as line
    from generate_series(1, $2::bigint) g,
      lateral (select extract(epoch from $4::timestamptz)::bigint - 3600 - (g * 104729 % (44 * 86400)) as t) x
  ) h
  where h.t >= $5::bigint`;

async function run(
  pool: pg.Pool,
  options: { full: boolean; clock: string; extra?: number },
): Promise<{ ms: number; applied: number; touched: number }> {
  const { rows: began } = await pool.query(`select id from mixpanel_sync.begin_run('events', force_full => $1, clock => $2::timestamptz)`, [
    options.full,
    options.clock,
  ]);
  const runId = began[0].id;
  // a full run reads the whole window; an incremental run the last 3 hours of the history (its overlap) and the new events
  await pool.query(stageSql, [runId, events, users, clock, options.full ? 0 : Date.parse(clock) / 1000 - 3 * 3600]);
  // 2 % re-sent lines
  await pool.query(
    `insert into mixpanel_sync.staged_events (run_id, line_no, line)
    select run_id, line_no + $2::bigint, line from mixpanel_sync.staged_events where run_id = $1 and line_no % 50 = 0`,
    [runId, events],
  );
  if (options.extra) {
    await pool.query(
      `insert into mixpanel_sync.staged_events (run_id, line_no, line)
      select $1, $2 + g, jsonb_build_object('event', 'new', 'properties', jsonb_build_object('distinct_id', 'user-' || (g % $3),
        'time', extract(epoch from $4::timestamptz)::bigint - 60 - g % 3000, '$insert_id', 'n-' || g))::text
      from generate_series(1, $5::bigint) g`,
      [runId, 2 * events, users, options.clock, options.extra],
    );
  }
  const started = performance.now();
  const { rows } = await pool.query('select applied, users_touched from mixpanel_sync.finish_run($1)', [runId]);
  return { ms: performance.now() - started, applied: Number(rows[0].applied), touched: Number(rows[0].users_touched) };
}

async function bytesPerEvent(pool: pg.Pool): Promise<{ perEvent: number; daily: number; ledger: number; stored: number }> {
  const { rows } = await pool.query(`select
      pg_total_relation_size('mixpanel_sync.events_daily') as daily,
      (select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c
        where c.oid = 'mixpanel_sync.event_ledger'::regclass or c.oid in (select inhrelid from pg_inherits where inhparent = 'mixpanel_sync.event_ledger'::regclass)) as ledger,
      pg_total_relation_size('mixpanel_sync.subscribers') as subscribers,
      (select sum(event_count) from mixpanel_sync.events_daily) as stored`);
  const r = rows[0];
  const total = Number(r.daily) + Number(r.ledger) + Number(r.subscribers);
  return { perEvent: total / Number(r.stored), daily: Number(r.daily), ledger: Number(r.ledger), stored: Number(r.stored) };
}

/**
 * The migrations folder `folder` with the committed migration that holds `--! split: part` unfolded into a current/
 * folder of its parts, less `part` (graphile-migrate's folder mode joins them again in order).
 */
async function withoutPart(folder: string, part: string): Promise<void> {
  const committed = path.join(folder, 'committed');
  for (const name of await readdir(committed)) {
    const text = await readFile(path.join(committed, name), 'utf8');
    if (!text.includes(`\n--! split: ${part}\n`)) continue;
    const parts = text.split(/^--! split: (\S+)\n/m).slice(1);
    await rm(path.join(committed, name));
    await rm(path.join(folder, 'current.sql'), { force: true });
    // (a session's current/ folder, if any, is left out of "previous": it holds later work, not this part's)
    await rm(path.join(folder, 'current'), { recursive: true, force: true });
    await mkdir(path.join(folder, 'current'));
    for (let i = 0; i < parts.length; i += 2) {
      if (parts[i] !== part) await writeFile(path.join(folder, 'current', parts[i]!), parts[i + 1]!);
    }
    return;
  }
  throw new Error(`no committed migration holds the part ${part}`);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const server = await resolveDatabaseServer(process.env, { settings: EMBEDDED_SETTINGS });
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'ledger-resync-'));
  const pools: Record<string, pg.Pool> = {};
  try {
    const previous = path.join(scratch, 'migrations');
    await cp(path.resolve('migrations'), previous, { recursive: true });
    await withoutPart(previous, '400-ledger.sql');
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    for (const [name, folder] of [
      ['merge', path.resolve('migrations')],
      ['previous', previous],
    ] as const) {
      const db = `ledger_resync_${name}`;
      await admin.query(`drop database if exists ${db}`);
      await admin.query(`create database ${db}`);
      await runMigrations(databaseUrl(server.url, db), { migrationsFolder: folder, gmrc: false });
      pools[name] = new pg.Pool({ connectionString: databaseUrl(server.url, db), max: 2 });
      pools[name]!.on('error', () => {});
      log(`${name}: migrated`);
    }
    await admin.end();
    const names = ['merge', 'previous'];
    const order = (step: number) => (step % 2 === 0 ? names : [...names].reverse());
    const result: Record<
      string,
      { first: number; fresh: number; resyncs: number[]; after: number; add: number; ledgerDays: string; touched: number }
    > = {};
    for (const name of names) result[name] = { first: 0, fresh: 0, resyncs: [], after: 0, add: 0, ledgerDays: '', touched: 0 };
    for (const name of order(0)) {
      const first = await run(pools[name]!, { full: true, clock });
      result[name]!.first = first.ms;
      result[name]!.fresh = (await bytesPerEvent(pools[name]!)).perEvent;
      log(`${name}: first full sync ${first.ms.toFixed(0)} ms, ${first.applied} applied, ${result[name]!.fresh.toFixed(0)} B/event`);
    }
    for (let step = 1; step <= 7; step++) {
      for (const name of order(step)) {
        const again = await run(pools[name]!, { full: true, clock });
        result[name]!.resyncs.push(again.ms);
        result[name]!.touched = again.touched;
        log(`${name}: re-sync ${step}: ${again.ms.toFixed(0)} ms, users_touched ${again.touched}`);
      }
    }
    for (const name of names) {
      result[name]!.after = (await bytesPerEvent(pools[name]!)).perEvent;
      const { rows } = await pools[name]!.query(`select count(distinct day) as days from mixpanel_sync.event_ledger`);
      result[name]!.ledgerDays = rows[0].days;
    }
    const later = new Date(Date.parse(clock) + 3_600_000).toISOString();
    for (const name of order(0)) {
      const add = await run(pools[name]!, { full: false, clock: later, extra: 3_000 });
      result[name]!.add = add.ms;
      log(`${name}: incremental ${add.ms.toFixed(0)} ms, ${add.applied} applied`);
    }
    // What each ledger column and index costs (the merge database, after the runs). The ledger is day-partitioned
    // (200-ledger.sql): its heap and primary key are the sums over its partitions (pg_partition_tree; a plain table
    // is its own only leaf), and it has no day index any more (0).
    const { rows: columns } = await pools.merge!.query(`select
        count(*) as rows,
        avg(pg_column_size(l.distinct_id)) as distinct_id, avg(pg_column_size(l.event_key)) as event_key,
        avg(pg_column_size(l.day)) as day, avg(pg_column_size(l.event_name)) as event_name,
        avg(pg_column_size(l.event_time)) as event_time, avg(pg_column_size(l.run_id)) as run_id,
        avg(pg_column_size(l.*)) as whole_row,
        (select sum(pg_relation_size(t.relid)) from pg_partition_tree('mixpanel_sync.event_ledger') t where t.isleaf) as heap,
        (select sum(pg_relation_size(t.relid)) from pg_partition_tree('mixpanel_sync.event_ledger_pkey') t where t.isleaf) as pkey,
        coalesce(pg_relation_size(to_regclass('mixpanel_sync.event_ledger_day_idx')), 0) as day_idx,
        pg_relation_size('mixpanel_sync.events_daily') as daily_heap,
        pg_relation_size('mixpanel_sync.events_daily_pkey') as daily_pkey,
        pg_relation_size('mixpanel_sync.events_daily_day_idx') as daily_day_idx,
        (select count(*) from mixpanel_sync.events_daily) as daily_rows
      from mixpanel_sync.event_ledger l`);
    const c = columns[0];
    const perRow = (bytes: string, rows: string) => (Number(bytes) / Number(rows)).toFixed(1);
    console.log(
      `\nLedger columns (merge, ${c.rows} rows): average bytes per value: ${[
        'distinct_id',
        'event_key',
        'day',
        'event_name',
        'event_time',
        'run_id',
        'whole_row',
      ]
        .map((k) => `${k} ${Number(c[k]).toFixed(1)}`)
        .join(', ')}.`,
    );
    console.log(
      `Per ledger row: heap ${perRow(c.heap, c.rows)} B, primary key ${perRow(c.pkey, c.rows)} B, day index ${perRow(c.day_idx, c.rows)} B. ` +
        `Per events_daily row (${c.daily_rows}): heap ${perRow(c.daily_heap, c.daily_rows)} B, primary key ${perRow(c.daily_pkey, c.daily_rows)} B, day index ${perRow(c.daily_day_idx, c.daily_rows)} B.\n`,
    );
    const m = result.merge!;
    const p = result.previous!;
    console.log(
      `| measure (${events.toLocaleString('en-US')} events, ${users.toLocaleString('en-US')} users) | previous (no 400-ledger.sql) | merge (400-ledger.sql) | merge ÷ previous |`,
    );
    console.log('| --- | --- | --- | --- |');
    console.log(
      `| first full sync, finish_run | ${p.first.toFixed(0)} ms | ${m.first.toFixed(0)} ms | ${(m.first / p.first).toFixed(2)}× |`,
    );
    console.log(
      `| steady-state full re-sync, finish_run (median of 7) | ${median(p.resyncs).toFixed(0)} ms | ${median(m.resyncs).toFixed(0)} ms | ${(median(m.resyncs) / median(p.resyncs)).toFixed(2)}× |`,
    );
    console.log(
      `| bytes per event after the first full sync | ${p.fresh.toFixed(0)} B | ${m.fresh.toFixed(0)} B | ${(m.fresh / p.fresh).toFixed(2)}× |`,
    );
    console.log(
      `| bytes per event after 7 re-syncs | ${p.after.toFixed(0)} B (${(p.after / p.fresh).toFixed(2)}× fresh) | ${m.after.toFixed(0)} B (${(m.after / m.fresh).toFixed(2)}× fresh) | ${(m.after / p.after).toFixed(2)}× |`,
    );
    console.log(`| ledger days held | ${p.ledgerDays} | ${m.ledgerDays} | |`);
    console.log(`| users_touched by a re-sync of the same data | ${p.touched} | ${m.touched} | |`);
    console.log(
      `| incremental run (2 h overlap + 3,000 new), finish_run | ${p.add.toFixed(0)} ms | ${m.add.toFixed(0)} ms | ${(m.add / p.add).toFixed(2)}× |`,
    );
  } finally {
    for (const pool of Object.values(pools)) await pool.end();
    await server.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

await main();
