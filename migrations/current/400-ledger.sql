-- The event ledger and the write paths (issue 11; designed with issues 12 and 13 in mind: docs/ledger.md).
--   * REPLACE is a merge that writes only what changed, in the set path and its _loop twin: an events_daily or ledger
--     row whose content is unchanged is not rewritten (IS DISTINCT FROM), rows gone are deleted, new rows inserted.
--     A steady-state re-sync of the same data writes nothing, so it leaves no dead tuples behind (no bloat).
--   * The ledger is as long as dedup needs: events.ledger_retention defaults to 7 days (overlap 2 h + late lookback
--     5 days + a margin), no longer the 45-day REPLACE window; REPLACE writes ledger rows only from the horizon on.
--   * ADD is 100's (a duplicate pre-filter before its insert was tried: no measurable gain, see docs/ledger.md).
-- Owner: the ledger stream. Applied after 100-safety-core.sql (later files win: this file redefines the REPLACE set
-- path and its _loop twin and finish_events_run). The identity hook, the REPLACE guard, the legacy
-- ledger, the watermark rules and the accounting invariant are kept as 100 and 500 define them.

------------------------------------------------------------------------------------------
-- A ledger as long as dedup needs
------------------------------------------------------------------------------------------

-- Installations still on the old default move to the new one; a value someone chose stays.
update mixpanel_sync.sync_settings set value = '7 days'
where key = 'events.ledger_retention' and value = '45 days';
update mixpanel_sync.sync_settings set description =
  'How long the ledger remembers applied events, in whole UTC days ending with the run''s day (default 7 days: '
  'events.overlap + events.late_lookback + a margin). An incremental run (ADD) can deduplicate only events of these '
  'days: an older event is counted too_old, not applied, and the next full run (REPLACE over events.full_window) '
  'counts it. A watermark older than this makes the next run full. REPLACE rebuilds events_daily for its whole window '
  'whatever this is.'
where key = 'events.ledger_retention';

comment on table mixpanel_sync.event_ledger is
  'One row per applied event of the last events.ledger_retention days (the horizon): the memory that makes ADD '
  'idempotent. Older days are pruned by finish_run; REPLACE writes rows only from the horizon on. run_id: the run '
  'that last wrote the row (inserted it, or changed its day, name or time); a REPLACE that finds the row unchanged '
  'leaves it (and its run_id) as it is.';
comment on column mixpanel_sync.event_ledger.run_id is
  'The run that last wrote this row: inserted it, or changed its day, event_name or event_time (a REPLACE that finds '
  'the event unchanged does not rewrite it). Not "the last run that saw the event".';

------------------------------------------------------------------------------------------
-- REPLACE, set-based: a merge that writes only what changed
------------------------------------------------------------------------------------------

drop function mixpanel_sync.upsert_subscribers_incremental(bigint, date, date);
create function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date,
  ledger_from date default null)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  -- ledger rows of the window are kept from this day on (finish_run passes the ledger horizon: older rows would be
  -- pruned at once); null: the whole window.
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  counted record;
begin
  -- The legacy ledger only ever empties: its rows of the window go (as before the merge).
  delete from mixpanel_sync.event_ledger_legacy g where g.day between from_day and to_day;

  -- The window's new content is the run's events of the window, deduplicated (a key fixes the name and the second),
  -- less those already counted outside the window: a key can sit in the ledger (or, by its old-formula key, in the
  -- legacy ledger) on a day outside the window when the project timezone changed between runs.
  with wanted as materialized (
    select distinct on (e.distinct_id, e.event_key) e.distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and e.day between from_day and to_day
    order by e.distinct_id, e.event_key
  ), kept as materialized (
    select w.*
    from wanted w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not exists (
        select from mixpanel_sync.event_ledger l
        where l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day not between from_day and to_day)
  ), ledger_gone as (
    -- rows of the window that are not in its new content (or before kept_from)
    delete from mixpanel_sync.event_ledger l
    where l.day between from_day and to_day
      and not exists (
        select from kept k where k.distinct_id = l.distinct_id and k.event_key = l.event_key and k.day >= kept_from)
    returning 1
  ), ledger_written as (
    -- new rows inserted; a row already there rewritten only when its day, name or time differ (a timezone change)
    insert into mixpanel_sync.event_ledger as l (distinct_id, event_key, day, event_name, event_time, run_id)
    select k.distinct_id, k.event_key, k.day, k.event_name, k.event_time, upsert_subscribers_incremental.run_id
    from kept k
    where k.day >= kept_from
    order by k.distinct_id, k.event_key
    on conflict (distinct_id, event_key) do update set
      day = excluded.day, event_name = excluded.event_name, event_time = excluded.event_time, run_id = excluded.run_id
    where (l.day, l.event_name, l.event_time) is distinct from (excluded.day, excluded.event_name, excluded.event_time)
    returning 1
  ), target as materialized (
    select k.distinct_id, k.day, k.event_name, count(*) as event_count, min(k.event_time) as first_at,
      max(k.event_time) as last_at
    from kept k
    group by k.distinct_id, k.day, k.event_name
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    where d.day between from_day and to_day
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
    (select count(*) from kept) as applied,
    array(select g.distinct_id from daily_gone g union select w.distinct_id from daily_written w) as touched,
    (select count(*) from ledger_gone) + (select count(*) from ledger_written) as ledger_rows_written
  into counted;

  perform mixpanel_sync.refresh_subscribers(counted.touched);
  return (
    select (counted.applied,
      count(*) filter (where e.day between from_day and to_day) - counted.applied,
      count(*) filter (where e.day not between from_day and to_day),
      cardinality(counted.touched))::mixpanel_sync.apply_result
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id and e.reject_reason is null
  );
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental(bigint, date, date, date) is
  'REPLACE, set-based, as a merge: the days [from_day, to_day] of events_daily and event_ledger end up holding exactly '
  'the run''s events of those days, deduplicated (less events already counted outside the window), and only what '
  'changed is written: rows gone deleted, new rows inserted, a row rewritten only when IS DISTINCT FROM its new '
  'content. Ledger rows are kept from ledger_from on (null: the whole window; finish_run passes the ledger horizon). '
  'event_ledger_legacy rows of the window are deleted. applied: events the window now holds from the run; '
  'duplicates: the run''s other events of the window; too_old: its events outside the window; users_touched: users '
  'whose events_daily rows changed (their subscribers row is recomputed). Rows outside the window are untouched.';

------------------------------------------------------------------------------------------
-- REPLACE, row-at-a-time reference: the same merge
------------------------------------------------------------------------------------------

drop function mixpanel_sync.upsert_subscribers_incremental_loop(bigint, date, date);
create function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date,
  ledger_from date default null)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
