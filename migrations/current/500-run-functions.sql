-- 500-run-functions: the run-scoped functions keep their signatures and read the project from the run (or the
-- spot-check): every statement on a per-project table gets project_id = <the run's>, the _loop twins included
-- (docs/projects.md §5.4-§5.6).
--   * finish_run serialises the finishes of one project (advisory key mixpanel_sync.finish_run:<project id>): two
--     projects' finishes run at the same time.
--   * Ledger retention with shared day partitions: drop_ledger_partitions gets the earliest storage horizon of all
--     projects, another project's at the clock of its last succeeded events run (this run's clock may be ahead of it;
--     the drop never waits: skipped when the ledger is busy); each finish deletes its own project's rows between that
--     and its own horizon.
--   * analyze_run_events: ANALYZE (SKIP_LOCKED): a finish no longer waits for another project's finish, which holds
--     the table's ANALYZE lock to its commit.
-- Unchanged (run-scoped, no per-project table): cohort_list_rows, cohort_member_rows, drop_staged_cohort_rows,
-- drop_staged_rows (it truncates only when no run of the source of any project is running: already so), fail_run,
-- finish_or_fail_run, heartbeat_run, next_line_no, number_staged_lines, parse_staged_events, parse_staged_lines,
-- record_framing, run_selection, running_run, stage_*, finish_spot_check, ensure_run_ledger_partitions.
-- Idempotent: create or replace (the SET clauses of migrations/schema.sql kept).

create or replace function mixpanel_sync.identity_edges(run_id bigint, mode text)
 returns table(alias text, target text, identified_at timestamp with time zone)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
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
    where l.project_id = (select r.project_id from mixpanel_sync.sync_runs r where r.id = identity_edges.run_id) and l.alias = f.alias and l.canonical <> f.alias and l.canonical <> f.target)
  union all
  select o.alias, o.target, o.identified_at
  from original o
  where mode = 'original' and o.alias <> '' and o.target <> '' and o.alias <> o.target
    and length(o.alias) <= 255 and length(o.target) <= 255;
$function$;
comment on function mixpanel_sync.identity_edges(run_id bigint, mode text) is 'The links a run''s usable events teach in this mode, as (alias, target, identified_at: when target is the identified side). simplified: an event with $device_id and $user_id links $device:<device_id> to $user_id (an event with $device_id exported under another id than $device:<device_id> links it to that id); a device already joined to another user stays with it. original: $identify ($anon_id -> $identified_id), $create_alias (alias -> distinct_id), $merge (every id of $distinct_ids with the first; no identified side).';
grant execute on function mixpanel_sync.identity_edges(run_id bigint, mode text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[])
 returns record
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = learn_identity_links.run_id);
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
  insert into mixpanel_sync.identity_links as l (project_id, alias, canonical, identified_at, learned_from_run, learned_at)
  select pid, n.id, n.id, min(n.identified_at), learn_identity_links.run_id, now()
  from (
    select unnest(edge_alias) as id, null::timestamptz as identified_at
    union all
    select unnest(edge_target), unnest(edge_identified)
  ) n
  group by n.id
  on conflict (project_id, alias) do update set identified_at = excluded.identified_at
  where excluded.identified_at < l.identified_at or (l.identified_at is null and excluded.identified_at is not null);

  -- 2. The clusters the links touch are joined (connected components over their canonical ids), and each joined
  --    cluster's canonical id is chosen again: the earliest identified_at, then the least id. A cluster whose member
  --    just got an earlier identified_at is chosen again too. Every row whose canonical changes is learned; the
  --    former canonical ids hold the only aggregate rows to move (the invariant).
  with recursive edges as (
    select ra.canonical as a, rb.canonical as b
    from unnest(edge_alias, edge_target) as g (alias, target)
    join mixpanel_sync.identity_links ra on ra.project_id = pid and ra.alias = g.alias collate "C"
    join mixpanel_sync.identity_links rb on rb.project_id = pid and rb.alias = g.target collate "C"
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
    join mixpanel_sync.identity_links m on m.project_id = pid and m.canonical = c.root
    order by c.label, m.identified_at nulls last, m.alias
  ), changed as (
    update mixpanel_sync.identity_links l set
      canonical = h.canonical, learned_from_run = learn_identity_links.run_id, learned_at = now()
    from component c
    join chosen h on h.label = c.label
    where l.project_id = pid and l.canonical = c.root and l.canonical <> h.canonical
    returning l.alias, c.root as old_canonical, h.canonical as new_canonical
  )
  select count(*),
    coalesce(array_agg(h.alias order by h.alias) filter (where h.alias = h.old_canonical), '{}'),
    coalesce(array_agg(h.new_canonical order by h.alias) filter (where h.alias = h.old_canonical), '{}')
  into links_learned, from_ids, to_ids
  from changed h;
end;
$function$;
comment on function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[]) is 'Adds the links of a run''s events (identity_edges) to the run''s project''s identity_links, set-based: clusters joined transitively, canonical ids chosen again (earliest identified_at, then least id). Returns the rows learned and the moves to make: from_ids[i] (a former canonical id, the only ids holding aggregate rows) now belongs to to_ids[i].';
grant execute on function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[]) to mixpanel_sync_loader;

create or replace function mixpanel_sync.apply_identity(run_id bigint)
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = apply_identity.run_id);
  mode text := mixpanel_sync.identity_mode(pid);
  learned record;
  moved jsonb;
  rewritten bigint;
