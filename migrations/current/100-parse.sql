-- Parse stream: run_events carries what the ledger contract needs (skip_reason; the raw columns when
-- events.store_raw is on), and parse_new_staged_events fills it.

alter table mixpanel_sync.run_events
  add column skip_reason text,
  add column properties jsonb,
  add column insert_id text,
  add column processing_time_ms bigint;
comment on column mixpanel_sync.run_events.skip_reason is 'Why a valid event (reject_reason null) is not applied: null = apply it; ''no_user'' = its properties.distinct_id is absent, null or "" (kept in the raw table when events.store_raw is on, counted as no_user, not a reject); ''not_selected'' = its name is not in the run''s selection (sync_runs.options -> ''events''), ignored and counted as not_selected. not_selected wins over no_user.';
comment on column mixpanel_sync.run_events.properties is 'The event''s whole properties object as received, only when setting events.store_raw is ''on'' (else null), and only on rows the raw table may take (reject_reason null, skip_reason null or ''no_user'').';
comment on column mixpanel_sync.run_events.insert_id is 'properties.$insert_id as sent (text; a number as its JSON text), filled like properties: only when events.store_raw is ''on''.';
comment on column mixpanel_sync.run_events.processing_time_ms is 'properties.mp_processing_time_ms as sent (whole milliseconds; null when absent, not a number or outside (0, 1e14)), filled like properties: only when events.store_raw is ''on''.';

-- line_id in the order lines are staged, whatever the session: with a per-session cache (1000 before) two sessions
-- (a pooler may run a loader's successive COPY chunks on different server sessions) hand out interleaved ranges,
-- and parse_staged_lines' "after the last parsed line" would miss lines until finish_run's complete pass. Measured:
-- no difference in the time to insert 95k lines.
alter table mixpanel_sync.staged_events alter column line_id set cache 1;
comment on column mixpanel_sync.staged_events.line_id is 'Staging order (cache 1: in the order lines are staged, whatever the session). parse_staged_lines takes the lines after the last parsed line_id as the new ones.';

-- Arguments up_to_line_id (was only_line_id) and after_line_id: the lines in (after_line_id, up_to_line_id] are read by an index range, so a
-- loader may parse each committed COPY chunk without rereading the run's earlier lines.
drop function mixpanel_sync.parse_new_staged_events(bigint, bigint);

CREATE FUNCTION mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint DEFAULT NULL::bigint,
  after_line_id bigint DEFAULT NULL::bigint)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  parsed bigint;
  -- Old-formula keys only while there are old ledger rows to find them in.
  legacy boolean := exists (select from mixpanel_sync.event_ledger_legacy);
  -- Read from the table, not with mixpanel_sync.setting() (which raises for a missing key): the setting's row is
  -- created by a later migration part, and a database without it means 'off'.
  store_raw boolean := coalesce(
    (select s.value from mixpanel_sync.sync_settings s where s.key = 'events.store_raw'), 'off') = 'on';
  -- The run's selection: a non-empty JSON array of event names; absent, null or [] = every event.
  selection jsonb := (
    select case when jsonb_typeof(r.options -> 'events') = 'array' and jsonb_array_length(r.options -> 'events') > 0
      then r.options -> 'events' end
    from mixpanel_sync.sync_runs r where r.id = parse_new_staged_events.run_id);
