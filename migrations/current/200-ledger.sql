-- 200-ledger: the ledger is the raw table (issues 11 and 13, docs/ledger.md).
--   * event_ledger becomes RANGE-partitioned by day (one partition per UTC day, mixpanel_sync.event_ledger_pYYYYMMDD),
--     primary key (distinct_id, event_key, day), with the nullable raw columns insert_id, processing_time_ms and
--     properties (null when raw storage was off for the event). Existing rows move into their partitions.
--   * Partitions are created by the apply paths themselves (inside finish_run) through ensure_ledger_partitions, and
--     dropped by drop_ledger_partitions below the storage horizon: both SECURITY DEFINER, owned by the schema owner,
--     because the loader has no CREATE on the schema and does not own the ledger; both in schema
--     mixpanel_sync_private, which no API exposes. Nothing else is SECURITY DEFINER.
--   * Settings events.store_raw (off | on) and events.raw_retention (an interval or 'forever').
--   * mixpanel_sync.raw_events: the ledger rows that carry properties, for psql (reader and loader).
--   * sync_runs.no_user and sync_runs.not_selected: received = applied + duplicates + too_old + rejected + no_user +
--     not_selected.
--   * REPLACE with a run selection (sync_runs.options -> 'events') merges/deletes only rows of the selected names.

