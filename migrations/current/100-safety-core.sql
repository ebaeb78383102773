-- Safety core (issue 9): every rule that protects data, in SQL, so psql and the loader behave the same.
--   * the REPLACE guard: a full run may not empty or shrink stored days unless begun with allow_shrink (MP001);
--   * one run at a time per source, race-free, with runs of dead loaders abandoned at once (MP002);
--   * no single record fails a run: lines the loader could not stage as text, errors of any class a line can raise,
--     and Mixpanel's "terminated early" marker (MP003, the input is incomplete);
--   * unambiguous resync (one day without resync_to; force_full with resync_* refused, MP004);
--   * an injective event key (event_key, event_second), with the old ledger kept for dedup across the upgrade;
--   * staging without bloat (drop_staged_rows truncates when no other run of the source is running).
-- Owner: the SQL-safety stream. Applied after migrations/committed/000001..000005.

------------------------------------------------------------------------------------------
-- Settings: a 'ratio' kind (0..1), an 'identity_mode' kind (off | simplified | original, 500-identity.sql) and the
-- REPLACE guard thresholds
------------------------------------------------------------------------------------------

alter table mixpanel_sync.sync_settings drop constraint sync_settings_value_valid;
alter table mixpanel_sync.sync_settings drop constraint sync_settings_kind_check;
-- squawk-ignore constraint-missing-not-valid -- sync_settings holds ~40 rows: the check scans them at once
alter table mixpanel_sync.sync_settings add constraint sync_settings_kind_check
  check (kind in ('interval', 'integer', 'numeric', 'ratio', 'on_off', 'set_loop', 'identity_mode'));

create or replace function mixpanel_sync.setting_value_is_valid(kind text, value text)
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
    when 'ratio' then return value::numeric between 0 and 1;
    when 'on_off' then return value in ('on', 'off');
    when 'set_loop' then return value in ('set', 'loop');
    when 'identity_mode' then return value in ('off', 'simplified', 'original');
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
  'True when value parses as a setting of this kind (a ratio is a number from 0 to 1; an identity_mode is off, simplified '
  'or original); backs the check on sync_settings.';

alter table mixpanel_sync.sync_settings
  -- squawk-ignore constraint-missing-not-valid -- sync_settings holds ~40 rows: the check scans them at once
  add constraint sync_settings_value_valid
  check (mixpanel_sync.setting_value_is_valid(kind, value));

insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('events.replace_guard_min_events', '100', 'integer',
   'REPLACE guard: a UTC day of a full run''s window holding at least this many events is guarded: the run is refused '
   '(MP001) when it would keep less than events.replace_guard_ratio of them. Override for one run: '
   'begin_run(..., allow_shrink => true), CLI --allow-shrink.'),
  ('events.replace_guard_ratio', '0.5', 'ratio',
   'REPLACE guard: the share of a guarded day''s stored events a full run must keep (0 to 1; 0 turns the per-day '
   'check off). A full run with no usable event over a window that holds events is always refused without allow_shrink.')
on conflict (key) do nothing;

------------------------------------------------------------------------------------------
-- Runs: one running run per source, the owner session, the error code
------------------------------------------------------------------------------------------

-- Runs left running by the previous version, more than one per source: the older ones are abandoned, so that the
-- index below can exist (the previous version allowed concurrent runs; their finishes were serialised).
update mixpanel_sync.sync_runs r set
  status = 'abandoned',
  finished_at = now(),
  total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
  error = 'abandoned by the upgrade to one running run per source: a newer run of the source was running'
where r.status = 'running'
  and exists (select from mixpanel_sync.sync_runs n
    where n.source = r.source and n.status = 'running' and (n.started_at, n.id) > (r.started_at, r.id));

create unique index sync_runs_one_running_per_source_idx on mixpanel_sync.sync_runs (source) where status = 'running';
comment on index mixpanel_sync.sync_runs_one_running_per_source_idx is
  'At most one running run per source: two begin_run calls racing for the same source cannot both start (MP002).';

comment on column mixpanel_sync.sync_runs.options is
  'How the run was made: mode_reason, upsert_path, horizon_day, allow_shrink, owner {pid, backend_start} (the session '
  'that began it), framing (the loader''s framing counts, record_framing), error_code (the SQLSTATE given to fail_run, '
  'e.g. MP001 for a REPLACE guard refusal) and other switches in force.';

------------------------------------------------------------------------------------------
-- Staging: lines the loader could not stage as text, and their line numbers
------------------------------------------------------------------------------------------

