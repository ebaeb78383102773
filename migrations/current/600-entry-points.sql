-- 600-entry-points: the functions a loader or a DBA calls without a run id take a trailing `project text default null`,
-- resolved once by mixpanel_sync.project_id (null: the only project, so a single-project installation calls them as
-- before): begin_run (also mixpanel_project_id bigint default null), begin_cohorts_run, begin_spot_check, sync_health,
-- reattribute_all, forget_event_names; and the property tests' mixpanel_sync_verify.table_snapshot. New:
-- sync_health_all(). Lock keys per project (docs/projects.md §5.5): begin mixpanel_sync.begin_run:<project id>:<source>
-- (forget_event_names too), finish mixpanel_sync.finish_run:<project id> (reattribute_all too).
-- Idempotent: the old signatures are dropped if they exist, the new ones created or replaced.

drop function if exists mixpanel_sync.begin_run(text, boolean, timestamp with time zone, text, date, date, boolean, text[]);
create or replace function mixpanel_sync.begin_run(source text, force_full boolean DEFAULT false, clock timestamp with time zone DEFAULT now(), project_timezone text DEFAULT NULL::text, resync_from date DEFAULT NULL::date, resync_to date DEFAULT NULL::date, allow_shrink boolean DEFAULT false, events text[] DEFAULT NULL::text[], project text DEFAULT NULL::text, mixpanel_project_id bigint DEFAULT NULL::bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  -- the project: named, or the only one (MP004 otherwise)
  pid smallint := mixpanel_sync.project_id(begin_run.project);
  project_row mixpanel_sync.projects;
  mark mixpanel_sync.sync_watermarks;
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
  horizon date;
  reason text;
  new_id bigint;
  owner jsonb;
  clock_day date;
  heartbeat_timeout interval := mixpanel_sync.setting(pid, 'runs.heartbeat_timeout')::interval;
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
  -- The project's own timezone when none is given; a different one is a configuration error.
  select * into project_row from mixpanel_sync.projects p where p.id = pid;
  if project_timezone is null then
    project_timezone := project_row.timezone;
  elsif project_row.timezone is not null and project_timezone <> project_row.timezone then
    raise exception 'begin_run: project_timezone % differs from project %''s timezone %', quote_literal(project_timezone),
      quote_literal(project_row.name), quote_literal(project_row.timezone)
      using errcode = 'MP004', hint = 'leave project_timezone out to use the project''s (CLI: unset MIXPANEL_PROJECT_TIMEZONE), or change mixpanel_sync.projects.timezone';
  end if;
  if begin_run.mixpanel_project_id is not null and project_row.mixpanel_project_id is distinct from begin_run.mixpanel_project_id
    and (project_row.mixpanel_project_id is not null
      or exists (select from mixpanel_sync.projects p where p.mixpanel_project_id = begin_run.mixpanel_project_id)) then
    raise exception 'begin_run: Mixpanel project % is not the Mixpanel project of project % (%)', begin_run.mixpanel_project_id,
      quote_literal(project_row.name), coalesce(project_row.mixpanel_project_id::text,
        'Mixpanel project ' || begin_run.mixpanel_project_id || ' is project ' || (select quote_literal(p.name) from mixpanel_sync.projects p
          where p.mixpanel_project_id = begin_run.mixpanel_project_id))
      using errcode = 'MP004', hint = 'a project''s rows come from one Mixpanel project: check MIXPANEL_PROJECT_ID and --project (MIXPANEL_PROJECT)';
  end if;
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

  -- One begin_run per project and source at a time: the check and the insert below cannot interleave with another's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':' || source, 0));
  -- The project's first run records its Mixpanel project id (checked above; the unique key guards a race).
  if begin_run.mixpanel_project_id is not null and project_row.mixpanel_project_id is null then
    update mixpanel_sync.projects p set mixpanel_project_id = begin_run.mixpanel_project_id
    where p.id = pid and p.mixpanel_project_id is null;
  end if;

  perform mixpanel_sync.abandon_stale_runs(pid);
  new_id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('mixpanel_sync.sync_runs', 'id'));

  -- A running run whose loader is gone is abandoned now, not after runs.abandon_after: its owner session (the one that
  -- ran its begin_run) no longer exists AND it has no heartbeat younger than runs.heartbeat_timeout and younger than
  -- the server's start. Through a
  -- transaction pooler (pgbouncer) the owner session may close while the loader works on another one: the loader's
  -- heartbeat keeps such a run alive. A run that never had a heartbeat (psql) is judged by its owner session alone.
  for other in
    select * from mixpanel_sync.sync_runs r
    where r.project_id = pid and r.source = begin_run.source and r.status = 'running'
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
  where r.project_id = pid and r.source = begin_run.source and r.status = 'running'
  order by r.started_at limit 1;
  if found then
    raise exception 'begin_run: run % of source % is running (started % ago, by pid %); one % run at a time',
      other.id, source, justify_interval(date_trunc('second', now() - other.started_at)),
      coalesce(other.options -> 'owner' ->> 'pid', '?'), source
      using errcode = 'MP002',
        hint = format('wait for it to finish (CLI: --wait SECONDS); if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died''); '
          'runs still running after runs.abandon_after (%s) are abandoned by the next begin_run', other.id, mixpanel_sync.setting(pid, 'runs.abandon_after'));
  end if;

  owner := jsonb_build_object('pid', pg_catalog.pg_backend_pid(),
    'backend_start', (select a.backend_start from pg_catalog.pg_stat_activity a where a.pid = pg_catalog.pg_backend_pid()));

  begin
    if source = 'profiles' then
      insert into mixpanel_sync.sync_runs (id, project_id, source, mode, fetch_to, project_timezone, options)
      overriding system value
      values (new_id, pid, 'profiles', 'full', clock, project_timezone,
        jsonb_build_object('mode_reason', 'profiles are always read whole', 'owner', owner))
      returning * into run;
      return run;
    end if;

    -- The run's selection: events when given (an empty array: every event), else the setting events.only.
    -- Recorded sorted and without repeats in options->'events' (absent: every event), which the parse
    -- (skip_reason 'not_selected'), the REPLACE (clears only these names) and the loader's Export API request read.
    -- A selection that leaves out a name the standing selection (events.only; [] = every name) syncs did not fetch
    -- that name's events: options->'keeps_watermark' tells finish_run to leave the watermark as it is.
    standing := coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]');
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

    select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
    horizon := mixpanel_sync.horizon_day(clock, mixpanel_sync.setting(pid, 'events.ledger_retention')::interval);
    reason := case
      when force_full then 'forced'
      when mixpanel_sync.setting(pid, 'events.incremental') = 'off' then 'events.incremental is off'
      when mark.watermark is null then 'no watermark yet'
      when mark.watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval < horizon::timestamp at time zone 'UTC'
        then 'watermark is older than the ledger retention'
    end;

    if resync_from is not null then
      -- REPLACE of exactly these days (resync_from alone: that day); the loader fetches them and nothing after them.
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'full', resync_from::timestamp at time zone 'UTC',
        least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,
        project_timezone, jsonb_build_object('mode_reason', 'resync', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select coalesce(resync_to, resync_from) as to_day) w
      returning * into run;
    elsif reason is not null then
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'full', w.from_day::timestamp at time zone 'UTC', clock, w.from_day, clock_day,
        project_timezone, jsonb_build_object('mode_reason', reason, 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mixpanel_sync.horizon_day(clock, mixpanel_sync.setting(pid, 'events.full_window')::interval) as from_day) w
      returning * into run;
    else
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, lookback_from, processed_after, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'incremental', f.fetch_from, clock,
        greatest(f.fetch_from - mixpanel_sync.setting(pid, 'events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),
        mark.processing_watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval,
        project_timezone, jsonb_build_object('mode_reason', 'watermark', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mark.watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval as fetch_from) f
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
comment on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[], project text, mixpanel_project_id bigint) is 'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. resync_from/resync_to: a full run that replaces exactly those UTC days (resync_from alone: that one day). allow_shrink: let this full run empty or shrink stored days (the REPLACE guard of finish_run, MP001, is off). events: this run''s selection of event names (CLI --event NAME); null: the setting events.only; an empty array: every event. The selection is recorded in options->''events'' (sorted, no repeats; absent = every event): other names are skipped as not_selected, a full run replaces only the selected names in its window, and the loader asks the Export API for just them. A selection that leaves out a name events.only syncs (every name when events.only is []) records options->''keeps_watermark'' = true: the run does not move the watermark, because the other names were not fetched. One run at a time per source: refused with MP002 while another is running (a unique index makes two racing calls safe); a running run is abandoned first when its loader is gone: its owner session (options->owner: pid, backend_start) no longer exists and its heartbeat (heartbeat_at, set by heartbeat_run) is absent, older than runs.heartbeat_timeout or older than the server''s start; any run still running after runs.abandon_after is abandoned too. Through a transaction pooler (pgbouncer) the owner session may close or outlive the loader: the loader''s heartbeat is what counts there. project: the project''s name (mixpanel_sync.projects; null: the only project, MP004 when there are several); its settings, watermark and runs are the ones read, and another project''s runs are never abandoned or waited for (one run at a time per project and source). project_timezone null: the project''s timezone; a different one is refused (MP004). mixpanel_project_id: the Mixpanel project the loader reads; recorded on the project''s first run, and a run of another Mixpanel project is refused (MP004). Invalid arguments: MP004 (e.g. force_full with resync_*, an empty or over-long event name, events for profiles).';
grant execute on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[], project text, mixpanel_project_id bigint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.begin_cohorts_run(timestamp with time zone);
create or replace function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone DEFAULT now(), project text DEFAULT NULL::text)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
as $function$
declare
  pid smallint := mixpanel_sync.project_id(begin_cohorts_run.project);
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
begin
  if clock is null then
    raise exception 'begin_cohorts_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':cohorts', 0));
  perform mixpanel_sync.abandon_stale_runs(pid);
  select * into other from mixpanel_sync.sync_runs r where r.project_id = pid and r.source = 'cohorts' and r.status = 'running' order by r.started_at limit 1;
  if found then
    raise exception 'begin_cohorts_run: run % of source cohorts is running (started % ago); one cohorts run at a time',
      other.id, justify_interval(date_trunc('second', now() - other.started_at))
      using errcode = 'MP002',
        hint = format('wait for it to finish; if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died'')', other.id);
  end if;
  -- staged rows of cohorts runs that ended without finish_cohorts_run (failed, abandoned)
  delete from mixpanel_sync.staged_cohorts s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  delete from mixpanel_sync.staged_cohort_members s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  delete from mixpanel_sync.staged_cohort_fetches s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  insert into mixpanel_sync.sync_runs (project_id, source, mode, fetch_to, options)
  values (pid, 'cohorts', 'full', clock, jsonb_build_object('mode_reason', 'cohorts are always read whole',
    'owner', jsonb_build_object('pid', pg_catalog.pg_backend_pid())))
  returning * into run;
  return run;
