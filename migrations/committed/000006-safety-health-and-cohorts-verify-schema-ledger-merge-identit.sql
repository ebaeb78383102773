--! Previous: sha1:c71bd6359986a2da843a5c21f0e3c3c1b19f7ed1
--! Hash: sha1:11fd698596c887ca31aac921ca1d85870be8fb14
--! Message: safety, health and cohorts, verify schema, ledger merge, identity merge, privileges

--! split: 010-timeouts.sql
-- Limits for this whole migration. graphile-migrate runs a migration as one transaction, so `set local` holds for every
-- statement after it (also those of the later migrations/current/NNN-*.sql files) and ends with the transaction.
-- lock_timeout: a DDL statement that has to wait behind a running sync fails after 5 s (rerun `npm run migrate` later)
-- instead of queueing every reader of that table behind its own waiting lock request.
-- statement_timeout: no single statement runs longer than 10 minutes while it holds the migration's locks; a migration
-- that really needs longer (a large backfill) raises it in its own text, with the reason.
-- (squawk's require-lock-timeout / require-statement-timeout; see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '10min';

--! split: 100-safety-core.sql
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

--! split: 150-safety-followups.sql
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

--! split: 200-health-cohorts.sql
------------------------------------------------------------------------------------------
-- 200-health-cohorts.sql (issue 14): the original plan's monitors in sync_health(), and cohorts.
-- Owner: the issue-14 stream. Owns mixpanel_sync.sync_health() and every health_* check below,
-- the subscriber-count trigger on sync_runs, and the cohort tables and functions.
------------------------------------------------------------------------------------------

-- The plan's thresholds (OPTIMIZATION_IMPLEMENTATION_SUMMARY.md, "Monitoring & Alerts"). Existing rows are kept.
insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('health.profiles_duration_warn', '30 seconds', 'interval',
   'sync_health profiles.duration: warn when the last profiles run took at least this long (the plan: properties sync under 30 s).'),
  ('health.profiles_duration_critical', '10 minutes', 'interval',
   'sync_health profiles.duration: critical when the last profiles run took at least this long.'),
  ('health.watermark_stalled_warn', '6 hours', 'interval',
   'sync_health events.watermark_stalled: warn when runs kept succeeding for at least this long (by their clocks, fetch_to) '
   'without moving the events watermark (the plan: watermark not advancing for 6 h).'),
  ('health.incremental_runs', '10', 'integer',
   'sync_health events.incremental_typical: how many recent incremental events runs to look at.'),
  ('health.incremental_typical_warn', '10000', 'integer',
   'sync_health events.incremental_typical: warn when the median incremental run of the recent ones received at least '
   'this many events (the plan: events per sync under 10K).'),
  ('health.profiles_skip_share_warn', '0.70', 'numeric',
   'sync_health profiles.skip_rate: warn when the last profiles run that met existing profiles skipped less than this '
   'share of them as unchanged (the plan: 70-90% skipped).'),
  ('health.subscribers_growth_warn', '0.50', 'numeric',
   'sync_health events.subscribers: warn when an events run grew the number of subscribers by more than this share '
   'over the previous run (0.50 = 50%). Any fall warns; a fall of health.subscribers_drop_critical is critical.'),
  ('health.subscribers_drop_critical', '0.01', 'numeric',
   'sync_health events.subscribers: critical when an events run lost at least this share of the subscribers (0.01 = 1%).'),
  ('health.timezone_skew_warn', '1 hour', 'interval',
   'sync_health events.timezone: warn when the median event of the recent runs is at least this far from its '
   'mp_processing_time_ms beyond what the configured project timezone explains (export times in local time).'),
  ('health.timezone_min_events', '20', 'integer',
   'sync_health events.timezone: the recent runs must hold at least this many events before it judges.')
on conflict (key) do nothing;

------------------------------------------------------------------------------------------
-- Subscriber count per events run: recorded on the run (options.subscribers) as it succeeds.
------------------------------------------------------------------------------------------

create function mixpanel_sync.record_subscriber_count()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.options := new.options || jsonb_build_object('subscribers', (select count(*) from mixpanel_sync.subscribers));
  return new;
end;
$$;
comment on function mixpanel_sync.record_subscriber_count() is
  'Trigger of sync_runs: when an events run succeeds, records the number of subscribers after it in options.subscribers '
  '(read by sync_health events.subscribers). Runs inside finish_run''s transaction, so the count is the applied state.';

create trigger sync_runs_record_subscriber_count
  before update of status on mixpanel_sync.sync_runs
  for each row
  when (new.source = 'events' and new.status = 'succeeded' and old.status is distinct from 'succeeded')
  execute function mixpanel_sync.record_subscriber_count();
comment on trigger sync_runs_record_subscriber_count on mixpanel_sync.sync_runs is
  'Records options.subscribers on each events run as it succeeds (mixpanel_sync.record_subscriber_count).';

------------------------------------------------------------------------------------------
-- The new checks: one function each, one row each
------------------------------------------------------------------------------------------

create function mixpanel_sync.health_profiles_duration()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'profiles.duration',
    mixpanel_sync.health_level(r.total_ms / 1000.0,
      mixpanel_sync.setting_seconds('health.profiles_duration_warn'),
      mixpanel_sync.setting_seconds('health.profiles_duration_critical')),
    mixpanel_sync.seconds_text(r.total_ms),
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.profiles_duration_warn'),
      mixpanel_sync.setting('health.profiles_duration_critical')),
    case when r.id is null then 'no data: no profiles run has succeeded yet'
      else format('run %s (%s profiles received: %s new, %s changed, %s unchanged) finished %s: staging %s, applying %s',
        r.id, r.received, r.inserted, r.updated, r.unchanged, r.finished_at,
        mixpanel_sync.seconds_text(r.stage_ms), mixpanel_sync.seconds_text(r.apply_ms))
    end
  from mixpanel_sync.last_succeeded_run('profiles') r;
$$;
comment on function mixpanel_sync.health_profiles_duration() is
  'sync_health profiles.duration: how long the last succeeded profiles run took, start to finish (total_ms). '
  'The plan: properties sync under 30 s.';

create function mixpanel_sync.health_watermark_stalled()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with runs as (
    select r.id, r.fetch_to, r.finished_at,
      r.watermark_after is distinct from r.watermark_before as moved
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded'
  ), last_move as (
    select m.id, m.fetch_to from runs m where m.moved order by m.finished_at desc, m.id desc limit 1
  ), since as (
    select count(*) as runs, max(s.fetch_to) as last_clock
    from runs s
    where not s.moved and s.finished_at > coalesce((select m2.finished_at from runs m2 where m2.id = (select id from last_move)), '-infinity')
  )
  select 'events.watermark_stalled',
    case when s.runs = 0 or m.id is null then 'ok'
      else mixpanel_sync.health_level(extract(epoch from s.last_clock - m.fetch_to),
        mixpanel_sync.setting_seconds('health.watermark_stalled_warn'), null) end,
    case when s.runs > 0 and m.id is not null then justify_interval(date_trunc('second', s.last_clock - m.fetch_to))::text end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.watermark_stalled_warn'), null),
    case
      when m.id is null and s.runs = 0 then 'no data: no events run has moved the watermark yet'
      when m.id is null then format('%s succeeded events runs and none moved the watermark: they received no usable event', s.runs)
      when s.runs = 0 then format('the last events run (%s) moved the watermark', m.id)
      else format('%s succeeded events runs since run %s (clock %s) left the watermark where it was: they received '
        'nothing new. Is the project still sending events, and is the loader reading the right project?', s.runs, m.id, m.fetch_to)
    end
  from (select) one
  left join last_move m on true
  cross join since s;
$$;
comment on function mixpanel_sync.health_watermark_stalled() is
  'sync_health events.watermark_stalled: how long (by the runs'' clocks, fetch_to) events runs have succeeded without '
  'moving the watermark, i.e. since the last run that moved it to the newest run after it. The plan''s "watermark not '
  'advancing for 6 h"; events.watermark_lag covers runs that stopped or fail.';

create function mixpanel_sync.health_incremental_typical()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.incremental_typical',
    mixpanel_sync.health_level(v.median, mixpanel_sync.setting('health.incremental_typical_warn')::numeric, null),
    v.median::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.incremental_typical_warn') || ' events (median)', null),
    case when v.runs = 0 then 'no data: no incremental events run has succeeded yet'
      else format('median events received by the last %s incremental runs (smallest %s, largest %s)%s', v.runs, v.smallest, v.largest,
        case when v.median >= mixpanel_sync.setting('health.incremental_typical_warn')::numeric
          then ': the runs fetch far more than the plan expects; check events.overlap and events.late_lookback, and how often the sync runs'
          else '' end)
    end
  from (
    select count(*) as runs, percentile_disc(0.5) within group (order by r.received) as median,
      min(r.received) as smallest, max(r.received) as largest
    from (
      select r.received from mixpanel_sync.sync_runs r
      where r.source = 'events' and r.mode = 'incremental' and r.status = 'succeeded'
      order by r.finished_at desc, r.id desc
      limit mixpanel_sync.setting('health.incremental_runs')::bigint
    ) r
  ) v;
$$;
comment on function mixpanel_sync.health_incremental_typical() is
  'sync_health events.incremental_typical: the median number of events received by the last health.incremental_runs '
  'incremental runs (the plan: events per sync under 10K), beside events.incremental_volume (one run, 50K).';

create function mixpanel_sync.health_profiles_skip_rate()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'profiles.skip_rate',
    case when r.id is null then 'ok'
      when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting('health.profiles_skip_share_warn')::numeric
        then 'warn'
      else 'ok' end,
    case when r.id is not null then
      to_char(100.0 * r.unchanged / (r.updated + r.unchanged), 'FM990.0') || '%' end,
    'warn < ' || mixpanel_sync.setting('health.profiles_skip_share_warn') || ' of existing profiles skipped',
    case when r.id is null then 'no data: no profiles run has met existing profiles yet'
      else format('run %s skipped %s of %s existing profiles as unchanged (%s new); the plan expects 70-90%% skipped%s',
        r.id, r.unchanged, r.updated + r.unchanged, r.inserted,
        case when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting('health.profiles_skip_share_warn')::numeric
          then ': find the property that changes on every run (profiles.change_detection explains how)' else '' end)
    end
  from (select) one
  left join lateral (
    select r.* from mixpanel_sync.sync_runs r
    where r.source = 'profiles' and r.status = 'succeeded' and r.updated + r.unchanged > 0
    order by r.finished_at desc, r.id desc
    limit 1
  ) r on true;
$$;
comment on function mixpanel_sync.health_profiles_skip_rate() is
  'sync_health profiles.skip_rate: the share of existing profiles the last profiles run that met any found unchanged '
  '(unchanged / (updated + unchanged); new profiles do not count). The plan: 70-90% skipped after the first sync.';

