// Bytes on disk per event of history: pg_total_relation_size (heap, TOAST, every index) of the event tables and
// of all their partitions (pg_partition_tree, so a day-partitioned ledger counts whole; a plain table is itself), ÷ the events counted.
import type { Queryable } from '../sql/sync-api.ts';

/** The tables that hold event history (whichever of them exist). */
export const EVENT_TABLES = [
  'mixpanel_sync.event_ledger',
  'mixpanel_sync.event_ledger_legacy',
  'mixpanel_sync.events_daily',
  'mixpanel_sync.subscribers',
];

export interface EventStorage {
  bytes: number;
  /** distinct events counted (sum of subscribers.total_events) */
  events: number;
  bytesPerEvent: number;
  /** bytes of each table that exists (partitions included), in EVENT_TABLES order */
  tables: { table: string; bytes: number; rows: number }[];
}

export async function eventStorage(db: Queryable, tables: readonly string[] = EVENT_TABLES): Promise<EventStorage> {
  const { rows } = await db.query<{ table: string; bytes: string; rows: string }>(
    `select t.name as table,
       (select coalesce(sum(pg_catalog.pg_total_relation_size(x.rel)), 0)
        from unnest(coalesce((select array_agg(p.relid) from pg_catalog.pg_partition_tree(g.r) p), array[g.r])) x (rel))::bigint as bytes,
       -- leaves only: an analysed partitioned parent has reltuples of its own (the sum of its partitions')
       (select coalesce(sum(greatest(c.reltuples, 0)), 0)
        from unnest(coalesce((select array_agg(p.relid) from pg_catalog.pg_partition_tree(g.r) p where p.isleaf), array[g.r])) x (rel)
        join pg_catalog.pg_class c on c.oid = x.rel)::bigint as rows
     from unnest($1::text[]) with ordinality t (name, n)
     cross join lateral (select pg_catalog.to_regclass(t.name) as r) g
     where g.r is not null
     order by t.n`,
    [tables],
  );
  const counted = await db.query<{ events: string | null }>('select sum(s.total_events) as events from mixpanel_sync.subscribers s');
  const bytes = rows.reduce((sum, r) => sum + Number(r.bytes), 0);
  const events = Number(counted.rows[0]!.events ?? 0);
  return {
    bytes,
    events,
    bytesPerEvent: events > 0 ? bytes / events : Number.NaN,
    tables: rows.map((r) => ({ table: r.table.replace(/^mixpanel_sync\./, ''), bytes: Number(r.bytes), rows: Number(r.rows) })),
  };
}

/** "event_ledger 23 B (1.4M rows), events_daily 140 B (9.0M rows), …": each table's bytes ÷ the events counted. */
export function storageText(storage: EventStorage): string {
  const rows = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${Math.round(n / 1e3)}k` : `${n}`);
  return (
    storage.tables
      .filter((t) => t.bytes > 0)
      // rows from pg_class.reltuples: known once the table was analysed (the history builder's VACUUM ANALYZE)
      .map((t) => `${t.table} ${Math.round(t.bytes / storage.events)} B${t.rows > 0 ? ` (${rows(t.rows)} rows)` : ''}`)
      .join(', ')
  );
}