begin
  -- Each step is a subquery fenced with "offset 0", so its expressions are computed once per
  -- line (unfenced, the planner would inline them into every later use), without a per-row
  -- function scan. The line is cast straight to jsonb when the session trusts the lines to be
  -- JSON objects (parse_staged_events tries that first), else through json_object_or_null,
  -- which never raises. A line staged with a problem is not read at all.
  with parsed_lines as (
    insert into mixpanel_sync.run_events
      (run_id, line_id, distinct_id, event_key, legacy_key, event_name, event_time, day, processing_time, lateness_ms,
       reject_reason, skip_reason, properties, insert_id, processing_time_ms)
    select
      k.run_id,
      k.line_id,
      k.distinct_id,
      case when k.event_time is not null and k.event_name is not null then
        mixpanel_sync.event_key(k.event_name, k.second, k.insert_id, k.doc) end,
      case when legacy and k.event_time is not null and k.event_name is not null then
        mixpanel_sync.legacy_event_key(k.event_name, k.second, k.insert_id, k.doc) end,
      k.event_name,
      k.event_time,
      (k.event_time at time zone 'UTC')::date,
      -- capped at the run's clock: a bad mp_processing_time_ms must not push the processing watermark.
      case when k.processing_ms > 0 and k.processing_ms < 1e14
        then least(to_timestamp(k.processing_ms / 1000), k.fetch_to) end,
      -- every cast to bigint is guarded: one absurd number must be a reject, not a failed run.
      case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null
        then (k.processing_ms - k.time_seconds * 1000)::bigint end,
      k.reject_reason,
      k.skip_reason,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        then k.props end,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        then k.insert_id end,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        and k.processing_ms > 0 and k.processing_ms < 1e14
        then floor(k.processing_ms)::bigint end
    from (
      select r.*,
        case
          when r.reject_reason is not null then null
          when selection is not null and not (selection ? r.event_name) then 'not_selected'
          when r.distinct_id is null or r.distinct_id = '' then 'no_user'
        end as skip_reason
      from (
        select x.*,
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
            -- an absent, null or empty distinct_id is not a reject: skip_reason 'no_user' (when all else is valid).
            when length(x.distinct_id) > 255 then 'properties.distinct_id longer than 255 characters'
            when x.time_raw is null and jsonb_typeof(x.p_time) <> 'null' then 'properties.time is not a number'
            when x.time_raw is null then 'missing properties.time'
            when x.event_time is null then 'properties.time out of range: ' || left(x.time_raw::text, 100)
            when x.event_time > x.fetch_to then 'properties.time is after the run''s fetch_to ' || x.fetch_to::text
          end as reject_reason
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
                      -- one index range of the run's lines: (after_line_id, up_to_line_id]; up_to_line_id alone: that line
                      and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)
                      and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)
                      -- Without after_line_id every line not parsed yet (with it, the lines after it are new).
                      -- not in (hashed once), not "not exists": after a vacuum of the emptied
                      -- run_events the planner would rescan it for every staged line.
                      and (after_line_id is not null or s.line_id not in (
                        select e.line_id from mixpanel_sync.run_events e where e.run_id = parse_new_staged_events.run_id))
                    offset 0
                  ) j offset 0
                ) o offset 0
              ) f offset 0
            ) v offset 0
          ) t offset 0
        ) x offset 0
      ) r offset 0
    ) k
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
$function$;
comment on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) is 'Parses the staged lines of a run not parsed yet into run_events (with after_line_id: the lines in (after_line_id, up_to_line_id], taken as not parsed yet; up_to_line_id alone: just that line; neither: every line not in run_events): the event, its dedup key (event_key; legacy_key while event_ledger_legacy holds rows), reject_reason (null when usable) and skip_reason (''not_selected'' when the run''s selection, sync_runs.options -> ''events'', leaves the name out; else ''no_user'' when properties.distinct_id is absent, null or ""); with setting events.store_raw = ''on'' also the raw columns (properties, insert_id, processing_time_ms) of the rows the raw table may take. Unusable lines also go to sync_rejects with their line number. A line staged with a problem is rejected with it. Time may be seconds or milliseconds (event_second) and is kept to the second, Mixpanel''s dedup grain; with a project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';
revoke execute on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) from public;
grant execute on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) to mixpanel_sync_loader;

CREATE FUNCTION mixpanel_sync.parse_staged_lines(run_id bigint, only_new boolean DEFAULT true,
  after_line_id bigint DEFAULT NULL::bigint, up_to_line_id bigint DEFAULT NULL::bigint)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
  line record;
  -- only_new: the lines staged after the last parsed one (an index range: cheap to call after every COPY chunk);
  -- else (after is null) every staged line not parsed yet.
  -- after_line_id (and up_to_line_id): exactly the lines in (after_line_id, up_to_line_id], e.g. one COPY chunk the
  -- loader committed, which no other call parses (so that chunks may be parsed on two connections at once).
  after bigint := case
    when after_line_id is not null then after_line_id
    when only_new then coalesce(
      (select max(e.line_id) from mixpanel_sync.run_events e where e.run_id = parse_staged_lines.run_id), 0)
  end;
  parsed bigint;