create function mixpanel_sync.health_subscribers()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.subscribers',
    case
      when c.after is null or c.before is null or c.before = 0 then 'ok'
      when c.after < c.before and (c.before - c.after) >= c.before * mixpanel_sync.setting('health.subscribers_drop_critical')::numeric
        then 'critical'
      when c.after < c.before then 'warn'
      when c.after - c.before > c.before * mixpanel_sync.setting('health.subscribers_growth_warn')::numeric then 'warn'
      else 'ok'
    end,
    case when c.after is not null and c.before is not null then format('%s -> %s', c.before, c.after) end,
    format('warn on any fall or growth > %s; critical on a fall >= %s',
      mixpanel_sync.setting('health.subscribers_growth_warn'), mixpanel_sync.setting('health.subscribers_drop_critical')),
    case
      when c.id is null then 'no data: no events run has succeeded yet'
      when c.before is null then format('run %s is the first events run with a recorded subscriber count (%s)', c.id, c.after)
      when c.after < c.before then format('subscribers fell by %s after run %s (%s, %s): a full run replaced days with fewer '
        'users. Compare with Mixpanel (npm run spot-check) and resync the days from the source (npm run sync:events -- --full)',
        c.before - c.after, c.id, c.mode, c.options ->> 'mode_reason')
      when c.before > 0 and c.after - c.before > c.before * mixpanel_sync.setting('health.subscribers_growth_warn')::numeric
        then format('subscribers grew by %s (%s%%) in run %s: more than history suggests; a new source of '
          'distinct_ids (an identity change, a test project)?', c.after - c.before,
          round(100.0 * (c.after - c.before) / c.before), c.id)
      else format('run %s changed subscribers by %s', c.id, c.after - c.before)
    end
  from (select) one
  left join lateral (
    select r.id, r.mode, r.options, (r.options ->> 'subscribers')::bigint as after,
      (select (p.options ->> 'subscribers')::bigint from mixpanel_sync.sync_runs p
       where p.source = 'events' and p.status = 'succeeded' and p.options ? 'subscribers'
         and (p.finished_at, p.id) < (r.finished_at, r.id)
       order by p.finished_at desc, p.id desc limit 1) as before
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded'
    order by r.finished_at desc, r.id desc
    limit 1
  ) c on true;
$$;
comment on function mixpanel_sync.health_subscribers() is
  'sync_health events.subscribers: the number of subscribers after the last events run against the run before '
  '(options.subscribers). The plan''s "user count growth matches history": any fall warns (a REPLACE that lost users), '
  'growth over health.subscribers_growth_warn warns.';

create function mixpanel_sync.utc_offset_text(seconds numeric)
returns text
language sql
immutable
set search_path = ''
as $$
  select case when seconds < 0 then '-' else '+' end
    || to_char(round(abs(seconds) / 60)::bigint / 60, 'FM00') || ':' || to_char(round(abs(seconds) / 60)::bigint % 60, 'FM00');
$$;
comment on function mixpanel_sync.utc_offset_text(numeric) is 'An offset in seconds as a UTC offset, to the nearest minute: 19800 -> ''+05:30''.';

create function mixpanel_sync.health_timezone()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with recent as (
    select r.id, r.project_timezone, (r.lateness ->> 'events')::bigint as events, (r.lateness ->> 'p50_ms')::bigint as p50_ms,
      -- the offset the configured zone explains (lateness is measured on the exported time as sent)
      coalesce(extract(epoch from (r.fetch_to at time zone r.project_timezone) - (r.fetch_to at time zone 'UTC')), 0) as configured_s
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded' and (r.lateness ->> 'events')::bigint > 0
    order by r.finished_at desc, r.id desc
    limit mixpanel_sync.setting('health.lateness_runs')::bigint
  ), seen as (
    select sum(r.events) as events,
      percentile_disc(0.5) within group (order by r.p50_ms) as p50_ms,
      (array_agg(r.configured_s order by r.id desc))[1] as configured_s,
      (array_agg(r.project_timezone order by r.id desc))[1] as project_timezone
    from recent r
  ), implied as (
    -- time = true time + offset and processing = true time + delay, so -(median lateness) is the offset (delay is small);
    -- offsets come in quarter hours
    select s.*, round(-s.p50_ms / 900000.0) * 900 as offset_s from seen s
  )
  select 'events.timezone',
    case when coalesce(i.events, 0) < mixpanel_sync.setting('health.timezone_min_events')::bigint then 'ok'
      else mixpanel_sync.health_level(abs(i.offset_s - i.configured_s), mixpanel_sync.setting_seconds('health.timezone_skew_warn'), null)
    end,
    case when i.events > 0 then mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.timezone_skew_warn') || ' off the configured zone', null),
    case
      when coalesce(i.events, 0) < mixpanel_sync.setting('health.timezone_min_events')::bigint
        then format('no data: fewer than %s events in the recent runs', mixpanel_sync.setting('health.timezone_min_events'))
      when abs(i.offset_s - i.configured_s) >= mixpanel_sync.setting_seconds('health.timezone_skew_warn')
        then format('the median event time is about %s from its mp_processing_time_ms (%s configured): the project likely exports local time of '
          'UTC%s. Its newest hours are rejected as "after the run''s fetch_to" and the rest is stored off by the offset. Set '
          'MIXPANEL_PROJECT_TIMEZONE to the project''s zone (Mixpanel: Project Settings, Timezone), then resync the window '
          '(npm run sync:events -- --full)', mixpanel_sync.utc_offset_text(i.offset_s),
          coalesce(i.project_timezone || ' = ' || mixpanel_sync.utc_offset_text(i.configured_s), 'none'),
          mixpanel_sync.utc_offset_text(i.offset_s))
      else format('the median event time is %s from its mp_processing_time_ms: event times match their processing times%s',
        mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0), coalesce(' read in ' || i.project_timezone, ' (UTC)'))
    end
  from implied i;
$$;
comment on function mixpanel_sync.health_timezone() is
  'sync_health events.timezone: projects created before 2023 export local time. In the recent runs, the median event''s '
  'time minus its mp_processing_time_ms, rounded to a quarter hour, is the offset of the exported times from UTC; warn '
  'when it differs from the run''s project_timezone (none = UTC) by health.timezone_skew_warn, naming the likely offset.';

create or replace function mixpanel_sync.health_failed_runs(source text)
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with failed as (
    select r.id, r.error, r.options, r.finished_at
    from mixpanel_sync.sync_runs r
    where r.source = health_failed_runs.source
      and r.status in ('failed', 'abandoned')
      and r.finished_at > coalesce((select s.finished_at from mixpanel_sync.last_succeeded_run(health_failed_runs.source) s), '-infinity')
  ), last_failed as (
    select f.* from failed f order by f.finished_at desc, f.id desc limit 1
  )
  select health_failed_runs.source || '.failed_runs',
    mixpanel_sync.health_level((select count(*) from failed), mixpanel_sync.setting('health.failed_runs_warn')::numeric,
      mixpanel_sync.setting('health.failed_runs_critical')::numeric),
    (select count(*) from failed)::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.failed_runs_warn'), mixpanel_sync.setting('health.failed_runs_critical')),
    case
      when l.id is null then 'no ' || health_failed_runs.source || ' run failed since the last succeeded one'
      when l.options ->> 'error_code' = 'MP001' or l.error ilike '%replace guard%'
        then format('failed or abandoned %s runs in a row; last: run %s was refused by the REPLACE guard (MP001): the full '
          'run would have emptied or shrunk stored days, so nothing was applied. Check the input first (a partial export, '
          'the wrong project); if the source really holds less, rerun with the guard''s override: '
          'npm run sync:events -- --full --allow-shrink (psql: begin_run(..., allow_shrink => true)). Error: %s',
          health_failed_runs.source, l.id, l.error)
      else format('failed or abandoned %s runs in a row; last: run %s, %s', health_failed_runs.source, l.id, l.error)
    end
  from (select) one
  left join last_failed l on true;
$$;
comment on function mixpanel_sync.health_failed_runs(text) is
  'sync_health <source>.failed_runs: failed or abandoned runs of the source since its last succeeded run, with the last '
  'error; a refusal of the REPLACE guard (MP001) is named with its override.';

------------------------------------------------------------------------------------------
-- sync_health(): every check, in reading order
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.sync_health()
returns table ("check" text, status text, value text, threshold text, detail text)
language sql
stable
set search_path = ''
as $$
  select (c.result).* from (
    select 1 as position, mixpanel_sync.health_events_duration() as result
    union all select 2, mixpanel_sync.health_incremental_volume()
    union all select 3, mixpanel_sync.health_incremental_typical()
    union all select 4, mixpanel_sync.health_watermark_lag()
    union all select 5, mixpanel_sync.health_watermark_stalled()
    union all select 6, mixpanel_sync.health_lateness()
    union all select 7, mixpanel_sync.health_too_old()
    union all select 8, mixpanel_sync.health_timezone()
    union all select 9, mixpanel_sync.health_subscribers()
    union all select 10, mixpanel_sync.health_failed_runs('events')
    union all select 11, mixpanel_sync.health_rejected('events')
    union all select 12, mixpanel_sync.health_profiles_duration()
    union all select 13, mixpanel_sync.health_profiles_change_detection()
    union all select 14, mixpanel_sync.health_profiles_skip_rate()
    union all select 15, mixpanel_sync.health_failed_runs('profiles')
    union all select 16, mixpanel_sync.health_rejected('profiles')
    union all select 17, mixpanel_sync.health_running()
  ) c
  order by c.position;
$$;
comment on function mixpanel_sync.sync_health() is
  'Health of the sync, one row per check: status ok|warn|critical, the value measured, the thresholds (health.* rows in '
  'sync_settings) and a detail. select * from mixpanel_sync.sync_health(); see docs/operations.md.';

------------------------------------------------------------------------------------------
-- Cohorts: the cohort list (/api/query/cohorts/list) and membership (Engage filter_by_cohort)
------------------------------------------------------------------------------------------

alter table mixpanel_sync.sync_runs drop constraint sync_runs_source_check;
-- not valid, then validated: the check is added without blocking writes during the scan
alter table mixpanel_sync.sync_runs add constraint sync_runs_source_check check (source in ('events', 'profiles', 'cohorts')) not valid;
-- squawk-ignore constraint-missing-not-valid -- sync_runs is small (pruned after runs.retention): validating in this transaction is instant
alter table mixpanel_sync.sync_runs validate constraint sync_runs_source_check;

create table mixpanel_sync.cohorts (
  cohort_id bigint primary key,
  name text not null,
  description text,
  member_count bigint,
  is_visible boolean,
  created_at timestamptz,
  properties jsonb not null,
  changed_by_run_id bigint not null,
  synced_at timestamptz not null default now()
);
comment on table mixpanel_sync.cohorts is
  'Mixpanel cohorts as /api/query/cohorts/list describes them, one row per cohort; a row is rewritten only when its content changed.';
comment on column mixpanel_sync.cohorts.member_count is 'The count Mixpanel reported in the list (cohort_members holds the members themselves).';
comment on column mixpanel_sync.cohorts.properties is 'The list entry as Mixpanel sent it.';
comment on column mixpanel_sync.cohorts.changed_by_run_id is 'The cohorts run that last wrote this row (inserted or changed it).';
comment on column mixpanel_sync.cohorts.synced_at is 'When that run wrote it.';

create table mixpanel_sync.cohort_members (
  cohort_id bigint not null references mixpanel_sync.cohorts (cohort_id) on delete cascade,
  distinct_id text collate "C" not null,
  added_by_run_id bigint not null,
  primary key (cohort_id, distinct_id)
);
create index cohort_members_distinct_id_idx on mixpanel_sync.cohort_members (distinct_id);
comment on table mixpanel_sync.cohort_members is
  'Which users are in which cohort (Engage filter_by_cohort). Join to subscribers / subscriber_properties on distinct_id. '
  'A cohorts run inserts who joined and deletes who left; members who stayed are not written.';
comment on column mixpanel_sync.cohort_members.added_by_run_id is 'The cohorts run that saw this member join.';