end;
$function$;
comment on function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone, project text) is 'Begins a cohorts run (source ''cohorts'', always whole): refuses with MP002 while another cohorts run of the project is running (project: its name; null: the only project), abandons stale runs and clears staged rows of cohorts runs that ended without finishing.';
grant execute on function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone, project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.begin_spot_check(integer, text);
create or replace function mixpanel_sync.begin_spot_check(users integer, seed text, project text DEFAULT NULL::text)
 returns mixpanel_sync.spot_checks
 language plpgsql
 set search_path to ''
as $function$
declare
  pid smallint := mixpanel_sync.project_id(begin_spot_check.project);
  mark mixpanel_sync.sync_watermarks;
  zone text;
  chosen text[];
  check_row mixpanel_sync.spot_checks;
  selection jsonb;
begin
  if users is null or users < 1 or seed is null then
    raise exception 'begin_spot_check: users must be at least 1 and seed not null' using errcode = 'invalid_parameter_value',
      hint = 'select * from mixpanel_sync.begin_spot_check(20, ''1'')';
  end if;
  select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
  if mark.watermark is null then
    raise exception 'begin_spot_check: nothing synced yet (no events watermark)' using errcode = 'no_data_found',
      hint = 'run npm run sync:events first';
  end if;
  -- the same users for the same seed and subscribers: ordered by a hash of seed and distinct_id
  select array_agg(s.distinct_id order by s.h, s.distinct_id) into chosen
  from (
    select s.distinct_id, md5(begin_spot_check.seed || ':' || s.distinct_id) as h
    from mixpanel_sync.subscribers s
    where s.project_id = pid
    order by 2, 1
    limit begin_spot_check.users
  ) s;
  if chosen is null then
    raise exception 'begin_spot_check: no subscribers to check' using errcode = 'no_data_found', hint = 'run npm run sync:events first';
  end if;
  select r.project_timezone into zone from mixpanel_sync.sync_runs r
  where r.project_id = pid and r.source = 'events' and r.status = 'succeeded' order by r.finished_at desc, r.id desc limit 1;
  -- the names the sync keeps, as runs read them: the setting events.only, sorted ([] = every event)
  selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')
    from jsonb_array_elements(coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]')) e (name));
  -- staged lines of checks that never finished
  delete from mixpanel_sync.staged_spot_check_events e
  where e.check_id in (select c.id from mixpanel_sync.spot_checks c where c.started_at < now() - interval '1 day');
  insert into mixpanel_sync.spot_checks (project_id, seed, users, from_day, to_day, watermark, processing_watermark, project_timezone, events)
  values (pid, seed, chosen,
    (mark.watermark at time zone 'UTC')::date - (extract(day from mixpanel_sync.setting(pid, 'events.full_window')::interval)::integer - 1),
    (mark.watermark at time zone 'UTC')::date, mark.watermark, mark.processing_watermark, zone, selection)
  returning * into check_row;
  return check_row;
