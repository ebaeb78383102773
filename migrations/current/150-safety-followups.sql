-- Safety follow-ups (issue 9, QA and review after 100-safety-core.sql). Owner: the safety follow-up stream.
--   * a run heartbeat, so that a run driven through a transaction pooler (pgbouncer), whose begin_run session may be
--     closed while the loader works on other server sessions, is not abandoned as dead: sync_runs.heartbeat_at,
--     heartbeat_run, the setting runs.heartbeat_timeout, and begin_run (taken over from 100) checking it;
--   * finish_or_fail_run: the psql call that finishes a run or, on a refusal (MP001, MP003, …), records it failed
--     (with a WARNING naming the SQLSTATE), so the session is not left with a running run that blocks the next begin_run;
--   * json_problem keeps PostgreSQL's detail (e.g. "Unicode low surrogate must follow a high surrogate.").

------------------------------------------------------------------------------------------
-- The heartbeat
------------------------------------------------------------------------------------------

alter table mixpanel_sync.sync_runs add column heartbeat_at timestamptz;
comment on column mixpanel_sync.sync_runs.heartbeat_at is
  'Last sign of life of the run''s loader (mixpanel_sync.heartbeat_run, called every few seconds on a connection of its '
  'own while the run is in progress); null when the run never had one (psql). begin_run abandons a running run whose '
  'owner session is gone only when this is null, older than runs.heartbeat_timeout or older than the server''s start.';

insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('runs.heartbeat_timeout', '2 minutes', 'interval',
   'A running run whose loader sent a heartbeat (heartbeat_run) within this interval is alive, even when the server '
   'session of its begin_run is gone (through a transaction pooler such as pgbouncer that session may be closed while '
   'the loader works on another): begin_run abandons it only once its owner session is gone AND its heartbeat is '
   'older than this. Keep it well above the loader''s heartbeat interval (30 s).')
on conflict (key) do nothing;

create function mixpanel_sync.heartbeat_run(run_id bigint)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  -- skip locked: while finish_run holds the run's row the loader is visibly alive, and the heartbeat must never wait.
  update mixpanel_sync.sync_runs r set heartbeat_at = clock_timestamp()
  where r.id = (
    select l.id from mixpanel_sync.sync_runs l
    where l.id = heartbeat_run.run_id and l.status = 'running'
    for update skip locked);
  return found;
end;
$$;
comment on function mixpanel_sync.heartbeat_run(bigint) is
  'The loader''s sign of life for a running run: sets sync_runs.heartbeat_at to now (one UPDATE of one row; nothing '
  'when the run is not running or its row is locked by finish_run). True when recorded. begin_run does not abandon a '
  'run with a heartbeat younger than runs.heartbeat_timeout, even when its owner session is gone.';