create unlogged table mixpanel_sync.staged_cohorts (
  run_id bigint not null,
  line_id bigint generated always as identity,
  line jsonb not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_cohorts is 'The cohort list entries of runs in progress, as received.';

create unlogged table mixpanel_sync.staged_cohort_members (
  run_id bigint not null,
  line_id bigint generated always as identity,
  cohort_id bigint not null,
  profile jsonb not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_cohort_members is
  'Engage profiles of each cohort (filter_by_cohort) for runs in progress, as received; only $distinct_id is used.';

create unlogged table mixpanel_sync.staged_cohort_fetches (
  run_id bigint not null,
  cohort_id bigint not null,
  primary key (run_id, cohort_id)
);
comment on table mixpanel_sync.staged_cohort_fetches is
  'Cohorts whose whole membership a run in progress has staged: only their membership is replaced by finish_cohorts_run.';

create function mixpanel_sync.drop_staged_cohort_rows(run_id bigint)
returns void
language sql
set search_path = ''
as $$
  delete from mixpanel_sync.staged_cohorts s where s.run_id = drop_staged_cohort_rows.run_id;
  delete from mixpanel_sync.staged_cohort_members s where s.run_id = drop_staged_cohort_rows.run_id;
  delete from mixpanel_sync.staged_cohort_fetches s where s.run_id = drop_staged_cohort_rows.run_id;
$$;
comment on function mixpanel_sync.drop_staged_cohort_rows(bigint) is 'Removes everything staged for a cohorts run.';

create function mixpanel_sync.begin_cohorts_run(clock timestamptz default now())
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
begin
  if clock is null then
    raise exception 'begin_cohorts_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:cohorts', 0));
  perform mixpanel_sync.abandon_stale_runs();
  select * into other from mixpanel_sync.sync_runs r where r.source = 'cohorts' and r.status = 'running' order by r.started_at limit 1;
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
  insert into mixpanel_sync.sync_runs (source, mode, fetch_to, options)
  values ('cohorts', 'full', clock, jsonb_build_object('mode_reason', 'cohorts are always read whole',
    'owner', jsonb_build_object('pid', pg_catalog.pg_backend_pid())))
  returning * into run;
  return run;
end;
$$;
comment on function mixpanel_sync.begin_cohorts_run(timestamptz) is
  'Begins a cohorts run (source ''cohorts'', always whole): refuses with MP002 while another cohorts run is running, '
  'abandons stale runs and clears staged rows of cohorts runs that ended without finishing.';