-- ---------------------------------------------------------------------------------------------------------------------
-- Settings.
insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('events.store_raw', 'off', 'on_off',
   'Keep every event''s raw content in the ledger (event_ledger.insert_id, processing_time_ms, properties; read it through the view mixpanel_sync.raw_events): on | off. When on, a full run writes ledger rows for its whole window (not only the ledger retention''s days), events with no distinct_id (counted no_user) are kept too under distinct_id '''' (shown as null by raw_events), and the ledger keeps events.raw_retention days. Takes effect on the next run; a full run fills in the properties of events stored while it was off.'),
  ('events.raw_retention', '45 days', 'interval_or_forever',
   'With events.store_raw = on: how long the ledger keeps raw events, in whole UTC days ending with the run''s day, or ''forever''. Whole day partitions older than the longer of this and events.ledger_retention are dropped by finish_run. What an incremental run can deduplicate (too_old) still follows events.ledger_retention.');

-- ---------------------------------------------------------------------------------------------------------------------
-- Runs: the two new counts.
alter table mixpanel_sync.sync_runs
  add column no_user bigint,
  add column not_selected bigint;
comment on column mixpanel_sync.sync_runs.no_user is 'Events runs: valid events with no distinct_id (absent, null or ""): not applied to the aggregates and not rejects; kept in the raw table (distinct_id '''' in event_ledger) when events.store_raw is on. received = applied + duplicates + too_old + rejected + no_user + not_selected.';
comment on column mixpanel_sync.sync_runs.not_selected is 'Events runs: valid events whose name is outside the run''s selection (options -> ''events''), ignored. received = applied + duplicates + too_old + rejected + no_user + not_selected.';

-- ---------------------------------------------------------------------------------------------------------------------
-- The partitioned ledger. The old table is renamed, its rows move into the new one, then it is dropped.
-- squawk-ignore renaming-table -- the partitioned table takes the old name in this same transaction: clients see one event_ledger throughout
alter table mixpanel_sync.event_ledger rename to event_ledger_unpartitioned;
alter index mixpanel_sync.event_ledger_pkey rename to event_ledger_unpartitioned_pkey;
alter index mixpanel_sync.event_ledger_day_idx rename to event_ledger_unpartitioned_day_idx;

create table mixpanel_sync.event_ledger (
  distinct_id text collate "C" not null,
  event_key uuid not null,
  day date not null,
  event_name text not null,
  event_time timestamptz not null,
  run_id bigint not null,
  insert_id text,
  processing_time_ms bigint,
  properties jsonb,
  constraint event_ledger_pkey primary key (distinct_id, event_key, day)
) partition by range (day);
comment on table mixpanel_sync.event_ledger is 'One row per applied event (the memory that makes ADD idempotent) and, with events.store_raw = on, the raw events themselves (read them through mixpanel_sync.raw_events). Partitioned by day, one partition per UTC day (event_ledger_pYYYYMMDD, created by ensure_ledger_partitions from the apply paths); finish_run drops whole partitions older than the storage horizon: the longer of events.ledger_retention and, when raw is on, events.raw_retention. REPLACE writes rows from that horizon on (raw off: the ledger retention''s days only). An event is found by (distinct_id, event_key) on its day and the two days either side (a change of project timezone moves a key''s day by up to 26 hours). run_id: the run that last wrote the row.';
comment on column mixpanel_sync.event_ledger.distinct_id is 'The user the event is counted under; '''' for an event with no distinct_id (kept only with events.store_raw = on, never in events_daily or subscribers).';
comment on column mixpanel_sync.event_ledger.event_key is 'Mixpanel''s dedup identity, mixpanel_sync.event_key(name, second, $insert_id, event): injective.';
comment on column mixpanel_sync.event_ledger.day is 'The event''s UTC day: the partition key.';
comment on column mixpanel_sync.event_ledger.run_id is 'The run that last wrote this row: inserted it, or changed its event_name, event_time or raw columns (a REPLACE that finds the event unchanged does not rewrite it). Not "the last run that saw the event".';
comment on column mixpanel_sync.event_ledger.insert_id is 'properties.$insert_id as sent; null when events.store_raw was off when the row was written (or the event had none).';
comment on column mixpanel_sync.event_ledger.processing_time_ms is 'properties.mp_processing_time_ms as sent (ms); null when events.store_raw was off when the row was written (or the event had none).';
comment on column mixpanel_sync.event_ledger.properties is 'The event''s whole properties object as received (of the first line of the run that wrote it, when a run holds the event twice); null when events.store_raw was off when the row was written.';
alter table mixpanel_sync.event_ledger enable row level security;
create policy mixpanel_sync_loader_all on mixpanel_sync.event_ledger as permissive for all to mixpanel_sync_loader using (true) with check (true);
comment on policy mixpanel_sync_loader_all on mixpanel_sync.event_ledger is 'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.';
create policy mixpanel_sync_reader_read on mixpanel_sync.event_ledger as permissive for select to mixpanel_sync_reader using (true);
comment on policy mixpanel_sync_reader_read on mixpanel_sync.event_ledger is 'The reader reads the raw events (the view mixpanel_sync.raw_events, security_invoker, reads this table); RLS is on only so that roles without a policy see nothing.';
revoke all on table mixpanel_sync.event_ledger from public;
grant delete, insert, select, truncate, update on table mixpanel_sync.event_ledger to mixpanel_sync_loader;
grant select on table mixpanel_sync.event_ledger to mixpanel_sync_reader;

-- The two SECURITY DEFINER functions live in a schema of their own that no API exposes (Supabase's advice for such
-- functions: splinter's *_security_definer_function_executable): only the loader has USAGE on it.
create schema mixpanel_sync_private;
comment on schema mixpanel_sync_private is 'mixpanel-pg-sync: the SECURITY DEFINER helpers that manage the ledger''s day partitions for the loader (which may not create or drop tables). Never expose this schema through an API; only mixpanel_sync_loader has USAGE.';
revoke all on schema mixpanel_sync_private from public;
grant usage on schema mixpanel_sync_private to mixpanel_sync_loader;

create or replace function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  d date;
  part text;
  created integer := 0;
begin
  if from_day is null or to_day is null or from_day = '-infinity' or to_day = 'infinity' or to_day - from_day > 3660 then
    raise exception 'ensure_ledger_partitions: days % to % are not a range of at most 3661 days', from_day, to_day
      using errcode = 'MP004', hint = 'pass the first and last UTC day the ledger must hold, e.g. select mixpanel_sync_private.ensure_ledger_partitions(''2026-01-01'', ''2026-01-07'')';
  end if;
  d := from_day;
  while d <= to_day loop
    part := 'event_ledger_p' || to_char(d, 'YYYYMMDD');
    if to_regclass('mixpanel_sync.' || part) is null then
      -- one creator at a time (finish_run is serialised already; direct callers may not be)
      perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.ensure_ledger_partitions', 0));
      if to_regclass('mixpanel_sync.' || part) is null then
        -- created apart and attached: ATTACH takes SHARE UPDATE EXCLUSIVE on the ledger, so readers and writers of
        -- other days go on; the new table is empty, so attaching it scans nothing.
        execute format('create table mixpanel_sync.%I (like mixpanel_sync.event_ledger including defaults)', part);
        execute format('alter table mixpanel_sync.%I add constraint %I check (day >= %L and day < %L)',
          part, part || '_day_check', d, d + 1);
        execute format('alter table mixpanel_sync.event_ledger attach partition mixpanel_sync.%I for values from (%L) to (%L)',
          part, d, d + 1);
        execute format('alter table mixpanel_sync.%I drop constraint %I', part, part || '_day_check');
        execute format('comment on table mixpanel_sync.%I is %L', part,
          format('The ledger''s rows of UTC day %s (a partition of mixpanel_sync.event_ledger; read and write the parent).', d));
        execute format('alter table mixpanel_sync.%I enable row level security', part);
        execute format('create policy mixpanel_sync_loader_all on mixpanel_sync.%I as permissive for all to mixpanel_sync_loader using (true) with check (true)', part);
        execute format('comment on policy mixpanel_sync_loader_all on mixpanel_sync.%I is %L', part,
          'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.');
        execute format('revoke all on table mixpanel_sync.%I from public', part);
        created := created + 1;
      end if;
    end if;
    d := d + 1;
  end loop;
  return created;
end;
$$;
comment on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date) is 'Creates the missing day partitions of event_ledger for the UTC days from_day..to_day (at most 3661 days; MP004 otherwise) and returns how many it created. SECURITY DEFINER (owned by the schema owner) because the loader, which calls it from the apply paths inside finish_run, may not create tables: it creates only partitions named event_ledger_pYYYYMMDD, with RLS on and the loader''s policy like the parent. Fixtures that insert ledger rows directly call it first.';
revoke execute on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date) from public;
grant execute on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date) to mixpanel_sync_loader;

create or replace function mixpanel_sync_private.drop_ledger_partitions(before_day date)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  part record;
  dropped integer := 0;
begin
  if before_day is null or before_day = 'infinity' then
    raise exception 'drop_ledger_partitions: % is not a day', before_day
      using errcode = 'MP004', hint = 'pass the first UTC day to keep, e.g. select mixpanel_sync_private.drop_ledger_partitions(''2026-01-01'')';
  end if;
  for part in
    select c.relname
    from pg_catalog.pg_inherits i
    join pg_catalog.pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'mixpanel_sync.event_ledger'::regclass
      and c.relname ~ '^event_ledger_p[0-9]{8}$'
      and to_date(substr(c.relname, 15), 'YYYYMMDD') < before_day
    order by c.relname
  loop
    if dropped = 0 then
      -- Dropping a partition takes ACCESS EXCLUSIVE on the ledger: behind an open reader (a long query on raw_events)
      -- it would wait, new readers would queue behind it, and two finishing transactions could deadlock. So the lock
      -- is taken without waiting, and when the ledger is busy nothing is dropped: the next run retries (retention
      -- lags by a run), as drop_staged_rows does for the staging tables.
      begin
        lock table mixpanel_sync.event_ledger in access exclusive mode nowait;
      exception
        when lock_not_available then
          return 0;
      end;
    end if;
    -- (if exists: a concurrent caller may have dropped it between the list and the lock)
    execute format('drop table if exists mixpanel_sync.%I', part.relname);
    dropped := dropped + 1;
  end loop;
  return dropped;
end;
$$;
comment on function mixpanel_sync_private.drop_ledger_partitions(before_day date) is 'The ledger''s retention: drops the day partitions of event_ledger for the days before before_day (whole partitions; no row is deleted) and returns how many. Never waits: when the ledger is in use (ACCESS EXCLUSIVE not available at once, e.g. a reader''s open transaction on raw_events) it drops nothing and returns 0; the next run retries. Called by finish_events_run with the storage horizon. SECURITY DEFINER (owned by the schema owner): dropping a partition needs the ledger''s owner, which the loader is not.';
revoke execute on function mixpanel_sync_private.drop_ledger_partitions(before_day date) from public;
grant execute on function mixpanel_sync_private.drop_ledger_partitions(before_day date) to mixpanel_sync_loader;

-- Existing rows: one partition per day held, then one INSERT … SELECT.
do $move$
declare
  d record;
begin
  for d in select distinct l.day from mixpanel_sync.event_ledger_unpartitioned l order by 1 loop
    perform mixpanel_sync_private.ensure_ledger_partitions(d.day, d.day);
  end loop;
end
$move$;
insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
select l.distinct_id, l.event_key, l.day, l.event_name, l.event_time, l.run_id
from mixpanel_sync.event_ledger_unpartitioned l;
-- squawk-ignore ban-drop-table -- its rows were just moved into the partitioned event_ledger above; nothing refers to the old table
drop table mixpanel_sync.event_ledger_unpartitioned;

-- ---------------------------------------------------------------------------------------------------------------------
-- The raw events, for psql.
-- Two branches rather than nullif(distinct_id, ''): a condition on distinct_id (a funnel's per-user lookup) then reaches
-- the primary key of each day partition in the first branch and folds to false in the second (null = x). Measured on
-- 92k raw events (45 days, 3,000 users): the README funnel 138 s with nullif (a sequential scan of every partition
-- per user), 0.45 s with this.
create view mixpanel_sync.raw_events with (security_invoker = true) as
select l.distinct_id, l.event_name, l.event_time, l.day, l.insert_id,
  l.processing_time_ms as mp_processing_time_ms, l.properties, l.event_key, l.run_id
from mixpanel_sync.event_ledger l
where l.properties is not null and l.distinct_id <> ''
union all
select null::text collate "C", l.event_name, l.event_time, l.day, l.insert_id,
  l.processing_time_ms, l.properties, l.event_key, l.run_id
from mixpanel_sync.event_ledger l
where l.properties is not null and l.distinct_id = '';
comment on view mixpanel_sync.raw_events is 'The raw events kept with events.store_raw = on: one row per distinct event (deduplicated like the aggregates: by distinct_id and event_key), with its $insert_id, mp_processing_time_ms and whole properties. distinct_id is null for events with no distinct_id (counted no_user, not in events_daily). Filter on day to read only the partitions needed; README "Raw events" has recipes.';
revoke all on mixpanel_sync.raw_events from public;
grant select on mixpanel_sync.raw_events to mixpanel_sync_loader, mixpanel_sync_reader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Helpers of the apply paths.
create or replace function mixpanel_sync.run_selection(run_id bigint)
returns text[]
language sql
stable
set search_path = ''
as $$
  select case when jsonb_typeof(r.options -> 'events') = 'array' and jsonb_array_length(r.options -> 'events') > 0
    then array(select jsonb_array_elements_text(r.options -> 'events')) end
  from mixpanel_sync.sync_runs r
  where r.id = run_selection.run_id;
$$;
comment on function mixpanel_sync.run_selection(run_id bigint) is 'The event names a run is restricted to (sync_runs.options -> ''events'', a JSON array), or null when it takes every event (absent, null or []). REPLACE merges and deletes only rows of these names.';
revoke execute on function mixpanel_sync.run_selection(run_id bigint) from public;
grant execute on function mixpanel_sync.run_selection(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.store_raw()
returns boolean
language sql
stable
set search_path = ''
as $$
  select coalesce((select s.value from mixpanel_sync.sync_settings s where s.key = 'events.store_raw'), 'off') = 'on';
$$;
comment on function mixpanel_sync.store_raw() is 'True when setting events.store_raw is on: the apply paths then write the raw columns and keep events with no distinct_id in the ledger.';
revoke execute on function mixpanel_sync.store_raw() from public;
grant execute on function mixpanel_sync.store_raw() to mixpanel_sync_loader;

create or replace function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  lo date;
  hi date;
begin
  select min(e.day), max(e.day) into lo, hi
  from mixpanel_sync.run_events e
  where e.run_id = ensure_run_ledger_partitions.run_id and e.reject_reason is null
    and (e.skip_reason is null or e.skip_reason = 'no_user')
    and e.day between from_day and to_day;
  if lo is null then
    return 0;
  end if;
  return mixpanel_sync_private.ensure_ledger_partitions(lo, hi);
end;
$$;
comment on function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date) is 'Before an apply path writes the ledger: creates the day partitions (ensure_ledger_partitions) for the days, within from_day..to_day, of the run''s events it may write.';
revoke execute on function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date) from public;
grant execute on function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- REPLACE, set-based.
CREATE OR REPLACE FUNCTION mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 RETURNS mixpanel_sync.apply_result
 LANGUAGE plpgsql
 SET search_path TO ''
 SET work_mem TO '64MB'
AS $function$
declare
  -- ledger rows of the window are kept from this day on (finish_run passes the storage horizon: older rows would be
  -- dropped at once); null: the whole window.
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw();
  -- the run's selection: only rows of these names are merged or deleted (null: every name)
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental.run_id);
  counted record;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental.run_id, kept_from, to_day);

  -- The legacy ledger only ever empties: its rows of the window go (as before the merge).
  delete from mixpanel_sync.event_ledger_legacy g
  where g.day between from_day and to_day and (names is null or g.event_name = any (names));

  -- The window's new content is the run's events of the window (of the selected names), deduplicated (a key fixes
  -- the name and the second; the first line of the run wins), less those already counted outside the window: a key
  -- can sit in the ledger (or, by its old-formula key, in the legacy ledger) on a day outside the window when the
  -- project timezone changed between runs (by at most two days: offsets span 26 hours). With raw storage on, the
  -- events with no distinct_id are part of it under distinct_id '' (ledger only).
  with wanted as materialized (
    select distinct on (coalesce(e.distinct_id, ''), e.event_key)
      coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
      and e.day between from_day and to_day
      and (names is null or e.event_name = any (names))
    order by coalesce(e.distinct_id, ''), e.event_key, e.line_id
  ), kept as materialized (
    select w.*
    from wanted w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (
        select from mixpanel_sync.event_ledger l
        where l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and l.day between w.day - 2 and w.day + 2 and (l.day < from_day or l.day > to_day)))
  ), ledger_gone as (
    -- rows of the window (of the selected names) that are not in its new content (or before kept_from)
    delete from mixpanel_sync.event_ledger l
    where l.day between from_day and to_day
      and (names is null or l.event_name = any (names))
      and not exists (
        select from kept k
        where k.distinct_id = l.distinct_id and k.event_key = l.event_key and k.day = l.day and k.day >= kept_from)
    returning 1
  ), ledger_written as (
    -- new rows inserted; a row already there rewritten only when its name, time or raw columns differ
    insert into mixpanel_sync.event_ledger as l
      (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select k.distinct_id, k.event_key, k.day, k.event_name, k.event_time, upsert_subscribers_incremental.run_id,
      k.insert_id, k.processing_time_ms, k.properties
    from kept k
    where k.day >= kept_from
    order by k.distinct_id, k.event_key
    on conflict (distinct_id, event_key, day) do update set
      event_name = excluded.event_name, event_time = excluded.event_time, run_id = excluded.run_id,
      insert_id = excluded.insert_id, processing_time_ms = excluded.processing_time_ms, properties = excluded.properties
    where (l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties)
      is distinct from (excluded.event_name, excluded.event_time, excluded.insert_id, excluded.processing_time_ms, excluded.properties)
    returning 1
  ), target as materialized (
    select k.distinct_id, k.day, k.event_name, count(*) as event_count, min(k.event_time) as first_at,
      max(k.event_time) as last_at
    from kept k
    where k.distinct_id <> ''
    group by k.distinct_id, k.day, k.event_name
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    where d.day between from_day and to_day
      and (names is null or d.event_name = any (names))
      and not exists (
        select from target t where t.distinct_id = d.distinct_id and t.day = d.day and t.event_name = d.event_name)
    returning d.distinct_id
  ), daily_written as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select t.distinct_id, t.day, t.event_name, t.event_count, t.first_at, t.last_at
    from target t
    order by t.distinct_id, t.day, t.event_name
    on conflict (distinct_id, day, event_name) do update set
      event_count = excluded.event_count, first_at = excluded.first_at, last_at = excluded.last_at
    -- an unchanged row is not rewritten: no dead tuple, no index entry, no WAL
    where (d.event_count, d.first_at, d.last_at) is distinct from (excluded.event_count, excluded.first_at, excluded.last_at)
    returning d.distinct_id
  )
  select
    (select count(*) from kept k where k.distinct_id <> '') as applied,
    array(select g.distinct_id from daily_gone g union select w.distinct_id from daily_written w) as touched,
    (select count(*) from ledger_gone) + (select count(*) from ledger_written) as ledger_rows_written
  into counted;

  perform mixpanel_sync.refresh_subscribers(counted.touched);
  return (
    select (counted.applied,
      count(*) filter (where e.day between from_day and to_day and (names is null or e.event_name = any (names))) - counted.applied,
      count(*) filter (where e.day not between from_day and to_day),
      cardinality(counted.touched))::mixpanel_sync.apply_result
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id and e.reject_reason is null and e.skip_reason is null
  );
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, set-based, as a merge: the days [from_day, to_day] of events_daily and event_ledger end up holding exactly the run''s events of those days, deduplicated (less events already counted outside the window, looked up two days either side), and only what changed is written: rows gone deleted, new rows inserted, a row rewritten only when IS DISTINCT FROM its new content (raw columns included). With a run selection (sync_runs.options -> ''events'') only rows of the selected names are merged or deleted; other names are untouched. Ledger rows are kept from ledger_from on (null: the whole window; finish_run passes the storage horizon). With events.store_raw on, rows carry the raw columns and events with no distinct_id are kept under distinct_id ''''. event_ledger_legacy rows of the window are deleted. applied: events the window now holds from the run; duplicates: the run''s other events of the window; too_old: its events outside the window; users_touched: users whose events_daily rows changed (their subscribers row is recomputed). Rows outside the window are untouched.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- REPLACE, the row-at-a-time reference.
-- plan_cache_mode force_generic_plan: its per-row statements on the day-partitioned ledger were re-planned at every
-- call (a generic plan is costed over every partition, so the plan cache kept choosing a custom one); measured with the
-- set-vs-loop data, 1,000 users, 30.7k events: 5.2-7.3 s per loop, 2.0-2.5 s with it (runtime pruning does the rest).
CREATE OR REPLACE FUNCTION mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 RETURNS mixpanel_sync.apply_result
 LANGUAGE plpgsql
 SET search_path TO ''
 SET work_mem TO '64MB'
 SET enable_nestloop TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
declare
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw();
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental_loop.run_id);
  event record;
  stored record;
  legacy_row record;
  daily_row record;
  ledger_row record;
  previous_id text;
  previous_key uuid;
  group_id text;
  group_day date;
  group_name text;
  group_count bigint := 0;
  group_first timestamptz;
  group_last timestamptz;
  applied bigint := 0;
  duplicates bigint := 0;
  outside bigint := 0;
  touched text[] := '{}';
  user_id text;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_loop.run_id, kept_from, to_day);

  for legacy_row in
    select g.distinct_id, g.event_key from mixpanel_sync.event_ledger_legacy g
    where g.day between from_day and to_day and (names is null or g.event_name = any (names))
    order by g.distinct_id, g.event_key
  loop
    delete from mixpanel_sync.event_ledger_legacy g
    where g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;
  end loop;

  -- 1. The run's events in events_daily order (a key fixes the day and the name, so repeats are adjacent, the first
  --    line first): each kept event claims its ledger row, each (user, day, name) group its events_daily row. Events
  --    with no distinct_id (raw storage on) come first, under '', and only claim their ledger row.
  for event in
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.day, e.event_name, e.event_key, e.line_id
  loop
    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;
    if names is not null and not event.event_name = any (names) then
      continue;
    end if;
    if event.distinct_id = previous_id and event.event_key = previous_key then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;
    previous_id := event.distinct_id;
    previous_key := event.event_key;
    if event.legacy_key is not null and exists (
      select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    if event.day >= kept_from then
      select l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties into stored
      from mixpanel_sync.event_ledger l
      where l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      if not found then
        insert into mixpanel_sync.event_ledger
          (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
        values (event.distinct_id, event.event_key, event.day, event.event_name, event.event_time,
          upsert_subscribers_incremental_loop.run_id, event.insert_id, event.processing_time_ms, event.properties);
      elsif (stored.event_name, stored.event_time, stored.insert_id, stored.processing_time_ms, stored.properties)
        is distinct from (event.event_name, event.event_time, event.insert_id, event.processing_time_ms, event.properties) then
        update mixpanel_sync.event_ledger l set event_name = event.event_name, event_time = event.event_time,
          insert_id = event.insert_id, processing_time_ms = event.processing_time_ms, properties = event.properties,
          run_id = upsert_subscribers_incremental_loop.run_id
        where l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      end if;
    end if;

    if event.distinct_id = '' then
      continue;
    end if;
    if group_count > 0 and (group_id, group_day, group_name) is distinct from (event.distinct_id, event.day, event.event_name) then
      if mixpanel_sync.merge_daily_row_loop(group_id, group_day, group_name, group_count, group_first, group_last) then
        touched := array_append(touched, group_id);
      end if;
      group_count := 0;
    end if;
    if group_count = 0 then
      group_id := event.distinct_id;
      group_day := event.day;
      group_name := event.event_name;
      group_first := event.event_time;
      group_last := event.event_time;
    end if;
    group_count := group_count + 1;
    group_first := least(group_first, event.event_time);
    group_last := greatest(group_last, event.event_time);
    applied := applied + 1;
  end loop;
  if group_count > 0 and mixpanel_sync.merge_daily_row_loop(group_id, group_day, group_name, group_count, group_first, group_last) then
    touched := array_append(touched, group_id);
  end if;

  -- 2. events_daily rows of the window (of the selected names) the run has no kept event for: deleted, one at a
  --    time. (The rows are found with one anti-join: a per-row lookup in run_events, which has no index for it,
  --    would make the loop quadratic.)
  for daily_row in
    select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d
    where d.day between from_day and to_day
      and (names is null or d.event_name = any (names))
      and not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null and e.skip_reason is null
          and e.distinct_id = d.distinct_id and e.day = d.day and e.event_name = d.event_name
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger l
            where l.distinct_id = e.distinct_id and l.event_key = e.event_key
              and l.day between e.day - 2 and e.day + 2 and (l.day < from_day or l.day > to_day)))
    order by d.distinct_id, d.day, d.event_name
  loop
    delete from mixpanel_sync.events_daily d
    where d.distinct_id = daily_row.distinct_id and d.day = daily_row.day and d.event_name = daily_row.event_name;
    touched := array_append(touched, daily_row.distinct_id);
  end loop;

  -- 3. Ledger rows of the window (of the selected names) no kept event of the run claimed (or before kept_from):
  --    deleted, one at a time. Two branches, not `l.day < kept_from or not exists (...)`: a NOT EXISTS under OR is
  --    never an anti-join but a subplan per ledger row, and run_events has no index for it (coalesce(distinct_id, '')),
  --    so every ledger row rescanned the run's events: quadratic (1,000 users of the bench: 401 s instead of ~1 s).
  for ledger_row in
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.day between from_day and to_day
      and (names is null or l.event_name = any (names))
      and l.day < kept_from
    union all
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.day between from_day and to_day and l.day >= kept_from
      and (names is null or l.event_name = any (names))
      and (not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
          and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
          and coalesce(e.distinct_id, '') = l.distinct_id and e.event_key = l.event_key and e.day = l.day
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger o
            where o.distinct_id = l.distinct_id and o.event_key = l.event_key
              and o.day between l.day - 2 and l.day + 2 and (o.day < from_day or o.day > to_day))))
    order by 1, 2, 3
  loop
    delete from mixpanel_sync.event_ledger l
    where l.distinct_id = ledger_row.distinct_id and l.event_key = ledger_row.event_key and l.day = ledger_row.day;
  end loop;

  for user_id in select distinct u from unnest(touched) u order by 1 loop
    perform mixpanel_sync.refresh_subscriber_loop(user_id);
  end loop;
  return (applied, duplicates, outside, (select count(distinct u) from unnest(touched) u))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, row-at-a-time reference implementation of upsert_subscribers_incremental: the same merge (only what changed is written), the same selection and raw rules, the same contract, the same resulting tables and apply_result.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- ADD, set-based.
