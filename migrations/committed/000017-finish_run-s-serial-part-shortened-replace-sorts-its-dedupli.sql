--! Previous: sha1:4eba1694326bd3507c37a8f8f9a5c1b8f4e86469
--! Hash: sha1:45e2e2537dfb5e49058ce186a93f71865998ee97
--! Message: finish_run's serial part shortened: REPLACE sorts its deduplication by key (uuid) first, and parse_staged_events samples run_events before its counts

-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- Two cuts in finish_run's serial part (it runs on one core after the last line is parsed), nothing else changed.
-- 1. upsert_subscribers_incremental (REPLACE) sorts the run's events for its deduplication by key first (a uuid), not by
--    distinct_id (text): the same groups and the same first line of each.
-- 2. parse_staged_events samples run_events (analyze_run_events) before it counts the run's lines, not finish_events_run
--    after the counts: on statistics sampled before the run, the count read the run's rows one by one through the
--    primary key. finish_events_run no longer samples it itself. Idempotent (create or replace).

create or replace function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental.run_id);
  -- ledger rows of the window are kept from this day on (finish_run passes the storage horizon: older rows would be
  -- dropped at once); null: the whole window.
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- the run's selection: only rows of these names are merged or deleted (null: every name)
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental.run_id);
  counted record;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental.run_id, kept_from, to_day);

  -- The legacy ledger only ever empties: its rows of the window go (as before the merge).
  delete from mixpanel_sync.event_ledger_legacy g
  where g.project_id = pid and g.day between from_day and to_day and (names is null or g.event_name = any (names));

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
    -- The key first: a uuid whose abbreviated sort key settles nearly every comparison, where the distinct_id (text)
    -- first compared strings; the groups and, within each, the first line are the same.
    order by e.event_key, coalesce(e.distinct_id, ''), e.line_id
  ), kept as materialized (
    select w.*
    from wanted w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key
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
      where l.project_id = pid and l.day between from_day and to_day and (names is null or l.event_name = any (names))
    ) l on l.distinct_id = k.distinct_id and l.event_key = k.event_key and l.day = k.day
    where k.distinct_id is null or l.distinct_id is null
      or (l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties)
        is distinct from (k.event_name, k.event_time, k.insert_id, k.processing_time_ms, k.properties)
  ), ledger_gone as (
    delete from mixpanel_sync.event_ledger l
    using ledger_diff x
    where l.project_id = pid and x.k_distinct_id is null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), ledger_new as (
    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select pid, x.k_distinct_id, x.k_event_key, x.k_day, x.event_name, x.event_time, upsert_subscribers_incremental.run_id,
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
    where l.project_id = pid and x.k_distinct_id is not null and x.l_distinct_id is not null
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
      where d.project_id = pid and d.day between from_day and to_day and (names is null or d.event_name = any (names))
    ) d on d.distinct_id = t.distinct_id and d.day = t.day and d.event_name = t.event_name
    where t.distinct_id is null or d.distinct_id is null
      or (d.event_count, d.first_at, d.last_at) is distinct from (t.event_count, t.first_at, t.last_at)
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    using daily_diff x
    where d.project_id = pid and x.t_distinct_id is null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  ), daily_new as (
    insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select pid, x.t_distinct_id, x.t_day, x.t_event_name, x.event_count, x.first_at, x.last_at
    from daily_diff x
    where x.d_distinct_id is null
    order by x.t_distinct_id, x.t_day, x.t_event_name
    returning events_daily.distinct_id
  ), daily_changed as (
    update mixpanel_sync.events_daily d set event_count = x.event_count, first_at = x.first_at, last_at = x.last_at
    from daily_diff x
    where d.project_id = pid and x.t_distinct_id is not null and x.d_distinct_id is not null
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

  perform mixpanel_sync.refresh_subscribers(pid, counted.touched);
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

create or replace function mixpanel_sync.parse_staged_events(run_id bigint, out received bigint, out rejected bigint)
 returns record
 language plpgsql
 set search_path = ''
 set jit = off
as $function$
begin
  -- The new lines by their index range (all of them when nothing is parsed yet), then, only when some staged line
  -- is still not parsed (staged out of line_id order, e.g. by two sessions at once), every unparsed line.
  perform mixpanel_sync.parse_staged_lines(run_id, only_new => true);
  -- Sampled now, so that the counts below and every statement after them are planned on the running run's real size
  -- (analyze_run_events: run ids only grow, so statistics sampled before this run estimate it at about one row; the
  -- count below then read the run's rows through the primary key one by one).
  perform mixpanel_sync_private.analyze_run_events();
  select count(*), count(*) filter (where e.reject_reason is not null)
  into received, rejected
  from mixpanel_sync.run_events e
  where e.run_id = parse_staged_events.run_id;
  if received < (select count(*) from mixpanel_sync.staged_events s where s.run_id = parse_staged_events.run_id) then
    perform mixpanel_sync.parse_staged_lines(run_id, only_new => false);
    select count(*), count(*) filter (where e.reject_reason is not null)
    into received, rejected
    from mixpanel_sync.run_events e
    where e.run_id = parse_staged_events.run_id;
  end if;
end;
$function$;

comment on function mixpanel_sync.parse_staged_events(run_id bigint, out received bigint, out rejected bigint) is 'Parses every staged line of a run that is not parsed yet (parse_staged_lines: the lines after the last parsed one, then, should any other remain, all of them) and returns the run''s totals: lines received and rejected (skipped events, run_events.skip_reason, are not rejects). finish_run calls it, so lines a loader did not parse chunk by chunk (or a psql user''s stage_events) are parsed there. Once they are, it samples run_events (mixpanel_sync_private.analyze_run_events), so that the counts and every statement after it are planned on the running run''s real size.';

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path = ''
 set jit = off
as $function$
declare
  pid smallint := run.project_id;
  parsed record;
  result mixpanel_sync.apply_result;
  horizon date := mixpanel_sync.horizon_day(run.fetch_to, mixpanel_sync.setting(pid, 'events.ledger_retention')::interval);
  path text := mixpanel_sync.setting(pid, 'events.upsert_path');
  overlap_ms bigint := (extract(epoch from mixpanel_sync.setting(pid, 'events.overlap')::interval) * 1000)::bigint;
  mark mixpanel_sync.sync_watermarks;
  seen record;
  marker record;
  recomputes boolean;
  held timestamptz;
  new_processing timestamptz;
  identity jsonb;
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- The storage horizon: the project's ledger rows are kept from here on. Raw off: the ledger horizon (what ADD can
  -- deduplicate). Raw on: also events.raw_retention's days ('forever': every day).
  store_from date := mixpanel_sync.storage_horizon(pid, run.fetch_to);
  -- The day partitions are shared: only the days before every project's storage horizon are dropped, another
  -- project's horizon taken at its own clock (its last succeeded events run): this run's clock may be ahead of it.
  shared_from date := least(mixpanel_sync.storage_horizon(pid, run.fetch_to), (
    select min(mixpanel_sync.storage_horizon(p.id, coalesce((
        select max(r.fetch_to) from mixpanel_sync.sync_runs r
        where r.project_id = p.id and r.source = 'events' and r.status = 'succeeded'), run.fetch_to)))
    from mixpanel_sync.projects p where p.id <> pid));
  keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);