-- Plans that cannot go quadratic. The per-row lookups (event_ledger, events_daily by primary key) keep their cached
-- generic plan for the whole loop: made while a table's statistics say it is empty (e.g. the ledger after VACUUM
-- ANALYZE of an empty ledger), it was a sequential scan, repeated for every event of a growing table (measured in
-- the set-vs-loop bench, 1,000 users: 46-57 s; with these settings 1.0-1.7 s). The queries that find the rows to
-- delete (steps 2 and 3) join run_events: hash joins, not a nested loop over it. Without nested loops or sequential
-- scans the plan cost turns JIT on before PostgreSQL 18 (seconds of compiling): off too.
set enable_nestloop = off
set jit = off
set enable_seqscan = off
as $$
declare
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
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
  for legacy_row in
    select g.distinct_id, g.event_key from mixpanel_sync.event_ledger_legacy g
    where g.day between from_day and to_day order by g.distinct_id, g.event_key
  loop
    delete from mixpanel_sync.event_ledger_legacy g
    where g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;
  end loop;

  -- 1. The run's events in events_daily order (a key fixes the day and the name, so repeats are adjacent): each kept
  --    event claims its ledger row, each (user, day, name) group its events_daily row.
  for event in
    select e.distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
    order by e.distinct_id, e.day, e.event_name, e.event_key, e.line_id
  loop
    if event.day < from_day or event.day > to_day then
      outside := outside + 1;
      continue;
    end if;
    if event.distinct_id = previous_id and event.event_key = previous_key then
      duplicates := duplicates + 1;
      continue;
    end if;
    previous_id := event.distinct_id;
    previous_key := event.event_key;
    if event.legacy_key is not null and exists (
      select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key) then
      duplicates := duplicates + 1;
      continue;
    end if;
    select l.day, l.event_name, l.event_time into stored
    from mixpanel_sync.event_ledger l where l.distinct_id = event.distinct_id and l.event_key = event.event_key;
    if found and (stored.day < from_day or stored.day > to_day) then
      duplicates := duplicates + 1;
      continue;
    end if;

    if event.day >= kept_from then
      if not found then
        insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
        values (event.distinct_id, event.event_key, event.day, event.event_name, event.event_time,
          upsert_subscribers_incremental_loop.run_id);
      elsif (stored.day, stored.event_name, stored.event_time) is distinct from (event.day, event.event_name, event.event_time) then
        update mixpanel_sync.event_ledger l set day = event.day, event_name = event.event_name,
          event_time = event.event_time, run_id = upsert_subscribers_incremental_loop.run_id
        where l.distinct_id = event.distinct_id and l.event_key = event.event_key;
      end if;
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

  -- 2. events_daily rows of the window the run has no event for: deleted, one at a time. (The rows are found with
  --    one anti-join: a per-row lookup in run_events, which has no index for it, would make the loop quadratic.)
  for daily_row in
    select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d
    where d.day between from_day and to_day
      and not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
          and e.distinct_id = d.distinct_id and e.day = d.day and e.event_name = d.event_name
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger l
            where l.distinct_id = e.distinct_id and l.event_key = e.event_key and l.day not between from_day and to_day))
    order by d.distinct_id, d.day, d.event_name
  loop
    delete from mixpanel_sync.events_daily d
    where d.distinct_id = daily_row.distinct_id and d.day = daily_row.day and d.event_name = daily_row.event_name;
    touched := array_append(touched, daily_row.distinct_id);
  end loop;

  -- 3. Ledger rows of the window no kept event of the run claimed (or before kept_from): deleted, one at a time.
  for ledger_row in
    select l.distinct_id, l.event_key from mixpanel_sync.event_ledger l
    where l.day between from_day and to_day
      and (l.day < kept_from or not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
          and e.distinct_id = l.distinct_id and e.event_key = l.event_key
          and e.day between kept_from and to_day
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))))
    order by l.distinct_id, l.event_key
  loop
    delete from mixpanel_sync.event_ledger l
    where l.distinct_id = ledger_row.distinct_id and l.event_key = ledger_row.event_key;
  end loop;

  for user_id in select distinct u from unnest(touched) u order by 1 loop
    perform mixpanel_sync.refresh_subscriber_loop(user_id);
  end loop;
  return (applied, duplicates, outside, (select count(distinct u) from unnest(touched) u))::mixpanel_sync.apply_result;
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental_loop(bigint, date, date, date) is
  'REPLACE, row-at-a-time reference implementation of upsert_subscribers_incremental: the same merge (only what '
  'changed is written), the same contract, the same resulting tables and apply_result.';