CREATE OR REPLACE FUNCTION mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
 RETURNS mixpanel_sync.apply_result
 LANGUAGE plpgsql
 SET search_path TO ''
 SET work_mem TO '64MB'
AS $function$
declare
  raw_on boolean := mixpanel_sync.store_raw();
  result mixpanel_sync.apply_result;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add.run_id, horizon_day, 'infinity');

  with candidates as materialized (
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.line_id, e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), ledgered as (
    -- An event already in the ledger on its day or the two days either side (a change of project timezone moves a
    -- key's day by at most 26 hours) is a duplicate; so is an event whose old-formula key is in the legacy ledger
    -- (same distinct_id: applied before the upgrade). DO NOTHING skips repeats inside the batch: the first line wins.
    insert into mixpanel_sync.event_ledger
      (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id,
      w.insert_id, w.processing_time_ms, w.properties
    from in_window w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not exists (
        select from mixpanel_sync.event_ledger l
        where l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day between w.day - 2 and w.day + 2)
    order by w.distinct_id, w.event_key, w.line_id
    on conflict (distinct_id, event_key, day) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), applied as (
    select l.* from ledgered l where l.distinct_id <> ''
  ), daily as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from applied l
    group by l.distinct_id, l.day, l.event_name
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  ), per_name as (
    select l.distinct_id, l.event_name, count(*) as event_count, min(l.event_time) as first_at, max(l.event_time) as last_at
    from applied l
    group by l.distinct_id, l.event_name
  ), summed as (
    -- ADD only ever adds: the summary moves by the run's delta, without reading a user's history
    -- (what keeps an incremental run's cost independent of it).
    insert into mixpanel_sync.subscribers as s
      (distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
    select p.distinct_id, sum(p.event_count), min(p.first_at), max(p.last_at), jsonb_object_agg(p.event_name, p.event_count), now()
    from per_name p
    group by p.distinct_id
    on conflict (distinct_id) do update set
      total_events = s.total_events + excluded.total_events,
      first_event_at = least(s.first_event_at, excluded.first_event_at),
      last_event_at = greatest(s.last_event_at, excluded.last_event_at),
      event_counts = mixpanel_sync.add_event_counts(s.event_counts, excluded.event_counts),
      updated_at = excluded.updated_at
  )
  select
    (select count(*) from applied),
    (select count(*) from in_window w where w.distinct_id <> '') - (select count(*) from applied),
    (select count(*) from candidates c where c.distinct_id <> '') - (select count(*) from in_window w where w.distinct_id <> ''),
    (select count(distinct l.distinct_id) from applied l)
  into result.applied, result.duplicates, result.too_old, result.users_touched;
  return result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) is 'ADD, set-based, one statement: applies the run''s events not yet in the ledger on their day or the two days either side (nor, by their old-formula key, in event_ledger_legacy; repeats inside the run count once, the first line wins) and moves each touched subscriber by the run''s delta; events before horizon_day cannot be deduplicated and are counted too_old, not applied. With events.store_raw on, ledger rows carry the raw columns and events with no distinct_id are kept under distinct_id '''' (deduplicated the same way, never counted). Idempotent and order-independent.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- ADD, the row-at-a-time reference.
CREATE OR REPLACE FUNCTION mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[])
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  raw_on boolean := mixpanel_sync.store_raw();
  event record;
  current_user_id text;
  current_user_applied boolean := false;
  inserted_rows bigint;
begin
  applied := 0;
  duplicates := 0;
  outside := 0;
  distinct_ids := '{}';
  for event in
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = insert_new_events_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.line_id
  loop
    if current_user_id is distinct from event.distinct_id then
      if current_user_applied then
        distinct_ids := array_append(distinct_ids, current_user_id);
      end if;
      current_user_id := event.distinct_id;
      current_user_applied := false;
    end if;

    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;

    if event.legacy_key is not null and exists (
        select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    insert into mixpanel_sync.event_ledger
      (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    values (event.distinct_id, event.event_key, event.day, event.event_name, event.event_time, insert_new_events_loop.run_id,
      event.insert_id, event.processing_time_ms, event.properties);
    if event.distinct_id = '' then
      continue;
    end if;

    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    values (event.distinct_id, event.day, event.event_name, 1, event.event_time, event.event_time)
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + 1,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at);
    applied := applied + 1;
    current_user_applied := true;
  end loop;
  if current_user_applied then
    distinct_ids := array_append(distinct_ids, current_user_id);
  end if;
end;
$function$;
comment on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) is 'Row-at-a-time core of the _loop ADD: per event in [from_day, to_day] (in line order per user), a duplicate when its legacy key is in event_ledger_legacy or its key is in the ledger on its day or the two days either side, else one ledger insert (with the raw columns) and one events_daily upsert. With events.store_raw on, events with no distinct_id get their ledger row under '''' and are never counted.';
grant execute on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) to mixpanel_sync_loader;

CREATE OR REPLACE FUNCTION mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date)
 RETURNS mixpanel_sync.apply_result
 LANGUAGE plpgsql
 SET search_path TO ''
 SET work_mem TO '64MB'
