--! Previous: -
--! Hash: sha1:f6ac2ec82f5149e3dc3e38e0af6bf6bfb8ce87a4
--! Message: events core

create schema mixpanel_sync;
comment on schema mixpanel_sync is
  'mixpanel-pg-sync: Mixpanel events and profiles kept in step with PostgreSQL. All sync logic lives in this schema.';

------------------------------------------------------------------------------------------
-- Settings: every tunable and every rollback switch is one row, changed with one UPDATE.
------------------------------------------------------------------------------------------

create table mixpanel_sync.sync_settings (
  key text primary key,
  value text not null,
  kind text not null check (kind in ('interval', 'integer', 'numeric', 'on_off', 'set_loop')),
  description text not null
);
comment on table mixpanel_sync.sync_settings is
  'Tunables and rollback switches. Each takes effect on the next run; values are checked on write.';

create function mixpanel_sync.setting_value_is_valid(kind text, value text)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  case kind
    when 'interval' then perform value::interval;
    when 'integer' then perform value::bigint;
    when 'numeric' then perform value::numeric;
    when 'on_off' then return value in ('on', 'off');
    when 'set_loop' then return value in ('set', 'loop');
    else return false;
  end case;
  return true;
exception
  when invalid_datetime_format or invalid_text_representation or datetime_field_overflow
    or interval_field_overflow or numeric_value_out_of_range then
    return false;
end;
$$;
comment on function mixpanel_sync.setting_value_is_valid(text, text) is
  'True when value parses as a setting of this kind; backs the check on sync_settings.';

alter table mixpanel_sync.sync_settings
  add constraint sync_settings_value_valid
  check (mixpanel_sync.setting_value_is_valid(kind, value));

insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('events.overlap', '2 hours', 'interval',
   'Incremental runs start this long before the watermark. Re-read events are counted as duplicates, never twice.'),
  ('events.full_window', '45 days', 'interval',
   'A full run replaces this many whole UTC days, ending with the day of the run''s clock.'),
  ('events.ledger_retention', '45 days', 'interval',
   'How long the ledger remembers applied events. Older events cannot be deduplicated: they are counted too_old, not applied.'),
  ('events.late_lookback', '5 days', 'interval',
   'How far before fetch_from an incremental run looks for late-arriving events (by mp_processing_time_ms).'),
  ('events.upsert_path', 'set', 'set_loop',
   'set: set-based REPLACE/ADD (fast). loop: the row-at-a-time reference implementations (rollback path).'),
  ('events.incremental', 'on', 'on_off',
   'on: incremental runs from the watermark. off: every run is a full run over events.full_window.'),
  ('profiles.change_detection', 'on', 'on_off',
   'on: unchanged profiles are not written. off: every profile is written (the original behaviour).'),
  ('runs.abandon_after', '2 hours', 'interval',
   'A run still running after this long is marked abandoned (its loader is presumed dead) and its staged rows dropped.'),
  ('runs.retention', '90 days', 'interval',
   'Finished runs and their rejects older than this are pruned.');