alter table mixpanel_sync.staged_events add column problem text, add column line_no bigint;
alter table mixpanel_sync.staged_profiles add column problem text, add column line_no bigint;
comment on column mixpanel_sync.staged_events.problem is
  'Set by the loader when it could not stage the line as text (invalid UTF-8, a NUL byte, over-long): why, e.g. '
  '''invalid UTF-8 at byte 17''. line then holds a recoverable form (''\x'' and the hex of the bytes; for an over-long '
  'line its first 1 KiB). Parsing rejects such a line with this reason and the line as payload. COPY columns: '
  '(run_id, line_no, line, problem).';
comment on column mixpanel_sync.staged_events.line_no is
  'The line''s 1-based number in the run''s input, as an editor shows it (set by the loader''s COPY; stage_events '
  'numbers array elements on from the run''s last staged line). sync_rejects.line_no is this number.';
comment on column mixpanel_sync.staged_profiles.problem is
  'As staged_events.problem: set when the loader could not stage the profile as text (e.g. invalid UTF-8); the '
  'profile is rejected with this reason, never altered.';
comment on column mixpanel_sync.staged_profiles.line_no is
  'As staged_events.line_no: the 1-based number of the profile in the run''s input.';
comment on table mixpanel_sync.staged_events is
  'Raw Mixpanel export lines of runs in progress, one per row, as received. Filled by COPY (run_id, line_no, line, '
  'problem) or stage_events. Emptied (truncated when no other run of the source is running) when the run ends.';
comment on table mixpanel_sync.staged_profiles is
  'Raw Mixpanel Engage profiles of runs in progress, one per row, as received. Filled by COPY (run_id, line_no, line, '
  'problem) or stage_profiles. Emptied when the run ends.';

alter table mixpanel_sync.run_events add column legacy_key uuid;
comment on column mixpanel_sync.run_events.legacy_key is
  'The event''s key by the formula before the injective event_key (legacy_event_key), computed only while '
  'event_ledger_legacy holds rows: an event found there is already applied.';

------------------------------------------------------------------------------------------
-- The event key: injective, and independent of the distinct_id
------------------------------------------------------------------------------------------

create function mixpanel_sync.event_second(event_time numeric)
returns bigint
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  -- plpgsql, not sql: a sql function with a SET clause cannot be inlined and costs ~4x more per call.
  return case
    when event_time >= 1 and event_time < 1e11 then floor(event_time)::bigint
    when event_time >= 1e11 and event_time < 1e14 then floor(event_time / 1000)::bigint
  end;
end;
$$;
comment on function mixpanel_sync.event_second(numeric) is
  'The second (Unix epoch) of an export event''s properties.time: seconds, or milliseconds from 1e11 on; null when '
  'out of range (below 1 s, or from 1e14). Mixpanel deduplicates to the second.';

create function mixpanel_sync.event_key(event_name text, second bigint, insert_id text, content jsonb)
returns uuid
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  return md5(case
    when insert_id <> '' then pg_catalog.jsonb_build_array(event_name, second, insert_id)::text
    else pg_catalog.jsonb_build_array(event_name, second, null, md5((content #- '{properties,distinct_id}')::text))::text
  end)::uuid;
end;
$$;
comment on function mixpanel_sync.event_key(text, bigint, text, jsonb) is
  'Mixpanel''s dedup identity of an event (with its distinct_id, the ledger''s other key column): md5 of the JSON '
  'array [event name, second, $insert_id] when $insert_id is present and not empty, else [event name, second, null, '
  'md5 of the event''s canonical jsonb without properties.distinct_id]. JSON text is an unambiguous encoding (3 vs 4 '
  'elements, strings quoted and escaped), so two different identities never share a key (up to md5 collisions), '
  'and the key does not change when only the distinct_id does. content: the event as received.';

create function mixpanel_sync.legacy_event_key(event_name text, second bigint, insert_id text, content jsonb)
returns uuid
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
  return md5(event_name || E'\x1f' || second::text || E'\x1f' || coalesce(nullif(insert_id, ''), '#' || md5(content::text)))::uuid;
end;
$$;
comment on function mixpanel_sync.legacy_event_key(text, bigint, text, jsonb) is
  'The event key of versions before event_key (not injective: 0x1f in names, $insert_id shaped like ''#''||md5). '
  'Used only to recognise events applied before the upgrade, while event_ledger_legacy holds rows.';

-- The ledger rows of the previous version carry old-formula keys and cannot be re-keyed (the ledger keeps no
-- $insert_id or content): they move to event_ledger_legacy (a rename, whatever its size) and deduplicate there
-- until the ledger prune removes them (events.ledger_retention after the upgrade it is empty).
-- squawk-ignore renaming-table -- on purpose: every function that reads the ledger is replaced in this same migration
alter table mixpanel_sync.event_ledger rename to event_ledger_legacy;
alter index mixpanel_sync.event_ledger_pkey rename to event_ledger_legacy_pkey;
alter index mixpanel_sync.event_ledger_day_idx rename to event_ledger_legacy_day_idx;
comment on table mixpanel_sync.event_ledger_legacy is
  'Ledger rows applied before the injective event_key, keyed by legacy_event_key: an event whose legacy key is here '
  '(same distinct_id) is already applied. REPLACE clears its window days here too; the ledger prune empties it.';

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
  'Mixpanel''s dedup identity, mixpanel_sync.event_key(name, second, $insert_id, event): injective.';

------------------------------------------------------------------------------------------
-- Parsing: nothing one line holds can fail a run
------------------------------------------------------------------------------------------

create function mixpanel_sync.line_can_cause(state text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  -- Not a line's doing: connection (08), transaction state (25), rollback/deadlock (40), privileges and undefined
  -- objects (42), resources (53), lock not available (55), operator intervention/cancel (57), system (58),
  -- internal errors (XX), our own raises (P0, MP).
  select left(state, 2) not in ('08', '25', '40', '42', '53', '55', '57', '58', 'XX', 'P0', 'MP');
$$;
comment on function mixpanel_sync.line_can_cause(text) is
  'True for an SQLSTATE one input line can cause (bad data, too deep, too long: classes 22, 54 and the like); false for '
  'what says nothing about the line (cancel, lock timeout, deadlock, full disk, out of memory): those fail the finish.';

create function mixpanel_sync.is_terminated_early_marker(line text)
returns boolean
language sql
immutable
set search_path = ''
as $$
  select length(line) < 64 and btrim(line) ~* '^\[?\s*(export\s+)?terminated\s+early\s*\]?\.?$';
$$;
comment on function mixpanel_sync.is_terminated_early_marker(text) is
  'True for Mixpanel''s "terminated early" line (e.g. "export terminated early", "[terminated early]"): the export '
  'stopped, the input is incomplete. The same rule as the loader''s isTerminatedEarlyLine (scripts/mixpanel/export-lines.ts).';

drop function mixpanel_sync.parse_new_staged_events(bigint);
create function mixpanel_sync.parse_new_staged_events(run_id bigint, only_line_id bigint default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  parsed bigint;
  -- Old-formula keys only while there are old ledger rows to find them in.
  legacy boolean := exists (select from mixpanel_sync.event_ledger_legacy);
begin
  -- Each step is a subquery fenced with "offset 0", so its expressions are computed once per
  -- line (unfenced, the planner would inline them into every later use), without a per-row
  -- function scan. The line is cast straight to jsonb when the session trusts the lines to be
  -- JSON objects (parse_staged_events tries that first), else through json_object_or_null,
  -- which never raises. A line staged with a problem is not read at all.
  with parsed_lines as (
    insert into mixpanel_sync.run_events
      (run_id, line_id, distinct_id, event_key, legacy_key, event_name, event_time, day, processing_time, lateness_ms,
       reject_reason)
    select
      x.run_id,
      x.line_id,
      x.distinct_id,
      case when x.event_time is not null and x.event_name is not null then
        mixpanel_sync.event_key(x.event_name, x.second, x.insert_id, x.doc) end,
      case when legacy and x.event_time is not null and x.event_name is not null then
        mixpanel_sync.legacy_event_key(x.event_name, x.second, x.insert_id, x.doc) end,
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
        when x.problem is not null then x.problem
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
        when x.event_time is null then 'properties.time out of range: ' || left(x.time_raw::text, 100)
        when x.event_time > x.fetch_to then 'properties.time is after the run''s fetch_to ' || x.fetch_to::text
      end
    from (
      select t.*,
        case
          when t.second is null then null
          when t.project_timezone is null then to_timestamp(t.second)
          else (to_timestamp(t.second) at time zone 'UTC') at time zone t.project_timezone
        end as event_time
      from (
        select v.*, mixpanel_sync.event_second(v.time_raw) as second,
          -- Mixpanel sends seconds; some sources send milliseconds (anything from 1e11 on).
          case when v.time_raw >= 1e11 then v.time_raw / 1000 else v.time_raw end as time_seconds
        from (
          select f.*,
            case when jsonb_typeof(f.d_event) = 'string' then f.d_event #>> '{}' end as event_name,
            case when jsonb_typeof(f.p_distinct_id) in ('string', 'number') then f.p_distinct_id #>> '{}' end as distinct_id,
            case when jsonb_typeof(f.p_time) = 'number' then f.p_time::numeric end as time_raw,
            case when jsonb_typeof(f.p_processing) = 'number' then f.p_processing::numeric end as processing_ms,
            f.p_insert_id #>> '{}' as insert_id
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
                select s.run_id, s.line_id, s.line, s.problem, r.fetch_to, r.project_timezone,
                  case
                    when s.problem is not null then null
                    when pg_catalog.current_setting('mixpanel_sync.trust_json_lines', true) = 'on' then s.line::jsonb
                    else mixpanel_sync.json_object_or_null(s.line)
                  end as doc
                from mixpanel_sync.staged_events s
                join mixpanel_sync.sync_runs r on r.id = s.run_id
                where s.run_id = parse_new_staged_events.run_id
                  and (only_line_id is null or s.line_id = only_line_id)
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
    ) x
    returning run_events.line_id, run_events.reject_reason
  ), rejected as (
    insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
    select s.run_id, 'events', s.line_no, s.line, p.reject_reason
    from parsed_lines p
    join mixpanel_sync.staged_events s on s.run_id = parse_new_staged_events.run_id and s.line_id = p.line_id
    where p.reject_reason is not null
  )
  select count(*) into parsed from parsed_lines;
  return parsed;
end;
$$;
comment on function mixpanel_sync.parse_new_staged_events(bigint, bigint) is
  'Parses the staged lines of a run not parsed yet (only_line_id: just that line) into run_events: the event, its '
  'dedup key (event_key; legacy_key while event_ledger_legacy holds rows), and reject_reason (null when usable); '
  'unusable lines also go to sync_rejects with their line number. A line staged with a problem is rejected with it. '
  'Time may be seconds or milliseconds (event_second) and is kept to the second, Mixpanel''s dedup grain; with a '
  'project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';

create function mixpanel_sync.number_staged_lines(source text, run_id bigint)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- Lines staged without a number (COPY of (run_id, line) only) are numbered on from the run's last number, in
  -- line_id order. Nothing to do (one scan of the run's lines) when the stager numbered them, as the loader does.
  if source = 'events' then
    if exists (select from mixpanel_sync.staged_events s where s.run_id = number_staged_lines.run_id and s.line_no is null) then
      update mixpanel_sync.staged_events s set line_no = n.line_no
      from (
        select u.line_id, b.base + row_number() over (order by u.line_id) as line_no
        from mixpanel_sync.staged_events u,
          (select coalesce(max(m.line_no), 0) as base from mixpanel_sync.staged_events m where m.run_id = number_staged_lines.run_id) b
        where u.run_id = number_staged_lines.run_id and u.line_no is null
      ) n
      where s.run_id = number_staged_lines.run_id and s.line_id = n.line_id;
    end if;
  else
    if exists (select from mixpanel_sync.staged_profiles s where s.run_id = number_staged_lines.run_id and s.line_no is null) then
      update mixpanel_sync.staged_profiles s set line_no = n.line_no
      from (
        select u.line_id, b.base + row_number() over (order by u.line_id) as line_no
        from mixpanel_sync.staged_profiles u,
          (select coalesce(max(m.line_no), 0) as base from mixpanel_sync.staged_profiles m where m.run_id = number_staged_lines.run_id) b
        where u.run_id = number_staged_lines.run_id and u.line_no is null
      ) n
      where s.run_id = number_staged_lines.run_id and s.line_id = n.line_id;
    end if;
  end if;
end;
$$;
comment on function mixpanel_sync.number_staged_lines(text, bigint) is
  'Gives the run''s staged lines that have no line_no one (after the run''s highest, in line_id order), so that '
  'every reject has its line number. Called before parsing.';

create or replace function mixpanel_sync.parse_staged_events(run_id bigint, out received bigint, out rejected bigint)
language plpgsql
set search_path = ''
as $$
declare
  line record;
begin
  perform mixpanel_sync.number_staged_lines('events', run_id);
  -- 1. Fast path: trust every line to be a JSON object (one cast per line). A line that is not (class 22), or is
  --    nested too deep (54: stack depth), or raises anything else a line can cause makes the statement fail.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    perform mixpanel_sync.parse_new_staged_events(run_id);
  exception
    when others then
      if not mixpanel_sync.line_can_cause(sqlstate) then
        raise;
      end if;
      -- 2. The careful path: json_object_or_null never raises, every cast after it is guarded.
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      begin
        perform mixpanel_sync.parse_new_staged_events(run_id);
      exception
        when others then
          if not mixpanel_sync.line_can_cause(sqlstate) then
            raise;
          end if;
          -- 3. Last resort, line by line: a line that still raises is marked with the error and rejected.
          for line in
            select s.line_id from mixpanel_sync.staged_events s
            where s.run_id = parse_staged_events.run_id
              and s.line_id not in (select e.line_id from mixpanel_sync.run_events e where e.run_id = parse_staged_events.run_id)
            order by s.line_id
          loop
            begin
              perform mixpanel_sync.parse_new_staged_events(run_id, line.line_id);
            exception
              when others then
                if not mixpanel_sync.line_can_cause(sqlstate) then
                  raise;
                end if;
                update mixpanel_sync.staged_events s set problem = 'could not be read: ' || sqlerrm
                where s.run_id = parse_staged_events.run_id and s.line_id = line.line_id;
                perform mixpanel_sync.parse_new_staged_events(run_id, line.line_id);
            end;
          end loop;
      end;
  end;
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);

  select count(*), count(*) filter (where e.reject_reason is not null)
  into received, rejected
  from mixpanel_sync.run_events e
  where e.run_id = parse_staged_events.run_id;
end;
$$;
comment on function mixpanel_sync.parse_staged_events(bigint) is
  'Parses the staged lines of a run that are not parsed yet (so a loader may call it between COPY chunks) and returns '
  'the run''s totals: lines received and rejected. Fast path first; on any error a line can cause (line_can_cause: '
  'bad JSON, nesting too deep, ...) the careful path, which never raises for one line; and should it raise, line by '
  'line, rejecting a line that still raises with the error. Errors that are not a line''s doing fail the finish.';

------------------------------------------------------------------------------------------
-- Staging
------------------------------------------------------------------------------------------

create function mixpanel_sync.next_line_no(source text, run_id bigint)
returns bigint
language sql
stable
set search_path = ''
as $$
  select case source
    when 'events' then (select greatest(max(s.line_no), count(*)) from mixpanel_sync.staged_events s where s.run_id = next_line_no.run_id)
    else (select greatest(max(s.line_no), count(*)) from mixpanel_sync.staged_profiles s where s.run_id = next_line_no.run_id)
  end;
$$;
comment on function mixpanel_sync.next_line_no(text, bigint) is
  'The last line number staged for a run so far (0 when none): stage_events and stage_profiles number on from it.';

create or replace function mixpanel_sync.stage_events(run_id bigint, events jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
  base bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_events', 'events');
  -- one stager numbers at a time
  perform from mixpanel_sync.sync_runs r where r.id = stage_events.run_id for update;
  base := mixpanel_sync.next_line_no('events', run_id);
  insert into mixpanel_sync.staged_events (run_id, line_no, line)
  select stage_events.run_id, base + i.n, i.line
  from mixpanel_sync.json_items(events) with ordinality as i (line, n);
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_events(bigint, jsonb) is
  'Stages a batch of raw export events (a JSON array, or one event) for a running events run; returns rows staged. '
  'Elements are numbered 1..n in order after the run''s lines staged before (their line_no). The loader uses COPY '
  'into staged_events (run_id, line_no, line, problem) instead.';

create or replace function mixpanel_sync.stage_profiles(run_id bigint, profiles jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
  base bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_profiles', 'profiles');
  perform from mixpanel_sync.sync_runs r where r.id = stage_profiles.run_id for update;
  base := mixpanel_sync.next_line_no('profiles', run_id);
  insert into mixpanel_sync.staged_profiles (run_id, line_no, line)
  select stage_profiles.run_id, base + i.n, i.line
  from mixpanel_sync.json_items(case
      -- an Engage response page, as saved from the API
      when jsonb_typeof(profiles -> 'results') = 'array' and not profiles ? '$distinct_id' then profiles -> 'results'
      else profiles
    end) with ordinality as i (line, n);
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_profiles(bigint, jsonb) is
  'Stages Engage profiles for a running profiles run: a JSON array of profiles, an Engage response page ({"results": […]}) '
  'or one profile {"$distinct_id": …, "$properties": {…}}; returns rows staged, numbered on from the run''s lines '
  'staged before. The loader uses COPY into staged_profiles (run_id, line_no, line, problem) instead.';

create function mixpanel_sync.record_framing(run_id bigint, counts jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  merged jsonb;
begin
  if jsonb_typeof(counts) is distinct from 'object'
    or exists (select from jsonb_each(counts) c where jsonb_typeof(c.value) <> 'number' or c.value::numeric < 0) then
    raise exception 'record_framing: counts must be a JSON object of non-negative numbers, got %', left(coalesce(counts::text, 'null'), 200)
      using errcode = 'MP004', hint = 'e.g. select mixpanel_sync.record_framing(42, ''{"blank_lines": 3, "bom_stripped": 1}'')';
  end if;
  run := mixpanel_sync.running_run(run_id, 'record_framing', null);
  select coalesce(jsonb_object_agg(k.key, coalesce((run.options -> 'framing' ->> k.key)::numeric, 0)
      + coalesce((counts ->> k.key)::numeric, 0)), '{}')
  into merged
  from (select jsonb_object_keys(coalesce(run.options -> 'framing', '{}')) union select jsonb_object_keys(counts)) as k (key);
  update mixpanel_sync.sync_runs r set options = r.options || jsonb_build_object('framing', merged)
  where r.id = run.id;
  return merged;
end;
$$;
comment on function mixpanel_sync.record_framing(bigint, jsonb) is
  'Adds the loader''s framing counts (blank_lines, rejoined_records, bom_stripped, array_elements, …: counts of what '
  'was framed since the last call) into sync_runs.options->''framing'' of a running run; returns the totals. Blank '
  'lines are not received: received = applied + duplicates + too_old + rejected counts staged lines only.';

------------------------------------------------------------------------------------------
-- Staging without bloat
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.drop_staged_rows(run_id bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  run_source text := (select r.source from mixpanel_sync.sync_runs r where r.id = drop_staged_rows.run_id);
  alone boolean := not exists (
    select from mixpanel_sync.sync_runs r
    where r.source = run_source and r.status = 'running' and r.id <> drop_staged_rows.run_id);
begin
  if run_source = 'events' then
    if alone then
      begin
        -- Without waiting: a loader still COPYing for a run abandoned as stale keeps its lock, then rows are deleted.
        lock table mixpanel_sync.staged_events, mixpanel_sync.run_events in access exclusive mode nowait;
        truncate mixpanel_sync.staged_events, mixpanel_sync.run_events;
        return;
      exception
        when lock_not_available then null;
      end;
    end if;
    delete from mixpanel_sync.staged_events s where s.run_id = drop_staged_rows.run_id;
    delete from mixpanel_sync.run_events e where e.run_id = drop_staged_rows.run_id;
  elsif run_source = 'profiles' then
    if alone then
      begin
        lock table mixpanel_sync.staged_profiles in access exclusive mode nowait;
        truncate mixpanel_sync.staged_profiles;
        return;
      exception
        when lock_not_available then null;
      end;
    end if;
    delete from mixpanel_sync.staged_profiles s where s.run_id = drop_staged_rows.run_id;
  end if;
end;
$$;
comment on function mixpanel_sync.drop_staged_rows(bigint) is
  'Removes everything staged for a run: staged rows never outlive their run. When no other run of its source is '
  'running (the rule begin_run enforces), the staging tables of the source are TRUNCATEd, so their disk space '
  'returns at once (a DELETE would leave it dead until vacuum); else, or when a table is locked, the rows are deleted.';

------------------------------------------------------------------------------------------
-- Run life cycle: begin_run
------------------------------------------------------------------------------------------

drop function mixpanel_sync.begin_run(text, boolean, timestamptz, text, date, date);
create function mixpanel_sync.begin_run(
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

  -- A running run whose loader's session is gone is abandoned now, not after runs.abandon_after. (Through a
  -- transaction pooler such as pgbouncer the server session outlives the client: then only abandon_after applies.)
  for other in
    select * from mixpanel_sync.sync_runs r
    where r.source = begin_run.source and r.status = 'running'
      and r.options -> 'owner' ->> 'pid' is not null
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
  'safe); a running run whose loader''s session (options->owner: pid, backend_start) no longer exists is abandoned '
  'first, and any run still running after runs.abandon_after. Caveat: through a transaction pooler (pgbouncer) the '
  'server session outlives the loader, so only runs.abandon_after applies. Invalid arguments: MP004 '
  '(e.g. force_full with resync_*).';

------------------------------------------------------------------------------------------
-- The write paths: the legacy ledger counts as the ledger
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date)
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
  ), cleared_legacy as (
    delete from mixpanel_sync.event_ledger_legacy l where l.day between from_day and to_day returning l.distinct_id
  )
  select coalesce(array_agg(c.distinct_id), '{}') into cleared
  from (select distinct_id from cleared_daily union select distinct_id from cleared_ledger
    union select distinct_id from cleared_legacy) c;

  -- The window is empty now and a key's day is fixed by its second, so deduplicating the run is
  -- almost all it takes; a key can still sit in the ledger (or the legacy ledger) outside the window when the
  -- project timezone changed between runs (its day moved): such an event is already counted, a duplicate.
  with events as (
    select distinct on (e.distinct_id, e.event_key) e.distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and e.day between from_day and to_day
    order by e.distinct_id, e.event_key
  ), ledgered as (
    insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
    select v.distinct_id, v.event_key, v.day, v.event_name, v.event_time, upsert_subscribers_incremental.run_id
    from events v
    where v.legacy_key is null or not exists (
      select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = v.distinct_id and g.event_key = v.legacy_key)
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
  'REPLACE, set-based: removes every events_daily, event_ledger and event_ledger_legacy row with day in [from_day, '
  'to_day], then inserts the run''s events of those days deduplicated. Events outside the window are counted too_old. '
  'Rows outside the window are untouched.';

create or replace function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
returns mixpanel_sync.apply_result
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  result mixpanel_sync.apply_result;
begin
  with candidates as materialized (
    select e.distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), ledgered as (
    -- do nothing also skips repeats inside the batch: the first of them wins, and all of them
    -- carry the same name and second by construction of the key. An event whose old-formula key is in the
    -- legacy ledger (same distinct_id) was applied before the upgrade: a duplicate too.
    insert into mixpanel_sync.event_ledger (distinct_id, event_key, day, event_name, event_time, run_id)
    select w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id
    from in_window w
    where w.legacy_key is null or not exists (
      select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key)
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
  'ADD, set-based, one statement: applies the run''s events not yet in the ledger (nor, by their old-formula key, in '
  'event_ledger_legacy; repeats inside the run count once) and moves each touched subscriber by the run''s delta; '
  'events before horizon_day cannot be deduplicated and are counted too_old, not applied. Idempotent and order-independent.';

create or replace function mixpanel_sync.insert_new_events_loop(
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
    select e.distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day
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

    if event.legacy_key is not null and exists (
      select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key) then
      duplicates := duplicates + 1;
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
  'Row-at-a-time core of the _loop paths: per event in [from_day, to_day], a duplicate when its legacy key is in '
  'event_ledger_legacy, else one ledger insert and one events_daily upsert.';

create or replace function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date)
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
    union
    select g.distinct_id from mixpanel_sync.event_ledger_legacy g where g.day between from_day and to_day
    order by 1
  loop
    delete from mixpanel_sync.events_daily d
    where d.distinct_id = cleared_user.distinct_id and d.day between from_day and to_day;
    delete from mixpanel_sync.event_ledger l
    where l.distinct_id = cleared_user.distinct_id and l.day between from_day and to_day;
    delete from mixpanel_sync.event_ledger_legacy g
    where g.distinct_id = cleared_user.distinct_id and g.day between from_day and to_day;
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

------------------------------------------------------------------------------------------
-- finish: the REPLACE guard, the incomplete-input check, the watermark of a full run
------------------------------------------------------------------------------------------

create function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
returns void
language plpgsql
set search_path = ''
as $$
declare
  usable bigint;
  stored record;
  shrunk record;
  min_events bigint := mixpanel_sync.setting('events.replace_guard_min_events')::bigint;
  ratio numeric := mixpanel_sync.setting('events.replace_guard_ratio')::numeric;
  override text := 'if the smaller data is right (events deleted in Mixpanel), begin the run with '
    'mixpanel_sync.begin_run(..., allow_shrink => true) (CLI: --allow-shrink); else check the input and run again';
begin
  if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then
    return;
  end if;
  select count(*) into usable
  from mixpanel_sync.run_events e
  where e.run_id = run.id and e.reject_reason is null and e.day between run.window_from_day and run.window_to_day;

  if usable = 0 then
    select count(*) as days, sum(d.event_count) as events into stored
    from mixpanel_sync.events_daily d where d.day between run.window_from_day and run.window_to_day;
    if stored.events > 0 then
      raise exception 'finish_run: REPLACE guard: full run % has no usable event for % .. %, which hold % stored events; nothing was applied',
        run.id, run.window_from_day, run.window_to_day, stored.events
        using errcode = 'MP001', hint = override;
    end if;
    return;
  end if;

  select s.day, s.events, coalesce(k.kept, 0) as kept into shrunk
  from (
    select d.day, sum(d.event_count) as events
    from mixpanel_sync.events_daily d
    where d.day between run.window_from_day and run.window_to_day
    group by d.day
  ) s
  left join (
    select u.day, count(*) as kept
    from (
      select distinct e.day, e.distinct_id, e.event_key
      from mixpanel_sync.run_events e
      where e.run_id = run.id and e.reject_reason is null and e.day between run.window_from_day and run.window_to_day
    ) u
    group by u.day
  ) k on k.day = s.day
  where s.events >= min_events and coalesce(k.kept, 0) < ratio * s.events
  order by s.day
  limit 1;
  if found then
    raise exception 'finish_run: REPLACE guard: full run % would shrink % from % to % events (below events.replace_guard_ratio % of days holding at least events.replace_guard_min_events %); nothing was applied',
      run.id, shrunk.day, shrunk.events, shrunk.kept, ratio, min_events
      using errcode = 'MP001', hint = override;
  end if;
end;
$$;
comment on function mixpanel_sync.replace_guard(mixpanel_sync.sync_runs) is
  'The REPLACE guard of finish_run, for full runs (resyncs included) begun without allow_shrink: raises MP001 when the '
  'run has no usable event in its window while the window holds events, or when a day of the window holding at least '
  'events.replace_guard_min_events events would keep less than events.replace_guard_ratio of them.';

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
  'once, applies the REPLACE guard to full runs (MP001), REPLACE (full) or ADD (incremental) by events.upsert_path, '
  'prunes both ledgers, and sets the watermark. The watermark never claims data the tables do not hold: after a full '
  'run it is the newest event the run applied, or when it applied none the newest event held before its window (none: '
  'the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the '
  'resync''s days (then as a full run); an incremental run moves it forward only.';

------------------------------------------------------------------------------------------
-- Profiles: problem lines rejected, and nothing one profile holds fails the run
------------------------------------------------------------------------------------------

create or replace view mixpanel_sync.staged_profiles_parsed as
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
    when s.problem is not null then s.problem
    when d."$distinct_id" is null and d."$properties" is null and mixpanel_sync.json_problem(s.line) is not null
      then mixpanel_sync.json_problem(s.line)
    when v.distinct_id is null and jsonb_typeof(d."$distinct_id") <> 'null' then '$distinct_id is not a string or number'
    when v.distinct_id is null or v.distinct_id = '' then 'missing $distinct_id'
    when length(v.distinct_id) > 255 then '$distinct_id longer than 255 characters'
    when jsonb_typeof(d."$properties") is distinct from 'object' then '$properties missing or not an object'
  end as reject_reason,
  s.line_no
from mixpanel_sync.staged_profiles s
join mixpanel_sync.sync_runs r on r.id = s.run_id
left join lateral jsonb_to_record(
  case
    when s.problem is not null then null
    when pg_catalog.current_setting('mixpanel_sync.trust_json_lines', true) = 'on' then s.line::jsonb
    else mixpanel_sync.json_object_or_null(s.line)
  end
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
cross join lateral unnest(array[case when s.problem is null and v.distinct_id <> '' and length(v.distinct_id) <= 255
  then v.properties end]) as n (properties)
left join lateral jsonb_to_record(n.properties) as t (
  "$email" text, "$name" text, "$first_name" text, "$last_name" text, "$phone" text, "$city" text,
  "$region" text, "$country_code" text, "$timezone" text, "$created" text, "$last_seen" text
) on true;
comment on view mixpanel_sync.staged_profiles_parsed is
  'Staged Engage profiles parsed: distinct_id (a number is read as its text), properties without null/"" values, the '
  'typed reserved properties, reject_reason (null when usable; a line staged with a problem is rejected with it) and '
  'line_no. Dates are read in the run''s project_timezone, else UTC.';

create or replace function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean)
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
    select p.run_id, 'profiles', p.line_no, p.line, p.reject_reason
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
  'without parsing; the others are parsed (rejects to sync_rejects with their line number), the last line of each '
  'profile wins, and INSERT … ON CONFLICT DO UPDATE … WHERE (columns) IS DISTINCT FROM (excluded columns) writes only '
  'what changed. change_detection false parses and writes every profile (the original behaviour). Both leave the same contents.';

create or replace function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  change_detection boolean := mixpanel_sync.setting('profiles.change_detection') = 'on';
  result mixpanel_sync.profiles_result;
  line record;
begin
  perform mixpanel_sync.number_staged_lines('profiles', run.id);
  -- 1. Fast path: trust every line to be a JSON object (one cast per line). A line that is not, or anything else a
  --    line can cause (nesting too deep: class 54), makes the statement fail.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  exception
    when others then
      if not mixpanel_sync.line_can_cause(sqlstate) then
        raise;
      end if;
      -- 2. The careful path: json_object_or_null never raises, the date casts are guarded by their pattern.
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      begin
        result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
      exception
        when others then
          if not mixpanel_sync.line_can_cause(sqlstate) then
            raise;
          end if;
          -- 3. Last resort: read each line on its own; one that still raises is marked with the error (a reject),
          --    then the careful path runs again.
          for line in
            select s.line_id from mixpanel_sync.staged_profiles s
            where s.run_id = run.id and s.problem is null
            order by s.line_id
          loop
            begin
              perform p.*::text from mixpanel_sync.staged_profiles_parsed p where p.run_id = run.id and p.line_id = line.line_id;
            exception
              when others then
                if not mixpanel_sync.line_can_cause(sqlstate) then
                  raise;
                end if;
                update mixpanel_sync.staged_profiles s set problem = 'could not be read: ' || sqlerrm
                where s.run_id = run.id and s.line_id = line.line_id;
            end;
          end loop;
          result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
      end;
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
  'profiles.change_detection (fast path, then on any error a line can cause the careful path, then line by line '
  'rejecting a line that still raises) and fills received, rejected, duplicates, inserted, updated, unchanged, '
  'users_touched and options (change_detection, rows_written, lines_recognised, dates_read_in).';

------------------------------------------------------------------------------------------
-- finish_run: records what the identity step did (sync_runs.links_learned, reattributed_events: 500-identity.sql)
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.finish_run(run_id bigint)
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
  -- Finishes are serialised: apply one at a time.
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
    links_learned = run.links_learned,
    reattributed_events = run.reattributed_events,
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
  'Applies a run in ONE transaction: parse, reject, identity step, REPLACE guard, REPLACE or ADD, prune the ledger, '
  'advance the watermark, record counts and timings. Finishes are serialised with a transaction-scoped advisory lock. '
  'On error nothing changes (MP001 guard refusal, MP003 incomplete input, …): call fail_run with the SQLSTATE.';

------------------------------------------------------------------------------------------
-- fail_run: the error and its code
------------------------------------------------------------------------------------------

drop function mixpanel_sync.fail_run(bigint, text);
create function mixpanel_sync.fail_run(run_id bigint, error text, error_code text default null)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  code text := coalesce(nullif(error_code, ''), substring(error from '^\[?(MP[0-9]{3})\M'));
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
    options = case when code is null then r.options else r.options || jsonb_build_object('error_code', code) end,
    finished_at = coalesce(r.finished_at, clock_timestamp()),
    total_ms = coalesce(r.total_ms, (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint)
  where r.id = run.id
  returning r.* into run;
  return run;
end;
$$;
comment on function mixpanel_sync.fail_run(bigint, text, text) is
  'Marks a run failed with its error and drops its staged rows. The data and the watermark are untouched. error_code: '
  'the SQLSTATE that failed it (e.g. MP001, a REPLACE guard refusal), kept in options->>''error_code'' so that '
  'sync_health shows it; when omitted it is read from an error that starts with MPnnn.';
