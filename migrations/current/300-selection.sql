-- 300-selection: choosing which events to sync (issue 13 part 2). Owner: selection stream.
--
-- * Setting events.only (kind event_names, 050-setting-kinds.sql): a JSON array of event names; [] = every event.
-- * begin_run(..., events => array[...]): one run's selection (CLI --event NAME, repeatable); null = events.only.
--   The run's selection is recorded in sync_runs.options->'events' (absent = every event): the parse marks other names
--   skip_reason 'not_selected' (100-parse.sql), REPLACE clears only the selected names in its window (200-ledger.sql),
--   and the loader asks the Export API for just those names (its `event` parameter), read back from the run row.
-- * A selection that leaves out a name the standing selection syncs records options->'keeps_watermark' = true:
--   finish_events_run (200-ledger.sql) then leaves the watermark where it was, since those names were not fetched.
-- * replace_guard counts only the selected names (stored and usable), so `--full --event X` is guarded against X's
--   own stored events, not against other names it leaves alone.
-- * forget_event_names(names): the DBA's way to delete the data of names no longer synced.

insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('events.only', '[]', 'event_names', 'Which events runs sync: a JSON array of event names, e.g. ["Sign Up", "Purchase"]; [] (the default) syncs every event. Events of other names are skipped (counted not_selected), the Export API is asked for just these names, and a full run (REPLACE) clears only these names in its window: data of other names is kept. One run may choose its own names: begin_run(..., events => array[...]) (CLI: --event NAME). A name added later starts with a resync of its history (CLI: --resync-from DAY --event NAME); a name removed keeps its data until deleted with mixpanel_sync.forget_event_names(array[NAME]).');

drop function mixpanel_sync.begin_run(text, boolean, timestamp with time zone, text, date, date, boolean);

create function mixpanel_sync.begin_run(source text, force_full boolean DEFAULT false, clock timestamp with time zone DEFAULT now(), project_timezone text DEFAULT NULL::text, resync_from date DEFAULT NULL::date, resync_to date DEFAULT NULL::date, allow_shrink boolean DEFAULT false, events text[] DEFAULT NULL::text[])
 RETURNS mixpanel_sync.sync_runs
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  mark mixpanel_sync.sync_watermarks;
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
  horizon date;
  reason text;
  new_id bigint;
  owner jsonb;
  clock_day date;
  heartbeat_timeout interval := mixpanel_sync.setting('runs.heartbeat_timeout')::interval;
  standing jsonb;
  selection jsonb;
  selected jsonb := '{}';