create function mixpanel_sync.setting(key text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  found_value text;
begin
  select s.value into found_value from mixpanel_sync.sync_settings s where s.key = setting.key;
  if found_value is null then
    raise exception 'unknown setting "%": see select key, value from mixpanel_sync.sync_settings', key
      using errcode = 'undefined_object';
  end if;
  return found_value;
end;
$$;
comment on function mixpanel_sync.setting(text) is 'The value of one sync_settings row; raises for an unknown key.';

------------------------------------------------------------------------------------------
-- Runs, watermarks, rejects
------------------------------------------------------------------------------------------

create table mixpanel_sync.sync_runs (
  id bigint generated always as identity primary key,
  source text not null check (source in ('events', 'profiles')),
  mode text not null check (mode in ('full', 'incremental')),
  status text not null default 'running' check (status in ('running', 'succeeded', 'failed', 'abandoned')),
  fetch_from timestamptz,
  fetch_to timestamptz not null,
  window_from_day date,
  window_to_day date,
  lookback_from timestamptz,
  processed_after timestamptz,
  project_timezone text,
  received bigint,
  applied bigint,
  duplicates bigint,
  rejected bigint,
  too_old bigint,
  users_touched bigint,
  inserted bigint,
  updated bigint,
  unchanged bigint,
  watermark_before timestamptz,
  watermark_after timestamptz,
  lateness jsonb,
  options jsonb not null default '{}',
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  stage_ms bigint,
  apply_ms bigint,
  total_ms bigint,
  error text
);
create index sync_runs_source_started_at_idx on mixpanel_sync.sync_runs (source, started_at desc);
create index sync_runs_running_idx on mixpanel_sync.sync_runs (started_at) where status = 'running';
comment on table mixpanel_sync.sync_runs is
  'One row per run: window, counts, watermark before/after, timings, lateness distribution and error.';
comment on column mixpanel_sync.sync_runs.fetch_to is
  'The run''s own clock: nothing after it is applied and the watermark never moves past it.';
comment on column mixpanel_sync.sync_runs.lookback_from is
  'Incremental events runs: how far back late-arriving events are looked for (with processed_after).';
comment on column mixpanel_sync.sync_runs.processed_after is
  'Incremental events runs: only events with mp_processing_time_ms after this are new in the lookback days.';
comment on column mixpanel_sync.sync_runs.lateness is
  'Distribution of mp_processing_time_ms - time over the events of the run (ms): events, p50_ms, p90_ms, p99_ms, max_ms, beyond_overlap.';
comment on column mixpanel_sync.sync_runs.options is
  'How the run was made: mode_reason, upsert_path, horizon_day and other switches in force.';

create table mixpanel_sync.sync_watermarks (
  source text primary key check (source in ('events', 'profiles')),
  watermark timestamptz not null,
  processing_watermark timestamptz,
  run_id bigint references mixpanel_sync.sync_runs (id) on delete set null,
  updated_at timestamptz not null default now()
);
comment on table mixpanel_sync.sync_watermarks is
  'High-water marks, moved only by finish_run in the data''s own transaction and never past the run''s fetch_to.';
comment on column mixpanel_sync.sync_watermarks.watermark is
  'Latest event time applied (capped at the run''s fetch_to). Incremental runs start at watermark - events.overlap.';
comment on column mixpanel_sync.sync_watermarks.processing_watermark is
  'Latest mp_processing_time_ms applied (capped at fetch_to): late-arriving events are those processed after it.';

create table mixpanel_sync.sync_rejects (
  id bigint generated always as identity primary key,
  run_id bigint not null references mixpanel_sync.sync_runs (id) on delete cascade,
  source text not null,
  line_no bigint,
  payload text not null,
  reason text not null,
  created_at timestamptz not null default now()
);
create index sync_rejects_run_id_line_no_idx on mixpanel_sync.sync_rejects (run_id, line_no);
comment on table mixpanel_sync.sync_rejects is
  'Every input row that could not be used, verbatim (as text when not even JSON), with the reason.';

-- Staging is UNLOGGED (rebuilt by re-running a sync) and a plain table, not a temp table,
-- so that staging and finishing work through a transaction-mode pooler.
create unlogged table mixpanel_sync.staged_events (
  run_id bigint not null,
  line_id bigint generated always as identity (cache 1000),
  line text not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_events is
  'Raw Mixpanel export lines of runs in progress, one per row, as received. Filled by COPY or stage_events.';

create unlogged table mixpanel_sync.staged_profiles (
  run_id bigint not null,
  line_id bigint generated always as identity (cache 1000),
  line text not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_profiles is
  'Raw Mixpanel Engage profiles of runs in progress, one per row, as received.';

------------------------------------------------------------------------------------------
-- Event aggregates
------------------------------------------------------------------------------------------

-- Key text columns use the "C" collation: byte order is all a key needs, and it keeps
-- index maintenance fast whatever the database's locale (Supabase uses en_US.UTF-8).
create table mixpanel_sync.events_daily (
  distinct_id text collate "C" not null,
  day date not null,
  event_name text collate "C" not null,
  event_count bigint not null check (event_count > 0),
  first_at timestamptz not null,
  last_at timestamptz not null,
  primary key (distinct_id, day, event_name)
);
create index events_daily_day_idx on mixpanel_sync.events_daily (day);
comment on table mixpanel_sync.events_daily is
  'Event counts per user, UTC day and event name: the grain at which REPLACE and ADD are both exact.';

create table mixpanel_sync.event_ledger (
  distinct_id text collate "C" not null,
  event_key uuid not null,
  day date not null,
  event_name text not null,
  event_time timestamptz not null,
  run_id bigint not null,
  primary key (distinct_id, event_key)
);
create index event_ledger_day_idx on mixpanel_sync.event_ledger (day);
comment on table mixpanel_sync.event_ledger is
  'One row per applied event inside the ledger retention: the memory that makes ADD idempotent.';
comment on column mixpanel_sync.event_ledger.event_key is
  'Mixpanel''s dedup identity: md5 of (event name, time to the second, $insert_id or a hash of the canonical JSON).';

create table mixpanel_sync.subscribers (
  distinct_id text collate "C" primary key,
  total_events bigint not null,
  first_event_at timestamptz not null,
  last_event_at timestamptz not null,
  event_counts jsonb not null,
  updated_at timestamptz not null default now()
);
comment on table mixpanel_sync.subscribers is
  'Per-user summary, a pure function of events_daily; updated_at moves only when the summary changes.';

create type mixpanel_sync.apply_result as (
  applied bigint,
  duplicates bigint,
  too_old bigint,
  users_touched bigint
);
comment on type mixpanel_sync.apply_result is
  'What a REPLACE or ADD path did: events applied, skipped as duplicates, outside the window/too old, users touched.';

------------------------------------------------------------------------------------------
-- Parsing: raw export lines to events, in SQL
------------------------------------------------------------------------------------------

create function mixpanel_sync.json_object_or_null(line text)
returns jsonb
language plpgsql
immutable
strict
set search_path = ''
as $$
declare
  doc jsonb;
begin
  doc := line::jsonb;
  return case when jsonb_typeof(doc) = 'object' then doc end;
exception
  when others then
    return null;
end;
$$;
comment on function mixpanel_sync.json_object_or_null(text) is
  'The line as a jsonb object, or null when it is not JSON or not an object: the careful way parse_new_staged_events reads lines.';

create function mixpanel_sync.json_problem(line text)
returns text
language plpgsql
immutable
strict
set search_path = ''
as $$
begin
  if jsonb_typeof(line::jsonb) <> 'object' then
    return 'not a JSON object';
  end if;
  return null;
exception
  when others then
    return 'not valid JSON: ' || sqlerrm;
end;
$$;
comment on function mixpanel_sync.json_problem(text) is 'Why a line is not a JSON object, or null when it is one.';

create unlogged table mixpanel_sync.run_events (
  run_id bigint not null,
  line_id bigint not null,
  distinct_id text collate "C",
  event_key uuid,
  event_name text collate "C",
  event_time timestamptz,
  day date,
  processing_time timestamptz,
  lateness_ms bigint,
  reject_reason text,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.run_events is
  'Staged lines of running runs, parsed once: the input of the REPLACE and ADD paths (rows whose reject_reason is null).';

create function mixpanel_sync.parse_new_staged_events(run_id bigint)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  parsed bigint;
begin
  -- Each step is a subquery fenced with "offset 0", so its expressions are computed once per
  -- line (unfenced, the planner would inline them into every later use), without a per-row
  -- function scan. The line is cast straight to jsonb when the session trusts the lines to be
  -- JSON objects (parse_staged_events tries that first), else through json_object_or_null.
  insert into mixpanel_sync.run_events
    (run_id, line_id, distinct_id, event_key, event_name, event_time, day, processing_time, lateness_ms, reject_reason)
  select
    x.run_id,
    x.line_id,
    x.distinct_id,
    case when x.event_time is not null and x.event_name is not null then
      md5(x.event_name || E'\x1f' || x.second::text || E'\x1f'
          || coalesce(nullif(x.p_insert_id #>> '{}', ''), '#' || md5(x.doc::text)))::uuid
    end,
    x.event_name,
    x.event_time,
    (x.event_time at time zone 'UTC')::date,
    -- capped at the run's clock: a bad mp_processing_time_ms must not push the processing watermark.
    case when x.processing_ms > 0 and x.processing_ms < 1e14
      then least(to_timestamp(x.processing_ms / 1000), x.fetch_to) end,
    -- every cast to bigint is guarded: one absurd number must be a reject, not a failed run.
    case when x.processing_ms > 0 and x.processing_ms < 1e14 and x.event_time is not null
      then (x.processing_ms - x.time_seconds * 1000)::bigint end,
    case
      when x.doc is null then coalesce(mixpanel_sync.json_problem(x.line), 'not a JSON object')
      when jsonb_typeof(x.doc) <> 'object' then 'not a JSON object'
      when x.event_name is null and jsonb_typeof(x.d_event) <> 'null' then 'event name is not a string'
      when x.event_name is null or x.event_name = '' then 'missing event name'
      when length(x.event_name) > 255 then 'event name longer than 255 characters'
      when not x.props_is_object then 'properties missing or not an object'
      when x.distinct_id is null and jsonb_typeof(x.p_distinct_id) <> 'null'
        then 'properties.distinct_id is not a string or number'
      when x.distinct_id is null or x.distinct_id = '' then 'missing properties.distinct_id'
      when length(x.distinct_id) > 255 then 'properties.distinct_id longer than 255 characters'
      when x.time_raw is null and jsonb_typeof(x.p_time) <> 'null' then 'properties.time is not a number'
      when x.time_raw is null then 'missing properties.time'
      when x.event_time is null then 'properties.time out of range: ' || x.time_raw::text
      when x.event_time > x.fetch_to then 'properties.time is after the run''s fetch_to ' || x.fetch_to::text
    end
  from (
    select t.*,
      case
        when t.time_seconds < 1 or t.time_seconds >= 1e11 then null
        when t.project_timezone is null then to_timestamp(floor(t.time_seconds))
        else (to_timestamp(floor(t.time_seconds)) at time zone 'UTC') at time zone t.project_timezone
      end as event_time,
      case when t.time_seconds >= 1 and t.time_seconds < 1e11 then floor(t.time_seconds)::bigint end as second
    from (
      -- Mixpanel sends seconds; some sources send milliseconds (anything from 1e11 on).
      select v.*, case when v.time_raw >= 1e11 then v.time_raw / 1000 else v.time_raw end as time_seconds
      from (
        select f.*,
          case when jsonb_typeof(f.d_event) = 'string' then f.d_event #>> '{}' end as event_name,
          case when jsonb_typeof(f.p_distinct_id) in ('string', 'number') then f.p_distinct_id #>> '{}' end as distinct_id,
          case when jsonb_typeof(f.p_time) = 'number' then f.p_time::numeric end as time_raw,
          case when jsonb_typeof(f.p_processing) = 'number' then f.p_processing::numeric end as processing_ms
        from (
          select o.*,
            o.doc -> 'event' as d_event,
            case when o.props_is_object then o.props -> 'distinct_id' end as p_distinct_id,
            case when o.props_is_object then o.props -> 'time' end as p_time,
            case when o.props_is_object then o.props -> '$insert_id' end as p_insert_id,
            case when o.props_is_object then o.props -> 'mp_processing_time_ms' end as p_processing
          from (
            select j.*, j.doc -> 'properties' as props,
              coalesce(jsonb_typeof(j.doc -> 'properties') = 'object', false) as props_is_object
            from (
              select s.run_id, s.line_id, s.line, r.fetch_to, r.project_timezone,
                case when pg_catalog.current_setting('mixpanel_sync.trust_json_lines', true) = 'on' then s.line::jsonb
                  else mixpanel_sync.json_object_or_null(s.line) end as doc
              from mixpanel_sync.staged_events s
              join mixpanel_sync.sync_runs r on r.id = s.run_id
              where s.run_id = parse_new_staged_events.run_id
                -- not in (hashed once), not "not exists": after a vacuum of the emptied
                -- run_events the planner would rescan it for every staged line.
                and s.line_id not in (
                  select e.line_id from mixpanel_sync.run_events e where e.run_id = parse_new_staged_events.run_id)
              offset 0
            ) j offset 0
          ) o offset 0
        ) f offset 0
      ) v offset 0
    ) t offset 0
  ) x;
  get diagnostics parsed = row_count;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select e.run_id, 'events', e.line_id, s.line, e.reject_reason
  from mixpanel_sync.run_events e
  join mixpanel_sync.staged_events s on s.run_id = e.run_id and s.line_id = e.line_id
  where e.run_id = parse_new_staged_events.run_id
    and e.reject_reason is not null
    and e.line_id not in (
      select r.line_no from mixpanel_sync.sync_rejects r
      where r.run_id = parse_new_staged_events.run_id and r.line_no is not null);
  return parsed;
end;
$$;
comment on function mixpanel_sync.parse_new_staged_events(bigint) is
  'Parses the staged lines of a run not parsed yet into run_events: the event, its dedup key (md5 of name, second and '
  '$insert_id or the canonical JSON), and reject_reason (null when usable); unusable lines also go to sync_rejects. '
  'Time may be seconds or milliseconds (from 1e11 on) and is kept to the second, Mixpanel''s dedup grain; with a '
  'project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';

create function mixpanel_sync.parse_staged_events(run_id bigint, out received bigint, out rejected bigint)
language plpgsql
set search_path = ''
as $$
begin
  -- Fast path: trust every line to be a JSON object (one cast per line). A line that is not
  -- makes the statement fail, and the lines are read again the careful way.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    perform mixpanel_sync.parse_new_staged_events(run_id);
  exception
    -- what a line that is not JSON raises (class 22); a lock timeout, a deadlock or a full disk
    -- is not retried.
    when data_exception then
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      perform mixpanel_sync.parse_new_staged_events(run_id);
  end;
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);

  select count(*), count(*) filter (where e.reject_reason is not null)
  into received, rejected
  from mixpanel_sync.run_events e
  where e.run_id = parse_staged_events.run_id;
end;
$$;
comment on function mixpanel_sync.parse_staged_events(bigint) is
  'Parses the staged lines of a run that are not parsed yet (so a loader may call it between COPY chunks, '
  'overlapping parsing with staging) and returns the run''s totals: lines received and rejected.';

------------------------------------------------------------------------------------------
-- Subscribers: a pure function of events_daily
------------------------------------------------------------------------------------------

create function mixpanel_sync.refresh_subscribers(distinct_ids text[])
returns void
language sql
set search_path = ''
as $$
  with users as (
    select distinct u.distinct_id from unnest(distinct_ids) as u (distinct_id)
  ), per_event as (
    select d.distinct_id, d.event_name, sum(d.event_count) as event_count,
      min(d.first_at) as first_at, max(d.last_at) as last_at
    from users u
    join mixpanel_sync.events_daily d on d.distinct_id = u.distinct_id
    group by d.distinct_id, d.event_name
  ), per_user as (
    select e.distinct_id, sum(e.event_count)::bigint as total_events, min(e.first_at) as first_event_at,
      max(e.last_at) as last_event_at, jsonb_object_agg(e.event_name, e.event_count) as event_counts
    from per_event e
    group by e.distinct_id
  ), removed as (
    delete from mixpanel_sync.subscribers s
    using users u
    where s.distinct_id = u.distinct_id
      and not exists (select from per_user p where p.distinct_id = u.distinct_id)
  )
  insert into mixpanel_sync.subscribers as s
    (distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  select p.distinct_id, p.total_events, p.first_event_at, p.last_event_at, p.event_counts, now()
  from per_user p
  on conflict (distinct_id) do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
$$;
comment on function mixpanel_sync.refresh_subscribers(text[]) is
  'Recomputes subscribers for these users from events_daily, set-based; writes only rows that change, deletes users left with no events.';

create function mixpanel_sync.refresh_subscriber_loop(distinct_id text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  total bigint;
  first_seen timestamptz;
  last_seen timestamptz;
  counts jsonb;
begin
  select sum(d.event_count), min(d.first_at), max(d.last_at)
  into total, first_seen, last_seen
  from mixpanel_sync.events_daily d
  where d.distinct_id = refresh_subscriber_loop.distinct_id;

  if total is null then
    delete from mixpanel_sync.subscribers s where s.distinct_id = refresh_subscriber_loop.distinct_id;
    return;
  end if;

  select jsonb_object_agg(c.event_name, c.event_count) into counts
  from (
    select d.event_name, sum(d.event_count) as event_count
    from mixpanel_sync.events_daily d
    where d.distinct_id = refresh_subscriber_loop.distinct_id
    group by d.event_name
  ) c;

  insert into mixpanel_sync.subscribers as s
    (distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  values (refresh_subscriber_loop.distinct_id, total, first_seen, last_seen, counts, now())
  on conflict on constraint subscribers_pkey do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
end;
$$;
comment on function mixpanel_sync.refresh_subscriber_loop(text) is
  'Row-at-a-time reference of refresh_subscribers for one user, used by the _loop paths.';

------------------------------------------------------------------------------------------
-- The write paths. REPLACE(W, E): clear days W, insert E deduplicated. ADD(E): insert the
-- events of E not yet in the ledger and not older than the horizon, accumulate.
------------------------------------------------------------------------------------------

create function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  cleared text[];
  counted record;
  touched text[];
begin
  with cleared_daily as (
    delete from mixpanel_sync.events_daily d where d.day between from_day and to_day returning d.distinct_id
  ), cleared_ledger as (
    delete from mixpanel_sync.event_ledger l where l.day between from_day and to_day returning l.distinct_id
  )
  select coalesce(array_agg(c.distinct_id), '{}') into cleared
  from (select distinct_id from cleared_daily union select distinct_id from cleared_ledger) c;

  -- The window is empty now and a key's day is fixed by its second, so deduplicating the run is
  -- almost all it takes; a key can still sit in the ledger outside the window when the project
  -- timezone changed between runs (its day moved): such an event is already counted, a duplicate.
  with events as (
    select distinct on (e.distinct_id, e.event_key) e.distinct_id, e.event_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and e.day between from_day and to_day
    order by e.distinct_id, e.event_key
  ), ledgered as (
    insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
    select v.distinct_id, v.event_key, v.day, v.event_name, v.event_time, upsert_subscribers_incremental.run_id
    from events v
    on conflict (distinct_id, event_key) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), daily as (
    insert into mixpanel_sync.events_daily (distinct_id, day, event_name, event_count, first_at, last_at)
    select l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from ledgered l
    group by l.distinct_id, l.day, l.event_name
  )
  select
    (select count(*) from ledgered) as applied,
    array(select distinct_id from ledgered union select unnest(cleared)) as touched
  into counted;
  touched := counted.touched;

  perform mixpanel_sync.refresh_subscribers(touched);
  return (
    select (counted.applied,
      count(*) filter (where e.day between from_day and to_day) - counted.applied,
      count(*) filter (where e.day not between from_day and to_day),
      cardinality(touched))::mixpanel_sync.apply_result
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id and e.reject_reason is null
  );
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental(bigint, date, date) is
  'REPLACE, set-based: removes every events_daily and ledger row with day in [from_day, to_day], then inserts the run''s events '
  'of those days deduplicated. Events outside the window are counted too_old. Rows outside the window are untouched.';

create function mixpanel_sync.add_event_counts(counts jsonb, more jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select jsonb_object_agg(k.name, coalesce((counts ->> k.name)::numeric, 0) + coalesce((more ->> k.name)::numeric, 0))
  from (select jsonb_object_keys(counts) union select jsonb_object_keys(more)) as k (name);
$$;
comment on function mixpanel_sync.add_event_counts(jsonb, jsonb) is
  'Two subscribers.event_counts objects added key by key.';

create function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  result mixpanel_sync.apply_result;
begin
  with candidates as materialized (
    select e.distinct_id, e.event_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), ledgered as (
    -- do nothing also skips repeats inside the batch: the first of them wins, and all of them
    -- carry the same name and second by construction of the key.
    insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
    select w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id
    from in_window w
    on conflict (distinct_id, event_key) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), daily as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from ledgered l
    group by l.distinct_id, l.day, l.event_name
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  ), per_name as (
    select l.distinct_id, l.event_name, count(*) as event_count, min(l.event_time) as first_at, max(l.event_time) as last_at
    from ledgered l
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
    (select count(*) from ledgered),
    (select count(*) from in_window) - (select count(*) from ledgered),
    (select count(*) from candidates) - (select count(*) from in_window),
    (select count(distinct l.distinct_id) from ledgered l)
  into result.applied, result.duplicates, result.too_old, result.users_touched;
  return result;
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add(bigint, date) is
  'ADD, set-based, one statement: applies the run''s events not yet in the ledger (repeats inside the run count once) '
  'and moves each touched subscriber by the run''s delta; '
  'events before horizon_day cannot be deduplicated and are counted too_old, not applied. Idempotent and order-independent.';

create function mixpanel_sync.insert_new_events_loop(
  run_id bigint, from_day date, to_day date,
  out applied bigint, out duplicates bigint, out outside bigint, out distinct_ids text[])
language plpgsql
set search_path = ''
as $$
declare
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
    select e.distinct_id, e.event_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = insert_new_events_loop.run_id and e.reject_reason is null
    order by e.distinct_id, e.line_id
  loop
    if current_user_id is distinct from event.distinct_id then
      if current_user_applied then
        distinct_ids := array_append(distinct_ids, current_user_id);
      end if;
      current_user_id := event.distinct_id;
      current_user_applied := false;
    end if;

    if event.day < from_day or event.day > to_day then
      outside := outside + 1;
      continue;
    end if;

    insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
    values (event.distinct_id, event.event_key, event.day, event.event_name, event.event_time, insert_new_events_loop.run_id)
    on conflict (distinct_id, event_key) do nothing;
    get diagnostics inserted_rows = row_count;
    if inserted_rows = 0 then
      duplicates := duplicates + 1;
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
$$;
comment on function mixpanel_sync.insert_new_events_loop(bigint, date, date) is
  'Row-at-a-time core of the _loop paths: one ledger insert and one events_daily upsert per event, in [from_day, to_day].';

create function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  cleared_user record;
  cleared text[] := '{}';
  inserted record;
  user_id text;
begin
  for cleared_user in
    select d.distinct_id from mixpanel_sync.events_daily d where d.day between from_day and to_day
    union
    select l.distinct_id from mixpanel_sync.event_ledger l where l.day between from_day and to_day
    order by 1
  loop
    delete from mixpanel_sync.events_daily d
    where d.distinct_id = cleared_user.distinct_id and d.day between from_day and to_day;
    delete from mixpanel_sync.event_ledger l
    where l.distinct_id = cleared_user.distinct_id and l.day between from_day and to_day;
    cleared := array_append(cleared, cleared_user.distinct_id);
  end loop;

  inserted := mixpanel_sync.insert_new_events_loop(run_id, from_day, to_day);

  foreach user_id in array cleared || inserted.distinct_ids loop
    perform mixpanel_sync.refresh_subscriber_loop(user_id);
  end loop;
  return (inserted.applied, inserted.duplicates, inserted.outside,
    (select count(*) from (select unnest(cleared) union select unnest(inserted.distinct_ids)) u)
  )::mixpanel_sync.apply_result;
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental_loop(bigint, date, date) is
  'REPLACE, row-at-a-time reference implementation of upsert_subscribers_incremental: same contract, same resulting tables.';

create function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  inserted record;
  user_id text;
begin
  inserted := mixpanel_sync.insert_new_events_loop(run_id, horizon_day, 'infinity');
  foreach user_id in array inserted.distinct_ids loop
    perform mixpanel_sync.refresh_subscriber_loop(user_id);
  end loop;
  return (inserted.applied, inserted.duplicates, inserted.outside, cardinality(inserted.distinct_ids))::mixpanel_sync.apply_result;
end;
$$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add_loop(bigint, date) is
  'ADD, row-at-a-time reference implementation of upsert_subscribers_incremental_add: same contract, same resulting tables.';

------------------------------------------------------------------------------------------
-- Run life cycle
------------------------------------------------------------------------------------------

create function mixpanel_sync.horizon_day(clock timestamptz, span interval)
returns date
language sql
immutable
set search_path = ''
as $$
  select ((clock at time zone 'UTC')::date - span)::date + 1;
$$;
comment on function mixpanel_sync.horizon_day(timestamptz, interval) is
  'First UTC day of a span of whole days ending with the day of clock (45 days ending today starts 44 days ago).';

create function mixpanel_sync.drop_staged_rows(run_id bigint)
returns void
language sql
set search_path = ''
as $$
  delete from mixpanel_sync.staged_events s where s.run_id = drop_staged_rows.run_id;
  delete from mixpanel_sync.staged_profiles s where s.run_id = drop_staged_rows.run_id;
  delete from mixpanel_sync.run_events e where e.run_id = drop_staged_rows.run_id;
$$;
comment on function mixpanel_sync.drop_staged_rows(bigint) is 'Removes everything staged for a run: staged rows never outlive their run.';

create function mixpanel_sync.abandon_stale_runs()
returns setof mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  stale mixpanel_sync.sync_runs;
begin
  for stale in
    update mixpanel_sync.sync_runs r set
      status = 'abandoned',
      finished_at = now(),
      total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
      error = 'abandoned: still running after runs.abandon_after ('
        || mixpanel_sync.setting('runs.abandon_after') || '); its loader is presumed dead'
    where r.status = 'running'
      and r.started_at < now() - mixpanel_sync.setting('runs.abandon_after')::interval
    returning r.*
  loop
    perform mixpanel_sync.drop_staged_rows(stale.id);
    return next stale;
  end loop;
end;
$$;
comment on function mixpanel_sync.abandon_stale_runs() is
  'Marks runs left running longer than runs.abandon_after as abandoned and drops their staged rows. Called by begin_run.';

create function mixpanel_sync.begin_run(
  source text,
  force_full boolean default false,
  clock timestamptz default now(),
  project_timezone text default null,
  resync_from date default null,
  resync_to date default null)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  mark mixpanel_sync.sync_watermarks;
  run mixpanel_sync.sync_runs;
  horizon date;
  reason text;
begin
  if source is null or source not in ('events', 'profiles') then
    raise exception 'begin_run: source must be ''events'' or ''profiles'', got %', coalesce(quote_literal(source), 'null')
      using errcode = 'invalid_parameter_value';
  end if;
  if clock is null then
    raise exception 'begin_run: clock must not be null' using errcode = 'invalid_parameter_value';
  end if;
  if project_timezone is not null
    and not exists (select from pg_catalog.pg_timezone_names z where z.name = project_timezone) then
    raise exception 'begin_run: unknown project timezone %: use an IANA name such as America/Los_Angeles', quote_literal(project_timezone)
      using errcode = 'invalid_parameter_value';
  end if;

  if resync_from is not null and (source <> 'events'
    or resync_from > coalesce(resync_to, (clock at time zone 'UTC')::date)
    or resync_to > (clock at time zone 'UTC')::date) then
    raise exception 'begin_run: a resync needs source ''events'' and resync_from <= resync_to <= the clock''s UTC day (%)',
      (clock at time zone 'UTC')::date using errcode = 'invalid_parameter_value';
  end if;

  perform mixpanel_sync.abandon_stale_runs();

  if source = 'profiles' then
    insert into mixpanel_sync.sync_runs (source, mode, fetch_to, project_timezone, options)
    values ('profiles', 'full', clock, project_timezone, jsonb_build_object('mode_reason', 'profiles are always read whole'))
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
    -- REPLACE of exactly these days; the loader fetches them and nothing after them.
    insert into mixpanel_sync.sync_runs
      (source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
    select 'events', 'full', resync_from::timestamp at time zone 'UTC',
      least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,
      project_timezone, jsonb_build_object('mode_reason', 'resync')
    from (select coalesce(resync_to, (clock at time zone 'UTC')::date) as to_day) w
    returning * into run;
  elsif reason is not null then
    insert into mixpanel_sync.sync_runs
      (source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
    select 'events', 'full', w.from_day::timestamp at time zone 'UTC', clock, w.from_day, (clock at time zone 'UTC')::date,
      project_timezone, jsonb_build_object('mode_reason', reason)
    from (select mixpanel_sync.horizon_day(clock, mixpanel_sync.setting('events.full_window')::interval) as from_day) w
    returning * into run;
  else
    insert into mixpanel_sync.sync_runs
      (source, mode, fetch_from, fetch_to, lookback_from, processed_after, project_timezone, options)
    select 'events', 'incremental', f.fetch_from, clock,
      greatest(f.fetch_from - mixpanel_sync.setting('events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),
      mark.processing_watermark - mixpanel_sync.setting('events.overlap')::interval,
      project_timezone, jsonb_build_object('mode_reason', 'watermark')
    from (select mark.watermark - mixpanel_sync.setting('events.overlap')::interval as fetch_from) f
    returning * into run;
  end if;
  return run;
end;
$$;
comment on function mixpanel_sync.begin_run(text, boolean, timestamptz, text, date, date) is
  'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, '
  'when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from '
  'watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. '
  'resync_from/resync_to: a full run that replaces exactly those UTC days (after data was deleted or re-imported in Mixpanel).';

create function mixpanel_sync.running_run(run_id bigint, for_what text, source text)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
begin
  select * into run from mixpanel_sync.sync_runs r where r.id = running_run.run_id;
  if not found then
    raise exception '%: run % does not exist', for_what, run_id using errcode = 'no_data_found';
  end if;
  if run.status <> 'running' then
    raise exception '%: run % is %, not running; start a new run with mixpanel_sync.begin_run', for_what, run_id, run.status
      using errcode = 'object_not_in_prerequisite_state';
  end if;
  if source is not null and run.source <> source then
    raise exception '%: run % is a % run', for_what, run_id, run.source using errcode = 'invalid_parameter_value';
  end if;
  return run;
end;
$$;
comment on function mixpanel_sync.running_run(bigint, text, text) is
  'The run, or an error naming why it cannot take more work (unknown, finished, or of another source when one is given).';

create function mixpanel_sync.json_items(items jsonb)
returns setof text
language sql
immutable
set search_path = ''
as $$
  select e.value::text
  from jsonb_array_elements(case when jsonb_typeof(items) = 'array' then items else jsonb_build_array(items) end)
    with ordinality as e (value, position)
  order by e.position;
$$;
comment on function mixpanel_sync.json_items(jsonb) is
  'The elements of a JSON array (or the one value given) as text, in order: one staged line each.';

create function mixpanel_sync.stage_events(run_id bigint, events jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_events', 'events');
  insert into mixpanel_sync.staged_events (run_id, line)
  select stage_events.run_id, line from mixpanel_sync.json_items(events) as line;
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_events(bigint, jsonb) is
  'Stages a batch of raw export events (a JSON array, or one event) for a running events run; returns rows staged. '
  'The loader uses COPY into staged_events (run_id, line) instead.';

create function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
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
  resets_watermark boolean;
begin
  parsed := mixpanel_sync.parse_staged_events(run.id);

  if run.mode = 'full' then
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day)
    end;
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  delete from mixpanel_sync.event_ledger l where l.day < horizon;

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
  -- A full run resets the watermarks to what it saw (its REPLACE erased anything newer);
  -- incremental runs and resyncs of chosen days only move them forward.
  resets_watermark := run.mode = 'full' and run.options ->> 'mode_reason' is distinct from 'resync';
  run.watermark_after := case when resets_watermark then coalesce(seen.event_time, mark.watermark)
    else greatest(mark.watermark, seen.event_time) end;
  if run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (source, watermark, processing_watermark, run_id, updated_at)
    values ('events', run.watermark_after,
      case when resets_watermark then coalesce(seen.processing_time, mark.processing_watermark)
        else greatest(mark.processing_watermark, seen.processing_time) end,
      run.id, now())
    on conflict (source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
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
  'The events part of finish_run: parse once, REPLACE (full) or ADD (incremental) by events.upsert_path, prune the ledger, move the watermark.';

create function mixpanel_sync.prune_history()
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  pruned bigint;
begin
  delete from mixpanel_sync.sync_runs r
  where r.status <> 'running'
    and r.finished_at < now() - mixpanel_sync.setting('runs.retention')::interval;
  get diagnostics pruned = row_count;
  return pruned;
end;
$$;
comment on function mixpanel_sync.prune_history() is
  'Deletes finished runs older than runs.retention, with their rejects. Called by finish_run.';

create function mixpanel_sync.finish_run(run_id bigint)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
-- A run's batch is sorted and hashed in memory rather than in temporary files.
set work_mem = '64MB'
as $$
declare
  began timestamptz := clock_timestamp();
  run mixpanel_sync.sync_runs;
begin
  -- Finishes are serialised: concurrent runs may stage at once, but apply one at a time.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run', 0));
  run := mixpanel_sync.running_run(run_id, 'finish_run', null);
  perform from mixpanel_sync.sync_runs r where r.id = run.id for update;

  if run.source = 'events' then
    run := mixpanel_sync.finish_events_run(run);
  else
    run := mixpanel_sync.finish_profiles_run(run);
  end if;

  perform mixpanel_sync.drop_staged_rows(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'succeeded',
    received = run.received,
    applied = run.applied,
    duplicates = run.duplicates,
    rejected = run.rejected,
    too_old = run.too_old,
    users_touched = run.users_touched,
    inserted = run.inserted,
    updated = run.updated,
    unchanged = run.unchanged,
    watermark_before = run.watermark_before,
    watermark_after = run.watermark_after,
    lateness = run.lateness,
    options = run.options,
    finished_at = clock_timestamp(),
    stage_ms = (extract(epoch from began - r.started_at) * 1000)::bigint,
    apply_ms = (extract(epoch from clock_timestamp() - began) * 1000)::bigint,
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint
  where r.id = run.id
  returning r.* into run;
  perform mixpanel_sync.prune_history();
  return run;
end;
$$;
comment on function mixpanel_sync.finish_run(bigint) is
  'Applies a run in ONE transaction: parse, reject, REPLACE or ADD, prune the ledger, advance the watermark, record counts '
  'and timings. Finishes are serialised with a transaction-scoped advisory lock. On error nothing changes: call fail_run.';

create function mixpanel_sync.fail_run(run_id bigint, error text)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
begin
  select * into run from mixpanel_sync.sync_runs r where r.id = fail_run.run_id for update;
  if not found then
    raise exception 'fail_run: run % does not exist', run_id using errcode = 'no_data_found';
  end if;
  if run.status = 'succeeded' then
    raise exception 'fail_run: run % already succeeded; its data is applied', run_id
      using errcode = 'object_not_in_prerequisite_state';
  end if;
  perform mixpanel_sync.drop_staged_rows(run.id);
  update mixpanel_sync.sync_runs r set
    status = case when r.status = 'running' then 'failed' else r.status end,
    error = coalesce(fail_run.error, 'failed without a message'),
    finished_at = coalesce(r.finished_at, clock_timestamp()),
    total_ms = coalesce(r.total_ms, (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint)
  where r.id = run.id
  returning r.* into run;
  return run;
end;
$$;
comment on function mixpanel_sync.fail_run(bigint, text) is
  'Marks a run failed with its error and drops its staged rows. The data and the watermark are untouched.';
