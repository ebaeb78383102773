--! Previous: sha1:f6ac2ec82f5149e3dc3e38e0af6bf6bfb8ce87a4
--! Hash: sha1:b3bb100fc8fe73cf44ce83571a3576702b3d3bf2
--! Message: profiles

-- Profiles: Mixpanel Engage profiles kept in mixpanel_sync.subscriber_properties.
-- Loaded after 1-events-core.sql (schema, sync_runs, staged_profiles, settings, finish_run).


------------------------------------------------------------------------------------------
-- The table
------------------------------------------------------------------------------------------

create table mixpanel_sync.subscriber_properties (
  distinct_id text primary key check (distinct_id <> ''),
  email text,
  name text,
  first_name text,
  last_name text,
  phone text,
  city text,
  region text,
  country_code text,
  timezone text,
  created_at timestamptz,
  last_seen_at timestamptz,
  properties jsonb not null default '{}' check (jsonb_typeof(properties) = 'object'),
  changed_by_run_id bigint,
  line_hash uuid,
  first_synced_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table mixpanel_sync.subscriber_properties is
  'Mixpanel user profiles (Engage), one row per distinct_id. A sync rewrites a row only when its normalised content '
  'changed: an unchanged profile gets no new row version. Profiles missing from a sync are kept.';
comment on column mixpanel_sync.subscriber_properties.email is '$email ('''' and null read as null; numbers as their text).';
comment on column mixpanel_sync.subscriber_properties.name is '$name.';
comment on column mixpanel_sync.subscriber_properties.first_name is '$first_name.';
comment on column mixpanel_sync.subscriber_properties.last_name is '$last_name.';
comment on column mixpanel_sync.subscriber_properties.phone is '$phone.';
comment on column mixpanel_sync.subscriber_properties.city is '$city.';
comment on column mixpanel_sync.subscriber_properties.region is '$region.';
comment on column mixpanel_sync.subscriber_properties.country_code is '$country_code.';
comment on column mixpanel_sync.subscriber_properties.timezone is '$timezone: the user''s time zone as Mixpanel names it.';
comment on column mixpanel_sync.subscriber_properties.created_at is
  '$created as an ISO date-time (mixpanel_sync.profile_time_pattern): a naive "YYYY-MM-DDTHH:MI:SS" is UTC (or the run''s project_timezone '
  'when set); null when absent or not an ISO date (the raw value stays in properties).';
comment on column mixpanel_sync.subscriber_properties.last_seen_at is '$last_seen ("Updated at" in Mixpanel), read like created_at.';
comment on column mixpanel_sync.subscriber_properties.properties is
  'Every property received in $properties, except those whose value is null or "" (absent, null and "" are the same).';
comment on column mixpanel_sync.subscriber_properties.changed_by_run_id is
  'The sync run that inserted the row or last changed its content (sync_runs.id; the run may since be pruned).';
comment on column mixpanel_sync.subscriber_properties.line_hash is
  'md5 of the run''s project_timezone and the staged line that last set the row''s content: a later identical line is '
  'recognised as unchanged without being parsed. Moves only with the content. Set it to null after editing a row by '
  'hand, and in any migration that changes how lines are parsed.';
comment on column mixpanel_sync.subscriber_properties.first_synced_at is 'When a sync first inserted this profile.';
comment on column mixpanel_sync.subscriber_properties.updated_at is
  'When a sync last changed the row''s content. Moves only on a real change; when unchanged profiles were last checked '
  'is the finished_at of the latest succeeded profiles run in sync_runs.';

------------------------------------------------------------------------------------------
-- Parsing Engage profiles, in SQL
------------------------------------------------------------------------------------------

create function mixpanel_sync.profile_time_pattern()
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  -- A real calendar date (month lengths and leap years checked, no year 0000), optionally a time
  -- (hours 00-23, minutes and seconds 00-59, any fraction), optionally an offset (Z, ±HH, ±HHMM,
  -- ±HH:MM up to ±15:59): exactly what casts to timestamp/timestamptz without an error.
  select '^(?!0000)(?:\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)'
    || '|02-(?:0[1-9]|1\d|2[0-8]))|(?:\d\d(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)'
    || '(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?(?:[Zz]|[+-](?:0\d|1[0-5])(?::?[0-5]\d)?)?)?$';
$$;
comment on function mixpanel_sync.profile_time_pattern() is
  'The ISO 8601 date-times an Engage date property is read from: "YYYY-MM-DD[THH:MI[:SS[.f]]][Z|±HH[:MM]]", real '
  'calendar dates only, so that the cast after a match cannot fail. Immutable: folded into the plan once.';

-- One row per staged line of a profiles run: the profile, normalised, or why it cannot be used.
-- Like staged_events_parsed: the line is cast straight to jsonb when the session trusts the lines
-- (mixpanel_sync.trust_json_lines = on; finish_profiles_run tries that first), else read through
-- json_object_or_null. Normalisation: a top-level property whose value is null or "" is dropped,
-- so that absent, null and "" are one and the same; every typed column is read from the
-- normalised properties.
create view mixpanel_sync.staged_profiles_parsed as
select
  s.run_id,
  s.line_id,
  s.line,
  v.distinct_id,
  n.properties,
  t."$email" as email,
  t."$name" as name,
  t."$first_name" as first_name,
  t."$last_name" as last_name,
  t."$phone" as phone,
  t."$city" as city,
  t."$region" as region,
  t."$country_code" as country_code,
  t."$timezone" as timezone,
  -- A naive date-time is read in the run's project_timezone (UTC when null); one with an offset at that offset.
  case when t."$created" ~ mixpanel_sync.profile_time_pattern() then
    case when t."$created" ~ '[T ].*([Zz]|[+-]\d)' then t."$created"::timestamptz
      else t."$created"::timestamp at time zone coalesce(r.project_timezone, 'UTC') end
  end as created_at,
  case when t."$last_seen" ~ mixpanel_sync.profile_time_pattern() then
    case when t."$last_seen" ~ '[T ].*([Zz]|[+-]\d)' then t."$last_seen"::timestamptz
      else t."$last_seen"::timestamp at time zone coalesce(r.project_timezone, 'UTC') end
  end as last_seen_at,
  case
    when d."$distinct_id" is null and d."$properties" is null and mixpanel_sync.json_problem(s.line) is not null
      then mixpanel_sync.json_problem(s.line)
    when v.distinct_id is null and jsonb_typeof(d."$distinct_id") <> 'null' then '$distinct_id is not a string or number'
    when v.distinct_id is null or v.distinct_id = '' then 'missing $distinct_id'
    when length(v.distinct_id) > 255 then '$distinct_id longer than 255 characters'
    when jsonb_typeof(d."$properties") is distinct from 'object' then '$properties missing or not an object'
  end as reject_reason
from mixpanel_sync.staged_profiles s
join mixpanel_sync.sync_runs r on r.id = s.run_id
left join lateral jsonb_to_record(
  case when pg_catalog.current_setting('mixpanel_sync.trust_json_lines', true) = 'on' then s.line::jsonb
    else mixpanel_sync.json_object_or_null(s.line) end
) as d ("$distinct_id" jsonb, "$properties" jsonb) on true
cross join lateral unnest(
  array[case when jsonb_typeof(d."$distinct_id") in ('string', 'number') then d."$distinct_id" #>> '{}' end],
  array[case when jsonb_typeof(d."$properties") = 'object' then
    case when jsonb_path_exists(d."$properties", 'strict $.* ? (@ == null || @ == "")')
      then d."$properties" - array(
        select e.key from jsonb_each(d."$properties") e where e.value = 'null'::jsonb or e.value = '""'::jsonb)
      else d."$properties"
    end
  end]
) as v (distinct_id, properties)
-- n: the properties of a usable profile only, so that a rejected line yields no typed values.
cross join lateral unnest(array[case when v.distinct_id <> '' and length(v.distinct_id) <= 255 then v.properties end])
  as n (properties)
left join lateral jsonb_to_record(n.properties) as t (
  "$email" text, "$name" text, "$first_name" text, "$last_name" text, "$phone" text, "$city" text,
  "$region" text, "$country_code" text, "$timezone" text, "$created" text, "$last_seen" text
) on true;
comment on view mixpanel_sync.staged_profiles_parsed is
  'Staged Engage profiles parsed: distinct_id (a number is read as its text), properties without null/"" values, the '
  'typed reserved properties, and reject_reason (null when usable). Dates are read in the run''s project_timezone, else UTC.';

create function mixpanel_sync.stage_profiles(run_id bigint, profiles jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_profiles', 'profiles');
  insert into mixpanel_sync.staged_profiles (run_id, line)
  select stage_profiles.run_id, line
  from mixpanel_sync.json_items(case
      -- an Engage response page, as saved from the API
      when jsonb_typeof(profiles -> 'results') = 'array' and not profiles ? '$distinct_id' then profiles -> 'results'
      else profiles
    end) as line;
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_profiles(bigint, jsonb) is
  'Stages Engage profiles for a running profiles run: a JSON array of profiles, an Engage response page ({"results": […]}) '
  'or one profile {"$distinct_id": …, "$properties": {…}}; returns rows staged. The loader uses COPY into '
  'staged_profiles (run_id, line) instead.';

------------------------------------------------------------------------------------------
-- Applying a run: ONE statement
------------------------------------------------------------------------------------------

create type mixpanel_sync.profiles_result as (
  received bigint,
  rejected bigint,
  duplicates bigint,
  inserted bigint,
  updated bigint,
  unchanged bigint,
  rows_written bigint,
  recognised bigint
);
comment on type mixpanel_sync.profiles_result is
  'What applying a profiles run did: lines received, rejected, superseded by a later line of the same profile '
  '(duplicates), profiles inserted, updated (content changed), unchanged, rows actually written, and lines recognised '
  'as the very line that set their row (unchanged, not parsed).';

create function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean)
returns mixpanel_sync.profiles_result
language sql
set search_path = ''
-- a run's batch is hashed and sorted in memory (finish_run sets the same)
set work_mem = '64MB'
-- The CTEs below have no statistics and their estimates are tiny: a nested loop between two of them (or over a
-- table without a usable index) would be quadratic. Measured: 9,813 new profiles, 0.7 s with hash joins, 28 s
-- with the nested loop the planner picked.
set enable_nestloop = off
-- Before PostgreSQL 18 a disabled nested loop that cannot be avoided (the parse's lateral function scans) adds 1e10 to
-- the plan's cost, which turns JIT on: 1.5 s of compiling for a statement that runs in milliseconds.
set jit = off
as $$
  with staged as materialized (
    select s.line_id, md5(coalesce(r.project_timezone, '') || E'\n' || s.line)::uuid as line_hash
    from mixpanel_sync.staged_profiles s
    join mixpanel_sync.sync_runs r on r.id = s.run_id
    where s.run_id = upsert_subscriber_properties.run_id
  ), known as materialized (
    -- Lines identical to the line that set a row (same zone): that row's profile, unchanged, not parsed.
    -- Without change detection every line is parsed and written, as the original did.
    select st.line_id, c.distinct_id
    from staged st
    join mixpanel_sync.subscriber_properties c on c.line_hash = st.line_hash
    where change_detection
  ), parsed as materialized (
    select p.*, st.line_hash
    from mixpanel_sync.staged_profiles_parsed p
    join staged st on st.line_id = p.line_id
    where p.run_id = upsert_subscriber_properties.run_id
      and p.line_id not in (select k.line_id from known k)
  ), rejected as (
    insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
    select p.run_id, 'profiles', p.line_id, p.line, p.reject_reason
    from parsed p
    where p.reject_reason is not null
    returning 1
  ), usable as (
    select k.line_id, k.distinct_id from known k
    union all
    select p.line_id, p.distinct_id from parsed p where p.reject_reason is null
  ), latest as (
    -- A profile repeated in the batch: its last usable line wins. When that is a recognised line, the
    -- profile is unchanged; else its last parsed line goes on.
    select distinct on (p.distinct_id) p.*
    from parsed p
    where p.reject_reason is null
      and not exists (select from known k where k.distinct_id = p.distinct_id and k.line_id > p.line_id)
    order by p.distinct_id, p.line_id desc
  ), compared as (
    select l.*, c.distinct_id is not null as existed,
      (c.email, c.name, c.first_name, c.last_name, c.phone, c.city, c.region, c.country_code, c.timezone,
        c.created_at, c.last_seen_at, c.properties)
      is not distinct from
      (l.email, l.name, l.first_name, l.last_name, l.phone, l.city, l.region, l.country_code, l.timezone,
        l.created_at, l.last_seen_at, l.properties) as is_unchanged
    from latest l
    left join mixpanel_sync.subscriber_properties c on c.distinct_id = l.distinct_id
  ), written as (
    insert into mixpanel_sync.subscriber_properties as s
      (distinct_id, email, name, first_name, last_name, phone, city, region, country_code, timezone,
       created_at, last_seen_at, properties, changed_by_run_id, line_hash, first_synced_at, updated_at)
    select c.distinct_id, c.email, c.name, c.first_name, c.last_name, c.phone, c.city, c.region, c.country_code,
      c.timezone, c.created_at, c.last_seen_at, c.properties, c.run_id, c.line_hash, now(), now()
    from compared c
    -- Unchanged profiles never reach the insert: no row lock, no WAL, no page dirtied.
    where not change_detection or not c.is_unchanged
    order by c.distinct_id
    on conflict (distinct_id) do update set
      email = excluded.email,
      name = excluded.name,
      first_name = excluded.first_name,
      last_name = excluded.last_name,
      phone = excluded.phone,
      city = excluded.city,
      region = excluded.region,
      country_code = excluded.country_code,
      timezone = excluded.timezone,
      created_at = excluded.created_at,
      last_seen_at = excluded.last_seen_at,
      properties = excluded.properties,
      -- Written without change detection, an unchanged row keeps its history. (The typed columns are read
      -- from properties: comparing properties and the two dates, which depend on the zone, is comparing all.)
      changed_by_run_id = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.changed_by_run_id else s.changed_by_run_id end,
      line_hash = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.line_hash else s.line_hash end,
      updated_at = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.updated_at else s.updated_at end
    -- The change detection itself; it also covers a row changed since the statement's snapshot.
    where not change_detection
      or (s.email, s.name, s.first_name, s.last_name, s.phone, s.city, s.region, s.country_code, s.timezone,
          s.created_at, s.last_seen_at, s.properties)
      is distinct from
         (excluded.email, excluded.name, excluded.first_name, excluded.last_name, excluded.phone, excluded.city,
          excluded.region, excluded.country_code, excluded.timezone, excluded.created_at, excluded.last_seen_at,
          excluded.properties)
    returning s.distinct_id, s.xmax = 0 as is_insert
  ), counted as (
    select count(*) filter (where w.is_insert) as inserted, count(*) filter (where not w.is_insert) as rewritten,
      count(*) as rows_written
    from written w
  ), updated as (
    -- with change detection every rewritten row changed; without it, those whose content differed
    select case when change_detection then n.rewritten
      else (select count(*) from compared c where c.existed and not c.is_unchanged) end as updated
    from counted n
  )
  select
    (select count(*) from staged),
    (select count(*) from rejected),
    (select count(*) from usable) - (select count(distinct u.distinct_id) from usable u),
    n.inserted,
    u.updated,
    (select count(distinct x.distinct_id) from usable x) - n.inserted - u.updated,
    n.rows_written,
    (select count(*) from known)
  from counted n, updated u;
$$;
comment on function mixpanel_sync.upsert_subscriber_properties(bigint, boolean) is
  'Applies a profiles run''s staged lines in ONE statement: a line identical to the one that set its row is unchanged '
  'without parsing; the others are parsed (rejects to sync_rejects), the last line of each profile wins, and '
  'INSERT … ON CONFLICT DO UPDATE … WHERE (columns) IS DISTINCT FROM (excluded columns) writes only what changed. '
  'change_detection false parses and writes every profile (the original behaviour). Both leave the same contents.';

create function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  change_detection boolean := mixpanel_sync.setting('profiles.change_detection') = 'on';
  result mixpanel_sync.profiles_result;
begin
  -- Fast path: trust every line to be a JSON object (one cast per line). A line that is not
  -- makes the statement fail, and the lines are read again the careful way.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  exception
    when others then
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  end;
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);

  run.received := result.received;
  run.rejected := result.rejected;
  run.duplicates := result.duplicates;
  run.inserted := result.inserted;
  run.updated := result.updated;
  run.unchanged := result.unchanged;
  run.users_touched := result.inserted + result.updated;
  run.options := run.options || jsonb_build_object(
    'change_detection', case when change_detection then 'on' else 'off' end,
    'rows_written', result.rows_written,
    'lines_recognised', result.recognised,
    'dates_read_in', coalesce(run.project_timezone, 'UTC'));
  return run;
end;
$$;
comment on function mixpanel_sync.finish_profiles_run(mixpanel_sync.sync_runs) is
  'The profiles part of finish_run (same transaction): applies the run with upsert_subscriber_properties under '
  'profiles.change_detection and fills received, rejected, duplicates, inserted, updated, unchanged, users_touched '
  'and options (change_detection, rows_written, lines_recognised, dates_read_in).';