AS $function$
declare
  inserted record;
  user_id text;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add_loop.run_id, horizon_day, 'infinity');
  inserted := mixpanel_sync.insert_new_events_loop(run_id, horizon_day, 'infinity');
  foreach user_id in array inserted.distinct_ids loop
    perform mixpanel_sync.refresh_subscriber_loop(user_id);
  end loop;
  return (inserted.applied, inserted.duplicates, inserted.outside, cardinality(inserted.distinct_ids))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) is 'ADD, row-at-a-time reference implementation of upsert_subscribers_incremental_add: same contract, same resulting tables.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- finish_events_run: storage horizon, partition drops, no_user / not_selected.
CREATE OR REPLACE FUNCTION mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
 RETURNS mixpanel_sync.sync_runs
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  parsed record;
  result mixpanel_sync.apply_result;
  horizon date := mixpanel_sync.horizon_day(run.fetch_to, mixpanel_sync.setting('events.ledger_retention')::interval);
  path text := mixpanel_sync.setting('events.upsert_path');
  overlap_ms bigint := (extract(epoch from mixpanel_sync.setting('events.overlap')::interval) * 1000)::bigint;
  mark mixpanel_sync.sync_watermarks;
  seen record;
  marker record;
  recomputes boolean;
  held timestamptz;
  new_processing timestamptz;
  identity jsonb;
  raw_on boolean := mixpanel_sync.store_raw();
  raw_retention text := coalesce((select s.value from mixpanel_sync.sync_settings s where s.key = 'events.raw_retention'), 'forever');
  -- The storage horizon: the ledger keeps whole days from here on. Raw off: the ledger horizon (what ADD can
  -- deduplicate). Raw on: also events.raw_retention's days ('forever': every day).
  store_from date := case
    when not raw_on then horizon
    when raw_retention = 'forever' then '-infinity'::date
    else least(horizon, mixpanel_sync.horizon_day(run.fetch_to, raw_retention::interval))
  end;
  skipped record;
  keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);