create function mixpanel_sync.merge_daily_row_loop(distinct_id text, day date, event_name text, event_count bigint,
  first_at timestamptz, last_at timestamptz)
returns boolean
language plpgsql
set search_path = ''
-- its lookup keeps a cached plan for the whole REPLACE loop: by primary key, never a sequential scan (see above)
set enable_seqscan = off
set jit = off
as $$
declare
  stored record;
begin
  select d.event_count, d.first_at, d.last_at into stored
  from mixpanel_sync.events_daily d
  where d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  if not found then
    insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at)
    values (distinct_id, day, event_name, event_count, first_at, last_at);
    return true;
  end if;
  if (stored.event_count, stored.first_at, stored.last_at) is not distinct from (event_count, first_at, last_at) then
    return false;
  end if;
  update mixpanel_sync.events_daily d set
    event_count = merge_daily_row_loop.event_count, first_at = merge_daily_row_loop.first_at,
    last_at = merge_daily_row_loop.last_at
  where d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  return true;
end;
$$;
comment on function mixpanel_sync.merge_daily_row_loop(text, date, text, bigint, timestamptz, timestamptz) is
  'Row-at-a-time step of upsert_subscribers_incremental_loop: sets one events_daily row to this count and first/last '
  'time, inserting it when missing and writing nothing when it already holds them; true when it wrote.';

------------------------------------------------------------------------------------------
-- finish_events_run: REPLACE keeps ledger rows from the horizon on (as 100 otherwise: identity hook, guard, watermark)
------------------------------------------------------------------------------------------


------------------------------------------------------------------------------------------
-- finish_events_run: REPLACE keeps ledger rows from the horizon on (as 100 otherwise: identity hook, guard, watermark)
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
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
begin
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.staged_events s
  where s.run_id = run.id and s.problem is null and mixpanel_sync.is_terminated_early_marker(s.line)
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
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day, horizon)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day, horizon)
    end;
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  delete from mixpanel_sync.event_ledger l where l.day < horizon;
  delete from mixpanel_sync.event_ledger_legacy l where l.day < horizon;

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
  if not recomputes then
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
  if run.watermark_after is not null then
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
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon);
  return run;
end;
$$;
comment on function mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs) is
  'The events part of finish_run: refuses an incomplete input (Mixpanel''s "terminated early" line, MP003), parses '
  'once, runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a '
  'merge keeping ledger rows from the ledger horizon on) or ADD (incremental) by events.upsert_path, prunes both '
  'ledgers below the horizon (events.ledger_retention), and sets the watermark. The watermark never claims data the tables do not hold: after a full '
  'run it is the newest event the run applied, or when it applied none the newest event held before its window (none: '
  'the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the '
  'resync''s days (then as a full run); an incremental run moves it forward only.';

comment on column mixpanel_sync.sync_runs.users_touched is
  'Users whose stored data the run changed. Events, full run (REPLACE as a merge): users whose events_daily rows in '
  'the window were inserted, updated or deleted (their subscribers row was recomputed; 0 for a re-sync of unchanged '
  'data). Events, incremental run (ADD): users with an event applied. Profiles: inserted + updated. Cohorts: members '
  'added + removed.';