------------------------------------------------------------------------------------------
-- begin_run: 100-safety-core.sql's version, with the heartbeat in the dead-owner rule
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.begin_run(
  source text,
  force_full boolean default false,
  clock timestamptz default now(),
  project_timezone text default null,
  resync_from date default null,
  resync_to date default null,
  allow_shrink boolean default false)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
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
        project_timezone, jsonb_build_object('mode_reason', 'resync', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner)
      from (select coalesce(resync_to, resync_from) as to_day) w
      returning * into run;
    elsif reason is not null then
      insert into mixpanel_sync.sync_runs
        (id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, 'events', 'full', w.from_day::timestamp at time zone 'UTC', clock, w.from_day, clock_day,
        project_timezone, jsonb_build_object('mode_reason', reason, 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner)
      from (select mixpanel_sync.horizon_day(clock, mixpanel_sync.setting('events.full_window')::interval) as from_day) w
      returning * into run;
    else
      insert into mixpanel_sync.sync_runs
        (id, source, mode, fetch_from, fetch_to, lookback_from, processed_after, project_timezone, options)
      overriding system value
      select new_id, 'events', 'incremental', f.fetch_from, clock,
        greatest(f.fetch_from - mixpanel_sync.setting('events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),
        mark.processing_watermark - mixpanel_sync.setting('events.overlap')::interval,
        project_timezone, jsonb_build_object('mode_reason', 'watermark', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner)
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
$$;
comment on function mixpanel_sync.begin_run(text, boolean, timestamptz, text, date, date, boolean) is
  'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, '
  'when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from '
  'watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. '
  'resync_from/resync_to: a full run that replaces exactly those UTC days (resync_from alone: that one day). '
  'allow_shrink: let this full run empty or shrink stored days (the REPLACE guard of finish_run, MP001, is off). '
  'One run at a time per source: refused with MP002 while another is running (a unique index makes two racing calls '
  'safe); a running run is abandoned first when its loader is gone: its owner session (options->owner: pid, '
  'backend_start) no longer exists and its heartbeat (heartbeat_at, set by heartbeat_run) is absent, older than '
  'runs.heartbeat_timeout or older than the server''s start; any run still running after runs.abandon_after is abandoned too. Through a transaction '
  'pooler (pgbouncer) the owner session may close or outlive the loader: the loader''s heartbeat is what counts there. '
  'Invalid arguments: MP004 (e.g. force_full with resync_*).';

------------------------------------------------------------------------------------------
-- finish_or_fail_run: the psql call
------------------------------------------------------------------------------------------

create function mixpanel_sync.finish_or_fail_run(run_id bigint)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  err_state text;
  err_message text;
  err_hint text;
  run mixpanel_sync.sync_runs;
begin
  begin
    return mixpanel_sync.finish_run(finish_or_fail_run.run_id);
  exception
    when others then
      -- finish_run's work is rolled back to here; what refused it is recorded on the run and reported.
      get stacked diagnostics err_state = returned_sqlstate, err_message = message_text, err_hint = pg_exception_hint;
  end;
  -- raises itself when the run cannot be failed (no such run, already succeeded): the caller sees that error
  run := mixpanel_sync.fail_run(finish_or_fail_run.run_id, err_message, err_state);
  raise warning 'run % failed (SQLSTATE %): %', finish_or_fail_run.run_id, err_state, err_message
    using hint = coalesce(nullif(err_hint, ''), 'the reason is in mixpanel_sync.sync_runs.error of this run');
  return run;
end;
$$;
comment on function mixpanel_sync.finish_or_fail_run(bigint) is
  'The psql way to end a run: select status, error from mixpanel_sync.finish_or_fail_run(run_id). Runs finish_run and '
  'returns the succeeded run; when finish_run raises (MP001 REPLACE guard refusal, MP003 incomplete input, a cancel, …) '
  'nothing of it is applied, the run is recorded failed with that error and SQLSTATE (fail_run, options->>''error_code''), '
  'a WARNING names the SQLSTATE, message and hint, and the failed run is returned. So the session is never left with a '
  'running run that refuses the next begin_run (MP002). The loader calls finish_run and fail_run itself; a script that '
  'must stop on a refusal calls finish_run (which raises) and then fail_run.';

------------------------------------------------------------------------------------------
-- json_problem: with PostgreSQL's detail
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.json_problem(line text)
returns text
language plpgsql
immutable
strict
set search_path = ''
as $$
declare
  detail text;
begin
  if jsonb_typeof(line::jsonb) <> 'object' then
    return 'not a JSON object';
  end if;
  return null;
exception
  when others then
    get stacked diagnostics detail = pg_exception_detail;
    -- e.g. 'not valid JSON: invalid input syntax for type json (Unicode low surrogate must follow a high surrogate.)'
    return 'not valid JSON: ' || sqlerrm || coalesce(' (' || nullif(detail, '') || ')', '');
end;
$$;
comment on function mixpanel_sync.json_problem(text) is
  'Why a line is not a JSON object, or null when it is one: "not a JSON object", or "not valid JSON: " with '
  'PostgreSQL''s message and, in parentheses, its detail (e.g. "Token "x" is invalid.", "Unicode low surrogate must '
  'follow a high surrogate.").';