end;
$function$;
comment on function mixpanel_sync.begin_spot_check(users integer, seed text, project text) is 'Begins a spot-check of a project (project: its name; null: the only project): picks `users` of its subscribers by md5(seed || '':'' || distinct_id) (the same seed picks the same users), and the synced window: the events.full_window days ending with the watermark''s UTC day; and the event names the sync keeps (the setting events.only, recorded in events: the loader asks the Export API for just them, and spot_check_differences compares just them).';
grant execute on function mixpanel_sync.begin_spot_check(users integer, seed text, project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.sync_health();
create or replace function mixpanel_sync.sync_health(project text DEFAULT NULL::text)
 returns table("check" text, status text, value text, threshold text, detail text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  with p as materialized (select mixpanel_sync.project_id(sync_health.project) as id)
  select (c.result).* from (
    select 1 as position, mixpanel_sync.health_events_duration(p.id) as result from p
    union all select 2, mixpanel_sync.health_incremental_volume(p.id) from p
    union all select 3, mixpanel_sync.health_incremental_typical(p.id) from p
    union all select 4, mixpanel_sync.health_watermark_lag(p.id) from p
    union all select 5, mixpanel_sync.health_watermark_stalled(p.id) from p
    union all select 6, mixpanel_sync.health_lateness(p.id) from p
    union all select 7, mixpanel_sync.health_too_old(p.id) from p
    union all select 8, mixpanel_sync.health_timezone(p.id) from p
    union all select 9, mixpanel_sync.health_subscribers(p.id) from p
    union all select 10, mixpanel_sync.health_failed_runs(p.id, 'events') from p
    union all select 11, mixpanel_sync.health_rejected(p.id, 'events') from p
    union all select 12, mixpanel_sync.health_profiles_duration(p.id) from p
    union all select 13, mixpanel_sync.health_profiles_change_detection(p.id) from p
    union all select 14, mixpanel_sync.health_profiles_skip_rate(p.id) from p
    union all select 15, mixpanel_sync.health_failed_runs(p.id, 'profiles') from p
    union all select 16, mixpanel_sync.health_rejected(p.id, 'profiles') from p
    union all select 17, mixpanel_sync.health_running(p.id) from p
  ) c
  order by c.position;
$function$;
comment on function mixpanel_sync.sync_health(project text) is 'Health of one project''s sync (project: its name; null: the only project), one row per check: status ok|warn|critical, the value measured, the thresholds (the project''s health.* rows in sync_settings) and a detail. select * from mixpanel_sync.sync_health(); every project: select * from mixpanel_sync.sync_health_all(); see docs/operations.md.';
grant execute on function mixpanel_sync.sync_health(project text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.sync_health_all()
 returns table(project text, "check" text, status text, value text, threshold text, detail text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  select p.name::text, h."check", h.status, h.value, h.threshold, h.detail
  from mixpanel_sync.projects p
  cross join lateral mixpanel_sync.sync_health(p.name) with ordinality as h ("check", status, value, threshold, detail, position)
  order by p.name, h.position;
$function$;
comment on function mixpanel_sync.sync_health_all() is 'sync_health of every project, one row per project and check, by project name: select * from mixpanel_sync.sync_health_all() where status <> ''ok''.';
grant execute on function mixpanel_sync.sync_health_all() to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_all();
create or replace function mixpanel_sync.reattribute_all(project text DEFAULT NULL::text)
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(reattribute_all.project);
  from_ids text[];
  to_ids text[];
begin
  -- Any id stored under a non-canonical id of the map (data from before identity.mode was on, or from another mode).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run:' || pid, 0));
  select coalesce(array_agg(l.alias order by l.alias), '{}'), coalesce(array_agg(l.canonical order by l.alias), '{}')
  into from_ids, to_ids
  from mixpanel_sync.identity_links l
  where l.project_id = pid and l.alias <> l.canonical
    and (exists (select from mixpanel_sync.events_daily d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger_legacy d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscribers d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscriber_properties d where d.project_id = pid and d.distinct_id = l.alias));
  return jsonb_build_object('ids_moved', cardinality(from_ids))
    || mixpanel_sync.reattribute_identities(pid, from_ids, to_ids);
end;
$function$;
comment on function mixpanel_sync.reattribute_all(project text) is 'One-off re-attribution of a project''s stored data through its identity_links (project: its name; null: the only project; serialised with the project''s finish_run): every row keyed by an id whose canonical is another id moves to it. Run it after switching identity.mode on and the full resync that learns the links (README, "Identity merge"). Idempotent: a second call moves nothing.';
grant execute on function mixpanel_sync.reattribute_all(project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.forget_event_names(text[]);
create or replace function mixpanel_sync.forget_event_names(names text[], project text DEFAULT NULL::text)
 returns table(event_names text[], daily_rows bigint, events bigint, ledger_rows bigint, users_refreshed bigint)
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(forget_event_names.project);
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
  standing := coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]');
  select n.name into still from unnest(wanted) n (name)
  where jsonb_array_length(standing) = 0 or standing ? n.name
  order by n.name limit 1;
  if found then
    raise exception 'forget_event_names: % is still synced (events.only is %): runs would bring it back', quote_literal(still), standing::text
      using errcode = 'MP004',
        hint = 'first set events.only to the names you keep, e.g. update mixpanel_sync.sync_settings set value = ''["Sign Up"]'' where project_id = mixpanel_sync.project_id(''name'') and key = ''events.only''';
  end if;

  -- Not while an events run is running: its finish_run could write these names again. Same lock as begin_run's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':events', 0));
  select * into other from mixpanel_sync.sync_runs r where r.project_id = pid and r.source = 'events' and r.status = 'running' order by r.started_at limit 1;
  if found then
    raise exception 'forget_event_names: events run % is running; nothing was deleted', other.id
      using errcode = 'MP002', hint = 'run it again when the run has finished';
  end if;

  with gone as (
    delete from mixpanel_sync.events_daily d where d.project_id = pid and d.event_name = any (wanted)
    returning d.distinct_id, d.event_count
  )
  select count(*), coalesce(sum(g.event_count), 0), array_agg(distinct g.distinct_id)
  into daily_rows, events, touched
  from gone g;

  -- The ledger (with raw storage on, the raw events too) and the legacy ledger: through their parents.
  with gone as (
    delete from mixpanel_sync.event_ledger l where l.project_id = pid and l.event_name = any (wanted) returning 1
  )
  select count(*) into ledger_rows from gone;
  with gone as (
    delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid and l.event_name = any (wanted) returning 1
  )
  select ledger_rows + count(*) into ledger_rows from gone;

  perform mixpanel_sync.refresh_subscribers(pid, coalesce(touched, '{}'));
  users_refreshed := coalesce(cardinality(touched), 0);
  event_names := wanted;
  return next;
end;
$function$;
comment on function mixpanel_sync.forget_event_names(names text[], project text) is 'Deletes a project''s data of event names it no longer syncs (project: its name; null: the only project): their events_daily rows, their ledger rows (the raw events when events.store_raw is on) and legacy ledger rows, then recomputes subscribers of the users they touched (refresh_subscribers; a user left with no event is removed). Returns the names and what was deleted. Refused (MP004) for a name events.only still syncs (every name when events.only is []): remove it from events.only first, or the next runs bring it back; refused (MP002) while an events run is running. For the DBA: not granted to mixpanel_sync_loader (no run needs it). Reads events_daily whole (no index leads with event_name): one-off maintenance.';
revoke execute on function mixpanel_sync.forget_event_names(names text[], project text) from mixpanel_sync_loader;

drop function if exists mixpanel_sync_verify.table_snapshot(text[], text[]);
create or replace function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[] DEFAULT '{}'::text[], project text DEFAULT NULL::text)
 returns jsonb
 language plpgsql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(table_snapshot.project);
  own_rows text;
  result jsonb := '{}';
  tab text;
  key_columns text;
  dropped text[];
  rows_of jsonb;
begin
  foreach tab in array tables loop
    -- the key without project_id (the rows are one project's), unless it is the whole key
    select coalesce(string_agg(format('t.%I', a.attname), ', ' order by k.n) filter (where a.attname <> 'project_id'),
        string_agg(format('t.%I', a.attname), ', ' order by k.n))
    into key_columns
    from pg_catalog.pg_index i
    cross join lateral unnest(i.indkey) with ordinality k (attnum, n)
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and i.indisprimary;
    if key_columns is null then
      raise exception 'mixpanel_sync.% is not a table with a primary key', tab
        using errcode = '22023', hint = 'table_snapshot takes names of mixpanel_sync tables that have a primary key.';
    end if;
    select coalesce(array_agg(substr(c, length(tab) + 2)), '{}') into dropped
    from unnest(ignore) c where starts_with(c, tab || '.');
    -- The project's rows: by project_id, else (run_events, sync_rejects, staged_*) by their run's project.
    own_rows := case
      when exists (select from pg_catalog.pg_attribute a
          where a.attrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and a.attname = 'project_id' and not a.attisdropped)
        then 't.project_id = $2'
      when exists (select from pg_catalog.pg_attribute a
          where a.attrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and a.attname = 'run_id' and not a.attisdropped)
        then 't.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = $2)'
      else 'true'
    end;
    if own_rows <> 'true' then
      dropped := dropped || '{project_id}';
    end if;
    execute format('select coalesce(jsonb_object_agg(jsonb_build_array(%s)::text, to_jsonb(t) - $1), ''{}'') from mixpanel_sync.%I t where %s',
      key_columns, tab, own_rows)
      into rows_of using dropped, pid;
    result := result || jsonb_build_object(tab, rows_of);
  end loop;
  return result;
end;
$function$;
comment on function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[], project text) is 'Property tests: every row of one project (project: its name; null: the only project) of the named mixpanel_sync tables as jsonb {table: {primary key without project_id as JSON text: row without project_id}} (tables without project_id: the rows of the project''s runs, by run_id), columns listed in ignore as table.column left out; compare two with verify_first_difference.';


drop function if exists mixpanel_sync_verify.verify_snapshot(text[]);
create or replace function mixpanel_sync_verify.verify_snapshot(ignore text[] DEFAULT '{}'::text[], project text DEFAULT NULL::text)
 returns jsonb
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  with p as materialized (select mixpanel_sync.project_id(verify_snapshot.project) as id)
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore - 'project_id'), '{}')
      from mixpanel_sync.events_daily d where d.project_id = p.id and mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore - 'project_id'), '{}')
      from mixpanel_sync.event_ledger l where l.project_id = p.id and mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore - 'project_id'), '{}')
      from mixpanel_sync.subscribers s where s.project_id = p.id and mixpanel_sync_verify.verify_ours(s.distinct_id)))
  from p;
$function$;
comment on function mixpanel_sync_verify.verify_snapshot(ignore text[], project text) is 'Verify scripts: events_daily, event_ledger and subscribers rows of verify_ours users of one project (project: its name; null: the only project) as jsonb keyed by primary key without project_id, columns in ignore and project_id left out.';
