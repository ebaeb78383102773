// A large event history built straight into events_daily / event_ledger / subscribers with set-based
// SQL (generate_series), not through the loader, so a million users take minutes, not hours. The ledger holds what
// the product's would: the events of the ledger retention's days only (events.ledger_retention, default 7 days).
// Shape: user u has EVENTS_PER_USER events on distinct days of the 45-day window, with distinct event
// names, so events_daily holds one row per event (its largest size for the event count). Event keys come from
// mixpanel_sync.event_key itself, so export lines rebuilt from the ledger are exact duplicates.
import { readFile } from 'node:fs/promises';
import type pg from 'pg';
import { beginRun } from '../sql/sync-api.ts';

type Queryable = Pick<pg.Pool, 'query'>;

/** as in history.sql */
export const EVENTS_PER_USER = 30;
const NAMES = 40;

export interface HistoryShape {
  users: number;
  /** the history's last moment: the watermark it leaves (midday, so later runs stay on the same UTC day) */
  end: Date;
}

const USER_EVENTS = 'generate_series(0, $1::int - 1) u cross join lateral bench_history.user_events(u, $2::timestamptz) e';

/** The core's own key of an event with an $insert_id (the content is only read without one). */
const EVENT_KEY_SQL = 'mixpanel_sync.event_key(e.event_name, e.second, e.insert_id, null)';

interface SavedIndex {
  table: string;
  drop: string;
  create: string;
}

/** The primary keys and indexes of the tables, as statements to drop and re-create them identically. */
async function savedIndexes(db: Queryable, tables: string[]): Promise<SavedIndex[]> {
  const { rows } = await db.query<SavedIndex>(
    `select i.indrelid::regclass::text as table,
       case when c.oid is not null then format('alter table %s drop constraint %I', i.indrelid::regclass, c.conname)
            else format('drop index %s', i.indexrelid::regclass) end as drop,
       case when c.oid is not null then format('alter table %s add constraint %I %s', i.indrelid::regclass, c.conname, pg_catalog.pg_get_constraintdef(c.oid))
            else pg_catalog.pg_get_indexdef(i.indexrelid) end as create
     from pg_catalog.pg_index i
     left join pg_catalog.pg_constraint c on c.conindid = i.indexrelid and c.contype in ('p', 'u')
     where i.indrelid = any($1::regclass[])
     order by 1, 2`,
    [tables],
  );
  return rows;
}

/** Where 200-ledger.sql puts the partition helper (the first that exists is called, with two arguments: since 000015 it
 * takes a third, wait, which defaults to true; found by name, whatever its signature). */
const ENSURE_PARTITIONS = ['mixpanel_sync_private.ensure_ledger_partitions', 'mixpanel_sync.ensure_ledger_partitions'];

/**
 * The first day the product's ledger holds at `end` (mixpanel_sync.horizon_day over events.ledger_retention), with its
 * day partitions created when the ledger is partitioned (ensure_ledger_partitions of 200-ledger.sql).
 */
async function ledgerHorizon(db: Queryable, end: Date): Promise<string> {
  const { rows } = await db.query<{ horizon: string; partitioned: boolean; ensure: string | null }>(
    `select mixpanel_sync.horizon_day($1, mixpanel_sync.setting(mixpanel_sync.project_id(), 'events.ledger_retention')::interval)::text as horizon,
       (select c.relkind = 'p' from pg_catalog.pg_class c where c.oid = 'mixpanel_sync.event_ledger'::regclass) as partitioned,
       (select f.name from unnest($2::text[]) with ordinality f (name, n)
        where pg_catalog.to_regproc(f.name) is not null order by f.n limit 1) as ensure`,
    [end, ENSURE_PARTITIONS],
  );
  const { horizon, partitioned, ensure } = rows[0]!;
  if (partitioned) {
    if (ensure === null) throw new Error(`event_ledger is partitioned but none of ${ENSURE_PARTITIONS.join(', ')} exists`);
    await db.query(`select ${ensure}($1::date, ($2::timestamptz at time zone 'UTC')::date)`, [horizon, end]);
  }
  return horizon;
}

/**
 * Fills the event tables of an empty database with the history of `users` users ending at `end`,
 * sets the events watermark to `end`, and leaves the tables vacuumed and analysed.
 */
