--! Previous: sha1:362b053eb0640c397f443ec4973742466a881e45
--! Hash: sha1:f90162bdb592d80c9cabcf22330e9027dc4f62b5
--! Message: one definition of a run's selection and of the raw switch

-- One definition of a run's selection and of the raw-storage switch: parse_new_staged_events and replace_guard call
-- mixpanel_sync.run_selection(run_id) and mixpanel_sync.store_raw() instead of re-deriving them from
-- sync_runs.options and sync_settings (000007 wrote the rule out again in each; the behaviour is unchanged).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

create or replace function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint default null::bigint, after_line_id bigint default null::bigint)
 returns bigint
 language plpgsql
 set search_path = ''
as $function$
declare
  parsed bigint;
  -- Old-formula keys only while there are old ledger rows to find them in.
  legacy boolean := exists (select from mixpanel_sync.event_ledger_legacy);
  store_raw boolean := mixpanel_sync.store_raw();
  -- The run's selection (null: every event).
  selection text[] := mixpanel_sync.run_selection(parse_new_staged_events.run_id);
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
          when selection is not null and not (r.event_name = any (selection)) then 'not_selected'
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

create or replace function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
 returns void
 language plpgsql
 set search_path = ''
as $function$
declare
  usable bigint;
  stored record;
  shrunk record;
  min_events bigint := mixpanel_sync.setting('events.replace_guard_min_events')::bigint;
  ratio numeric := mixpanel_sync.setting('events.replace_guard_ratio')::numeric;
  -- The run's selection (begin_run: options->'events'; absent, null or [] = every event): a REPLACE with a selection
  -- clears only those names, so only their stored events are at stake, and only selected events are usable.
  selection text[] := mixpanel_sync.run_selection(run.id);
  names text := case when selection is not null
    then ' (events of the run''s selection ' || pg_catalog.to_jsonb(selection)::text || ')' else '' end;
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
    where d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection));
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
    where d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection))
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
