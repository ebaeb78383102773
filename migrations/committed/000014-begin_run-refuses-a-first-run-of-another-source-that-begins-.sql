--! Previous: sha1:1d1943a51826e7be4d681c575207f53a12d81dff
--! Hash: sha1:cca486c13ee43be51ffc29c2fd8b5ceb26cd32a5
--! Message: begin_run refuses a first run of another source that begins beside the project's first run with another Mixpanel project id

-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- begin_run: two first runs of one project begun at the same time by different sources (each holds only its own
-- source's advisory lock) both read no Mixpanel project id; the later one's UPDATE then changed nothing and the run
-- went on with another Mixpanel project than the one recorded, mixing two Mixpanel projects' rows in one project.
-- Now the later run is refused (MP004) unless its id is the one recorded. Idempotent: create or replace, with every
-- SET clause the function had (search_path, jit).
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
  recorded bigint;
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
  -- The project's first run records its Mixpanel project id (checked above; the unique key guards a race between two
  -- projects). The first runs of two sources of one project hold different locks and may both have read no id: the
  -- later UPDATE waits for the earlier's row lock, then finds an id recorded and changes nothing. Such a run is then
  -- checked against the recorded id like any other (MP004 for another Mixpanel project), never run unrecorded.
  if begin_run.mixpanel_project_id is not null and project_row.mixpanel_project_id is null then
    update mixpanel_sync.projects p set mixpanel_project_id = begin_run.mixpanel_project_id
    where p.id = pid and p.mixpanel_project_id is null;
    if not found then
      select p.mixpanel_project_id into recorded from mixpanel_sync.projects p where p.id = pid;
      if recorded is distinct from begin_run.mixpanel_project_id then
        raise exception 'begin_run: Mixpanel project % is not the Mixpanel project of project % (%)', begin_run.mixpanel_project_id,
          quote_literal(project_row.name), recorded
          using errcode = 'MP004', hint = 'a project''s rows come from one Mixpanel project, recorded by its first run (here a run of '
            'another source begun at the same time): check MIXPANEL_PROJECT_ID and --project (MIXPANEL_PROJECT)';
      end if;
    end if;
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

comment on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[], project text, mixpanel_project_id bigint) is 'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. resync_from/resync_to: a full run that replaces exactly those UTC days (resync_from alone: that one day). allow_shrink: let this full run empty or shrink stored days (the REPLACE guard of finish_run, MP001, is off). events: this run''s selection of event names (CLI --event NAME); null: the setting events.only; an empty array: every event. The selection is recorded in options->''events'' (sorted, no repeats; absent = every event): other names are skipped as not_selected, a full run replaces only the selected names in its window, and the loader asks the Export API for just them. A selection that leaves out a name events.only syncs (every name when events.only is []) records options->''keeps_watermark'' = true: the run does not move the watermark, because the other names were not fetched. One run at a time per source: refused with MP002 while another is running (a unique index makes two racing calls safe); a running run is abandoned first when its loader is gone: its owner session (options->owner: pid, backend_start) no longer exists and its heartbeat (heartbeat_at, set by heartbeat_run) is absent, older than runs.heartbeat_timeout or older than the server''s start; any run still running after runs.abandon_after is abandoned too. Through a transaction pooler (pgbouncer) the owner session may close or outlive the loader: the loader''s heartbeat is what counts there. project: the project''s name (mixpanel_sync.projects; null: the only project, MP004 when there are several); its settings, watermark and runs are the ones read, and another project''s runs are never abandoned or waited for (one run at a time per project and source). project_timezone null: the project''s timezone; a different one is refused (MP004). mixpanel_project_id: the Mixpanel project the loader reads; recorded on the project''s first run, and a run of another Mixpanel project is refused (MP004), also when a run of another source of the project recorded its id at the same time. Invalid arguments: MP004 (e.g. force_full with resync_*, an empty or over-long event name, events for profiles).';
