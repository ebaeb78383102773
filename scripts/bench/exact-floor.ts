// The least work an exact design that parses every line in PostgreSQL does after the bare COPY (copy-file.ts) of the
// same file: each line's fields and its dedup key (the project's own mixpanel_sync.event_key and event_second, so the
// key has one definition), the deduplication, and the per-(user, UTC day, name) counts written into a keyed table, in
// one statement. No validation, reject reason, ledger, subscribers or run accounting: a floor, not a design.
import type pg from 'pg';
import { startBackendCpu, type CpuUse } from './cpu-time.ts';
import { timed } from './timing.ts';

const DAILY = 'public.bench_exact_floor_daily';

// Each layer is fenced with "offset 0", as in parse_new_staged_events, so that every expression is computed once per
// line (unfenced, event_second was computed twice: in the filter and in the row; 1.44 against 1.14 s for 95,000 lines).
const EXACT_FLOOR_SQL = `
insert into ${DAILY} (distinct_id, day, event_name, event_count, first_at, last_at)
select d.distinct_id, (d.event_time at time zone 'UTC')::date, d.event_name, count(*), min(d.event_time), max(d.event_time)
from (
  select distinct on (f.distinct_id, f.event_key) f.distinct_id, f.event_name, f.event_time
  from (
    select e.distinct_id, e.event_name, to_timestamp(e.second) as event_time,
      mixpanel_sync.event_key(e.event_name, e.second, e.insert_id, e.doc) as event_key
    from (
      select c.doc, c.doc ->> 'event' as event_name, c.p ->> 'distinct_id' as distinct_id, c.p ->> '$insert_id' as insert_id,
        mixpanel_sync.event_second((c.p ->> 'time')::numeric) as second
      from (select c.doc, c.doc -> 'properties' as p from public.bench_copy_limit c offset 0) c
      offset 0
    ) e
    -- as ours: an absent or empty distinct_id is counted for no user (skip_reason 'no_user')
    where e.distinct_id <> '' and e.event_name is not null and e.second is not null
    offset 0
  ) f
  order by f.event_key, f.distinct_id
) d
group by 1, 2, 3`;

export interface ExactFloor {
  /** rows of the keyed table: one per (user, day, name) */
  rows: number;
  ms: number;
  /** the statement's CPU (its backend and this process); null when the backend's process cannot be read */
  cpu: CpuUse | null;
}

/** Runs fn with the floor's keyed table created empty, and drops the table afterwards. */
async function withFloorTable<T>(pool: pg.Pool, fn: () => Promise<T>): Promise<T> {
  await pool.query(
    `drop table if exists ${DAILY};
     create unlogged table ${DAILY} (distinct_id text collate "C", day date, event_name text collate "C",
       event_count bigint not null, first_at timestamptz not null, last_at timestamptz not null,
       primary key (distinct_id, day, event_name))`,
  );
  try {
    return await fn();
  } finally {
    await pool.query(`drop table ${DAILY}`);
  }
}

/**
 * Runs the exact floor's statement over the rows the bare COPY left in public.bench_copy_limit (copy-file.ts), into a
 * fresh keyed table that is dropped afterwards, and returns its time and CPU.
 */
export function measureExactFloor(pool: pg.Pool): Promise<ExactFloor> {
  return withFloorTable(pool, async () => {
    const client = await pool.connect();
    try {
      // the statement runs in one backend (an INSERT is never planned parallel): its own CPU, without autovacuum's
      const probe = await startBackendCpu(client);
      const { ms, value } = await timed(() => client.query(EXACT_FLOOR_SQL));
      return { rows: value.rowCount ?? 0, ms, cpu: probe.finish() };
    } finally {
      client.release();
    }
  });
}

/** The rows the exact floor's statement writes (its test compares them with events_daily after our sync of the same lines). */
export function exactFloorRows(pool: pg.Pool): Promise<Record<string, unknown>[]> {
  return withFloorTable(pool, async () => {
    await pool.query(EXACT_FLOOR_SQL);
    const { rows } = await pool.query(
      `select distinct_id, day::text, event_name, event_count::int, first_at, last_at from ${DAILY} order by 1, 2, 3`,
    );
    return rows;
  });
}