begin
  if source is null or source not in ('events', 'profiles') then
    raise exception 'begin_run: source must be ''events'' or ''profiles'', got %', coalesce(quote_literal(source), 'null')
      using errcode = 'MP004', hint = 'select * from mixpanel_sync.begin_run(''events'')';
  end if;
  if clock is null then
    raise exception 'begin_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  clock_day := (clock at time zone 'UTC')::date;
  if project_timezone is not null
    and not exists (select from pg_catalog.pg_timezone_names z where z.name = project_timezone) then
    raise exception 'begin_run: unknown project timezone %', quote_literal(project_timezone)
      using errcode = 'MP004', hint = 'use an IANA name such as America/Los_Angeles (select name from pg_timezone_names)';
  end if;
  if events is not null then
    if source is distinct from 'events' then
      raise exception 'begin_run: events (a selection of event names) is for source ''events'' only'
        using errcode = 'MP004', hint = 'leave events out for profiles';
    end if;
    if exists (select from unnest(events) n (name) where n.name is null or n.name = '' or length(n.name) > 255) then
      raise exception 'begin_run: every name in events must be a non-empty event name of at most 255 characters, got %',
        (select string_agg(coalesce(quote_literal(case when length(n.name) > 60 then left(n.name, 60) || '…' else n.name end), 'null'), ', ')
          from unnest(events) n (name)
          where n.name is null or n.name = '' or length(n.name) > 255)
        using errcode = 'MP004',
          hint = 'begin_run(''events'', events => array[''Sign Up'', ''Purchase'']) (CLI: --event NAME, repeatable); '
            'events => ''{}'' or null with events.only = [] syncs every event';
    end if;
  end if;
  if coalesce(force_full, false) and (resync_from is not null or resync_to is not null) then
    raise exception 'begin_run: force_full and resync_from/resync_to exclude each other: a resync replaces only its days, '
      'a forced full run the whole events.full_window'
      using errcode = 'MP004',
        hint = 'for chosen days: begin_run(''events'', resync_from => ..., resync_to => ...) (CLI --resync-from/--resync-to); '
          'for the whole window: begin_run(''events'', force_full => true) (CLI --full)';
  end if;
  if resync_to is not null and resync_from is null then
    raise exception 'begin_run: resync_to needs resync_from' using errcode = 'MP004',
      hint = 'begin_run(''events'', resync_from => ''YYYY-MM-DD'', resync_to => ''YYYY-MM-DD'')';
  end if;
  if resync_from is not null and (source <> 'events' or resync_from > coalesce(resync_to, resync_from)
    or coalesce(resync_to, resync_from) > clock_day) then
    raise exception 'begin_run: a resync needs source ''events'' and resync_from <= resync_to <= the clock''s UTC day (%)', clock_day
      using errcode = 'MP004', hint = 'without resync_to a resync covers resync_from only';
  end if;

  -- One begin_run per source at a time: the check and the insert below cannot interleave with another's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || source, 0));

  perform mixpanel_sync.abandon_stale_runs();
  new_id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('mixpanel_sync.sync_runs', 'id'));

  -- A running run whose loader is gone is abandoned now, not after runs.abandon_after: its owner session (the one that
  -- ran its begin_run) no longer exists AND it has no heartbeat younger than runs.heartbeat_timeout and younger than
  -- the server's start. Through a
  -- transaction pooler (pgbouncer) the owner session may close while the loader works on another one: the loader's
  -- heartbeat keeps such a run alive. A run that never had a heartbeat (psql) is judged by its owner session alone.
  for other in
    select * from mixpanel_sync.sync_runs r
    where r.source = begin_run.source and r.status = 'running'
      and r.options -> 'owner' ->> 'pid' is not null
      and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout
        -- no beat since the server (re)started: the loader's connections died with it (pg_ctl stop -m immediate)
        or r.heartbeat_at < pg_catalog.pg_postmaster_start_time())
      and not exists (
        select from pg_catalog.pg_stat_activity a
        where a.pid = (r.options -> 'owner' ->> 'pid')::integer
          -- backend_start is null for sessions of other roles without pg_read_all_stats: presumed alive.
          and (a.backend_start is null or r.options -> 'owner' ->> 'backend_start' is null
            or a.backend_start = (r.options -> 'owner' ->> 'backend_start')::timestamptz))
    for update
  loop
    update mixpanel_sync.sync_runs r set
      status = 'abandoned',
      finished_at = now(),
      total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
      error = format('abandoned by begin_run of run %s: its loader''s session (pid %s) is gone', new_id, other.options -> 'owner' ->> 'pid')
        || case when other.heartbeat_at < now() - heartbeat_timeout
          then format(' and its last heartbeat is %s old (runs.heartbeat_timeout %s)',
            justify_interval(date_trunc('second', now() - other.heartbeat_at)), heartbeat_timeout)
          when other.heartbeat_at is not null
          then ' and it sent no heartbeat since the server started'
          else '' end
    where r.id = other.id;
    perform mixpanel_sync.drop_staged_rows(other.id);
  end loop;

  select * into other from mixpanel_sync.sync_runs r
  where r.source = begin_run.source and r.status = 'running'
  order by r.started_at limit 1;
  if found then
    raise exception 'begin_run: run % of source % is running (started % ago, by pid %); one % run at a time',
      other.id, source, justify_interval(date_trunc('second', now() - other.started_at)),
      coalesce(other.options -> 'owner' ->> 'pid', '?'), source
      using errcode = 'MP002',
        hint = format('wait for it to finish (CLI: --wait SECONDS); if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died''); '
          'runs still running after runs.abandon_after (%s) are abandoned by the next begin_run', other.id, mixpanel_sync.setting('runs.abandon_after'));
  end if;

  owner := jsonb_build_object('pid', pg_catalog.pg_backend_pid(),
    'backend_start', (select a.backend_start from pg_catalog.pg_stat_activity a where a.pid = pg_catalog.pg_backend_pid()));

  begin
    if source = 'profiles' then
      insert into mixpanel_sync.sync_runs (id, source, mode, fetch_to, project_timezone, options)
      overriding system value
      values (new_id, 'profiles', 'full', clock, project_timezone,
        jsonb_build_object('mode_reason', 'profiles are always read whole', 'owner', owner))
      returning * into run;
      return run;
    end if;

    -- The run's selection: events when given (an empty array: every event), else the setting events.only.
    -- Recorded sorted and without repeats in options->'events' (absent: every event), which the parse
    -- (skip_reason 'not_selected'), the REPLACE (clears only these names) and the loader's Export API request read.
    -- A selection that leaves out a name the standing selection (events.only; [] = every name) syncs did not fetch
    -- that name's events: options->'keeps_watermark' tells finish_run to leave the watermark as it is.
    standing := coalesce(mixpanel_sync.setting('events.only')::jsonb, '[]');
    selection := case when events is null then standing
      else (select coalesce(jsonb_agg(distinct to_jsonb(n.name)), '[]') from unnest(events) n (name)) end;
    selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')
      from jsonb_array_elements(selection) e (name));
    if jsonb_array_length(selection) > 0 then
      selected := jsonb_build_object('events', selection);
      if jsonb_array_length(standing) = 0 or not selection @> standing then
        selected := selected || jsonb_build_object('keeps_watermark', true);
      end if;
    end if;

    select * into mark from mixpanel_sync.sync_watermarks w where w.source = 'events';
    horizon := mixpanel_sync.horizon_day(clock, mixpanel_sync.setting('events.ledger_retention')::interval);
    reason := case
      when force_full then 'forced'
      when mixpanel_sync.setting('events.incremental') = 'off' then 'events.incremental is off'
      when mark.watermark is null then 'no watermark yet'
      when mark.watermark - mixpanel_sync.setting('events.overlap')::interval < horizon::timestamp at time zone 'UTC'
        then 'watermark is older than the ledger retention'
    end;

    if resync_from is not null then
      -- REPLACE of exactly these days (resync_from alone: that day); the loader fetches them and nothing after them.
      insert into mixpanel_sync.sync_runs
        (id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, 'events', 'full', resync_from::timestamp at time zone 'UTC',
        least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,
        project_timezone, jsonb_build_object('mode_reason', 'resync', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select coalesce(resync_to, resync_from) as to_day) w
      returning * into run;
    elsif reason is not null then
      insert into mixpanel_sync.sync_runs
        (id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, 'events', 'full', w.from_day::timestamp at time zone 'UTC', clock, w.from_day, clock_day,
        project_timezone, jsonb_build_object('mode_reason', reason, 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mixpanel_sync.horizon_day(clock, mixpanel_sync.setting('events.full_window')::interval) as from_day) w
      returning * into run;
    else
      insert into mixpanel_sync.sync_runs
        (id, source, mode, fetch_from, fetch_to, lookback_from, processed_after, project_timezone, options)
      overriding system value
      select new_id, 'events', 'incremental', f.fetch_from, clock,
        greatest(f.fetch_from - mixpanel_sync.setting('events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),
        mark.processing_watermark - mixpanel_sync.setting('events.overlap')::interval,
        project_timezone, jsonb_build_object('mode_reason', 'watermark', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mark.watermark - mixpanel_sync.setting('events.overlap')::interval as fetch_from) f
      returning * into run;
    end if;
  exception
    when unique_violation then
      -- another session's run of this source committed after this transaction's snapshot (e.g. repeatable read)
      raise exception 'begin_run: another % run started at the same time; one % run at a time', source, source
        using errcode = 'MP002', hint = 'wait for it to finish (CLI: --wait SECONDS), then run again';
  end;
  return run;
end;
$function$;
comment on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[]) is 'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. resync_from/resync_to: a full run that replaces exactly those UTC days (resync_from alone: that one day). allow_shrink: let this full run empty or shrink stored days (the REPLACE guard of finish_run, MP001, is off). events: this run''s selection of event names (CLI --event NAME); null: the setting events.only; an empty array: every event. The selection is recorded in options->''events'' (sorted, no repeats; absent = every event): other names are skipped as not_selected, a full run replaces only the selected names in its window, and the loader asks the Export API for just them. A selection that leaves out a name events.only syncs (every name when events.only is []) records options->''keeps_watermark'' = true: the run does not move the watermark, because the other names were not fetched. One run at a time per source: refused with MP002 while another is running (a unique index makes two racing calls safe); a running run is abandoned first when its loader is gone: its owner session (options->owner: pid, backend_start) no longer exists and its heartbeat (heartbeat_at, set by heartbeat_run) is absent, older than runs.heartbeat_timeout or older than the server''s start; any run still running after runs.abandon_after is abandoned too. Through a transaction pooler (pgbouncer) the owner session may close or outlive the loader: the loader''s heartbeat is what counts there. Invalid arguments: MP004 (e.g. force_full with resync_*, an empty or over-long event name, events for profiles).';
revoke execute on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[]) from public;
grant execute on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[]) to mixpanel_sync_loader;

CREATE OR REPLACE FUNCTION mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  usable bigint;
  stored record;
  shrunk record;
  min_events bigint := mixpanel_sync.setting('events.replace_guard_min_events')::bigint;
  ratio numeric := mixpanel_sync.setting('events.replace_guard_ratio')::numeric;
  -- The run's selection (begin_run: options->'events'; absent, null or [] = every event): a REPLACE with a selection
  -- clears only those names, so only their stored events are at stake, and only selected events are usable.
  selection jsonb := case when jsonb_typeof(run.options -> 'events') = 'array' and jsonb_array_length(run.options -> 'events') > 0
    then run.options -> 'events' end;
  names text := case when jsonb_typeof(run.options -> 'events') = 'array' and jsonb_array_length(run.options -> 'events') > 0
    then ' (events of the run''s selection ' || (run.options -> 'events')::text || ')' else '' end;
  override text := 'if the smaller data is right (events deleted in Mixpanel), begin the run with '
    'mixpanel_sync.begin_run(..., allow_shrink => true) (CLI: --allow-shrink); else check the input and run again';
begin
  if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then
    return;
  end if;
  select count(*) into usable
  from mixpanel_sync.run_events e
  where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
    and e.day between run.window_from_day and run.window_to_day;

  if usable = 0 then
    select count(*) as days, sum(d.event_count) as events into stored
    from mixpanel_sync.events_daily d
    where d.day between run.window_from_day and run.window_to_day and (selection is null or selection ? d.event_name);
    if stored.events > 0 then
      raise exception 'finish_run: REPLACE guard: full run % has no usable event for % .. %, which hold % stored events%; nothing was applied',
        run.id, run.window_from_day, run.window_to_day, stored.events, names
        using errcode = 'MP001', hint = override;
    end if;
    return;
  end if;

  select s.day, s.events, coalesce(k.kept, 0) as kept into shrunk
  from (
    select d.day, sum(d.event_count) as events
    from mixpanel_sync.events_daily d
    where d.day between run.window_from_day and run.window_to_day and (selection is null or selection ? d.event_name)
    group by d.day
  ) s
  left join (
    select u.day, count(*) as kept
    from (
      select distinct e.day, e.distinct_id, e.event_key
      from mixpanel_sync.run_events e
      where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
        and e.day between run.window_from_day and run.window_to_day
    ) u
    group by u.day
  ) k on k.day = s.day
  where s.events >= min_events and coalesce(k.kept, 0) < ratio * s.events
  order by s.day
  limit 1;
  if found then
    raise exception 'finish_run: REPLACE guard: full run % would shrink % from % to % events% (below events.replace_guard_ratio % of days holding at least events.replace_guard_min_events %); nothing was applied',
      run.id, shrunk.day, shrunk.events, shrunk.kept, names, ratio, min_events
      using errcode = 'MP001', hint = override;
  end if;
end;
$function$;
comment on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) is 'The REPLACE guard of finish_run, for full runs (resyncs included) begun without allow_shrink: raises MP001 when the run has no usable event in its window while the window holds events, or when a day of the window holding at least events.replace_guard_min_events events would keep less than events.replace_guard_ratio of them. With a selection (options->''events'') only the selected names count, on both sides: the REPLACE leaves the others as they are. Usable events: reject_reason and skip_reason null.';
revoke execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) from public;
grant execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create function mixpanel_sync.forget_event_names(names text[])
 returns table (event_names text[], daily_rows bigint, events bigint, ledger_rows bigint, users_refreshed bigint)
 language plpgsql
 set search_path to ''