begin
  if mode = 'off' then
    return jsonb_build_object('identity_mode', mode);
  end if;
  learned := mixpanel_sync.learn_identity_links(run_id, mode);
  moved := case mixpanel_sync.setting(pid, 'events.upsert_path')
    when 'loop' then mixpanel_sync.reattribute_identities_loop(pid, learned.from_ids, learned.to_ids)
    else mixpanel_sync.reattribute_identities(pid, learned.from_ids, learned.to_ids)
  end;
  -- The run's events under canonical ids: the apply path that follows deduplicates (canonical id, key).
  update mixpanel_sync.run_events e set distinct_id = l.canonical
  from mixpanel_sync.identity_links l
  where l.project_id = pid and e.run_id = apply_identity.run_id and l.alias = e.distinct_id and l.canonical <> l.alias;
  get diagnostics rewritten = row_count;
  return jsonb_build_object('identity_mode', mode, 'links_learned', learned.links_learned,
    'events_resolved', rewritten) || moved;
end;
$function$;
comment on function mixpanel_sync.apply_identity(run_id bigint) is 'The identity step of finish_events_run (after parsing into run_events, before REPLACE/ADD), when identity.mode is not off: learns the run''s links (learn_identity_links), moves the aggregate rows of ids no longer canonical (reattribute_identities, or its _loop twin when events.upsert_path = loop), and rewrites run_events.distinct_id of the run to canonical ids. Returns {identity_mode, links_learned, events_resolved, reattributed_events, reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events, reattributed_profiles}; with mode off only {identity_mode} and nothing is changed. The caller merges it into sync_runs.options and sets sync_runs.links_learned and reattributed_events from it.';
grant execute on function mixpanel_sync.apply_identity(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint DEFAULT NULL::bigint, after_line_id bigint DEFAULT NULL::bigint)
 returns bigint
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = parse_new_staged_events.run_id);
  parsed bigint;
  -- Old-formula keys only while there are old ledger rows to find them in.
  legacy boolean := exists (select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid);
  store_raw boolean := mixpanel_sync.store_raw(pid);
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
comment on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) is 'Parses the staged lines of a run not parsed yet into run_events (with after_line_id: the lines in (after_line_id, up_to_line_id], taken as not parsed yet; up_to_line_id alone: just that line; neither: every line not in run_events): the event, its dedup key (event_key; legacy_key while event_ledger_legacy holds rows), reject_reason (null when usable) and skip_reason (''not_selected'' when the run''s selection, sync_runs.options -> ''events'', leaves the name out; else ''no_user'' when properties.distinct_id is absent, null or ""); with setting events.store_raw = ''on'' also the raw columns (properties, insert_id, processing_time_ms) of the rows the raw table may take. Unusable lines also go to sync_rejects with their line number. A line staged with a problem is rejected with it. Time may be seconds or milliseconds (event_second) and is kept to the second, Mixpanel''s dedup grain; with a project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';
grant execute on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[])
 returns record
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = insert_new_events_loop.run_id);
  raw_on boolean := mixpanel_sync.store_raw(pid);
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
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = insert_new_events_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.line_id
  loop
    if current_user_id is distinct from event.distinct_id then
      if current_user_applied then
        distinct_ids := array_append(distinct_ids, current_user_id);
      end if;
      current_user_id := event.distinct_id;
      current_user_applied := false;
    end if;

    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;

    if event.legacy_key is not null and exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    values (pid, event.distinct_id, event.event_key, event.day, event.event_name, event.event_time, insert_new_events_loop.run_id,
      event.insert_id, event.processing_time_ms, event.properties);
    if event.distinct_id = '' then
      continue;
    end if;

    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    values (pid, event.distinct_id, event.day, event.event_name, 1, event.event_time, event.event_time)
    on conflict (project_id, distinct_id, day, event_name) do update set
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
$function$;
comment on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) is 'Row-at-a-time core of the _loop ADD: per event in [from_day, to_day] (in line order per user), a duplicate when its legacy key is in event_ledger_legacy or its key is in the ledger on its day or the two days either side, else one ledger insert (with the raw columns) and one events_daily upsert. With events.store_raw on, events with no distinct_id get their ledger row under '''' and are never counted.';
grant execute on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) to mixpanel_sync_loader;

create or replace function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
 returns void
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  stored record;
  shrunk record;
  min_events bigint := mixpanel_sync.setting(pid, 'events.replace_guard_min_events')::bigint;
  ratio numeric := mixpanel_sync.setting(pid, 'events.replace_guard_ratio')::numeric;
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
  if not exists (
    select from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
      and e.day between run.window_from_day and run.window_to_day) then
    select count(*) as days, sum(d.event_count) as events into stored
    from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection));
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
    where d.project_id = pid and d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection))
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
comment on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) is 'The REPLACE guard of finish_run, for full runs (resyncs included) begun without allow_shrink: raises MP001 when the run has no usable event in its window while the window holds events, or when a day of the window holding at least events.replace_guard_min_events events would keep less than events.replace_guard_ratio of them. With a selection (options->''events'') only the selected names count, on both sides: the REPLACE leaves the others as they are. Usable events: reject_reason and skip_reason null.';
grant execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean)
 returns mixpanel_sync.profiles_result
 language sql
 set search_path to ''
 set work_mem to '64MB'
 set enable_nestloop to 'off'
 set jit to 'off'
as $function$
  with staged as materialized (
    select s.line_id, md5(coalesce(r.project_timezone, '') || E'\n' || s.line)::uuid as line_hash, r.project_id
    from mixpanel_sync.staged_profiles s
    join mixpanel_sync.sync_runs r on r.id = s.run_id
    where s.run_id = upsert_subscriber_properties.run_id
  ), known as materialized (
    -- Lines identical to the line that set a row (same zone): that row's profile, unchanged, not parsed.
    -- Without change detection every line is parsed and written, as the original did.
    select st.line_id, c.distinct_id
    from staged st
    join mixpanel_sync.subscriber_properties c on c.project_id = st.project_id and c.line_hash = st.line_hash
    where change_detection
  ), parsed as materialized (
    select p.*, st.line_hash, st.project_id
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
    left join mixpanel_sync.subscriber_properties c on c.project_id = l.project_id and c.distinct_id = l.distinct_id
  ), written as (
    insert into mixpanel_sync.subscriber_properties as s
      (project_id, distinct_id, email, name, first_name, last_name, phone, city, region, country_code, timezone,
       created_at, last_seen_at, properties, changed_by_run_id, line_hash, first_synced_at, updated_at)
    select c.project_id, c.distinct_id, c.email, c.name, c.first_name, c.last_name, c.phone, c.city, c.region, c.country_code,
      c.timezone, c.created_at, c.last_seen_at, c.properties, c.run_id, c.line_hash, now(), now()
    from compared c
    -- Unchanged profiles never reach the insert: no row lock, no WAL, no page dirtied.
    where not change_detection or not c.is_unchanged
    order by c.project_id, c.distinct_id
    on conflict (project_id, distinct_id) do update set
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
$function$;
comment on function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean) is 'Applies a profiles run''s staged lines in ONE statement: a line identical to the one that set its row is unchanged without parsing; the others are parsed (rejects to sync_rejects with their line number), the last line of each profile wins, and INSERT … ON CONFLICT DO UPDATE … WHERE (columns) IS DISTINCT FROM (excluded columns) writes only what changed. change_detection false parses and writes every profile (the original behaviour). Both leave the same contents.';
grant execute on function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental.run_id);
  -- ledger rows of the window are kept from this day on (finish_run passes the storage horizon: older rows would be
  -- dropped at once); null: the whole window.
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- the run's selection: only rows of these names are merged or deleted (null: every name)
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental.run_id);
  counted record;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental.run_id, kept_from, to_day);

  -- The legacy ledger only ever empties: its rows of the window go (as before the merge).
  delete from mixpanel_sync.event_ledger_legacy g
  where g.project_id = pid and g.day between from_day and to_day and (names is null or g.event_name = any (names));

  -- The window's new content is the run's events of the window (of the selected names), deduplicated (a key fixes
  -- the name and the second; the first line of the run wins), less those already counted outside the window: a key
  -- can sit in the ledger (or, by its old-formula key, in the legacy ledger) on a day outside the window when the
  -- project timezone changed between runs (by at most two days: offsets span 26 hours). With raw storage on, the
  -- events with no distinct_id are part of it under distinct_id '' (ledger only).
  with wanted as materialized (
    select distinct on (coalesce(e.distinct_id, ''), e.event_key)
      coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
      and e.day between from_day and to_day
      and (names is null or e.event_name = any (names))
    order by coalesce(e.distinct_id, ''), e.event_key, e.line_id
  ), kept as materialized (
    select w.*
    from wanted w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and l.day between w.day - 2 and w.day + 2 and (l.day < from_day or l.day > to_day)))
  ), ledger_diff as materialized (
    -- The window's ledger rows (of the selected names) against its new content from kept_from on, matched on the
    -- primary key: k only = a new row, l only = a row gone (also every row before kept_from), both = a row whose name,
    -- time or raw columns differ. Rows that match and are equal are not listed: they are not written.
    select k.distinct_id as k_distinct_id, k.event_key as k_event_key, k.day as k_day, k.event_name, k.event_time,
      k.insert_id, k.processing_time_ms, k.properties,
      l.distinct_id as l_distinct_id, l.event_key as l_event_key, l.day as l_day
    from (select k.* from kept k where k.day >= kept_from) k
    full join (
      select l.distinct_id, l.event_key, l.day, l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties
      from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.day between from_day and to_day and (names is null or l.event_name = any (names))
    ) l on l.distinct_id = k.distinct_id and l.event_key = k.event_key and l.day = k.day
    where k.distinct_id is null or l.distinct_id is null
      or (l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties)
        is distinct from (k.event_name, k.event_time, k.insert_id, k.processing_time_ms, k.properties)
  ), ledger_gone as (
    delete from mixpanel_sync.event_ledger l
    using ledger_diff x
    where l.project_id = pid and x.k_distinct_id is null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), ledger_new as (
    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select pid, x.k_distinct_id, x.k_event_key, x.k_day, x.event_name, x.event_time, upsert_subscribers_incremental.run_id,
      x.insert_id, x.processing_time_ms, x.properties
    from ledger_diff x
    where x.l_distinct_id is null
    order by x.k_distinct_id, x.k_event_key
    returning 1
  ), ledger_changed as (
    update mixpanel_sync.event_ledger l set
      event_name = x.event_name, event_time = x.event_time, run_id = upsert_subscribers_incremental.run_id,
      insert_id = x.insert_id, processing_time_ms = x.processing_time_ms, properties = x.properties
    from ledger_diff x
    where l.project_id = pid and x.k_distinct_id is not null and x.l_distinct_id is not null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), target as materialized (
    select k.distinct_id, k.day, k.event_name, count(*) as event_count, min(k.event_time) as first_at,
      max(k.event_time) as last_at
    from kept k
    where k.distinct_id <> ''
    group by k.distinct_id, k.day, k.event_name
  ), daily_diff as materialized (
    -- The window's events_daily rows (of the selected names) against the target, as for the ledger: t only = new,
    -- d only = gone, both = changed (an unchanged row is not listed: no dead tuple, no index entry, no WAL).
    select t.distinct_id as t_distinct_id, t.day as t_day, t.event_name as t_event_name, t.event_count, t.first_at,
      t.last_at, d.distinct_id as d_distinct_id, d.day as d_day, d.event_name as d_event_name
    from target t
    full join (
      select d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d
      where d.project_id = pid and d.day between from_day and to_day and (names is null or d.event_name = any (names))
    ) d on d.distinct_id = t.distinct_id and d.day = t.day and d.event_name = t.event_name
    where t.distinct_id is null or d.distinct_id is null
      or (d.event_count, d.first_at, d.last_at) is distinct from (t.event_count, t.first_at, t.last_at)
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    using daily_diff x
    where d.project_id = pid and x.t_distinct_id is null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  ), daily_new as (
    insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select pid, x.t_distinct_id, x.t_day, x.t_event_name, x.event_count, x.first_at, x.last_at
    from daily_diff x
    where x.d_distinct_id is null
    order by x.t_distinct_id, x.t_day, x.t_event_name
    returning events_daily.distinct_id
  ), daily_changed as (
    update mixpanel_sync.events_daily d set event_count = x.event_count, first_at = x.first_at, last_at = x.last_at
    from daily_diff x
    where d.project_id = pid and x.t_distinct_id is not null and x.d_distinct_id is not null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  )
  select
    (select count(*) from kept k where k.distinct_id <> '') as applied,
    array(select g.distinct_id from daily_gone g union select n.distinct_id from daily_new n
      union select c.distinct_id from daily_changed c) as touched,
    (select count(*) from ledger_gone) + (select count(*) from ledger_new) + (select count(*) from ledger_changed)
      as ledger_rows_written
  into counted;

  perform mixpanel_sync.refresh_subscribers(pid, counted.touched);
  return (
    select (counted.applied,
      count(*) filter (where e.day between from_day and to_day and (names is null or e.event_name = any (names))) - counted.applied,
      count(*) filter (where e.day not between from_day and to_day),
      cardinality(counted.touched))::mixpanel_sync.apply_result
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id and e.reject_reason is null and e.skip_reason is null
  );
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, set-based, as a merge: the days [from_day, to_day] of events_daily and event_ledger end up holding exactly the run''s events of those days, deduplicated (less events already counted outside the window, looked up two days either side), and only what changed is written: rows gone deleted, new rows inserted, a row rewritten only when IS DISTINCT FROM its new content (raw columns included). With a run selection (sync_runs.options -> ''events'') only rows of the selected names are merged or deleted; other names are untouched. Ledger rows are kept from ledger_from on (null: the whole window; finish_run passes the storage horizon). With events.store_raw on, rows carry the raw columns and events with no distinct_id are kept under distinct_id ''''. event_ledger_legacy rows of the window are deleted. applied: events the window now holds from the run; duplicates: the run''s other events of the window; too_old: its events outside the window; users_touched: users whose events_daily rows changed (their subscribers row is recomputed). Rows outside the window are untouched.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set enable_nestloop to 'off'
 set jit to 'off'
 set enable_seqscan to 'off'
 set plan_cache_mode to 'force_generic_plan'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_loop.run_id);
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw(pid);
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental_loop.run_id);
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
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_loop.run_id, kept_from, to_day);

  for legacy_row in
    select g.distinct_id, g.event_key from mixpanel_sync.event_ledger_legacy g
    where g.project_id = pid and g.day between from_day and to_day and (names is null or g.event_name = any (names))
    order by g.distinct_id, g.event_key
  loop
    delete from mixpanel_sync.event_ledger_legacy g
    where g.project_id = pid and g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;
  end loop;

  -- 1. The run's events in events_daily order (a key fixes the day and the name, so repeats are adjacent, the first
  --    line first): each kept event claims its ledger row, each (user, day, name) group its events_daily row. Events
  --    with no distinct_id (raw storage on) come first, under '', and only claim their ledger row.
  for event in
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.day, e.event_name, e.event_key, e.line_id
  loop
    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;
    if names is not null and not event.event_name = any (names) then
      continue;
    end if;
    if event.distinct_id = previous_id and event.event_key = previous_key then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;
    previous_id := event.distinct_id;
    previous_key := event.event_key;
    if event.legacy_key is not null and exists (
      select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    if event.day >= kept_from then
      select l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties into stored
      from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      if not found then
        insert into mixpanel_sync.event_ledger
          (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
        values (pid, event.distinct_id, event.event_key, event.day, event.event_name, event.event_time,
          upsert_subscribers_incremental_loop.run_id, event.insert_id, event.processing_time_ms, event.properties);
      elsif (stored.event_name, stored.event_time, stored.insert_id, stored.processing_time_ms, stored.properties)
        is distinct from (event.event_name, event.event_time, event.insert_id, event.processing_time_ms, event.properties) then
        update mixpanel_sync.event_ledger l set event_name = event.event_name, event_time = event.event_time,
          insert_id = event.insert_id, processing_time_ms = event.processing_time_ms, properties = event.properties,
          run_id = upsert_subscribers_incremental_loop.run_id
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      end if;
    end if;

    if event.distinct_id = '' then
      continue;
    end if;
    if group_count > 0 and (group_id, group_day, group_name) is distinct from (event.distinct_id, event.day, event.event_name) then
      if mixpanel_sync.merge_daily_row_loop(pid, group_id, group_day, group_name, group_count, group_first, group_last) then
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
  if group_count > 0 and mixpanel_sync.merge_daily_row_loop(pid, group_id, group_day, group_name, group_count, group_first, group_last) then
    touched := array_append(touched, group_id);
  end if;

  -- 2. events_daily rows of the window (of the selected names) the run has no kept event for: deleted, one at a
  --    time. (The rows are found with one anti-join: a per-row lookup in run_events, which has no index for it,
  --    would make the loop quadratic.)
  for daily_row in
    select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day between from_day and to_day
      and (names is null or d.event_name = any (names))
      and not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null and e.skip_reason is null
          and e.distinct_id = d.distinct_id and e.day = d.day and e.event_name = d.event_name
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger l
            where l.project_id = pid and l.distinct_id = e.distinct_id and l.event_key = e.event_key
              and l.day between e.day - 2 and e.day + 2 and (l.day < from_day or l.day > to_day)))
    order by d.distinct_id, d.day, d.event_name
  loop
    delete from mixpanel_sync.events_daily d
    where d.project_id = pid and d.distinct_id = daily_row.distinct_id and d.day = daily_row.day and d.event_name = daily_row.event_name;
    touched := array_append(touched, daily_row.distinct_id);
  end loop;

  -- 3. Ledger rows of the window (of the selected names) no kept event of the run claimed (or before kept_from):
  --    deleted, one at a time. Two branches, not `l.day < kept_from or not exists (...)`: a NOT EXISTS under OR is
  --    never an anti-join but a subplan per ledger row, and run_events has no index for it (coalesce(distinct_id, '')),
  --    so every ledger row rescanned the run's events: quadratic (1,000 users of the bench: 401 s instead of ~1 s).
  for ledger_row in
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.day between from_day and to_day
      and (names is null or l.event_name = any (names))
      and l.day < kept_from
    union all
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.day between from_day and to_day and l.day >= kept_from
      and (names is null or l.event_name = any (names))
      and (not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
          and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
          and coalesce(e.distinct_id, '') = l.distinct_id and e.event_key = l.event_key and e.day = l.day
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger o
            where o.project_id = pid and o.distinct_id = l.distinct_id and o.event_key = l.event_key
              and o.day between l.day - 2 and l.day + 2 and (o.day < from_day or o.day > to_day))))
    order by 1, 2, 3
  loop
    delete from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.distinct_id = ledger_row.distinct_id and l.event_key = ledger_row.event_key and l.day = ledger_row.day;
  end loop;

  for user_id in select distinct u from unnest(touched) u order by 1 loop
    perform mixpanel_sync.refresh_subscriber_loop(pid, user_id);
  end loop;
  return (applied, duplicates, outside, (select count(distinct u) from unnest(touched) u))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, row-at-a-time reference implementation of upsert_subscribers_incremental: the same merge (only what changed is written), the same selection and raw rules, the same contract, the same resulting tables and apply_result.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_add.run_id);
  raw_on boolean := mixpanel_sync.store_raw(pid);
  result mixpanel_sync.apply_result;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add.run_id, horizon_day, 'infinity');

  with candidates as materialized (
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.line_id, e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), not_on_day as materialized (
    -- An event already in the ledger on its day or the two days either side (a change of project timezone moves a
    -- key's day by at most 26 hours) is a duplicate; so is an event whose old-formula key is in the legacy ledger
    -- (same distinct_id: applied before the upgrade). Its own day first: a re-read event (the overlap, most of an
    -- incremental run) is found there in one probe of one day partition and goes no further; only the events not on
    -- their day (the new ones) are looked up on the days either side.
    select w.* from in_window w
    where not exists (
      select from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day = w.day)
  ), ledgered as (
    -- The days either side, as a subquery run per remaining event (one probe of each such day partition that
    -- exists), not as a NOT EXISTS: an anti-join there is planned, on a small ledger, as a second hash of the whole
    -- ledger. DO NOTHING skips repeats inside the batch: the first line wins.
    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select pid, w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id,
      w.insert_id, w.processing_time_ms, w.properties
    from not_on_day w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and (select true from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and (l.day between w.day - 2 and w.day - 1 or l.day between w.day + 1 and w.day + 2)
        limit 1) is null
    order by w.distinct_id, w.event_key, w.line_id
    on conflict (project_id, distinct_id, event_key, day) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), applied as (
    select l.* from ledgered l where l.distinct_id <> ''
  ), daily as (
    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select pid, l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from applied l
    group by l.distinct_id, l.day, l.event_name
    on conflict (project_id, distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  ), per_name as (
    select l.distinct_id, l.event_name, count(*) as event_count, min(l.event_time) as first_at, max(l.event_time) as last_at
    from applied l
    group by l.distinct_id, l.event_name
  ), summed as (
    -- ADD only ever adds: the summary moves by the run's delta, without reading a user's history
    -- (what keeps an incremental run's cost independent of it).
    insert into mixpanel_sync.subscribers as s
      (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
    select pid, p.distinct_id, sum(p.event_count), min(p.first_at), max(p.last_at), jsonb_object_agg(p.event_name, p.event_count), now()
    from per_name p
    group by p.distinct_id
    on conflict (project_id, distinct_id) do update set
      total_events = s.total_events + excluded.total_events,
      first_event_at = least(s.first_event_at, excluded.first_event_at),
      last_event_at = greatest(s.last_event_at, excluded.last_event_at),
      event_counts = mixpanel_sync.add_event_counts(s.event_counts, excluded.event_counts),
      updated_at = excluded.updated_at
  )
  select
    (select count(*) from applied),
    (select count(*) from in_window w where w.distinct_id <> '') - (select count(*) from applied),
    (select count(*) from candidates c where c.distinct_id <> '') - (select count(*) from in_window w where w.distinct_id <> ''),
    (select count(distinct l.distinct_id) from applied l)
  into result.applied, result.duplicates, result.too_old, result.users_touched;
  return result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) is 'ADD, set-based, one statement: applies the run''s events not yet in the ledger on their day or the two days either side (nor, by their old-formula key, in event_ledger_legacy; repeats inside the run count once, the first line wins) and moves each touched subscriber by the run''s delta; events before horizon_day cannot be deduplicated and are counted too_old, not applied. The ledger is probed on the event''s own day first (one day partition), and only the events not found there on the days either side (the partitions of those days that exist): a re-read event costs one probe, a new one at most five. With events.store_raw on, ledger rows carry the raw columns and events with no distinct_id are kept under distinct_id '''' (deduplicated the same way, never counted). Idempotent and order-independent.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_add_loop.run_id);
  inserted record;
  user_id text;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add_loop.run_id, horizon_day, 'infinity');
  inserted := mixpanel_sync.insert_new_events_loop(run_id, horizon_day, 'infinity');
  foreach user_id in array inserted.distinct_ids loop
    perform mixpanel_sync.refresh_subscriber_loop(pid, user_id);
  end loop;
  return (inserted.applied, inserted.duplicates, inserted.outside, cardinality(inserted.distinct_ids))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) is 'ADD, row-at-a-time reference implementation of upsert_subscribers_incremental_add: same contract, same resulting tables.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  parsed record;
  result mixpanel_sync.apply_result;
  horizon date := mixpanel_sync.horizon_day(run.fetch_to, mixpanel_sync.setting(pid, 'events.ledger_retention')::interval);
  path text := mixpanel_sync.setting(pid, 'events.upsert_path');
  overlap_ms bigint := (extract(epoch from mixpanel_sync.setting(pid, 'events.overlap')::interval) * 1000)::bigint;
  mark mixpanel_sync.sync_watermarks;
  seen record;
  marker record;
  recomputes boolean;
  held timestamptz;
  new_processing timestamptz;
  identity jsonb;
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- The storage horizon: the project's ledger rows are kept from here on. Raw off: the ledger horizon (what ADD can
  -- deduplicate). Raw on: also events.raw_retention's days ('forever': every day).
  store_from date := mixpanel_sync.storage_horizon(pid, run.fetch_to);
  -- The day partitions are shared: only the days before every project's storage horizon are dropped, another
  -- project's horizon taken at its own clock (its last succeeded events run): this run's clock may be ahead of it.
  shared_from date := least(mixpanel_sync.storage_horizon(pid, run.fetch_to), (
    select min(mixpanel_sync.storage_horizon(p.id, coalesce((
        select max(r.fetch_to) from mixpanel_sync.sync_runs r
        where r.project_id = p.id and r.source = 'events' and r.status = 'succeeded'), run.fetch_to)))
    from mixpanel_sync.projects p where p.id <> pid));
  keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);
begin
  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Mixpanel's "terminated early" line is not JSON, so the parse has rejected it: the probe reads the run's rejected
  -- lines only (a PK lookup each), not every staged line.
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.run_events e
  join mixpanel_sync.staged_events s on s.run_id = e.run_id and s.line_id = e.line_id
  -- octet_length(s.line) < 256 first: it reads the length from the value's header, where length() counts the
  -- characters of the whole line; it keeps every line of fewer than 64 characters (at most 4 bytes each in UTF-8).
  -- Then length(s.line) < 64, is_terminated_early_marker's own first test, so only short lines reach the call.
  where e.run_id = run.id and e.reject_reason is not null and s.problem is null
    and octet_length(s.line) < 256 and length(s.line) < 64
    and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;
  -- Every statement from here on is planned on the run's real size (analyze_run_events: run ids only grow, so older
  -- statistics estimate this run at about one row).
  perform mixpanel_sync_private.analyze_run_events();

  -- Identity merge (500-identity.sql, issue 12): learn the run's links, move the rows of ids no longer canonical,
  -- rewrite the run's events to canonical ids; before the guard and the apply path, which then see canonical ids.
  identity := mixpanel_sync.apply_identity(run.id);
  run.options := run.options || identity;
  run.links_learned := (identity ->> 'links_learned')::bigint;
  run.reattributed_events := (identity ->> 'reattributed_events')::bigint;

  if run.mode = 'full' then
    perform mixpanel_sync.replace_guard(run);
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day, store_from)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day, store_from)
    end;
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  -- Retention: whole day partitions before every project's storage horizon are dropped (no row is deleted; never
  -- waits: skipped when the ledger is busy). The project's own rows of the days between that and its own storage
  -- horizon (kept for another project with a longer retention) are deleted: a range of day partitions, found empty
  -- when every project keeps the same days. The legacy ledger (not partitioned, only ever empties) loses the
  -- project's rows before the ledger horizon.
  if shared_from > '-infinity' then
    perform mixpanel_sync_private.drop_ledger_partitions(shared_from);
  end if;
  if store_from > shared_from then
    delete from mixpanel_sync.event_ledger l where l.project_id = pid and l.day >= shared_from and l.day < store_from;
  end if;
  delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid and l.day < horizon;

  -- One scan of the run's valid events: what it did not apply by design (events with no distinct_id, events outside
  -- its selection), and the events that may move the watermark (in_tables): only those now in the tables (applied or
  -- already there; fetch_to already caps them, as later events were rejected).
  select count(*) filter (where e.skip_reason = 'no_user') as no_user,
    count(*) filter (where e.skip_reason = 'not_selected') as not_selected,
    max(e.event_time) filter (where e.in_tables) as event_time,
    max(e.processing_time) filter (where e.in_tables) as processing_time,
    jsonb_build_object(
      'events', count(e.lateness_ms) filter (where e.in_tables),
      'p50_ms', percentile_disc(0.5) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p90_ms', percentile_disc(0.9) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p99_ms', percentile_disc(0.99) within group (order by e.lateness_ms) filter (where e.in_tables),
      'max_ms', max(e.lateness_ms) filter (where e.in_tables),
      'beyond_overlap', count(*) filter (where e.in_tables and e.lateness_ms > overlap_ms)
    ) as lateness
  into seen
  from (
    select e.skip_reason, e.event_time, e.processing_time, e.lateness_ms,
      e.skip_reason is null
        and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity') as in_tables
    from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null
  ) e;

  select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events' for update;
  run.watermark_before := mark.watermark;
  -- The watermark never claims data the tables do not hold. A full run holds exactly its events in its window, so
  -- it resets the watermarks: to the newest event it applied, or, when it applied none, to the newest event the
  -- tables hold before its window (no watermark at all when they hold none: the next run is full). A resync moves
  -- them forward only, unless the watermark lies in its window: then it is recomputed like a full run's.
  -- Incremental runs only move them forward.
  recomputes := run.mode = 'full' and (run.options ->> 'mode_reason' is distinct from 'resync'
    or (mark.watermark at time zone 'UTC')::date between run.window_from_day and run.window_to_day);
  if keeps_watermark then
    -- a run whose selection (begin_run: options -> 'events') leaves out names events.only syncs did not fetch them:
    -- the watermark stays as it is, for every name (moving it would skip their events for good)
    run.watermark_after := mark.watermark;
    new_processing := mark.processing_watermark;
  elsif not recomputes then
    run.watermark_after := greatest(mark.watermark, seen.event_time);
    new_processing := greatest(mark.processing_watermark, seen.processing_time);
  elsif seen.event_time is not null then
    run.watermark_after := seen.event_time;
    new_processing := coalesce(seen.processing_time, seen.event_time);
  else
    select max(d.last_at) into held
    from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day < run.window_from_day and d.last_at <= run.fetch_to;
    run.watermark_after := held;
    -- an event is processed at or after its time: later events are then read again, and deduplicated
    new_processing := held;
  end if;
  if keeps_watermark then
    null;  -- sync_watermarks untouched (a run with no watermark row leaves none)
  elsif run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (project_id, source, watermark, processing_watermark, run_id, updated_at)
    values (pid, 'events', run.watermark_after, new_processing, run.id, now())
    on conflict (project_id, source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
  else
    delete from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
  end if;

  run.received := parsed.received;
  run.rejected := parsed.rejected;
  run.applied := result.applied;
  run.duplicates := result.duplicates;
  run.too_old := result.too_old;
  run.users_touched := result.users_touched;
  run.no_user := seen.no_user;
  run.not_selected := seen.not_selected;
  -- finish_run records the counts it knows; these two are recorded here.
  update mixpanel_sync.sync_runs r set no_user = seen.no_user, not_selected = seen.not_selected where r.id = run.id;
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon, 'store_raw', raw_on,
    'storage_horizon_day', case when store_from > '-infinity' then store_from end);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: parses once, refuses an incomplete input (Mixpanel''s "terminated early" line, which the parse rejects as not JSON: MP003, nothing applied), runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below every project''s storage horizon (another project''s taken at the clock of its last succeeded events run) and deletes the project''s rows below its own (storage_horizon: events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
grant execute on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  change_detection boolean := mixpanel_sync.setting(pid, 'profiles.change_detection') = 'on';
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
$function$;
comment on function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs) is 'The profiles part of finish_run (same transaction): applies the run with upsert_subscriber_properties under profiles.change_detection (fast path, then on any error a line can cause the careful path, then line by line rejecting a line that still raises) and fills received, rejected, duplicates, inserted, updated, unchanged, users_touched and options (change_detection, rows_written, lines_recognised, dates_read_in).';
grant execute on function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_run(run_id bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  began timestamptz := clock_timestamp();
  run mixpanel_sync.sync_runs;
begin
  -- A project's finishes are serialised: apply one at a time (another project's finish goes on: its own key).
  run := mixpanel_sync.running_run(run_id, 'finish_run', null);
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run:' || run.project_id, 0));
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
  perform mixpanel_sync.prune_history(run.project_id);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_run(run_id bigint) is 'Applies a run in ONE transaction: parse, reject, identity step, REPLACE guard, REPLACE or ADD, prune the ledger, advance the watermark, record counts and timings. A project''s finishes are serialised with a transaction-scoped advisory lock of its own (mixpanel_sync.finish_run:<project id>); two projects'' finishes run at the same time. On error nothing changes (MP001 guard refusal, MP003 incomplete input, …): call fail_run with the SQLSTATE.';
grant execute on function mixpanel_sync.finish_run(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_cohorts_run(run_id bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = finish_cohorts_run.run_id);
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

  if n_list > n_list_rejected or not exists (select from mixpanel_sync.cohorts c where c.project_id = pid) then
    -- The list is whole: cohorts no longer in it are deleted (their members with them).
    delete from mixpanel_sync.cohorts c
    where c.project_id = pid and not exists (select from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is null and l.cohort_id = c.cohort_id);
    get diagnostics n_cohorts_removed = row_count;
  else
    n_cohorts_removed := 0; -- an empty list over stored cohorts: nothing is deleted (see the run's options)
  end if;

  insert into mixpanel_sync.cohorts as c (project_id, cohort_id, name, description, member_count, is_visible, created_at, properties, changed_by_run_id, synced_at)
  select distinct on (l.cohort_id) pid, l.cohort_id, l.line ->> 'name', l.line ->> 'description',
    case when (l.line ->> 'count') ~ '^[0-9]{1,18}$' then (l.line ->> 'count')::bigint end,
    case when jsonb_typeof(l.line -> 'is_visible') = 'number' then (l.line ->> 'is_visible') <> '0'
      when jsonb_typeof(l.line -> 'is_visible') = 'boolean' then (l.line ->> 'is_visible')::boolean end,
    case when (l.line ->> 'created') ~ '^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$' then (l.line ->> 'created')::timestamp at time zone 'UTC' end,
    l.line, finish_cohorts_run.run_id, now()
  from mixpanel_sync.cohort_list_rows(run.id) l
  where l.reject_reason is null
  order by l.cohort_id, l.line_id desc
  on conflict (project_id, cohort_id) do update set
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
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', r.line_id, r.profile::text, r.reject_reason || ' (cohort ' || r.cohort_id || ')'
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id where r.reject_reason is not null;

  -- Who left: members of the cohorts fetched whole that the fetch no longer has.
  delete from mixpanel_sync.cohort_members cm
  where cm.project_id = pid and cm.cohort_id in (
      select f.cohort_id from mixpanel_sync.staged_cohort_fetches f where f.run_id = finish_cohorts_run.run_id)
    and not exists (
      select from mixpanel_sync.cohort_member_rows(run.id) r
      where r.reject_reason is null and r.cohort_id = cm.cohort_id and r.distinct_id = cm.distinct_id);
  get diagnostics n_removed = row_count;

  -- Who joined; members who stayed are not touched (on conflict do nothing writes no tuple for them).
  insert into mixpanel_sync.cohort_members (project_id, cohort_id, distinct_id, added_by_run_id)
  select distinct pid, r.cohort_id, r.distinct_id, finish_cohorts_run.run_id
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id
  where r.reject_reason is null
    and not exists (select from mixpanel_sync.cohort_members cm where cm.project_id = pid and cm.cohort_id = r.cohort_id and cm.distinct_id = r.distinct_id)
  on conflict do nothing;
  get diagnostics n_added = row_count;

  select count(distinct (r.cohort_id, r.distinct_id)) into n_members from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id where r.reject_reason is null;
  select count(*) into n_whole from mixpanel_sync.staged_cohort_fetches f
  where f.run_id = finish_cohorts_run.run_id and exists (select from mixpanel_sync.cohorts c where c.project_id = pid and c.cohort_id = f.cohort_id);

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
$function$;
comment on function mixpanel_sync.finish_cohorts_run(run_id bigint) is 'Applies a cohorts run in one transaction, set-based with change detection: cohorts upserted only when their list entry changed and deleted when no longer listed; for each cohort fetched whole, members who left deleted and who joined inserted, members who stayed untouched (an unchanged membership writes 0 tuples). Counts: received = member rows staged = applied (distinct members) + duplicates + rejected (list rejects counted in rejected too); inserted = members added, updated = members removed, unchanged = members kept; the rest in options.';
grant execute on function mixpanel_sync.finish_cohorts_run(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.spot_check_differences(check_id bigint)
 returns table(distinct_id text, day date, event_name text, mixpanel bigint, ours bigint, pending bigint, differs boolean, reason text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
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
    where d.project_id = c.project_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
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
            where d.project_id = c.project_id and d.distinct_id = u.distinct_id and d.event_name = n.event_name and d.day not between c.from_day and c.to_day), 0) as expected
    from c cross join unnest(c.users) u(distinct_id)
    left join mixpanel_sync.subscribers s on s.project_id = c.project_id and s.distinct_id = u.distinct_id
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
 returns table(compared bigint, pending bigint)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  -- (user, day, event) groups over the window on either side, and the pending events among Mixpanel's
  select
    (select count(*) from (
      select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d, mixpanel_sync.spot_checks c
      where c.id = spot_check_counts.check_id and d.project_id = c.project_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
        and (coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? d.event_name)
      union
      select x.distinct_id, x.day, x.event_name from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x where x.day is not null
    ) g),
    (select coalesce(sum(x.pending), 0)::bigint from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x);
$function$;
comment on function mixpanel_sync.spot_check_counts(check_id bigint) is 'How many (user, day, event) groups a spot-check compared (of the names it compares: spot_checks.events), and how many of Mixpanel''s events were pending.';
grant execute on function mixpanel_sync.spot_check_counts(check_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync_private.analyze_run_events()
 returns void
 language plpgsql
 security definer
 set search_path to ''
as $function$
begin
  -- skip_locked: another project's finish_run analyzes it too, and holds its lock to commit; then the statistics
  -- sampled last are used (this finish does not wait for the other one).
  analyze (skip_locked) mixpanel_sync.run_events;
end;
$function$;
comment on function mixpanel_sync_private.analyze_run_events() is 'Samples mixpanel_sync.run_events (ANALYZE) so that the statements after the parse are planned on the running run''s real size: run ids only grow, so statistics sampled earlier estimate a new run at about one row, and a REPLACE planned on that runs its anti-joins as nested loops (64 s instead of 1.2 s measured for a second 95,000-line full sync). It samples 3,000 rows (the columns'' statistics targets: 10, and 0 for the raw columns). SECURITY DEFINER (owned by the schema owner) because only the owner may analyze the table; it analyzes nothing else. skip_locked: while another finish_run (of another project) holds the table''s ANALYZE lock to its commit, nothing is sampled and this finish goes on with the statistics sampled last.';
grant execute on function mixpanel_sync_private.analyze_run_events() to mixpanel_sync_loader;


-- drop_staged_rows is unchanged (its "no other run of the source is running" counts every project's runs); its comment
-- says so.
comment on function mixpanel_sync.drop_staged_rows(run_id bigint) is 'Removes everything staged for a run: staged rows never outlive their run. When no other run of its source is running, in any project (begin_run allows one per project and source), the staging tables of the source are TRUNCATEd, so their disk space returns at once (a DELETE would leave it dead until vacuum). The lock for the TRUNCATE waits up to twice deadlock_timeout per table (at least 200 ms, at most 10 s; lock_timeout set for that statement only), long enough for PostgreSQL to cancel an autovacuum worker holding a conflicting lock; if another run of the source is running (of any project: another project''s staged lines are never truncated away), or the lock is still held after that wait (a loader still COPYing for a run abandoned as stale), the rows are deleted.';
