-- 350-spot-check-selection: the spot-check compares what the sync is configured to keep (issue 13 part 2). Owner: spot-check
-- selection helper.
--
-- * spot_checks.events: the event names the check compares, the setting events.only as begin_spot_check read it (sorted;
--   [] = every event; null on checks begun before this migration = every event).
-- * The loader asks the Export API for just those names (its `event` parameter), read back from the check's row.
-- * spot_check_differences / spot_check_counts compare just those names on both sides: stored rows of names removed
--   from events.only (kept until forget_event_names) and Mixpanel's events of other names are left out.

alter table mixpanel_sync.spot_checks add column events jsonb;
comment on column mixpanel_sync.spot_checks.events is 'The event names the check compares: the setting events.only when it began (a JSON array, sorted; [] or null = every event). The Export API is asked for just these names; stored rows of other names are left out.';

create or replace function mixpanel_sync.begin_spot_check(users integer, seed text)
 RETURNS mixpanel_sync.spot_checks
 LANGUAGE plpgsql
 SET search_path TO ''
AS $function$
declare
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
  -- the names the sync keeps, as runs read them: the setting events.only, sorted ([] = every event)
  selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')
    from jsonb_array_elements(coalesce(mixpanel_sync.setting('events.only')::jsonb, '[]')) e (name));
  -- staged lines of checks that never finished
  delete from mixpanel_sync.staged_spot_check_events e
  where e.check_id in (select c.id from mixpanel_sync.spot_checks c where c.started_at < now() - interval '1 day');
  insert into mixpanel_sync.spot_checks (seed, users, from_day, to_day, watermark, processing_watermark, project_timezone, events)
  values (seed, chosen,
    (mark.watermark at time zone 'UTC')::date - (extract(day from mixpanel_sync.setting('events.full_window')::interval)::integer - 1),
    (mark.watermark at time zone 'UTC')::date, mark.watermark, mark.processing_watermark, zone, selection)
  returning * into check_row;
  return check_row;
end;
$function$;
comment on function mixpanel_sync.begin_spot_check(users integer, seed text) is 'Begins a spot-check: picks `users` subscribers by md5(seed || '':'' || distinct_id) (the same seed picks the same users), and the synced window: the events.full_window days ending with the watermark''s UTC day; and the event names the sync keeps (the setting events.only, recorded in events: the loader asks the Export API for just them, and spot_check_differences compares just them).';
grant execute on function mixpanel_sync.begin_spot_check(users integer, seed text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.spot_check_differences(check_id bigint)
 RETURNS TABLE(distinct_id text, day date, event_name text, mixpanel bigint, ours bigint, pending bigint, differs boolean, reason text)
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  with c as (
    select * from mixpanel_sync.spot_checks k where k.id = spot_check_differences.check_id
  ), parsed as (
    select p.doc, p.event_name, p.distinct_id, p.time_raw, p.insert_id, p.processed_at,
      mixpanel_sync.event_second(p.time_raw) as second
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
    ) p cross join c
    -- only the names the sync keeps (c.events; [] or null = every name)
    where coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? p.event_name
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
      and (coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? d.event_name)
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
      where coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? k
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
$function$;
comment on function mixpanel_sync.spot_check_differences(check_id bigint) is 'The differences a spot-check found, per user, UTC day and event name over its window: Mixpanel''s events (staged, deduplicated with event_key like the sync, read in the run''s project timezone) against events_daily, and per user and event name against subscribers.event_counts. Events after the watermark, or processed after the processing watermark, are pending (not a difference: the next run syncs them; differs false). Groups that match are not returned. Only the event names the check recorded (spot_checks.events, the setting events.only when it began; [] = every name) are compared, on both sides: stored rows of other names (removed from events.only, not yet forgotten) and Mixpanel''s events of other names are left out.';
grant execute on function mixpanel_sync.spot_check_differences(check_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.spot_check_counts(check_id bigint)
 RETURNS TABLE(compared bigint, pending bigint)
 LANGUAGE sql
 STABLE
 SET search_path TO ''
AS $function$
  -- (user, day, event) groups over the window on either side, and the pending events among Mixpanel's
  select
    (select count(*) from (
      select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d, mixpanel_sync.spot_checks c
      where c.id = spot_check_counts.check_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
        and (coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? d.event_name)
      union
      select x.distinct_id, x.day, x.event_name from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x where x.day is not null
    ) g),
    (select coalesce(sum(x.pending), 0)::bigint from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x);
$function$;
comment on function mixpanel_sync.spot_check_counts(check_id bigint) is 'How many (user, day, event) groups a spot-check compared (of the names it compares: spot_checks.events), and how many of Mixpanel''s events were pending.';
grant execute on function mixpanel_sync.spot_check_counts(check_id bigint) to mixpanel_sync_loader;