export async function buildHistory(db: pg.Pool, shape: HistoryShape, log: (message: string) => void): Promise<void> {
  const started = performance.now();
  const step = (message: string) => log(`${message} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
  const client = await db.connect();
  try {
    await client.query(await readFile(new URL('./history.sql', import.meta.url), 'utf8'));
    await client.query("set maintenance_work_mem = '1GB'");
    const tables = ['mixpanel_sync.event_ledger', 'mixpanel_sync.events_daily', 'mixpanel_sync.subscribers'];
    const indexes = await savedIndexes(client, tables);
    for (const index of indexes) await client.query(index.drop);
    const runId = (await beginRun(client, { source: 'events', forceFull: true, clock: shape.end })).id;
    // The ledger the product keeps: the days from the ledger horizon (events.ledger_retention, docs/ledger.md) on,
    // as finish_run leaves it; older days live only in events_daily and subscribers.
    const horizon = await ledgerHorizon(client, shape.end);
    await client.query(
      `insert into mixpanel_sync.event_ledger (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
       select 1, e.distinct_id, ${EVENT_KEY_SQL}, e.day, e.event_name, e.event_time, $3 from ${USER_EVENTS}
       where e.day >= $4::date`,
      [shape.users, shape.end, runId, horizon],
    );
    step(`history: event_ledger filled (days from ${horizon} on)`);
    await client.query(
      `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
       select 1, e.distinct_id, e.day, e.event_name, 1, e.event_time, e.event_time from ${USER_EVENTS}`,
      [shape.users, shape.end],
    );
    step('history: events_daily filled');
    await client.query(
      `insert into mixpanel_sync.subscribers (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
       select 1, 'hu_' || u, a.*, now()
       from generate_series(0, $1::int - 1) u
       cross join lateral (
         select count(*), min(e.event_time), max(e.event_time), jsonb_object_agg(e.event_name, 1)
         from bench_history.user_events(u, $2::timestamptz) e) a`,
      [shape.users, shape.end],
    );
    step('history: subscribers filled');
    for (const index of indexes) await client.query(index.create);
    step('history: indexes re-created');
    await client.query(
      `update mixpanel_sync.sync_runs set status = 'succeeded', finished_at = now(), options = options || '{"bench":"history built by SQL"}'
       where id = $1`,
      [runId],
    );
    await client.query(
      `insert into mixpanel_sync.sync_watermarks (project_id, source, watermark, processing_watermark, run_id)
       values (1, 'events', $1, $1, $2)
       on conflict (project_id, source) do update set watermark = excluded.watermark, processing_watermark = excluded.processing_watermark, run_id = excluded.run_id`,
      [shape.end, runId],
    );
    await client.query(`vacuum (analyze) ${tables.join(', ')}`);
  } finally {
    client.release();
  }
}

export interface ExportLine {
  second: number;
  line: string;
}

/**
 * The history's events with time in [from, to], rebuilt as raw export lines from the ledger (exact
 * duplicates of what it holds: user u's only event on the window's last day is its event j = (44 - u) mod 45).
 */
export async function historyLines(db: Queryable, shape: HistoryShape, from: Date, to: Date): Promise<ExportLine[]> {
  const { rows } = await db.query<ExportLine>(
    `select x.second::int as second, json_build_object('event', l.event_name, 'properties', json_build_object(
        'time', x.second, 'distinct_id', l.distinct_id, '$insert_id', 'h' || x.u || '_' || ((44 - x.u % 45) % 45),
        'mp_processing_time_ms', x.second * 1000 + 1500))::text as line
     from mixpanel_sync.event_ledger l
     cross join lateral (select substr(l.distinct_id, 4)::int as u, extract(epoch from l.event_time)::bigint as second) x
     where l.day = ($1::timestamptz at time zone 'UTC')::date and l.event_time between $2 and $3
       and l.distinct_id like 'hu\\_%' and l.event_key = mixpanel_sync.event_key(l.event_name, x.second, 'h' || x.u || '_' || ((44 - x.u % 45) % 45), null)
     order by l.event_time`,
    [shape.end, from, to],
  );
  return rows;
}

/** `count` new events for existing users, evenly spread over (from, to]; `salt` makes each batch different. */
export async function newEventLines(
  db: Queryable,
  shape: HistoryShape,
  count: number,
  from: Date,
  to: Date,
  salt: number,
): Promise<ExportLine[]> {
  const { rows } = await db.query<ExportLine>(
    `select x.second::int as second, json_build_object('event', 'event_' || lpad((i % ${NAMES})::text, 2, '0'), 'properties', json_build_object(
        'time', x.second, 'distinct_id', 'hu_' || (abs(hashint8($5::bigint * 1000003 + i)) % $1),
        '$insert_id', 'n' || $5 || '_' || i, 'mp_processing_time_ms', x.second * 1000 + 1500))::text as line
     from generate_series(1, $2) i
     cross join lateral (select floor(extract(epoch from $3::timestamptz) + i * extract(epoch from $4::timestamptz - $3::timestamptz) / $2)::bigint as second) x
     order by i`,
    [shape.users, count, from, to, salt],
  );
  return rows;
}