as $function$
declare
  wanted text[];
  standing jsonb;
  still text;
  other mixpanel_sync.sync_runs;
  touched text[];
begin
  if names is null or cardinality(names) = 0
    or exists (select from unnest(names) n (name) where n.name is null or n.name = '') then
    raise exception 'forget_event_names: names must be a non-empty array of event names, got %', coalesce(names::text, 'null')
      using errcode = 'MP004', hint = 'select * from mixpanel_sync.forget_event_names(array[''Old Event''])';
  end if;
  wanted := (select array_agg(distinct n.name order by n.name) from unnest(names) n (name));

  -- A name the runs still sync would come back: only names outside events.only may be forgotten.
  standing := coalesce(mixpanel_sync.setting('events.only')::jsonb, '[]');
  select n.name into still from unnest(wanted) n (name)
  where jsonb_array_length(standing) = 0 or standing ? n.name
  order by n.name limit 1;
  if found then
    raise exception 'forget_event_names: % is still synced (events.only is %): runs would bring it back', quote_literal(still), standing::text
      using errcode = 'MP004',
        hint = 'first set events.only to the names you keep, e.g. update mixpanel_sync.sync_settings set value = ''["Sign Up"]'' where key = ''events.only''';
  end if;

  -- Not while an events run is running: its finish_run could write these names again. Same lock as begin_run's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:events', 0));
  select * into other from mixpanel_sync.sync_runs r where r.source = 'events' and r.status = 'running' order by r.started_at limit 1;
  if found then
    raise exception 'forget_event_names: events run % is running; nothing was deleted', other.id
      using errcode = 'MP002', hint = 'run it again when the run has finished';
  end if;

  with gone as (
    delete from mixpanel_sync.events_daily d where d.event_name = any (wanted)
    returning d.distinct_id, d.event_count
  )
  select count(*), coalesce(sum(g.event_count), 0), array_agg(distinct g.distinct_id)
  into daily_rows, events, touched
  from gone g;

  -- The ledger (with raw storage on, the raw events too) and the legacy ledger: through their parents.
  with gone as (
    delete from mixpanel_sync.event_ledger l where l.event_name = any (wanted) returning 1
  )
  select count(*) into ledger_rows from gone;
  with gone as (
    delete from mixpanel_sync.event_ledger_legacy l where l.event_name = any (wanted) returning 1
  )
  select ledger_rows + count(*) into ledger_rows from gone;

  perform mixpanel_sync.refresh_subscribers(coalesce(touched, '{}'));
  users_refreshed := coalesce(cardinality(touched), 0);
  event_names := wanted;
  return next;