create function mixpanel_sync.stage_cohorts(run_id bigint, list jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_cohorts', 'cohorts');
  if jsonb_typeof(list) is distinct from 'array' then
    raise exception 'stage_cohorts: the cohort list must be a JSON array, got %', coalesce(jsonb_typeof(list), 'null')
      using errcode = 'invalid_parameter_value', hint = 'pass the body of /api/query/cohorts/list as it came';
  end if;
  insert into mixpanel_sync.staged_cohorts (run_id, line)
  select stage_cohorts.run_id, e.value from jsonb_array_elements(list) with ordinality e(value, n) order by e.n;
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_cohorts(bigint, jsonb) is
  'Stages the cohort list of a cohorts run (the /api/query/cohorts/list array); finish_cohorts_run parses it.';

create function mixpanel_sync.stage_cohort_members(run_id bigint, cohort_id bigint, profiles jsonb, complete boolean default false)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_cohort_members', 'cohorts');
  if cohort_id is null or jsonb_typeof(profiles) is distinct from 'array' then
    raise exception 'stage_cohort_members: needs a cohort_id and a JSON array of Engage profiles'
      using errcode = 'invalid_parameter_value', hint = 'pass the results array of each Engage page of filter_by_cohort';
  end if;
  insert into mixpanel_sync.staged_cohort_members (run_id, cohort_id, profile)
  select stage_cohort_members.run_id, stage_cohort_members.cohort_id, e.value
  from jsonb_array_elements(profiles) with ordinality e(value, n) order by e.n;
  get diagnostics staged = row_count;
  if complete then
    insert into mixpanel_sync.staged_cohort_fetches (run_id, cohort_id)
    values (stage_cohort_members.run_id, stage_cohort_members.cohort_id) on conflict do nothing;
  end if;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_cohort_members(bigint, bigint, jsonb, boolean) is
  'Stages one Engage page of a cohort''s members; complete => true on its last page marks the membership whole, and only '
  'cohorts marked whole have their membership replaced (a cohort fetched in part is left as it was).';

create function mixpanel_sync.cohort_list_rows(run_id bigint)
returns table (line_id bigint, line jsonb, cohort_id bigint, reject_reason text)
language sql
stable
set search_path = ''
as $$
  select s.line_id, s.line,
    case when jsonb_typeof(s.line -> 'id') = 'number' and (s.line ->> 'id') ~ '^[0-9]{1,18}$' then (s.line ->> 'id')::bigint end,
    case
      when jsonb_typeof(s.line) <> 'object' then 'cohort entry is not a JSON object'
      when jsonb_typeof(s.line -> 'id') is distinct from 'number' or (s.line ->> 'id') !~ '^[0-9]{1,18}$' then 'cohort id missing or not a positive integer'
      when jsonb_typeof(s.line -> 'name') is distinct from 'string' then 'cohort name missing or not a string'
    end
  from mixpanel_sync.staged_cohorts s
  where s.run_id = cohort_list_rows.run_id;
$$;
comment on function mixpanel_sync.cohort_list_rows(bigint) is
  'The staged cohort list of a run parsed: the cohort id, or why the entry cannot be used (reject_reason).';

create function mixpanel_sync.cohort_member_rows(run_id bigint)
returns table (line_id bigint, cohort_id bigint, profile jsonb, distinct_id text, reject_reason text)
language sql
stable
set search_path = ''
as $$
  select m.line_id, m.cohort_id, m.profile,
    case when jsonb_typeof(m.profile -> '$distinct_id') in ('string', 'number') then m.profile ->> '$distinct_id' end,
    case
      when jsonb_typeof(m.profile) <> 'object' then 'profile is not a JSON object'
      when coalesce(jsonb_typeof(m.profile -> '$distinct_id') not in ('string', 'number'), true)
        or m.profile ->> '$distinct_id' = '' then 'missing $distinct_id'
      when length(m.profile ->> '$distinct_id') > 255 then '$distinct_id longer than 255 characters'
    end
  from mixpanel_sync.staged_cohort_members m
  where m.run_id = cohort_member_rows.run_id
    and exists (select from mixpanel_sync.staged_cohort_fetches f where f.run_id = m.run_id and f.cohort_id = m.cohort_id);
$$;
comment on function mixpanel_sync.cohort_member_rows(bigint) is
  'The staged members of a run''s cohorts fetched whole, parsed: the distinct_id, or why the profile cannot be used.';

create function mixpanel_sync.finish_cohorts_run(run_id bigint)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  began timestamptz := clock_timestamp();
  n_list bigint;
  n_list_rejected bigint;
  n_cohorts_written bigint;
  n_cohorts_removed bigint;
  n_received bigint;
  n_rejected bigint;
  n_duplicates bigint;
  n_members bigint;
  n_added bigint;
  n_removed bigint;
  n_whole bigint;
begin
  run := mixpanel_sync.running_run(run_id, 'finish_cohorts_run', 'cohorts');
  perform from mixpanel_sync.sync_runs r where r.id = run.id for update;

  -- The list: one row per usable entry (a numeric id and a name); the rest rejected with a reason.
  select count(*), count(*) filter (where l.reject_reason is not null) into n_list, n_list_rejected
  from mixpanel_sync.cohort_list_rows(run.id) l;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', l.line_id, l.line::text, l.reject_reason
  from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is not null;

  if n_list > n_list_rejected or not exists (select from mixpanel_sync.cohorts) then
    -- The list is whole: cohorts no longer in it are deleted (their members with them).
    delete from mixpanel_sync.cohorts c
    where not exists (select from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is null and l.cohort_id = c.cohort_id);
    get diagnostics n_cohorts_removed = row_count;
  else
    n_cohorts_removed := 0; -- an empty list over stored cohorts: nothing is deleted (see the run's options)
  end if;

  insert into mixpanel_sync.cohorts as c (cohort_id, name, description, member_count, is_visible, created_at, properties, changed_by_run_id, synced_at)
  select distinct on (l.cohort_id) l.cohort_id, l.line ->> 'name', l.line ->> 'description',
    case when (l.line ->> 'count') ~ '^[0-9]{1,18}$' then (l.line ->> 'count')::bigint end,
    case when jsonb_typeof(l.line -> 'is_visible') = 'number' then (l.line ->> 'is_visible') <> '0'
      when jsonb_typeof(l.line -> 'is_visible') = 'boolean' then (l.line ->> 'is_visible')::boolean end,
    case when (l.line ->> 'created') ~ '^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$' then (l.line ->> 'created')::timestamp at time zone 'UTC' end,
    l.line, finish_cohorts_run.run_id, now()
  from mixpanel_sync.cohort_list_rows(run.id) l
  where l.reject_reason is null
  order by l.cohort_id, l.line_id desc
  on conflict (cohort_id) do update set
    name = excluded.name, description = excluded.description, member_count = excluded.member_count,
    is_visible = excluded.is_visible, created_at = excluded.created_at, properties = excluded.properties,
    changed_by_run_id = excluded.changed_by_run_id, synced_at = excluded.synced_at
  where c.properties is distinct from excluded.properties;
  get diagnostics n_cohorts_written = row_count;

  -- Members: every staged profile of a cohort fetched whole (cohort_member_rows); the distinct_id as Engage gives it.
  -- A cohort fetched whole but not (validly) listed has no row in cohorts: its members are left out.
  select count(*), count(*) filter (where r.reject_reason is not null),
    count(*) filter (where r.reject_reason is null) - count(distinct (r.cohort_id, r.distinct_id)) filter (where r.reject_reason is null)
  into n_received, n_rejected, n_duplicates
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', r.line_id, r.profile::text, r.reject_reason || ' (cohort ' || r.cohort_id || ')'
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id where r.reject_reason is not null;

  -- Who left: members of the cohorts fetched whole that the fetch no longer has.
  delete from mixpanel_sync.cohort_members cm
  where cm.cohort_id in (
      select f.cohort_id from mixpanel_sync.staged_cohort_fetches f where f.run_id = finish_cohorts_run.run_id)
    and not exists (
      select from mixpanel_sync.cohort_member_rows(run.id) r
      where r.reject_reason is null and r.cohort_id = cm.cohort_id and r.distinct_id = cm.distinct_id);
  get diagnostics n_removed = row_count;

  -- Who joined; members who stayed are not touched (on conflict do nothing writes no tuple for them).
  insert into mixpanel_sync.cohort_members (cohort_id, distinct_id, added_by_run_id)
  select distinct r.cohort_id, r.distinct_id, finish_cohorts_run.run_id
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id
  where r.reject_reason is null
    and not exists (select from mixpanel_sync.cohort_members cm where cm.cohort_id = r.cohort_id and cm.distinct_id = r.distinct_id)
  on conflict do nothing;
  get diagnostics n_added = row_count;

  select count(distinct (r.cohort_id, r.distinct_id)) into n_members from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id where r.reject_reason is null;
  select count(*) into n_whole from mixpanel_sync.staged_cohort_fetches f
  where f.run_id = finish_cohorts_run.run_id and exists (select from mixpanel_sync.cohorts c where c.cohort_id = f.cohort_id);

  perform mixpanel_sync.drop_staged_cohort_rows(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'succeeded',
    received = n_received,
    applied = n_members,
    duplicates = n_duplicates,
    rejected = n_rejected + n_list_rejected,
    too_old = 0,
    users_touched = n_added + n_removed,
    inserted = n_added,
    updated = n_removed,
    unchanged = n_members - n_added,
    options = r.options || jsonb_build_object(
      'cohorts_listed', n_list - n_list_rejected, 'cohorts_written', n_cohorts_written, 'cohorts_removed', n_cohorts_removed,
      'cohorts_fetched_whole', n_whole, 'members', n_members, 'members_added', n_added, 'members_removed', n_removed,
      'list_rejected', n_list_rejected),
    finished_at = clock_timestamp(),
    stage_ms = (extract(epoch from began - r.started_at) * 1000)::bigint,
    apply_ms = (extract(epoch from clock_timestamp() - began) * 1000)::bigint,
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint
  where r.id = run.id
  returning r.* into run;
  return run;
end;
$$;
comment on function mixpanel_sync.finish_cohorts_run(bigint) is
  'Applies a cohorts run in one transaction, set-based with change detection: cohorts upserted only when their list '
  'entry changed and deleted when no longer listed; for each cohort fetched whole, members who left deleted and who '
  'joined inserted, members who stayed untouched (an unchanged membership writes 0 tuples). Counts: received = member '
  'rows staged = applied (distinct members) + duplicates + rejected (list rejects counted in rejected too); inserted = '
  'members added, updated = members removed, unchanged = members kept; the rest in options.';

------------------------------------------------------------------------------------------
-- Spot-check against Mixpanel (npm run spot-check): chosen users' events fetched again from the
-- Export API, counted with the sync's own dedup rule, compared with events_daily and subscribers.
------------------------------------------------------------------------------------------

create table mixpanel_sync.spot_checks (
  id bigint generated always as identity primary key,
  seed text not null,
  users text[] not null,
  from_day date not null,
  to_day date not null,
  watermark timestamptz not null,
  processing_watermark timestamptz,
  project_timezone text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  compared bigint,
  differences bigint,
  pending bigint
);
comment on table mixpanel_sync.spot_checks is
  'One row per spot-check: the users chosen (seeded), the synced window compared, and what was found.';
comment on column mixpanel_sync.spot_checks.watermark is
  'The events watermark when the check began: events after it are not synced yet (pending, not a difference).';
comment on column mixpanel_sync.spot_checks.processing_watermark is
  'The processing watermark when the check began: events Mixpanel processed after it arrived late and are pending.';

create unlogged table mixpanel_sync.staged_spot_check_events (
  check_id bigint not null references mixpanel_sync.spot_checks (id) on delete cascade,
  line_id bigint generated always as identity,
  line text not null,
  primary key (check_id, line_id)
);
comment on table mixpanel_sync.staged_spot_check_events is
  'Export lines fetched by a spot-check in progress, as received (its own scratch, never read by the sync).';

create function mixpanel_sync.begin_spot_check(users integer, seed text)
returns mixpanel_sync.spot_checks
language plpgsql
set search_path = ''
as $$
declare
  mark mixpanel_sync.sync_watermarks;
  zone text;
  chosen text[];
  check_row mixpanel_sync.spot_checks;
begin
  if users is null or users < 1 or seed is null then
    raise exception 'begin_spot_check: users must be at least 1 and seed not null' using errcode = 'invalid_parameter_value',
      hint = 'select * from mixpanel_sync.begin_spot_check(20, ''1'')';
  end if;
  select * into mark from mixpanel_sync.sync_watermarks w where w.source = 'events';
  if mark.watermark is null then
    raise exception 'begin_spot_check: nothing synced yet (no events watermark)' using errcode = 'no_data_found',
      hint = 'run npm run sync:events first';
  end if;
  -- the same users for the same seed and subscribers: ordered by a hash of seed and distinct_id
  select array_agg(s.distinct_id order by s.h, s.distinct_id) into chosen
  from (
    select s.distinct_id, md5(begin_spot_check.seed || ':' || s.distinct_id) as h
    from mixpanel_sync.subscribers s
    order by 2, 1
    limit begin_spot_check.users
  ) s;
  if chosen is null then
    raise exception 'begin_spot_check: no subscribers to check' using errcode = 'no_data_found', hint = 'run npm run sync:events first';
  end if;
  select r.project_timezone into zone from mixpanel_sync.sync_runs r
  where r.source = 'events' and r.status = 'succeeded' order by r.finished_at desc, r.id desc limit 1;
  -- staged lines of checks that never finished
  delete from mixpanel_sync.staged_spot_check_events e
  where e.check_id in (select c.id from mixpanel_sync.spot_checks c where c.started_at < now() - interval '1 day');
  insert into mixpanel_sync.spot_checks (seed, users, from_day, to_day, watermark, processing_watermark, project_timezone)
  values (seed, chosen,
    (mark.watermark at time zone 'UTC')::date - (extract(day from mixpanel_sync.setting('events.full_window')::interval)::integer - 1),
    (mark.watermark at time zone 'UTC')::date, mark.watermark, mark.processing_watermark, zone)
  returning * into check_row;
  return check_row;
end;
$$;
comment on function mixpanel_sync.begin_spot_check(integer, text) is
  'Begins a spot-check: picks `users` subscribers by md5(seed || '':'' || distinct_id) (the same seed picks the same '
  'users), and the synced window: the events.full_window days ending with the watermark''s UTC day.';

create function mixpanel_sync.stage_spot_check(check_id bigint, lines text[])
returns bigint
language sql
set search_path = ''
as $$
  insert into mixpanel_sync.staged_spot_check_events (check_id, line)
  select stage_spot_check.check_id, l.line from unnest(lines) with ordinality l(line, n) order by l.n;
  select pg_catalog.cardinality(lines)::bigint;
$$;
comment on function mixpanel_sync.stage_spot_check(bigint, text[]) is 'Stages export lines (JSONL, as received) for a spot-check.';

create function mixpanel_sync.spot_check_differences(check_id bigint)
returns table (distinct_id text, day date, event_name text, mixpanel bigint, ours bigint, pending bigint, differs boolean, reason text)
language sql
stable
set search_path = ''
as $$
  with c as (
    select * from mixpanel_sync.spot_checks k where k.id = spot_check_differences.check_id
  ), parsed as (
    select p.*, mixpanel_sync.event_second(p.time_raw) as second
    from (
      select j.doc, j.doc ->> 'event' as event_name,
        case when jsonb_typeof(j.doc #> '{properties,distinct_id}') in ('string', 'number') then j.doc #>> '{properties,distinct_id}' end as distinct_id,
        case when jsonb_typeof(j.doc #> '{properties,time}') = 'number' then (j.doc #>> '{properties,time}')::numeric end as time_raw,
        case when jsonb_typeof(j.doc #> '{properties,$insert_id}') in ('string', 'number') then j.doc #>> '{properties,$insert_id}' end as insert_id,
        case when jsonb_typeof(j.doc #> '{properties,mp_processing_time_ms}') = 'number'
          then to_timestamp((j.doc #>> '{properties,mp_processing_time_ms}')::numeric / 1000) end as processed_at
      from (
        select mixpanel_sync.json_object_or_null(s.line) as doc
        from mixpanel_sync.staged_spot_check_events s where s.check_id = spot_check_differences.check_id
      ) j
      where jsonb_typeof(j.doc -> 'event') = 'string'
    ) p
  ), events as (
    -- Mixpanel's dedup rule, the sync's own: one event per (distinct_id, event_key)
    select distinct on (e.distinct_id, e.key) e.*
    from (
      select p.distinct_id, p.event_name, p.processed_at,
        mixpanel_sync.event_key(p.event_name, p.second, p.insert_id, p.doc) as key,
        case when c.project_timezone is null then to_timestamp(p.second)
          else (to_timestamp(p.second) at time zone 'UTC') at time zone c.project_timezone end as event_time
      from parsed p cross join c
      where p.second is not null and p.distinct_id = any (c.users)
    ) e
    order by e.distinct_id, e.key
  ), theirs as (
    select e.distinct_id, (e.event_time at time zone 'UTC')::date as day, e.event_name,
      count(*) filter (where not e.pending) as events,
      count(*) filter (where e.pending) as pending
    from (
      -- pending: after the watermark, or processed by Mixpanel after the processing watermark (a late arrival)
      select e.*, (e.event_time > c.watermark or coalesce(e.processed_at > c.processing_watermark, false)) as pending
      from events e cross join c
    ) e cross join c
    where (e.event_time at time zone 'UTC')::date between c.from_day and c.to_day
    group by 1, 2, 3
  ), ours as (
    select d.distinct_id::text as distinct_id, d.day, d.event_name::text as event_name, d.event_count as events
    from mixpanel_sync.events_daily d cross join c
    where d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
  ), days_ours as (
    select distinct o.distinct_id, o.day from ours o
  ), compared as (
    select coalesce(t.distinct_id, o.distinct_id) as distinct_id, coalesce(t.day, o.day) as day,
      coalesce(t.event_name, o.event_name) as event_name,
      coalesce(t.events, 0) as mixpanel, coalesce(o.events, 0) as ours, coalesce(t.pending, 0) as pending
    from theirs t
    full join ours o on o.distinct_id = t.distinct_id and o.day = t.day and o.event_name = t.event_name
  ), by_day as (
    select x.*,
      case
        when x.mixpanel > x.ours and not exists (select from days_ours d where d.distinct_id = x.distinct_id and d.day = x.day)
          then 'missing day'
        when x.mixpanel > x.ours then 'missing events'
        when x.ours > x.mixpanel and x.mixpanel = 0 and x.pending = 0 then 'extra events (Mixpanel has none)'
        when x.ours > x.mixpanel then 'extra events'
        when x.pending > 0 then 'late arrivals after the watermark (the next run syncs them)'
      end as reason
    from compared x
  ), subscriber_totals as (
    -- subscribers (the per-user summary over every stored day) against Mixpanel's window plus the stored days
    -- outside the window, per event name
    select u.distinct_id, n.event_name,
      coalesce(((s.event_counts ->> n.event_name))::bigint, 0) as summary,
      coalesce((select sum(t.events) from theirs t where t.distinct_id = u.distinct_id and t.event_name = n.event_name), 0)
        + coalesce((select sum(d.event_count) from mixpanel_sync.events_daily d
            where d.distinct_id = u.distinct_id and d.event_name = n.event_name and d.day not between c.from_day and c.to_day), 0) as expected
    from c cross join unnest(c.users) u(distinct_id)
    left join mixpanel_sync.subscribers s on s.distinct_id = u.distinct_id
    cross join lateral (
      select k as event_name from jsonb_object_keys(coalesce(s.event_counts, '{}')) k
      union select t.event_name from theirs t where t.distinct_id = u.distinct_id
    ) n
  )
  select b.distinct_id, b.day, b.event_name, b.mixpanel, b.ours, b.pending, b.mixpanel <> b.ours, b.reason
  from by_day b where b.reason is not null
  union all
  select t.distinct_id, null, t.event_name, t.expected, t.summary, 0, true,
    'subscribers.event_counts differs (' || t.summary || ' stored, ' || t.expected || ' expected)'
  from subscriber_totals t where t.summary <> t.expected
  order by 1, 2 nulls last, 3;
$$;
comment on function mixpanel_sync.spot_check_differences(bigint) is
  'The differences a spot-check found, per user, UTC day and event name over its window: Mixpanel''s events (staged, '
  'deduplicated with event_key like the sync, read in the run''s project timezone) against events_daily, and per user '
  'and event name against subscribers.event_counts. Events after the watermark, or processed after the processing '
  'watermark, are pending (not a difference: the next run syncs them; differs false). Groups that match are not returned.';

create function mixpanel_sync.finish_spot_check(check_id bigint, compared bigint, differences bigint, pending bigint)
returns mixpanel_sync.spot_checks
language sql
set search_path = ''
as $$
  delete from mixpanel_sync.staged_spot_check_events e where e.check_id = finish_spot_check.check_id;
  update mixpanel_sync.spot_checks c set finished_at = now(), compared = finish_spot_check.compared,
    differences = finish_spot_check.differences, pending = finish_spot_check.pending
  where c.id = finish_spot_check.check_id
  returning *;
$$;
comment on function mixpanel_sync.finish_spot_check(bigint, bigint, bigint, bigint) is
  'Records what a spot-check found and drops its staged lines.';

create function mixpanel_sync.spot_check_counts(check_id bigint)
returns table (compared bigint, pending bigint)
language sql
stable
set search_path = ''
as $$
  -- (user, day, event) groups over the window on either side, and the pending events among Mixpanel's
  select
    (select count(*) from (
      select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d, mixpanel_sync.spot_checks c
      where c.id = spot_check_counts.check_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
      union
      select x.distinct_id, x.day, x.event_name from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x where x.day is not null
    ) g),
    (select coalesce(sum(x.pending), 0)::bigint from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x);
$$;
comment on function mixpanel_sync.spot_check_counts(bigint) is
  'How many (user, day, event) groups a spot-check compared, and how many of Mixpanel''s events were pending.';

--! split: 300-verify-schema.sql
-- Verify helpers in their own schema, mixpanel_sync_verify: the proofs a DBA runs (verify/*.sql) and the property
-- tests (through scripts/sql/sync-api.ts) share them, and granting or dropping them never touches the sync functions
-- of mixpanel_sync. `alter function … set schema` keeps each function's oid, owner, privileges and comment; the
-- bodies are then re-created because SQL function bodies name other helpers by their schema.
-- Stale text in committed migrations (never edited): 000002 and 000003 say "Loaded after 1-events-core.sql" (they
-- follow 000001-events-core.sql), and 000002 likens staged_profiles_parsed to a view staged_events_parsed that no
-- longer exists (parse_new_staged_events parses events); README "Layout" says so too.
create schema mixpanel_sync_verify;
comment on schema mixpanel_sync_verify is
  'Helpers of the verify/*.sql proofs and of the property tests: deterministic data, whole-table snapshots and '
  'first-difference reports. Nothing in mixpanel_sync calls them; dropping this schema leaves the sync untouched.';

alter function mixpanel_sync.verify_ours(text) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_events(text, integer, date, integer) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_snapshot(text[]) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_first_difference(jsonb, jsonb) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_assert_same(text, text, jsonb, jsonb) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_result(mixpanel_sync.apply_result) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_others() set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_staged_run(jsonb) set schema mixpanel_sync_verify;

-- The bodies that named mixpanel_sync.verify_*: the same statements, naming mixpanel_sync_verify.
create or replace function mixpanel_sync_verify.verify_snapshot(ignore text[] default '{}') returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore), '{}')
      from mixpanel_sync.events_daily d where mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore), '{}')
      from mixpanel_sync.event_ledger l where mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore), '{}')
      from mixpanel_sync.subscribers s where mixpanel_sync_verify.verify_ours(s.distinct_id)));
$$;

create or replace function mixpanel_sync_verify.verify_assert_same(script text, what text, expected jsonb, actual jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  problem text := mixpanel_sync_verify.verify_first_difference(expected, actual);
begin
  if problem is not null then
    raise exception 'verify/%: % differ: %', script, what, problem
      using errcode = 'P0001', hint = 'The first difference names the table, the primary key and the column; rerun the script after the fix.';
  end if;
end;
$$;

create or replace function mixpanel_sync_verify.verify_others() returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object('rows of others', jsonb_build_object(
    'events_daily', (select jsonb_build_array(count(*), sum(hashtextextended(d::text, 0))) from mixpanel_sync.events_daily d where not mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select jsonb_build_array(count(*), sum(hashtextextended(l::text, 0))) from mixpanel_sync.event_ledger l where not mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.subscribers s where not mixpanel_sync_verify.verify_ours(s.distinct_id)),
    'sync_watermarks', (select jsonb_build_array(count(*), sum(hashtextextended(w::text, 0))) from mixpanel_sync.sync_watermarks w),
    'sync_settings', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.sync_settings s)));
$$;

-- Whole tables of mixpanel_sync, every row, in the shape verify_first_difference compares: for the property tests,
-- whose databases hold nothing but their own rows.
create function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[] default '{}') returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  result jsonb := '{}';
  tab text;
  key_columns text;
  dropped text[];
  rows_of jsonb;
begin
  foreach tab in array tables loop
    select string_agg(format('t.%I', a.attname), ', ' order by k.n)
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
    execute format('select coalesce(jsonb_object_agg(jsonb_build_array(%s)::text, to_jsonb(t) - $1), ''{}'') from mixpanel_sync.%I t',
      key_columns, tab)
      into rows_of using dropped;
    result := result || jsonb_build_object(tab, rows_of);
  end loop;
  return result;
end;
$$;

-- Keys re-printed the way jsonb prints them, so a snapshot built elsewhere (a model in a test, keys written as
-- JSON.stringify writes them) compares key by key with table_snapshot's.
create function mixpanel_sync_verify.canonical_snapshot(snapshot jsonb) returns jsonb language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(t.key, (
      select coalesce(jsonb_object_agg((k.key::jsonb)::text, k.value), '{}') from jsonb_each(t.value) k)), '{}')
  from jsonb_each(snapshot) t;
$$;

comment on function mixpanel_sync_verify.verify_ours(distinct_id text) is
  'Verify scripts: true for the distinct_ids a verify script creates (verify:… and -90000000NN).';
comment on function mixpanel_sync_verify.verify_events(seed text, n integer, from_day date, days integer) is
  'Verify scripts: deterministic Mixpanel export events (seed, count, first day, days): re-sends, same-second events, missing $insert_id, day boundaries, numeric/unicode/255-character ids, ms times, bad lines.';
comment on function mixpanel_sync_verify.verify_snapshot(text[]) is
  'Verify scripts: events_daily, event_ledger and subscribers rows of verify_ours users as jsonb keyed by primary key, columns in ignore left out.';
comment on function mixpanel_sync_verify.verify_first_difference(expected jsonb, actual jsonb) is
  'Null when two snapshots (verify_snapshot, table_snapshot) are equal, else the first difference in table, then key '
  'order: table, key, column, expected, actual (or a missing/unexpected row).';
comment on function mixpanel_sync_verify.verify_assert_same(script text, what text, expected jsonb, actual jsonb) is
  'Verify scripts: raises naming the script and the first difference unless the two snapshots are equal.';
comment on function mixpanel_sync_verify.verify_result(result mixpanel_sync.apply_result) is
  'Verify scripts: an apply_result shaped like a snapshot, for verify_assert_same.';
comment on function mixpanel_sync_verify.verify_others() is
  'Verify scripts: count and hash sum of every row a verify script did not create, to prove it left them untouched.';
comment on function mixpanel_sync_verify.verify_staged_run(events jsonb) is
  'Verify scripts: a forced-full run at clock 2000-02-01 with these events (and one non-JSON line) staged and parsed once.';
comment on function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[]) is
  'Property tests: every row of the named mixpanel_sync tables as jsonb {table: {primary key as JSON text: row}}, '
  'columns listed in ignore as table.column left out; compare two with verify_first_difference.';
comment on function mixpanel_sync_verify.canonical_snapshot(snapshot jsonb) is
  'Property tests: a snapshot {table: {key: row}} whose keys (JSON texts) are re-printed as jsonb prints them, so '
  'that snapshots built outside SQL compare with table_snapshot''s in verify_first_difference.';

--! split: 350-verify-followups.sql
-- Verify helpers after the one-run rule (issue 9 follow-up). Owner: the safety follow-up stream. Runs after
-- 300-verify-schema.sql, which moved verify_staged_run to mixpanel_sync_verify.
-- verify_staged_run begins a forced-full events run, stages and parses it for a path the verify script calls
-- directly (apply REPLACE or ADD, set or _loop), and never finishes it. Left running, that run made the script's next
-- verify_staged_run fail with MP002 (one events run at a time): it now ends by setting its run aside as failed, its
-- staged and parsed rows kept for those paths (a plain UPDATE: fail_run would drop them). verify/*.sql need no
-- wrapper for it.

create or replace function mixpanel_sync_verify.verify_staged_run(events jsonb) returns bigint language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00');
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
$$;
comment on function mixpanel_sync_verify.verify_staged_run(events jsonb) is
  'Verify scripts: a forced-full run at clock 2000-02-01 with these events (and one non-JSON line) staged and parsed '
  'once, for a path the script calls directly; the run is then marked failed (error ''verify: staged and parsed for a '
  'path called directly''), its staged and parsed rows kept, so that the next verify_staged_run may begin (one events '
  'run at a time).';

--! split: 400-ledger.sql
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

--! split: 500-identity.sql
-- Identity merge (issue 12): Mixpanel rewrites history when an anonymous user becomes known; so do we.
--   * identity_links: every id of a cluster and the cluster's canonical id, learned from the events themselves;
--   * identity.mode = off | simplified | original (Mixpanel's two ID Merge systems; off is the behaviour before);
--   * apply_identity(run_id): called by finish_events_run right after parsing, before REPLACE/ADD: learns the run's
--     links, moves every aggregate row of an id that is no longer canonical to its canonical id (same transaction),
--     and rewrites the run's events to canonical ids, so that an event re-read under its canonical id is the event
--     already applied under the alias (the event key does not depend on the distinct_id) and counts once.
--   * reattribute_identities (set-based) and reattribute_identities_loop (its row-at-a-time reference);
--   * identity_cluster(distinct_id) for psql; reattribute_all() to apply the map to all stored data once.
-- Invariant (with identity.mode <> 'off'): no aggregate row (events_daily, event_ledger, event_ledger_legacy,
-- subscribers, subscriber_properties, the raw events table) is keyed by an id whose identity_links row names another
-- canonical id. verify/identity_merge.sql proves it on a rolled-back sample.
-- Owner: the identity stream (issue 12). Applied after 100..300 of migrations/current/.

------------------------------------------------------------------------------------------
-- Runs: what the identity step did
------------------------------------------------------------------------------------------

alter table mixpanel_sync.sync_runs add column links_learned bigint, add column reattributed_events bigint;
comment on column mixpanel_sync.sync_runs.links_learned is
  'Identity merge (identity.mode <> ''off''): ids this run linked to a new canonical id (a new alias, or the ids of a '
  'cluster whose canonical id changed). Null when identity.mode was off. Set from apply_identity''s result.';
comment on column mixpanel_sync.sync_runs.reattributed_events is
  'Identity merge: events this run moved from an alias to its canonical id in events_daily (events counted under '
  'both ids, found by the ledger, are counted once and not here). Null when identity.mode was off.';

------------------------------------------------------------------------------------------
-- The setting
------------------------------------------------------------------------------------------

-- identity.mode has its own setting kind ('identity_mode': off | simplified | original, checked on write by
-- setting_value_is_valid in 100-safety-core.sql).
insert into mixpanel_sync.sync_settings (key, value, kind, description) values ('identity.mode', 'off', 'identity_mode',
  'Mixpanel ID Merge of the project (Project Settings > Identity Merge): off (distinct_ids taken as they come), '
  'simplified (Simplified ID Merge: an event with $device_id and $user_id joins $device:<device_id> to the user), '
  'original (Original ID Merge: $identify, $create_alias, $merge). Switching on: see the README, "Identity merge".');

create function mixpanel_sync.identity_mode()
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  mode text;
begin
  select s.value into mode from mixpanel_sync.sync_settings s where s.key = 'identity.mode';
  mode := coalesce(mode, 'off');
  if mode not in ('off', 'simplified', 'original') then
    raise exception 'identity.mode is "%", not one of off, simplified, original', mode
      using errcode = 'invalid_parameter_value',
        hint = 'update mixpanel_sync.sync_settings set value = ''simplified'' where key = ''identity.mode'' (the README says how to find the project''s mode)';
  end if;
  return mode;
end;
$$;
comment on function mixpanel_sync.identity_mode() is
  'The identity.mode setting: off, simplified or original; off when the row is missing. Raises for any other value.';

------------------------------------------------------------------------------------------
-- The identity map
------------------------------------------------------------------------------------------

create table mixpanel_sync.identity_links (
  alias text collate "C" primary key check (alias <> '' and length(alias) <= 255),
  canonical text collate "C" not null references mixpanel_sync.identity_links (alias),
  identified_at timestamptz,
  learned_from_run bigint,
  learned_at timestamptz not null default now()
);
create index identity_links_canonical_idx on mixpanel_sync.identity_links (canonical);
comment on table mixpanel_sync.identity_links is
  'The identity map: one row per distinct_id that belongs to a cluster (an id that no link names is its own cluster '
  'and has no row). The canonical id of a cluster has a row of its own with canonical = alias; every other member '
  'names it. With identity.mode on, aggregate rows are keyed by canonical ids only. Learned by apply_identity.';
comment on column mixpanel_sync.identity_links.alias is 'A distinct_id of the cluster (the canonical id included).';
comment on column mixpanel_sync.identity_links.canonical is
  'The cluster''s canonical id: the member with the earliest identified_at, then the least id in byte order '
  '(simplified: the $user_id; original: the earliest identified id). It can change when clusters merge.';
comment on column mixpanel_sync.identity_links.identified_at is
  'The time of the earliest event that named this id as the identified side of a link ($user_id of a simplified '
  'link, $identified_id of $identify, distinct_id of $create_alias); null for ids only seen as anonymous or in $merge.';
comment on column mixpanel_sync.identity_links.learned_from_run is
  'The sync_runs.id of the run that last set this row''s canonical. No foreign key: runs are pruned after '
  'runs.retention while links stay, and sync_runs stays truncatable on its own.';
comment on column mixpanel_sync.identity_links.learned_at is 'When this row''s canonical was last set.';

create function mixpanel_sync.identity_canonical(distinct_id text)
returns text
language sql
stable
set search_path = ''
as $$
  select coalesce((select l.canonical from mixpanel_sync.identity_links l where l.alias = distinct_id), distinct_id);
$$;
comment on function mixpanel_sync.identity_canonical(text) is
  'The canonical id of a distinct_id through identity_links (the id itself when no link names it).';

create function mixpanel_sync.identity_cluster(distinct_id text)
returns table (member text, canonical text, is_canonical boolean, identified_at timestamptz, learned_from_run bigint,
  learned_at timestamptz)
language sql
stable
set search_path = ''
as $$
  select l.alias, l.canonical, l.alias = l.canonical, l.identified_at, l.learned_from_run, l.learned_at
  from mixpanel_sync.identity_links l
  where l.canonical = mixpanel_sync.identity_canonical(identity_cluster.distinct_id)
  union all
  select identity_cluster.distinct_id, identity_cluster.distinct_id, true, null, null, null
  where not exists (select from mixpanel_sync.identity_links l where l.alias = identity_cluster.distinct_id)
  order by 3 desc, 1;
$$;
comment on function mixpanel_sync.identity_cluster(text) is
  'The cluster of a distinct_id, canonical id first: select * from mixpanel_sync.identity_cluster(''$device:D1''). '
  'An id no link names is a cluster of one.';

------------------------------------------------------------------------------------------
-- Learning links from a run's events
------------------------------------------------------------------------------------------

create function mixpanel_sync.identity_edges(run_id bigint, mode text)
returns table (alias text, target text, identified_at timestamptz)
language sql
stable
set search_path = ''
as $$
  -- The raw properties come from the staged line (usable lines only: each is a JSON object). Lines that cannot hold
  -- a link are skipped before their JSON is read again (strpos).
  with props as (
    select e.line_id, e.distinct_id, e.event_name, e.event_time, s.line::jsonb -> 'properties' as p
    from mixpanel_sync.run_events e
    join mixpanel_sync.staged_events s on s.run_id = e.run_id and s.line_id = e.line_id
    where e.run_id = identity_edges.run_id
      and e.reject_reason is null
      and case mode
        -- an event shown under $device:<d> without $user_id teaches nothing: its line is not read again
        when 'simplified' then strpos(s.line, '$device_id') > 0 and (e.distinct_id not like '$device:%' or strpos(s.line, '$user_id') > 0)
        when 'original' then e.event_name in ('$identify', '$create_alias', '$merge')
        else false
      end
    offset 0
  ), simplified as (
    -- $device:<device_id> -> $user_id; without $user_id, an export that shows the event under another id than
    -- $device:<device_id> shows it under the canonical id Mixpanel merged the device into ("retroactively updated").
    select x.alias, x.target, x.event_time, x.line_id, x.has_user
    from (
      select '$device:' || (q.p ->> '$device_id') as alias,
        case when jsonb_typeof(q.p -> '$user_id') in ('string', 'number') then q.p ->> '$user_id' else q.distinct_id end as target,
        jsonb_typeof(q.p -> '$user_id') in ('string', 'number') as has_user,
        q.event_time, q.line_id
      from props q
      where mode = 'simplified' and jsonb_typeof(q.p -> '$device_id') in ('string', 'number') and q.p ->> '$device_id' <> ''
    ) x
    where x.target <> '' and x.target not like '$device:%' and length(x.alias) <= 255 and length(x.target) <= 255
  ), simplified_first as (
    -- A device joins one user only: the first link wins (earliest event of the run; an earlier run's link is kept).
    select distinct on (f.alias) f.alias, f.target, f.event_time
    from simplified f
    order by f.alias, f.event_time, f.line_id
  ), original as (
    select q.p ->> '$anon_id' as alias, q.p ->> '$identified_id' as target, q.event_time as identified_at
    from props q
    where q.event_name = '$identify' and jsonb_typeof(q.p -> '$anon_id') in ('string', 'number')
      and jsonb_typeof(q.p -> '$identified_id') in ('string', 'number')
    union all
    select q.p ->> 'alias', q.distinct_id, q.event_time
    from props q
    where q.event_name = '$create_alias' and jsonb_typeof(q.p -> 'alias') in ('string', 'number')
    union all
    select m.first_id, m.other_id, null
    from props q
    cross join lateral (
      select d.value #>> '{}' as other_id, first_value(d.value #>> '{}') over (order by d.ordinality) as first_id
      from jsonb_array_elements(case when jsonb_typeof(q.p -> '$distinct_ids') = 'array' then q.p -> '$distinct_ids' else '[]' end)
        with ordinality as d (value, ordinality)
      where jsonb_typeof(d.value) in ('string', 'number')
    ) m
    where q.event_name = '$merge'
  )
  select f.alias, f.target, f.event_time
  from simplified_first f
  where not exists (select from mixpanel_sync.identity_links l
    where l.alias = f.alias and l.canonical <> f.alias and l.canonical <> f.target)
  union all
  select o.alias, o.target, o.identified_at
  from original o
  where mode = 'original' and o.alias <> '' and o.target <> '' and o.alias <> o.target
    and length(o.alias) <= 255 and length(o.target) <= 255;
$$;
comment on function mixpanel_sync.identity_edges(bigint, text) is
  'The links a run''s usable events teach in this mode, as (alias, target, identified_at: when target is the '
  'identified side). simplified: an event with $device_id and $user_id links $device:<device_id> to $user_id (an '
  'event with $device_id exported under another id than $device:<device_id> links it to that id); a device already '
  'joined to another user stays with it. original: $identify ($anon_id -> $identified_id), $create_alias (alias -> '
  'distinct_id), $merge (every id of $distinct_ids with the first; no identified side).';

create function mixpanel_sync.learn_identity_links(run_id bigint, mode text,
  out links_learned bigint, out from_ids text[], out to_ids text[])
language plpgsql
set search_path = ''
as $$
declare
  edge_alias text[];
  edge_target text[];
  edge_identified timestamptz[];
begin
  select coalesce(array_agg(g.alias), '{}'), coalesce(array_agg(g.target), '{}'), coalesce(array_agg(g.identified_at), '{}')
  into edge_alias, edge_target, edge_identified
  from mixpanel_sync.identity_edges(learn_identity_links.run_id, mode) g;
  links_learned := 0;
  from_ids := '{}';
  to_ids := '{}';
  if cardinality(edge_alias) = 0 then
    return;
  end if;

  -- 1. Every id a link names gets a row (a new id is its own cluster), with its earliest identified time.
  insert into mixpanel_sync.identity_links as l (alias, canonical, identified_at, learned_from_run, learned_at)
  select n.id, n.id, min(n.identified_at), learn_identity_links.run_id, now()
  from (
    select unnest(edge_alias) as id, null::timestamptz as identified_at
    union all
    select unnest(edge_target), unnest(edge_identified)
  ) n
  group by n.id
  on conflict (alias) do update set identified_at = excluded.identified_at
  where excluded.identified_at < l.identified_at or (l.identified_at is null and excluded.identified_at is not null);

  -- 2. The clusters the links touch are joined (connected components over their canonical ids), and each joined
  --    cluster's canonical id is chosen again: the earliest identified_at, then the least id. A cluster whose member
  --    just got an earlier identified_at is chosen again too. Every row whose canonical changes is learned; the
  --    former canonical ids hold the only aggregate rows to move (the invariant).
  with recursive edges as (
    select ra.canonical as a, rb.canonical as b
    from unnest(edge_alias, edge_target) as g (alias, target)
    join mixpanel_sync.identity_links ra on ra.alias = g.alias collate "C"
    join mixpanel_sync.identity_links rb on rb.alias = g.target collate "C"
  ), both_ways as (
    select e.a, e.b from edges e where e.a <> e.b
    union
    select e.b, e.a from edges e where e.a <> e.b
  ), reach (root, other) as (
    select distinct r, r from edges e, lateral (values (e.a), (e.b)) v (r)
    union
    select h.root, w.b from reach h join both_ways w on w.a = h.other
  ), component as (
    select h.root, min(h.other) as label from reach h group by h.root
  ), chosen as (
    select distinct on (c.label) c.label, m.alias as canonical
    from component c
    join mixpanel_sync.identity_links m on m.canonical = c.root
    order by c.label, m.identified_at nulls last, m.alias
  ), changed as (
    update mixpanel_sync.identity_links l set
      canonical = h.canonical, learned_from_run = learn_identity_links.run_id, learned_at = now()
    from component c
    join chosen h on h.label = c.label
    where l.canonical = c.root and l.canonical <> h.canonical
    returning l.alias, c.root as old_canonical, h.canonical as new_canonical
  )
  select count(*),
    coalesce(array_agg(h.alias order by h.alias) filter (where h.alias = h.old_canonical), '{}'),
    coalesce(array_agg(h.new_canonical order by h.alias) filter (where h.alias = h.old_canonical), '{}')
  into links_learned, from_ids, to_ids
  from changed h;
end;
$$;
comment on function mixpanel_sync.learn_identity_links(bigint, text) is
  'Adds the links of a run''s events (identity_edges) to identity_links, set-based: clusters joined transitively, '
  'canonical ids chosen again (earliest identified_at, then least id). Returns the rows learned and the moves to '
  'make: from_ids[i] (a former canonical id, the only ids holding aggregate rows) now belongs to to_ids[i].';

------------------------------------------------------------------------------------------
-- Re-attribution: every aggregate row of an alias moves to its canonical id
------------------------------------------------------------------------------------------

create function mixpanel_sync.reattribute_identities(from_ids text[], to_ids text[])
returns jsonb
language plpgsql
set search_path = ''
set work_mem = '64MB'
as $$
declare
  moved record;
  raw_moved bigint := 0;
  profiles_moved bigint;
begin
  -- Ledger rows: an event applied under the alias and under its canonical id (or under two aliases of one cluster)
  -- was counted twice; one row is kept (the canonical's, else the least alias's), the others are dropped and their
  -- events_daily count taken back. Then events_daily rows merge (sum, least first_at, greatest last_at).
  with moves as materialized (
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
  ), ledger_rows as (
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id,
      exists (select from mixpanel_sync.event_ledger c where c.distinct_id = m.to_id and c.event_key = l.event_key) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id) as n
    from mixpanel_sync.event_ledger l join moves m on l.distinct_id = m.from_id
  ), legacy_rows as (
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id,
      exists (select from mixpanel_sync.event_ledger_legacy c where c.distinct_id = m.to_id and c.event_key = l.event_key) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id) as n
    from mixpanel_sync.event_ledger_legacy l join moves m on l.distinct_id = m.from_id
  ), ledger_dropped as (
    delete from mixpanel_sync.event_ledger l using ledger_rows r
    where (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning l.distinct_id, l.day, l.event_name
  ), ledger_moved as (
    update mixpanel_sync.event_ledger l set distinct_id = r.to_id
    from ledger_rows r
    where not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning 1
  ), legacy_dropped as (
    delete from mixpanel_sync.event_ledger_legacy l using legacy_rows r
    where (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning l.distinct_id, l.day, l.event_name
  ), legacy_moved as (
    update mixpanel_sync.event_ledger_legacy l set distinct_id = r.to_id
    from legacy_rows r
    where not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning 1
  ), dropped_counts as (
    select d.distinct_id, d.day, d.event_name, count(*) as events
    from (select * from ledger_dropped union all select * from legacy_dropped) d
    group by d.distinct_id, d.day, d.event_name
  ), alias_daily as (
    delete from mixpanel_sync.events_daily d using moves m
    where d.distinct_id = m.from_id
    returning d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at, m.to_id
  ), merged as (
    select a.to_id, a.day, a.event_name, sum(a.event_count - coalesce(c.events, 0)) as events,
      min(a.first_at) as first_at, max(a.last_at) as last_at
    from alias_daily a
    left join dropped_counts c on c.distinct_id = a.distinct_id and c.day = a.day and c.event_name = a.event_name
    group by a.to_id, a.day, a.event_name
  ), daily as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select g.to_id, g.day, g.event_name, g.events, g.first_at, g.last_at
    from merged g
    where g.events > 0
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  )
  select
    (select coalesce(sum(g.events) filter (where g.events > 0), 0) from merged g) as events,
    (select count(*) from ledger_dropped) + (select count(*) from legacy_dropped) as duplicates,
    (select count(*) from ledger_moved) + (select count(*) from legacy_moved) as ledger_rows
  into moved;

  -- The raw events table, when one exists (issue 13): the same rule on (distinct_id, event_key).
  if to_regclass('mixpanel_sync.raw_events') is not null then
    execute $raw$
      with moves as materialized (
        select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
        from unnest($1::text[], $2::text[]) as m (from_id, to_id) where m.from_id <> m.to_id
      ), raw_rows as (
        select r.ctid as row_id, m.to_id,
          exists (select from mixpanel_sync.raw_events c where c.distinct_id = m.to_id and c.event_key = r.event_key) as at_canonical,
          row_number() over (partition by m.to_id, r.event_key order by r.distinct_id) as n
        from mixpanel_sync.raw_events r join moves m on r.distinct_id = m.from_id
      ), dropped as (
        delete from mixpanel_sync.raw_events r using raw_rows x
        where (x.at_canonical or x.n > 1) and r.ctid = x.row_id returning 1
      ), moved as (
        update mixpanel_sync.raw_events r set distinct_id = x.to_id from raw_rows x
        where not x.at_canonical and x.n = 1 and r.ctid = x.row_id returning 1
      )
      select (select count(*) from moved)
    $raw$ into raw_moved using from_ids, to_ids;
  end if;

  -- Profiles: Mixpanel keeps the canonical id's profile. When the canonical id has none, the profile of the least
  -- alias becomes its profile; every other alias profile is removed.
  with moves as materialized (
    select m.from_id as from_id, m.to_id as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id) where m.from_id <> m.to_id
  ), alias_profiles as (
    select p.distinct_id, m.to_id,
      not exists (select from mixpanel_sync.subscriber_properties c where c.distinct_id = m.to_id)
        and row_number() over (partition by m.to_id order by p.distinct_id collate "C") = 1 as keeps
    from mixpanel_sync.subscriber_properties p join moves m on p.distinct_id = m.from_id
  ), removed as (
    delete from mixpanel_sync.subscriber_properties p using alias_profiles a
    where not a.keeps and p.distinct_id = a.distinct_id
    returning 1
  ), renamed as (
    update mixpanel_sync.subscriber_properties p set distinct_id = a.to_id
    from alias_profiles a
    where a.keeps and p.distinct_id = a.distinct_id
    returning 1
  )
  select (select count(*) from removed) + (select count(*) from renamed) into profiles_moved;

  perform mixpanel_sync.refresh_subscribers(from_ids || to_ids);
  return jsonb_build_object('reattributed_events', moved.events, 'reattributed_duplicates', moved.duplicates,
    'reattributed_ledger_rows', moved.ledger_rows, 'reattributed_raw_events', raw_moved,
    'reattributed_profiles', profiles_moved);
end;
$$;
comment on function mixpanel_sync.reattribute_identities(text[], text[]) is
  'Set-based: moves every row of from_ids[i] to to_ids[i] in events_daily (rows merged: sum, least first_at, greatest '
  'last_at), event_ledger and event_ledger_legacy (an event held under both ids, or two aliases, is kept once and its '
  'extra count taken back), mixpanel_sync.raw_events when it exists, subscriber_properties (the canonical profile '
  'wins), and recomputes subscribers of both. Returns counts: reattributed_events (events now counted under the '
  'canonical id), reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events, reattributed_profiles.';

create function mixpanel_sync.reattribute_identities_loop(from_ids text[], to_ids text[])
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  move record;
  event record;
  day_row record;
  raw_row record;
  raw_exists boolean;
  member text;
  events_moved bigint := 0;
  duplicates bigint := 0;
  ledger_rows bigint := 0;
  raw_moved bigint := 0;
  profiles_moved bigint := 0;
  touched text[] := '{}';
  has_raw boolean := to_regclass('mixpanel_sync.raw_events') is not null;
  row_count_now bigint;
begin
  for move in
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
    order by 1
  loop
    touched := touched || array[move.from_id::text, move.to_id::text];
    -- the ledgers, one row at a time: a key the canonical id already holds is a double count
    for event in
      select l.event_key, l.day, l.event_name, false as legacy from mixpanel_sync.event_ledger l where l.distinct_id = move.from_id
      union all
      select g.event_key, g.day, g.event_name, true from mixpanel_sync.event_ledger_legacy g where g.distinct_id = move.from_id
      order by 4, 1
    loop
      if not event.legacy and exists (select from mixpanel_sync.event_ledger c where c.distinct_id = move.to_id and c.event_key = event.event_key)
        or event.legacy and exists (select from mixpanel_sync.event_ledger_legacy c where c.distinct_id = move.to_id and c.event_key = event.event_key) then
        if event.legacy then
          delete from mixpanel_sync.event_ledger_legacy g where g.distinct_id = move.from_id and g.event_key = event.event_key;
        else
          delete from mixpanel_sync.event_ledger l where l.distinct_id = move.from_id and l.event_key = event.event_key;
        end if;
        update mixpanel_sync.events_daily d set event_count = d.event_count - 1
        where d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name and d.event_count > 1;
        get diagnostics row_count_now = row_count;
        if row_count_now = 0 then
          delete from mixpanel_sync.events_daily d
          where d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name;
        end if;
        duplicates := duplicates + 1;
      elsif event.legacy then
        update mixpanel_sync.event_ledger_legacy g set distinct_id = move.to_id
        where g.distinct_id = move.from_id and g.event_key = event.event_key;
        ledger_rows := ledger_rows + 1;
      else
        update mixpanel_sync.event_ledger l set distinct_id = move.to_id
        where l.distinct_id = move.from_id and l.event_key = event.event_key;
        ledger_rows := ledger_rows + 1;
      end if;
    end loop;
    -- events_daily, one row at a time
    for day_row in
      select d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d where d.distinct_id = move.from_id order by d.day, d.event_name
    loop
      insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
      values (move.to_id, day_row.day, day_row.event_name, day_row.event_count, day_row.first_at, day_row.last_at)
      on conflict (distinct_id, day, event_name) do update set
        event_count = d.event_count + excluded.event_count,
        first_at = least(d.first_at, excluded.first_at),
        last_at = greatest(d.last_at, excluded.last_at);
      delete from mixpanel_sync.events_daily d
      where d.distinct_id = move.from_id and d.day = day_row.day and d.event_name = day_row.event_name;
      events_moved := events_moved + day_row.event_count;
    end loop;
    -- the raw events table, when one exists
    if has_raw then
      for raw_row in execute 'select r.ctid as row_id, r.event_key from mixpanel_sync.raw_events r where r.distinct_id = $1 order by r.event_key'
        using move.from_id
      loop
        execute 'select exists (select from mixpanel_sync.raw_events c where c.distinct_id = $1 and c.event_key = $2)'
          into raw_exists using move.to_id, raw_row.event_key;
        if raw_exists then
          execute 'delete from mixpanel_sync.raw_events r where r.ctid = $1' using raw_row.row_id;
        else
          execute 'update mixpanel_sync.raw_events r set distinct_id = $1 where r.ctid = $2' using move.to_id, raw_row.row_id;
          raw_moved := raw_moved + 1;
        end if;
      end loop;
    end if;
    -- the profile: the canonical one wins; else the first alias's (in id order) becomes it
    if exists (select from mixpanel_sync.subscriber_properties p where p.distinct_id = move.from_id) then
      if exists (select from mixpanel_sync.subscriber_properties p where p.distinct_id = move.to_id) then
        delete from mixpanel_sync.subscriber_properties p where p.distinct_id = move.from_id;
      else
        update mixpanel_sync.subscriber_properties p set distinct_id = move.to_id where p.distinct_id = move.from_id;
      end if;
      profiles_moved := profiles_moved + 1;
    end if;
  end loop;
  foreach member in array touched loop
    perform mixpanel_sync.refresh_subscriber_loop(member);
  end loop;
  return jsonb_build_object('reattributed_events', events_moved, 'reattributed_duplicates', duplicates,
    'reattributed_ledger_rows', ledger_rows, 'reattributed_raw_events', raw_moved,
    'reattributed_profiles', profiles_moved);
end;
$$;
comment on function mixpanel_sync.reattribute_identities_loop(text[], text[]) is
  'Row-at-a-time reference implementation of reattribute_identities: same contract, same resulting tables and counts '
  '(property-tests/identity-loop-equals-set.test.ts). Used when events.upsert_path = ''loop''.';

------------------------------------------------------------------------------------------
-- The hook of finish_events_run
------------------------------------------------------------------------------------------

create function mixpanel_sync.apply_identity(run_id bigint)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  mode text := mixpanel_sync.identity_mode();
  learned record;
  moved jsonb;
  rewritten bigint;
begin
  if mode = 'off' then
    return jsonb_build_object('identity_mode', mode);
  end if;
  learned := mixpanel_sync.learn_identity_links(run_id, mode);
  moved := case mixpanel_sync.setting('events.upsert_path')
    when 'loop' then mixpanel_sync.reattribute_identities_loop(learned.from_ids, learned.to_ids)
    else mixpanel_sync.reattribute_identities(learned.from_ids, learned.to_ids)
  end;
  -- The run's events under canonical ids: the apply path that follows deduplicates (canonical id, key).
  update mixpanel_sync.run_events e set distinct_id = l.canonical
  from mixpanel_sync.identity_links l
  where e.run_id = apply_identity.run_id and l.alias = e.distinct_id and l.canonical <> l.alias;
  get diagnostics rewritten = row_count;
  return jsonb_build_object('identity_mode', mode, 'links_learned', learned.links_learned,
    'events_resolved', rewritten) || moved;
end;
$$;
comment on function mixpanel_sync.apply_identity(bigint) is
  'The identity step of finish_events_run (after parsing into run_events, before REPLACE/ADD), when identity.mode is '
  'not off: learns the run''s links (learn_identity_links), moves the aggregate rows of ids no longer canonical '
  '(reattribute_identities, or its _loop twin when events.upsert_path = loop), and rewrites run_events.distinct_id of '
  'the run to canonical ids. Returns {identity_mode, links_learned, events_resolved, reattributed_events, '
  'reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events, reattributed_profiles}; with mode off '
  'only {identity_mode} and nothing is changed. The caller merges it into sync_runs.options and sets '
  'sync_runs.links_learned and reattributed_events from it.';

create function mixpanel_sync.reattribute_all()
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  from_ids text[];
  to_ids text[];
begin
  -- Any id stored under a non-canonical id of the map (data from before identity.mode was on, or from another mode).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run', 0));
  select coalesce(array_agg(l.alias order by l.alias), '{}'), coalesce(array_agg(l.canonical order by l.alias), '{}')
  into from_ids, to_ids
  from mixpanel_sync.identity_links l
  where l.alias <> l.canonical
    and (exists (select from mixpanel_sync.events_daily d where d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger d where d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger_legacy d where d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscribers d where d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscriber_properties d where d.distinct_id = l.alias));
  return jsonb_build_object('ids_moved', cardinality(from_ids))
    || mixpanel_sync.reattribute_identities(from_ids, to_ids);
end;
$$;
comment on function mixpanel_sync.reattribute_all() is
  'One-off re-attribution of all stored data through identity_links (serialised with finish_run): every row keyed by '
  'an id whose canonical is another id moves to it. Run it after switching identity.mode on and the full resync that '
  'learns the links (README, "Identity merge"). Idempotent: a second call moves nothing.';

--! split: 900-privileges.sql
-- 900-privileges: least privilege for schemas mixpanel_sync and mixpanel_sync_verify.
-- Runs last in the current migration, after every other file, so "all functions / all tables in schema" below
-- covers what the other streams create. Re-runnable: every statement is idempotent.
--
-- Model (see README "Roles, Supabase and PgBouncer"):
--   * every function runs with the caller's rights (no SECURITY DEFINER anywhere): calling a function gives no more
--     than the caller's table privileges, so the table grants and RLS policies below are the real boundary;
--   * PUBLIC may execute nothing in either schema, and has no USAGE on them (a schema created with CREATE SCHEMA
--     grants PUBLIC nothing; we revoke anyway in case a DBA granted it);
--   * RLS is enabled on every table of mixpanel_sync with policies only for the two roles shipped here, so a schema
--     exposed through PostgREST by mistake shows anon/authenticated nothing; the table owner (the role that runs the
--     migrations) is not subject to RLS, so psql sessions of the DBA work as before;
--   * mixpanel_sync_loader: everything a sync run needs (begin, stage with COPY, finish, fail, status and health);
--   * mixpanel_sync_reader: SELECT on the aggregates and profiles, nothing else.
-- Roles are cluster-wide: created NOLOGIN, only if absent; a DBA grants them to login roles
-- (`grant mixpanel_sync_loader to my_etl_user;`).

do $roles$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'mixpanel_sync_loader') then
    begin
      create role mixpanel_sync_loader nologin;
    exception when duplicate_object or unique_violation then
      null; -- created concurrently by another database's migration on the same cluster
    end;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'mixpanel_sync_reader') then
    begin
      create role mixpanel_sync_reader nologin;
    exception when duplicate_object or unique_violation then
      null;
    end;
  end if;
end
$roles$;

comment on role mixpanel_sync_loader is
  'mixpanel-pg-sync loader: runs syncs (begin_run, COPY into staged_*, stage_*, finish_run, fail_run, status, sync_health). '
  'NOLOGIN: grant it to the login role the loader connects as.';
comment on role mixpanel_sync_reader is
  'mixpanel-pg-sync reader: SELECT on the aggregates (events_daily, subscribers), profiles (subscriber_properties) and cohorts. '
  'NOLOGIN: grant it to the login roles of dashboards and analysts.';

-- ---------------------------------------------------------------------------------------------------------------------
-- Schemas: nobody by default; the two roles may look up objects in mixpanel_sync.
revoke all on schema mixpanel_sync from public;
grant usage on schema mixpanel_sync to mixpanel_sync_loader, mixpanel_sync_reader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Functions: PUBLIC executes nothing. Every function is SECURITY INVOKER, so EXECUTE on all of mixpanel_sync's
-- functions gives the loader nothing its table privileges do not; it is granted on all of them because the entry
-- points (begin_run, finish_run, …) call the internal ones (parse_*, refresh_subscribers, setting, …) with the
-- caller's rights. The reader executes nothing. mixpanel_sync_verify (proofs for psql) is for the DBA only.
revoke execute on all functions in schema mixpanel_sync from public;
grant execute on all functions in schema mixpanel_sync to mixpanel_sync_loader;
do $verify$
begin
  if exists (select from pg_catalog.pg_namespace where nspname = 'mixpanel_sync_verify') then
    revoke all on schema mixpanel_sync_verify from public;
    revoke execute on all functions in schema mixpanel_sync_verify from public;
  end if;
end
$verify$;

-- Functions created later in mixpanel_sync by the role running this migration: the loader may execute them.
-- (Revoking PUBLIC's default EXECUTE cannot be done per schema in PostgreSQL: ALTER DEFAULT PRIVILEGES IN SCHEMA only
-- adds to the global defaults. Doing it globally would change every function this role creates in any schema of the
-- database, e.g. an application's public.* RPCs on Supabase, so we do not: PUBLIC has no USAGE on the schema, which
-- already keeps it from calling anything here, and scripts/sql/privileges.test.ts fails on any function of the
-- schema whose ACL still lets PUBLIC execute it, so a later migration must revoke it as this file does.)
alter default privileges in schema mixpanel_sync grant execute on functions to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Tables: what each role may do, then RLS with a policy per role on each table it uses.
revoke all on all tables in schema mixpanel_sync from public;
revoke all on all sequences in schema mixpanel_sync from public;

-- Staging tables (staged_*) belong to the loader role. PostgreSQL refuses COPY FROM into a table whose RLS applies to
-- the caller ("COPY FROM not supported with row-level security"), and the loader stages with COPY; a table's owner
-- (and every member of the owning role) is exempt from its RLS, so owning the staging tables is how the loader COPYs
-- while RLS stays on for everyone else. The alternatives are worse: BYPASSRLS is a role attribute that is not inherited
-- (the DBA would have to give it to the login role, for every table of the database), and a staging table without RLS
-- would show raw Mixpanel JSON to anon if the schema were exposed. Staging holds only a run's raw input; the
-- aggregates, profiles, runs and settings stay owned by the migration role.
do $staging$
declare
  t record;
begin
  -- ALTER … OWNER TO needs membership in the new owner (superusers excepted): a non-superuser migration role, e.g.
  -- Supabase's postgres (CREATEROLE), grants the loader role to itself first.
  if not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user)
     and not pg_catalog.pg_has_role(current_user, 'mixpanel_sync_loader', 'member') then
    execute pg_catalog.format('grant mixpanel_sync_loader to %I', current_user);
  end if;
  -- … and the new owner needs CREATE on the schema (superusers excepted): held only for the hand-over, inside this
  -- transaction, so the loader never can create objects in the schema.
  grant create on schema mixpanel_sync to mixpanel_sync_loader;
  for t in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p') and c.relname like 'staged\_%'
    order by c.relname
  loop
    execute pg_catalog.format('alter table %s owner to mixpanel_sync_loader', t.rel);
  end loop;
  revoke create on schema mixpanel_sync from mixpanel_sync_loader;
end
$staging$;

-- The loader writes every table but the settings (a loader must not be able to switch off the REPLACE guard or
-- change the windows: settings are the DBA's, changed with UPDATE as the table owner).
do $tables$
declare
  t record;
begin
  for t in
    select c.oid::regclass as rel, c.relname, c.relowner
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p')
    order by c.relname
  loop
    execute pg_catalog.format('alter table %s enable row level security', t.rel);
    if pg_catalog.pg_get_userbyid(t.relowner) = 'mixpanel_sync_loader' then
      continue; -- staging: the loader owns it (above); RLS on, no policy needed
    elsif t.relname = 'sync_settings' then
      execute pg_catalog.format('grant select on %s to mixpanel_sync_loader', t.rel);
      execute pg_catalog.format('drop policy if exists mixpanel_sync_loader_read on %s', t.rel);
      execute pg_catalog.format('create policy mixpanel_sync_loader_read on %s as permissive for select to mixpanel_sync_loader using (true)', t.rel);
      execute pg_catalog.format('comment on policy mixpanel_sync_loader_read on %s is %L', t.rel,
        'The loader reads the settings (windows, guard thresholds, switches); only the owner (the DBA) changes them.');
    else
      execute pg_catalog.format('grant select, insert, update, delete, truncate on %s to mixpanel_sync_loader', t.rel);
      execute pg_catalog.format('drop policy if exists mixpanel_sync_loader_all on %s', t.rel);
      execute pg_catalog.format(
        'create policy mixpanel_sync_loader_all on %s as permissive for all to mixpanel_sync_loader using (true) with check (true)', t.rel);
      execute pg_catalog.format('comment on policy mixpanel_sync_loader_all on %s is %L', t.rel,
        'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.');
    end if;
  end loop;
end
$tables$;
grant usage, select on all sequences in schema mixpanel_sync to mixpanel_sync_loader;

-- The reader: aggregates and profiles (and the cohort tables, when the cohorts stream ships them).
do $reader$
declare
  t record;
begin
  for t in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p')
      and (c.relname in ('events_daily', 'subscribers', 'subscriber_properties') or c.relname like 'cohort%')
    order by c.relname
  loop
    execute pg_catalog.format('grant select on %s to mixpanel_sync_reader', t.rel);
    execute pg_catalog.format('drop policy if exists mixpanel_sync_reader_read on %s', t.rel);
    execute pg_catalog.format('create policy mixpanel_sync_reader_read on %s as permissive for select to mixpanel_sync_reader using (true)', t.rel);
    execute pg_catalog.format('comment on policy mixpanel_sync_reader_read on %s is %L', t.rel,
      'The reader sees every row of the aggregates and profiles; RLS is on only so that roles without a policy see nothing.');
  end loop;
end
$reader$;

-- ---------------------------------------------------------------------------------------------------------------------
-- Views run with the caller's rights and RLS (PG15+), never the owner's: a reader of staged_profiles_parsed needs
-- the privileges on staged_profiles itself.
alter view mixpanel_sync.staged_profiles_parsed set (security_invoker = true);
do $views$
declare
  v record;
begin
  for v in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace in ('mixpanel_sync'::regnamespace) and c.relkind = 'v'
  loop
    execute pg_catalog.format('alter view %s set (security_invoker = true)', v.rel);
    execute pg_catalog.format('revoke all on %s from public', v.rel);
    execute pg_catalog.format('grant select on %s to mixpanel_sync_loader', v.rel);
  end loop;
end
$views$;
