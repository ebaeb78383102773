-- 200-storage: narrower events_daily rows (issue 11, scale_storage_bytes_per_event).
--   events_daily's columns are stored fixed-width first (event_count, first_at, last_at, day, then the texts
--   distinct_id, event_name), so no alignment padding sits between them: today's order (distinct_id, day, event_name,
--   event_count, first_at, last_at) pads after the texts up to the 8-byte boundary of event_count. Measured on the bench
--   history (100k users x 30 events, one events_daily row per event): a row 80 -> 71 bytes (pg_column_size), the heap
--   84.5 -> 76.6 bytes per event; the indexes do not change. Names, types, constraints, indexes, RLS policies, grants and
--   comments stay as they are; only the order of the columns (what `select *` and a positional INSERT see) changes.
--   PostgreSQL cannot reorder columns in place, so the table is rebuilt once: created in the new order, rows copied,
--   the old table dropped, the new one renamed, then its constraints, indexes, policies, grants and comment re-created
--   as migrations/schema.sql shows them. Nothing depends on the table's row type (no view, no function declares it;
--   every function names its columns). Idempotent: skipped when event_count is already the first column.
--   Measured and not done here (see issue 11's report): event_counts compression (toast_tuple_target below ~2 kB
--   triggers nothing: PostgreSQL only toasts a row over TOAST_TUPLE_THRESHOLD, and subscribers rows are ~0.8 kB; lz4 is
--   not built into the embedded server), event_ledger's column order (-1.3 B per event on this history), subscribers'
--   (0 B: the padding it would remove is taken back by the jsonb's own alignment).
do $reorder$
begin
  if (select a.attname from pg_catalog.pg_attribute a
      where a.attrelid = 'mixpanel_sync.events_daily'::regclass and a.attnum > 0 and not a.attisdropped
      order by a.attnum limit 1) = 'event_count' then
    return;
  end if;
  lock table mixpanel_sync.events_daily in access exclusive mode;
  -- (not-null constraints named as PostgreSQL 18 names the old table's, so the catalog reads as before)
  create table mixpanel_sync.events_daily_reordered (
    event_count bigint constraint events_daily_event_count_not_null not null,
    first_at timestamptz constraint events_daily_first_at_not_null not null,
    last_at timestamptz constraint events_daily_last_at_not_null not null,
    day date constraint events_daily_day_not_null not null,
    distinct_id text collate "C" constraint events_daily_distinct_id_not_null not null,
    event_name text collate "C" constraint events_daily_event_name_not_null not null
  );
  insert into mixpanel_sync.events_daily_reordered (event_count, first_at, last_at, day, distinct_id, event_name)
  select d.event_count, d.first_at, d.last_at, d.day, d.distinct_id, d.event_name
  from mixpanel_sync.events_daily d
  order by d.distinct_id, d.day, d.event_name;
  drop table mixpanel_sync.events_daily;
  alter table mixpanel_sync.events_daily_reordered rename to events_daily;
  alter table mixpanel_sync.events_daily
    add constraint events_daily_event_count_check check (event_count > 0),
    add constraint events_daily_pkey primary key (distinct_id, day, event_name);
  comment on table mixpanel_sync.events_daily is 'Event counts per user, UTC day and event name: the grain at which REPLACE and ADD are both exact.';
  create index events_daily_day_idx on mixpanel_sync.events_daily using btree (day);
  alter table mixpanel_sync.events_daily enable row level security;
  create policy mixpanel_sync_loader_all on mixpanel_sync.events_daily as permissive for all to mixpanel_sync_loader using (true) with check (true);
  comment on policy mixpanel_sync_loader_all on mixpanel_sync.events_daily is 'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.';
  create policy mixpanel_sync_reader_read on mixpanel_sync.events_daily as permissive for select to mixpanel_sync_reader using (true);
  comment on policy mixpanel_sync_reader_read on mixpanel_sync.events_daily is 'The reader sees every row of the aggregates and profiles; RLS is on only so that roles without a policy see nothing.';
  grant delete, insert, select, truncate, update on table mixpanel_sync.events_daily to mixpanel_sync_loader;
  grant select on table mixpanel_sync.events_daily to mixpanel_sync_reader;
  analyze mixpanel_sync.events_daily;
end
$reorder$;
