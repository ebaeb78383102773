--! Previous: sha1:f90162bdb592d80c9cabcf22330e9027dc4f62b5
--! Hash: sha1:0b5d6302ca128d39b6685c1e6fb9d4855a052c7e
--! Message: finish_run plans on the run's own size (run_events sampled after the parse), a cheaper terminated-early probe, REPLACE as a full-join merge with plain DELETE/INSERT/UPDATE, events_daily columns stored fixed-width first

--! split: 010-timeouts.sql
-- The first file of the current migration: its limits hold for every later file too (graphile-migrate runs the
-- migration as one transaction). The table changes after it take locks a running sync's statements hold: they give up
-- after 5 s (rerun `npm run migrate`) instead of queueing every reader behind them. Same limits as 000006 and 000007.
set local lock_timeout = '5s';
set local statement_timeout = '10min';

--! split: 100-plans-and-probe.sql
-- Part 1 of the session's migration (issue 11, performance): plans that do not fall off a cliff, and a cheaper
-- terminated-early probe.
--
-- run_events is a work table whose rows are always a new run's (run_id only grows). Whatever autovacuum last sampled,
-- the planner then estimates "run_id = <this run>" at about 1 row. A REPLACE planned on that estimate anti-joins the
-- window's ledger rows against the run's events in a nested loop: measured on a database migrated fresh, the second
-- full sync of a 95,000-line file took 64 s in finish_run instead of 1.2 s. finish_events_run now samples run_events
-- right after the parse (3,000 rows: the statistics targets below), so every statement after it is planned on the
-- run's real size.

alter table mixpanel_sync.run_events
  alter column run_id set statistics 10,
  alter column line_id set statistics 10,
  alter column distinct_id set statistics 10,
  alter column event_key set statistics 10,
  alter column event_name set statistics 10,
  alter column event_time set statistics 10,
  alter column day set statistics 10,
  alter column processing_time set statistics 10,
  alter column lateness_ms set statistics 10,
  alter column reject_reason set statistics 10,
  alter column skip_reason set statistics 10,
  alter column legacy_key set statistics 0,
  alter column properties set statistics 0,
  alter column insert_id set statistics 0,
  alter column processing_time_ms set statistics 0;

create or replace function mixpanel_sync_private.analyze_run_events()
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  analyze mixpanel_sync.run_events;
end;
$$;
comment on function mixpanel_sync_private.analyze_run_events() is 'Samples mixpanel_sync.run_events (ANALYZE) so that the statements after the parse are planned on the running run''s real size: run ids only grow, so statistics sampled earlier estimate a new run at about one row, and a REPLACE planned on that runs its anti-joins as nested loops (64 s instead of 1.2 s measured for a second 95,000-line full sync). It samples 3,000 rows (the columns'' statistics targets: 10, and 0 for the raw columns). SECURITY DEFINER (owned by the schema owner) because only the owner may analyze the table; it analyzes nothing else.';
revoke all on function mixpanel_sync_private.analyze_run_events() from public;
grant execute on function mixpanel_sync_private.analyze_run_events() to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $function$
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
  -- octet_length(s.line) < 256 first: it reads the length from the value's header, where length() counts the
  -- characters of the whole line (~2.4 us a line: 230 ms of a 95,000-line finish_run); it keeps every line of fewer
  -- than 64 characters (at most 4 bytes each in UTF-8). Then length(s.line) < 64, is_terminated_early_marker's own
  -- first test, so only short lines reach the call (a SQL function with SET, called per line otherwise).
  where s.run_id = run.id and s.problem is null and octet_length(s.line) < 256 and length(s.line) < 64
    and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;

  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Every statement from here on is planned on the run's real size (analyze_run_events: run ids only grow, so older
  -- statistics estimate this run at about one row).
  perform mixpanel_sync_private.analyze_run_events();

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

--! split: 110-replace-merge.sql
-- Part 2 (issue 11): REPLACE classifies the window's rows with one full join per table, then deletes, inserts and
-- updates each set with a plain statement, instead of an anti-join delete plus INSERT … ON CONFLICT. Measured on
-- 95,000 events (60,645 events_daily rows): ON CONFLICT costs an index probe per row whether or not the row changes
-- (190 ms when none does, 320 ms into an empty window, against 188 ms for a plain INSERT and 31 ms for the full join);
-- on a first full sync of 1M events, inserting its 564,441 events_daily rows through ON CONFLICT took 3.4 s.
-- Same rows written, same counts; finish_run's advisory lock keeps other writers of the window out, so a key the
-- join did not see cannot appear before the INSERT (if one did, the INSERT fails and nothing is applied).

