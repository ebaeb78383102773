// The original events sync, rebuilt faithfully: TypeScript reads the export, parses and aggregates per
// user, then calls loop-based plpgsql in batches of 250 users. Full sync REPLACEs each user's counts;
// incremental fetches from watermark − 2 h and ADDs them (so re-read overlap events count twice).
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type pg from 'pg';

export const BASELINE_BATCH_USERS = 250;
export const BASELINE_OVERLAP_MS = 2 * 3_600_000;

interface EventAggregate {
  count: number;
  first: number;
  last: number;
}

/** per event name */
type UserAggregate = Map<string, EventAggregate>;

export interface BaselineRun {
  lines: number;
  users: number;
  batches: number;
}

/** Creates (or re-creates) the bench_baseline schema and its functions. */
export async function installBaseline(pool: pg.Pool): Promise<void> {
  await pool.query(await readFile(new URL('./schema.sql', import.meta.url), 'utf8'));
}

function add(users: Map<string, UserAggregate>, distinctId: string, name: string, ms: number): void {
  let user = users.get(distinctId);
  if (!user) {
    user = new Map();
    users.set(distinctId, user);
  }
  const event = user.get(name);
  if (event) {
    event.count++;
    event.first = Math.min(event.first, ms);
    event.last = Math.max(event.last, ms);
  } else user.set(name, { count: 1, first: ms, last: ms });
}

/** Reads the export file, keeps the events at or after `since` (ms), aggregates them per user. */
async function aggregateFile(file: string, since: number): Promise<{ users: Map<string, UserAggregate>; lines: number; maxMs: number }> {
  const users = new Map<string, UserAggregate>();
  let lines = 0;
  let maxMs = Number.NEGATIVE_INFINITY;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    if (line === '') continue;
    const { event, properties } = JSON.parse(line) as { event: string; properties: { time: number; distinct_id: string | number } };
    const time = Number(properties.time);
    const ms = Math.floor(time >= 1e11 ? time : time * 1000);
    if (ms < since) continue;
    lines++;
    maxMs = Math.max(maxMs, ms);
    add(users, String(properties.distinct_id), event, ms);
  }
  return { users, lines, maxMs };
}

const iso = (ms: number): string => new Date(ms).toISOString();

function batchJson(batch: Array<[string, UserAggregate]>): string {
  return JSON.stringify(
    batch.map(([distinctId, user]) => ({
      distinct_id: distinctId,
      events: Object.fromEntries([...user].map(([name, e]) => [name, { count: e.count, first: iso(e.first), last: iso(e.last) }])),
    })),
  );
}

async function upsertInBatches(pool: pg.Pool, fn: string, users: Map<string, UserAggregate>): Promise<number> {
  const entries = [...users];
  let batches = 0;
  for (let at = 0; at < entries.length; at += BASELINE_BATCH_USERS) {
    await pool.query(`select ${fn}($1::jsonb)`, [batchJson(entries.slice(at, at + BASELINE_BATCH_USERS))]);
    batches++;
  }
  return batches;
}

async function saveWatermark(pool: pg.Pool, maxMs: number): Promise<void> {
  if (!Number.isFinite(maxMs)) return;
  await pool.query(
    `insert into bench_baseline.sync_watermarks (source, watermark) values ('events', $1)
     on conflict (source) do update set watermark = excluded.watermark, updated_at = now()`,
    [new Date(maxMs)],
  );
}

async function readWatermarkMs(pool: pg.Pool): Promise<number | null> {
  const { rows } = await pool.query<{ watermark: Date }>("select watermark from bench_baseline.sync_watermarks where source = 'events'");
  return rows[0] ? rows[0].watermark.getTime() : null;
}

/** Full sync: every event of the file, each user's counts replaced. */
export async function baselineFullSync(pool: pg.Pool, file: string): Promise<BaselineRun> {
  const { users, lines, maxMs } = await aggregateFile(file, Number.NEGATIVE_INFINITY);
  const batches = await upsertInBatches(pool, 'bench_baseline.upsert_subscribers_incremental', users);
  await saveWatermark(pool, maxMs);
  return { lines, users: users.size, batches };
}

/** Incremental sync: events from watermark − 2 h, ADDed to each user's counts (no dedup). */
export async function baselineIncrementalSync(pool: pg.Pool, file: string): Promise<BaselineRun> {
  const watermark = await readWatermarkMs(pool);
  if (watermark === null) throw new Error('baseline incremental sync: no watermark yet; run the baseline full sync first');
  const { users, lines, maxMs } = await aggregateFile(file, watermark - BASELINE_OVERLAP_MS);
  const batches = await upsertInBatches(pool, 'bench_baseline.upsert_subscribers_incremental_add', users);
  await saveWatermark(pool, Math.max(maxMs, watermark));
  return { lines, users: users.size, batches };
}

/** Sum of every user's total: the events the baseline believes it saw. */
export async function baselineTotalEvents(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ total: string | null }>('select sum(total_events) as total from bench_baseline.subscribers');
  return Number(rows[0]!.total ?? 0);
}