begin
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.staged_events s
  -- length(s.line) < 64 first: is_terminated_early_marker's own first test, cheap and inlined (the function, a SQL
  -- function with SET, is called per line otherwise: ~20 % of the parse), so only short lines reach the call.
  where s.run_id = run.id and s.problem is null and length(s.line) < 64 and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;

  parsed := mixpanel_sync.parse_staged_events(run.id);

  -- Identity merge (500-identity.sql, issue 12): learn the run's links, move the rows of ids no longer canonical,
  -- rewrite the run's events to canonical ids; before the guard and the apply path, which then see canonical ids.
  identity := mixpanel_sync.apply_identity(run.id);
  run.options := run.options || identity;
  run.links_learned := (identity ->> 'links_learned')::bigint;
  run.reattributed_events := (identity ->> 'reattributed_events')::bigint;

  if run.mode = 'full' then
    perform mixpanel_sync.replace_guard(run);
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day, store_from)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day, store_from)
    end;
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  -- Retention: whole day partitions before the storage horizon are dropped (no row is deleted); the legacy ledger
  -- (not partitioned, only ever empties) loses its rows before the ledger horizon.
  if store_from > '-infinity' then
    perform mixpanel_sync_private.drop_ledger_partitions(store_from);
  end if;
  delete from mixpanel_sync.event_ledger_legacy l where l.day < horizon;

  -- What the run did not apply by design: events with no distinct_id, events outside its selection.
  select count(*) filter (where e.skip_reason = 'no_user') as no_user,
    count(*) filter (where e.skip_reason = 'not_selected') as not_selected
  into skipped
  from mixpanel_sync.run_events e
  where e.run_id = run.id and e.reject_reason is null and e.skip_reason is not null;

  -- Only events now in the tables (applied or already there) may move the watermark;
  -- fetch_to already caps them, as later events were rejected.
  select max(e.event_time) as event_time, max(e.processing_time) as processing_time,
    jsonb_build_object(
      'events', count(e.lateness_ms),
      'p50_ms', percentile_disc(0.5) within group (order by e.lateness_ms),
      'p90_ms', percentile_disc(0.9) within group (order by e.lateness_ms),
      'p99_ms', percentile_disc(0.99) within group (order by e.lateness_ms),
      'max_ms', max(e.lateness_ms),
      'beyond_overlap', count(*) filter (where e.lateness_ms > overlap_ms)
    ) as lateness
  into seen
  from mixpanel_sync.run_events e
  where e.run_id = run.id
    and e.reject_reason is null
    and e.skip_reason is null
    and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity');

  select * into mark from mixpanel_sync.sync_watermarks w where w.source = 'events' for update;
  run.watermark_before := mark.watermark;
  -- The watermark never claims data the tables do not hold. A full run holds exactly its events in its window, so
  -- it resets the watermarks: to the newest event it applied, or, when it applied none, to the newest event the
  -- tables hold before its window (no watermark at all when they hold none: the next run is full). A resync moves
  -- them forward only, unless the watermark lies in its window: then it is recomputed like a full run's.
  -- Incremental runs only move them forward.
  recomputes := run.mode = 'full' and (run.options ->> 'mode_reason' is distinct from 'resync'
    or (mark.watermark at time zone 'UTC')::date between run.window_from_day and run.window_to_day);
  if keeps_watermark then
    -- a run whose selection (begin_run: options -> 'events') leaves out names events.only syncs did not fetch them:
    -- the watermark stays as it is, for every name (moving it would skip their events for good)
    run.watermark_after := mark.watermark;
    new_processing := mark.processing_watermark;
  elsif not recomputes then
    run.watermark_after := greatest(mark.watermark, seen.event_time);
    new_processing := greatest(mark.processing_watermark, seen.processing_time);
  elsif seen.event_time is not null then
    run.watermark_after := seen.event_time;
    new_processing := coalesce(seen.processing_time, seen.event_time);
  else
    select max(d.last_at) into held
    from mixpanel_sync.events_daily d
    where d.day < run.window_from_day and d.last_at <= run.fetch_to;
    run.watermark_after := held;
    -- an event is processed at or after its time: later events are then read again, and deduplicated
    new_processing := held;
  end if;
  if keeps_watermark then
    null;  -- sync_watermarks untouched (a run with no watermark row leaves none)
  elsif run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (source, watermark, processing_watermark, run_id, updated_at)
    values ('events', run.watermark_after, new_processing, run.id, now())
    on conflict (source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
  else
    delete from mixpanel_sync.sync_watermarks w where w.source = 'events';
  end if;

  run.received := parsed.received;
  run.rejected := parsed.rejected;
  run.applied := result.applied;
  run.duplicates := result.duplicates;
  run.too_old := result.too_old;
  run.users_touched := result.users_touched;
  run.no_user := skipped.no_user;
  run.not_selected := skipped.not_selected;
  -- finish_run records the counts it knows; these two are recorded here.
  update mixpanel_sync.sync_runs r set no_user = skipped.no_user, not_selected = skipped.not_selected where r.id = run.id;
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon, 'store_raw', raw_on,
    'storage_horizon_day', case when store_from > '-infinity' then store_from end);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: refuses an incomplete input (Mixpanel''s "terminated early" line, MP003), parses once, runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below the storage horizon (events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
grant execute on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Identity merge: the raw rows are ledger rows and move with them (the to_regclass(raw_events) branch is gone).
CREATE OR REPLACE FUNCTION mixpanel_sync.reattribute_identities(from_ids text[], to_ids text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
 SET work_mem TO '64MB'
AS $function$
declare
  moved record;
  profiles_moved bigint;
begin
  -- Ledger rows: an event applied under the alias and under its canonical id (or under two aliases of one cluster)
  -- was counted twice; one row is kept (the canonical's, else the least alias's), the others are dropped and their
  -- events_daily count taken back. Then events_daily rows merge (sum, least first_at, greatest last_at).
  with moves as materialized (
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
  ), ledger_rows as (
    -- (the ledger is the raw table: raw rows move with it. A key is looked up on its day and the two days either
    -- side, where a change of project timezone can have moved it.)
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id, l.properties is not null as is_raw,
      exists (select from mixpanel_sync.event_ledger c
        where c.distinct_id = m.to_id and c.event_key = l.event_key and c.day between l.day - 2 and l.day + 2) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id, l.day) as n
    from mixpanel_sync.event_ledger l join moves m on l.distinct_id = m.from_id
  ), legacy_rows as (
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id,
      exists (select from mixpanel_sync.event_ledger_legacy c where c.distinct_id = m.to_id and c.event_key = l.event_key) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id) as n
    from mixpanel_sync.event_ledger_legacy l join moves m on l.distinct_id = m.from_id
  ), ledger_dropped as (
    delete from mixpanel_sync.event_ledger l using ledger_rows r
    where (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning l.distinct_id, l.day, l.event_name
  ), ledger_moved as (
    update mixpanel_sync.event_ledger l set distinct_id = r.to_id
    from ledger_rows r
    where not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning r.is_raw
  ), legacy_dropped as (
    delete from mixpanel_sync.event_ledger_legacy l using legacy_rows r
    where (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning l.distinct_id, l.day, l.event_name
  ), legacy_moved as (
    update mixpanel_sync.event_ledger_legacy l set distinct_id = r.to_id
    from legacy_rows r
    where not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning 1
  ), dropped_counts as (
    select d.distinct_id, d.day, d.event_name, count(*) as events
    from (select * from ledger_dropped union all select * from legacy_dropped) d
    group by d.distinct_id, d.day, d.event_name
  ), alias_daily as (
    delete from mixpanel_sync.events_daily d using moves m
    where d.distinct_id = m.from_id
    returning d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at, m.to_id
  ), merged as (
    select a.to_id, a.day, a.event_name, sum(a.event_count - coalesce(c.events, 0)) as events,
      min(a.first_at) as first_at, max(a.last_at) as last_at
    from alias_daily a
    left join dropped_counts c on c.distinct_id = a.distinct_id and c.day = a.day and c.event_name = a.event_name
    group by a.to_id, a.day, a.event_name
  ), daily as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select g.to_id, g.day, g.event_name, g.events, g.first_at, g.last_at
    from merged g
    where g.events > 0
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  )
  select
    (select coalesce(sum(g.events) filter (where g.events > 0), 0) from merged g) as events,
    (select count(*) from ledger_dropped) + (select count(*) from legacy_dropped) as duplicates,
    (select count(*) from ledger_moved) + (select count(*) from legacy_moved) as ledger_rows,
    (select count(*) from ledger_moved x where x.is_raw) as raw_rows
  into moved;

  -- Profiles: Mixpanel keeps the canonical id's profile. When the canonical id has none, the profile of the least
  -- alias becomes its profile; every other alias profile is removed.
  with moves as materialized (
    select m.from_id as from_id, m.to_id as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id) where m.from_id <> m.to_id
  ), alias_profiles as (
    select p.distinct_id, m.to_id,
      not exists (select from mixpanel_sync.subscriber_properties c where c.distinct_id = m.to_id)
        and row_number() over (partition by m.to_id order by p.distinct_id collate "C") = 1 as keeps
    from mixpanel_sync.subscriber_properties p join moves m on p.distinct_id = m.from_id
  ), removed as (
    delete from mixpanel_sync.subscriber_properties p using alias_profiles a
    where not a.keeps and p.distinct_id = a.distinct_id
    returning 1
  ), renamed as (
    update mixpanel_sync.subscriber_properties p set distinct_id = a.to_id
    from alias_profiles a
    where a.keeps and p.distinct_id = a.distinct_id
    returning 1
  )
  select (select count(*) from removed) + (select count(*) from renamed) into profiles_moved;

  perform mixpanel_sync.refresh_subscribers(from_ids || to_ids);
  return jsonb_build_object('reattributed_events', moved.events, 'reattributed_duplicates', moved.duplicates,
    'reattributed_ledger_rows', moved.ledger_rows, 'reattributed_raw_events', moved.raw_rows,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities(from_ids text[], to_ids text[]) is 'Set-based: moves every row of from_ids[i] to to_ids[i] in events_daily (rows merged: sum, least first_at, greatest last_at), event_ledger (the raw events with it) and event_ledger_legacy (an event held under both ids, or two aliases, is kept once and its extra count taken back), subscriber_properties (the canonical profile wins), and recomputes subscribers of both. Returns counts: reattributed_events (events now counted under the canonical id), reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events (moved ledger rows that carry properties), reattributed_profiles.';
grant execute on function mixpanel_sync.reattribute_identities(from_ids text[], to_ids text[]) to mixpanel_sync_loader;

CREATE OR REPLACE FUNCTION mixpanel_sync.reattribute_identities_loop(from_ids text[], to_ids text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  move record;
  event record;
  day_row record;
  member text;
  events_moved bigint := 0;
  duplicates bigint := 0;
  ledger_rows bigint := 0;
  raw_moved bigint := 0;
  profiles_moved bigint := 0;
  touched text[] := '{}';
  row_count_now bigint;
begin
  for move in
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
    order by 1
  loop
    touched := touched || array[move.from_id::text, move.to_id::text];
    -- the ledgers, one row at a time: a key the canonical id already holds is a double count
    for event in
      select l.event_key, l.day, l.event_name, false as legacy, l.properties is not null as is_raw
      from mixpanel_sync.event_ledger l where l.distinct_id = move.from_id
      union all
      select g.event_key, g.day, g.event_name, true, false from mixpanel_sync.event_ledger_legacy g where g.distinct_id = move.from_id
      order by 4, 1, 2
    loop
      if not event.legacy and exists (select from mixpanel_sync.event_ledger c
          where c.distinct_id = move.to_id and c.event_key = event.event_key and c.day between event.day - 2 and event.day + 2)
        or event.legacy and exists (select from mixpanel_sync.event_ledger_legacy c where c.distinct_id = move.to_id and c.event_key = event.event_key) then
        if event.legacy then
          delete from mixpanel_sync.event_ledger_legacy g where g.distinct_id = move.from_id and g.event_key = event.event_key;
        else
          delete from mixpanel_sync.event_ledger l
          where l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        end if;
        update mixpanel_sync.events_daily d set event_count = d.event_count - 1
        where d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name and d.event_count > 1;
        get diagnostics row_count_now = row_count;
        if row_count_now = 0 then
          delete from mixpanel_sync.events_daily d
          where d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name;
        end if;
        duplicates := duplicates + 1;
      elsif event.legacy then
        update mixpanel_sync.event_ledger_legacy g set distinct_id = move.to_id
        where g.distinct_id = move.from_id and g.event_key = event.event_key;
        ledger_rows := ledger_rows + 1;
      else
        update mixpanel_sync.event_ledger l set distinct_id = move.to_id
        where l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        ledger_rows := ledger_rows + 1;
        if event.is_raw then
          raw_moved := raw_moved + 1;
        end if;
      end if;
    end loop;
    -- events_daily, one row at a time
    for day_row in
      select d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d where d.distinct_id = move.from_id order by d.day, d.event_name
    loop
      insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
      values (move.to_id, day_row.day, day_row.event_name, day_row.event_count, day_row.first_at, day_row.last_at)
      on conflict (distinct_id, day, event_name) do update set
        event_count = d.event_count + excluded.event_count,
        first_at = least(d.first_at, excluded.first_at),
        last_at = greatest(d.last_at, excluded.last_at);
      delete from mixpanel_sync.events_daily d
      where d.distinct_id = move.from_id and d.day = day_row.day and d.event_name = day_row.event_name;
      events_moved := events_moved + day_row.event_count;
    end loop;
    -- the profile: the canonical one wins; else the first alias's (in id order) becomes it
    if exists (select from mixpanel_sync.subscriber_properties p where p.distinct_id = move.from_id) then
      if exists (select from mixpanel_sync.subscriber_properties p where p.distinct_id = move.to_id) then
        delete from mixpanel_sync.subscriber_properties p where p.distinct_id = move.from_id;
      else
        update mixpanel_sync.subscriber_properties p set distinct_id = move.to_id where p.distinct_id = move.from_id;
      end if;
      profiles_moved := profiles_moved + 1;
    end if;
  end loop;
  foreach member in array touched loop
    perform mixpanel_sync.refresh_subscriber_loop(member);
  end loop;
  return jsonb_build_object('reattributed_events', events_moved, 'reattributed_duplicates', duplicates,
    'reattributed_ledger_rows', ledger_rows, 'reattributed_raw_events', raw_moved,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities_loop(from_ids text[], to_ids text[]) is 'Row-at-a-time reference implementation of reattribute_identities: same contract, same resulting tables and counts (property-tests/identity-loop-equals-set.test.ts). Used when events.upsert_path = ''loop''.';
grant execute on function mixpanel_sync.reattribute_identities_loop(from_ids text[], to_ids text[]) to mixpanel_sync_loader;