create or replace function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $function$
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
  ), ledger_diff as materialized (
    -- The window's ledger rows (of the selected names) against its new content from kept_from on, matched on the
    -- primary key: k only = a new row, l only = a row gone (also every row before kept_from), both = a row whose name,
    -- time or raw columns differ. Rows that match and are equal are not listed: they are not written.
    select k.distinct_id as k_distinct_id, k.event_key as k_event_key, k.day as k_day, k.event_name, k.event_time,
      k.insert_id, k.processing_time_ms, k.properties,
      l.distinct_id as l_distinct_id, l.event_key as l_event_key, l.day as l_day
    from (select k.* from kept k where k.day >= kept_from) k
    full join (
      select l.distinct_id, l.event_key, l.day, l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties
      from mixpanel_sync.event_ledger l
      where l.day between from_day and to_day and (names is null or l.event_name = any (names))
    ) l on l.distinct_id = k.distinct_id and l.event_key = k.event_key and l.day = k.day
    where k.distinct_id is null or l.distinct_id is null
      or (l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties)
        is distinct from (k.event_name, k.event_time, k.insert_id, k.processing_time_ms, k.properties)
  ), ledger_gone as (
    delete from mixpanel_sync.event_ledger l
    using ledger_diff x
    where x.k_distinct_id is null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), ledger_new as (
    insert into mixpanel_sync.event_ledger
      (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select x.k_distinct_id, x.k_event_key, x.k_day, x.event_name, x.event_time, upsert_subscribers_incremental.run_id,
      x.insert_id, x.processing_time_ms, x.properties
    from ledger_diff x
    where x.l_distinct_id is null
    order by x.k_distinct_id, x.k_event_key
    returning 1
  ), ledger_changed as (
    update mixpanel_sync.event_ledger l set
      event_name = x.event_name, event_time = x.event_time, run_id = upsert_subscribers_incremental.run_id,
      insert_id = x.insert_id, processing_time_ms = x.processing_time_ms, properties = x.properties
    from ledger_diff x
    where x.k_distinct_id is not null and x.l_distinct_id is not null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), target as materialized (
    select k.distinct_id, k.day, k.event_name, count(*) as event_count, min(k.event_time) as first_at,
      max(k.event_time) as last_at
    from kept k
    where k.distinct_id <> ''
    group by k.distinct_id, k.day, k.event_name
  ), daily_diff as materialized (
    -- The window's events_daily rows (of the selected names) against the target, as for the ledger: t only = new,
    -- d only = gone, both = changed (an unchanged row is not listed: no dead tuple, no index entry, no WAL).
    select t.distinct_id as t_distinct_id, t.day as t_day, t.event_name as t_event_name, t.event_count, t.first_at,
      t.last_at, d.distinct_id as d_distinct_id, d.day as d_day, d.event_name as d_event_name
    from target t
    full join (
      select d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d
      where d.day between from_day and to_day and (names is null or d.event_name = any (names))
    ) d on d.distinct_id = t.distinct_id and d.day = t.day and d.event_name = t.event_name
    where t.distinct_id is null or d.distinct_id is null
      or (d.event_count, d.first_at, d.last_at) is distinct from (t.event_count, t.first_at, t.last_at)
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    using daily_diff x
    where x.t_distinct_id is null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  ), daily_new as (
    insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at)
    select x.t_distinct_id, x.t_day, x.t_event_name, x.event_count, x.first_at, x.last_at
    from daily_diff x
    where x.d_distinct_id is null
    order by x.t_distinct_id, x.t_day, x.t_event_name
    returning events_daily.distinct_id
  ), daily_changed as (
    update mixpanel_sync.events_daily d set event_count = x.event_count, first_at = x.first_at, last_at = x.last_at
    from daily_diff x
    where x.t_distinct_id is not null and x.d_distinct_id is not null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  )
  select
    (select count(*) from kept k where k.distinct_id <> '') as applied,
    array(select g.distinct_id from daily_gone g union select n.distinct_id from daily_new n
      union select c.distinct_id from daily_changed c) as touched,
    (select count(*) from ledger_gone) + (select count(*) from ledger_new) + (select count(*) from ledger_changed)
      as ledger_rows_written
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

--! split: 200-storage.sql
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