begin
  if after is null or exists (
    select from mixpanel_sync.staged_events s
    where s.run_id = parse_staged_lines.run_id and s.line_id > after and s.line_no is null
      and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)
  ) then
    perform mixpanel_sync.number_staged_lines('events', run_id);
  end if;
  -- 1. Fast path: trust every line to be a JSON object (one cast per line). A line that is not (class 22), or is
  --    nested too deep (54: stack depth), or raises anything else a line can cause makes the statement fail.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    parsed := mixpanel_sync.parse_new_staged_events(run_id, up_to_line_id, after);
  exception
    when others then
      if not mixpanel_sync.line_can_cause(sqlstate) then
        raise;
      end if;
      -- 2. The careful path: json_object_or_null never raises, every cast after it is guarded.
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      begin
        parsed := mixpanel_sync.parse_new_staged_events(run_id, up_to_line_id, after);
      exception
        when others then
          if not mixpanel_sync.line_can_cause(sqlstate) then
            raise;
          end if;
          -- 3. Last resort, line by line: a line that still raises is marked with the error and rejected.
          parsed := 0;
          for line in
            select s.line_id from mixpanel_sync.staged_events s
            where s.run_id = parse_staged_lines.run_id
              and s.line_id > coalesce(after, 0)
              and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)
              and (after is not null or s.line_id not in (
                select e.line_id from mixpanel_sync.run_events e where e.run_id = parse_staged_lines.run_id))
            order by s.line_id
          loop
            begin
              parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);
            exception
              when others then
                if not mixpanel_sync.line_can_cause(sqlstate) then
                  raise;
                end if;
                update mixpanel_sync.staged_events s set problem = 'could not be read: ' || sqlerrm
                where s.run_id = parse_staged_lines.run_id and s.line_id = line.line_id;
                parsed := parsed + mixpanel_sync.parse_new_staged_events(run_id, line.line_id, line.line_id - 1);
            end;
          end loop;
      end;
  end;
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
  return parsed;
end;
$function$;
comment on function mixpanel_sync.parse_staged_lines(run_id bigint, only_new boolean, after_line_id bigint, up_to_line_id bigint) is 'Parses staged lines of a run into run_events (parse_new_staged_events), numbering unnumbered ones first; returns how many it parsed. With after_line_id: exactly the lines in (after_line_id, up_to_line_id], taken as not parsed yet (one committed COPY chunk: the loader parses chunks on other connections, two at a time, while the next chunk streams). Else only_new (the default): the lines staged after the run''s last parsed line. Both read an index range, at a cost in proportion to the chunk; a bad line makes only its chunk take the slower paths. only_new false: every staged line not parsed yet. Fast path first; on any error a line can cause (line_can_cause: bad JSON, nesting too deep, ...) the careful path, which never raises for one line; and should it raise, line by line, rejecting a line that still raises with the error. Errors that are not a line''s doing raise.';
revoke execute on function mixpanel_sync.parse_staged_lines(run_id bigint, only_new boolean, after_line_id bigint, up_to_line_id bigint) from public;
grant execute on function mixpanel_sync.parse_staged_lines(run_id bigint, only_new boolean, after_line_id bigint, up_to_line_id bigint) to mixpanel_sync_loader;

CREATE OR REPLACE FUNCTION mixpanel_sync.parse_staged_events(run_id bigint, OUT received bigint, OUT rejected bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
begin
  -- The new lines by their index range (all of them when nothing is parsed yet), then, only when some staged line
  -- is still not parsed (staged out of line_id order, e.g. by two sessions at once), every unparsed line.
  perform mixpanel_sync.parse_staged_lines(run_id, only_new => true);
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
comment on function mixpanel_sync.parse_staged_events(run_id bigint, OUT received bigint, OUT rejected bigint) is 'Parses every staged line of a run that is not parsed yet (parse_staged_lines: the lines after the last parsed one, then, should any other remain, all of them) and returns the run''s totals: lines received and rejected (skipped events, run_events.skip_reason, are not rejects). finish_run calls it, so lines a loader did not parse chunk by chunk (or a psql user''s stage_events) are parsed there.';

-- event_key: the same key, bit for bit, computed without building a jsonb value (the parse calls it once per line).
CREATE OR REPLACE FUNCTION mixpanel_sync.event_key(event_name text, second bigint, insert_id text, content jsonb)
 RETURNS uuid
 LANGUAGE plpgsql
 IMMUTABLE PARALLEL SAFE
 SET search_path TO ''
AS $function$
begin
  -- The text of the JSON array [event_name, second, insert_id] (or [event_name, second, null, "<content md5>"])
  -- written out directly: the bytes jsonb_build_array(...)::text gives (to_json escapes a string as jsonb's output
  -- does, ", " between elements, a bigint as its digits, null as null), without building a jsonb value first.
  -- Keys already in the ledger stay valid: scripts/sql/event-key-text.test.ts compares both formulas.
  return md5('[' || coalesce(pg_catalog.to_json(event_name)::text, 'null') || ', ' || coalesce(second::text, 'null') || ', ' ||
    case
      when insert_id <> '' then pg_catalog.to_json(insert_id)::text
      else 'null, ' || coalesce('"' || md5((content #- '{properties,distinct_id}')::text) || '"', 'null')
    end || ']')::uuid;
end;
$function$;
