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
}

export async function eventStorage(db: Queryable, tables: readonly string[] = EVENT_TABLES): Promise<EventStorage> {
  const { rows } = await db.query<{ bytes: string; events: string | null }>(
    `select (select coalesce(sum(pg_catalog.pg_total_relation_size(x.rel)), 0)::bigint
             from unnest($1::text[]) t (name)
             cross join lateral (select pg_catalog.to_regclass(t.name) as r) g
             cross join lateral unnest(coalesce((select array_agg(p.relid) from pg_catalog.pg_partition_tree(g.r) p), array[g.r])) x (rel)
             where g.r is not null) as bytes,
            (select sum(s.total_events) from mixpanel_sync.subscribers s) as events`,
    [tables],
  );
  const bytes = Number(rows[0]!.bytes);
  const events = Number(rows[0]!.events ?? 0);
  return { bytes, events, bytesPerEvent: events > 0 ? bytes / events : Number.NaN };
}