begin
  -- parse_staged_events samples run_events once the run is parsed (analyze_run_events): every statement from here on is
  -- planned on the run's real size.
  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Mixpanel's "terminated early" line is not JSON, so the parse has rejected it: the probe reads the run's rejected
  -- lines only (a PK lookup each), not every staged line.
  -- The lookup is fenced (offset 0) so that it is planned on its own as an index scan on (run_id, line_id): joined,
  -- it was planned on statistics sampled before this run (they estimate it at about one row) and read every staged
  -- line of the run once per rejected line (a second 1M-line full sync with 20,000 bad lines did not finish in 7 min).
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.run_events e
  cross join lateral (
    select s.line_no, s.line_id, s.line, s.problem from mixpanel_sync.staged_events s
    where s.run_id = run.id and s.line_id = e.line_id
    offset 0
  ) s
  -- octet_length(s.line) < 256 first: it reads the length from the value's header, where length() counts the
  -- characters of the whole line; it keeps every line of fewer than 64 characters (at most 4 bytes each in UTF-8).
  -- Then length(s.line) < 64, is_terminated_early_marker's own first test, so only short lines reach the call.
  where e.run_id = run.id and e.reject_reason is not null and s.problem is null
    and octet_length(s.line) < 256 and length(s.line) < 64
    and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;

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

  -- Retention: whole day partitions before every project's storage horizon are dropped (no row is deleted; never
  -- waits: skipped when the ledger is busy). The project's own rows of the days between that and its own storage
  -- horizon (kept for another project with a longer retention) are deleted: a range of day partitions, found empty
  -- when every project keeps the same days. The legacy ledger (not partitioned, only ever empties) loses the
  -- project's rows before the ledger horizon.
  if shared_from > '-infinity' then
    perform mixpanel_sync_private.drop_ledger_partitions(shared_from);
  end if;
  if store_from > shared_from then
    delete from mixpanel_sync.event_ledger l where l.project_id = pid and l.day >= shared_from and l.day < store_from;
  end if;
  delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid and l.day < horizon;

  -- One scan of the run's valid events: what it did not apply by design (events with no distinct_id, events outside
  -- its selection), and the events that may move the watermark (in_tables): only those now in the tables (applied or
  -- already there; fetch_to already caps them, as later events were rejected).
  select count(*) filter (where e.skip_reason = 'no_user') as no_user,
    count(*) filter (where e.skip_reason = 'not_selected') as not_selected,
    max(e.event_time) filter (where e.in_tables) as event_time,
    max(e.processing_time) filter (where e.in_tables) as processing_time,
    jsonb_build_object(
      'events', count(e.lateness_ms) filter (where e.in_tables),
      'p50_ms', percentile_disc(0.5) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p90_ms', percentile_disc(0.9) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p99_ms', percentile_disc(0.99) within group (order by e.lateness_ms) filter (where e.in_tables),
      'max_ms', max(e.lateness_ms) filter (where e.in_tables),
      'beyond_overlap', count(*) filter (where e.in_tables and e.lateness_ms > overlap_ms)
    ) as lateness
  into seen
  from (
    select e.skip_reason, e.event_time, e.processing_time, e.lateness_ms,
      e.skip_reason is null
        and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity') as in_tables
    from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null
  ) e;

  select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events' for update;
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
    where d.project_id = pid and d.day < run.window_from_day and d.last_at <= run.fetch_to;
    run.watermark_after := held;
    -- an event is processed at or after its time: later events are then read again, and deduplicated
    new_processing := held;
  end if;
  if keeps_watermark then
    null;  -- sync_watermarks untouched (a run with no watermark row leaves none)
  elsif run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (project_id, source, watermark, processing_watermark, run_id, updated_at)
    values (pid, 'events', run.watermark_after, new_processing, run.id, now())
    on conflict (project_id, source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
  else
    delete from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
  end if;

  run.received := parsed.received;
  run.rejected := parsed.rejected;
  run.applied := result.applied;
  run.duplicates := result.duplicates;
  run.too_old := result.too_old;
  run.users_touched := result.users_touched;
  run.no_user := seen.no_user;
  run.not_selected := seen.not_selected;
  -- finish_run records the counts it knows; these two are recorded here.
  update mixpanel_sync.sync_runs r set no_user = seen.no_user, not_selected = seen.not_selected where r.id = run.id;
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon, 'store_raw', raw_on,
    'storage_horizon_day', case when store_from > '-infinity' then store_from end);
  return run;
end;
$function$;

comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: parses once, refuses an incomplete input (Mixpanel''s "terminated early" line, which the parse rejects as not JSON: MP003, nothing applied), runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below every project''s storage horizon (another project''s taken at the clock of its last succeeded events run) and deletes the project''s rows below its own (storage_horizon: events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