end;
$function$;
comment on function mixpanel_sync.forget_event_names(names text[]) is 'Deletes the data of event names no longer synced: their events_daily rows, their ledger rows (the raw events when events.store_raw is on) and legacy ledger rows, then recomputes subscribers of the users they touched (refresh_subscribers; a user left with no event is removed). Returns the names and what was deleted. Refused (MP004) for a name events.only still syncs (every name when events.only is []): remove it from events.only first, or the next runs bring it back; refused (MP002) while an events run is running. For the DBA: not granted to mixpanel_sync_loader (no run needs it). Reads events_daily whole (no index leads with event_name): one-off maintenance.';
revoke execute on function mixpanel_sync.forget_event_names(names text[]) from public, mixpanel_sync_loader;

-- The verify scripts' runs sync every event, whatever events.only says on the database they run on.
CREATE OR REPLACE FUNCTION mixpanel_sync_verify.verify_staged_run(events jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  run mixpanel_sync.sync_runs := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00', events => '{}');
begin
  perform mixpanel_sync.stage_events(run.id, events);
  insert into mixpanel_sync.staged_events (run_id, line) values (run.id, '{"event": "cut off", "properties": {"distin');
  perform mixpanel_sync.parse_staged_events(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'failed',
    finished_at = clock_timestamp(),
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint,
    error = 'verify: staged and parsed for a path called directly'
  where r.id = run.id;
  return run.id;
end;
$function$;
comment on function mixpanel_sync_verify.verify_staged_run(events jsonb) is 'Verify scripts: a forced-full run at clock 2000-02-01 of every event (begin_run events => ''{}'', whatever events.only says) with these events (and one non-JSON line) staged and parsed once, for a path the script calls directly; the run is then marked failed (error ''verify: staged and parsed for a path called directly''), its staged and parsed rows kept, so that the next verify_staged_run may begin (one events run at a time).';
revoke execute on function mixpanel_sync_verify.verify_staged_run(events jsonb) from public;
