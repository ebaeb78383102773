-- 400-helpers: the internal helpers take a leading project_id smallint (docs/projects.md §5.4); the subscriber-count
-- triggers count per project (the rows' project_id). Idempotent: old signatures dropped if they exist, then created or
-- replaced.

drop function if exists mixpanel_sync.identity_canonical(text);
create or replace function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text)
 returns text
 language sql
 stable
 set search_path to ''
as $function$
  select coalesce((select l.canonical from mixpanel_sync.identity_links l
    where l.project_id = identity_canonical.project_id and l.alias = identity_canonical.distinct_id), identity_canonical.distinct_id);
$function$;
comment on function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text) is 'The canonical id of a distinct_id of a project through its identity_links (the id itself when no link names it).';
grant execute on function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.identity_cluster(text);
create or replace function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text)
 returns table(member text, canonical text, is_canonical boolean, identified_at timestamp with time zone, learned_from_run bigint, learned_at timestamp with time zone)
 language sql
 stable
 set search_path to ''
as $function$
  select l.alias, l.canonical, l.alias = l.canonical, l.identified_at, l.learned_from_run, l.learned_at
  from mixpanel_sync.identity_links l
  where l.project_id = identity_cluster.project_id and l.canonical = mixpanel_sync.identity_canonical(identity_cluster.project_id, identity_cluster.distinct_id)
  union all
  select identity_cluster.distinct_id, identity_cluster.distinct_id, true, null, null, null
  where not exists (select from mixpanel_sync.identity_links l where l.project_id = identity_cluster.project_id and l.alias = identity_cluster.distinct_id)
  order by 3 desc, 1;
$function$;
comment on function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text) is 'The cluster of a distinct_id, canonical id first: select * from mixpanel_sync.identity_cluster(mixpanel_sync.project_id(), ''$device:D1''). An id no link names is a cluster of one.';
grant execute on function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.last_succeeded_run(text);
create or replace function mixpanel_sync.last_succeeded_run(project_id smallint, source text)
 returns mixpanel_sync.sync_runs
 language sql
 stable
 set search_path to ''
as $function$
  select * from mixpanel_sync.sync_runs r
  where r.project_id = last_succeeded_run.project_id and r.source = last_succeeded_run.source and r.status = 'succeeded'
  order by r.finished_at desc, r.id desc
  limit 1;
$function$;
comment on function mixpanel_sync.last_succeeded_run(project_id smallint, source text) is 'The run of this project and source applied last (a row of nulls when there is none).';
grant execute on function mixpanel_sync.last_succeeded_run(project_id smallint, source text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.refresh_subscribers(text[]);
create or replace function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[])
 returns void
 language sql
 set search_path to ''
 set jit to 'off'
as $function$
  with users as (
    select distinct u.distinct_id from unnest(distinct_ids) as u (distinct_id)
  ), per_event as (
    select d.distinct_id, d.event_name, sum(d.event_count) as event_count,
      min(d.first_at) as first_at, max(d.last_at) as last_at
    from users u
    join mixpanel_sync.events_daily d on d.project_id = refresh_subscribers.project_id and d.distinct_id = u.distinct_id
    group by d.distinct_id, d.event_name
  ), per_user as (
    select e.distinct_id, sum(e.event_count)::bigint as total_events, min(e.first_at) as first_event_at,
      max(e.last_at) as last_event_at, jsonb_object_agg(e.event_name, e.event_count) as event_counts
    from per_event e
    group by e.distinct_id
  ), removed as (
    delete from mixpanel_sync.subscribers s
    using users u
    where s.project_id = refresh_subscribers.project_id and s.distinct_id = u.distinct_id
      and not exists (select from per_user p where p.distinct_id = u.distinct_id)
  )
  insert into mixpanel_sync.subscribers as s
    (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  select refresh_subscribers.project_id, p.distinct_id, p.total_events, p.first_event_at, p.last_event_at, p.event_counts, now()
  from per_user p
  on conflict (project_id, distinct_id) do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
$function$;
comment on function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[]) is 'Recomputes subscribers for these users of a project from events_daily, set-based; writes only rows that change, deletes users left with no events.';
grant execute on function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.refresh_subscriber_loop(text);
create or replace function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text)
 returns void
 language plpgsql
 set search_path to ''
as $function$
declare
  total bigint;
  first_seen timestamptz;
  last_seen timestamptz;
  counts jsonb;
begin
  select sum(d.event_count), min(d.first_at), max(d.last_at)
  into total, first_seen, last_seen
  from mixpanel_sync.events_daily d
  where d.project_id = refresh_subscriber_loop.project_id and d.distinct_id = refresh_subscriber_loop.distinct_id;

  if total is null then
    delete from mixpanel_sync.subscribers s where s.project_id = refresh_subscriber_loop.project_id and s.distinct_id = refresh_subscriber_loop.distinct_id;
    return;
  end if;

  select jsonb_object_agg(c.event_name, c.event_count) into counts
  from (
    select d.event_name, sum(d.event_count) as event_count
    from mixpanel_sync.events_daily d
    where d.project_id = refresh_subscriber_loop.project_id and d.distinct_id = refresh_subscriber_loop.distinct_id
    group by d.event_name
  ) c;

  insert into mixpanel_sync.subscribers as s
    (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  values (refresh_subscriber_loop.project_id, refresh_subscriber_loop.distinct_id, total, first_seen, last_seen, counts, now())
  on conflict on constraint subscribers_pkey do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
end;
$function$;
comment on function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text) is 'Row-at-a-time reference of refresh_subscribers for one user, used by the _loop paths.';
grant execute on function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.merge_daily_row_loop(text, date, text, bigint, timestamp with time zone, timestamp with time zone);
create or replace function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone)
 returns boolean
 language plpgsql
 set search_path to ''
 set enable_seqscan to 'off'
 set jit to 'off'
as $function$
declare
  stored record;
begin
  select d.event_count, d.first_at, d.last_at into stored
  from mixpanel_sync.events_daily d
  where d.project_id = merge_daily_row_loop.project_id and d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  if not found then
    insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    values (merge_daily_row_loop.project_id, merge_daily_row_loop.distinct_id, merge_daily_row_loop.day,
      merge_daily_row_loop.event_name, merge_daily_row_loop.event_count, merge_daily_row_loop.first_at, merge_daily_row_loop.last_at);
    return true;
  end if;
  if (stored.event_count, stored.first_at, stored.last_at) is not distinct from (event_count, first_at, last_at) then
    return false;
  end if;
  update mixpanel_sync.events_daily d set
    event_count = merge_daily_row_loop.event_count, first_at = merge_daily_row_loop.first_at,
    last_at = merge_daily_row_loop.last_at
  where d.project_id = merge_daily_row_loop.project_id and d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  return true;
end;
$function$;
comment on function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone) is 'Row-at-a-time step of upsert_subscribers_incremental_loop: sets one events_daily row to this count and first/last time, inserting it when missing and writing nothing when it already holds them; true when it wrote.';
grant execute on function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_identities(text[], text[]);
create or replace function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[])
 returns jsonb
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  moved record;
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
    -- (the ledger is the raw table: raw rows move with it. A key is looked up on its day and the two days either
    -- side, where a change of project timezone can have moved it.)
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id, l.properties is not null as is_raw,
      exists (select from mixpanel_sync.event_ledger c
        where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id and c.event_key = l.event_key and c.day between l.day - 2 and l.day + 2) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id, l.day) as n
    from mixpanel_sync.event_ledger l join moves m on l.project_id = reattribute_identities.project_id and l.distinct_id = m.from_id
  ), legacy_rows as (
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id,
      exists (select from mixpanel_sync.event_ledger_legacy c where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id and c.event_key = l.event_key) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id) as n
    from mixpanel_sync.event_ledger_legacy l join moves m on l.project_id = reattribute_identities.project_id and l.distinct_id = m.from_id
  ), ledger_dropped as (
    delete from mixpanel_sync.event_ledger l using ledger_rows r
    where l.project_id = reattribute_identities.project_id and (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning l.distinct_id, l.day, l.event_name
  ), ledger_moved as (
    update mixpanel_sync.event_ledger l set distinct_id = r.to_id
    from ledger_rows r
    where l.project_id = reattribute_identities.project_id and not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning r.is_raw
  ), legacy_dropped as (
    delete from mixpanel_sync.event_ledger_legacy l using legacy_rows r
    where l.project_id = reattribute_identities.project_id and (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning l.distinct_id, l.day, l.event_name
  ), legacy_moved as (
    update mixpanel_sync.event_ledger_legacy l set distinct_id = r.to_id
    from legacy_rows r
    where l.project_id = reattribute_identities.project_id and not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning 1
  ), dropped_counts as (
    select d.distinct_id, d.day, d.event_name, count(*) as events
    from (select * from ledger_dropped union all select * from legacy_dropped) d
    group by d.distinct_id, d.day, d.event_name
  ), alias_daily as (
    delete from mixpanel_sync.events_daily d using moves m
    where d.project_id = reattribute_identities.project_id and d.distinct_id = m.from_id
    returning d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at, m.to_id
  ), merged as (
    select a.to_id, a.day, a.event_name, sum(a.event_count - coalesce(c.events, 0)) as events,
      min(a.first_at) as first_at, max(a.last_at) as last_at
    from alias_daily a
    left join dropped_counts c on c.distinct_id = a.distinct_id and c.day = a.day and c.event_name = a.event_name
    group by a.to_id, a.day, a.event_name
  ), daily as (
    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select reattribute_identities.project_id, g.to_id, g.day, g.event_name, g.events, g.first_at, g.last_at
    from merged g
    where g.events > 0
    on conflict on constraint events_daily_pkey do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  )
  select
    (select coalesce(sum(g.events) filter (where g.events > 0), 0) from merged g) as events,
    (select count(*) from ledger_dropped) + (select count(*) from legacy_dropped) as duplicates,
    (select count(*) from ledger_moved) + (select count(*) from legacy_moved) as ledger_rows,
    (select count(*) from ledger_moved x where x.is_raw) as raw_rows
  into moved;

  -- Profiles: Mixpanel keeps the canonical id's profile. When the canonical id has none, the profile of the least
  -- alias becomes its profile; every other alias profile is removed.
  with moves as materialized (
    select m.from_id as from_id, m.to_id as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id) where m.from_id <> m.to_id
  ), alias_profiles as (
    select p.distinct_id, m.to_id,
      not exists (select from mixpanel_sync.subscriber_properties c where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id)
        and row_number() over (partition by m.to_id order by p.distinct_id collate "C") = 1 as keeps
    from mixpanel_sync.subscriber_properties p join moves m on p.project_id = reattribute_identities.project_id and p.distinct_id = m.from_id
  ), removed as (
    delete from mixpanel_sync.subscriber_properties p using alias_profiles a
    where p.project_id = reattribute_identities.project_id and not a.keeps and p.distinct_id = a.distinct_id
    returning 1
  ), renamed as (
    update mixpanel_sync.subscriber_properties p set distinct_id = a.to_id
    from alias_profiles a
    where p.project_id = reattribute_identities.project_id and a.keeps and p.distinct_id = a.distinct_id
    returning 1
  )
  select (select count(*) from removed) + (select count(*) from renamed) into profiles_moved;

  perform mixpanel_sync.refresh_subscribers(reattribute_identities.project_id, from_ids || to_ids);
  return jsonb_build_object('reattributed_events', moved.events, 'reattributed_duplicates', moved.duplicates,
    'reattributed_ledger_rows', moved.ledger_rows, 'reattributed_raw_events', moved.raw_rows,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[]) is 'Set-based: moves every row of from_ids[i] to to_ids[i] in events_daily (rows merged: sum, least first_at, greatest last_at), event_ledger (the raw events with it) and event_ledger_legacy (an event held under both ids, or two aliases, is kept once and its extra count taken back), subscriber_properties (the canonical profile wins), and recomputes subscribers of both. Returns counts: reattributed_events (events now counted under the canonical id), reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events (moved ledger rows that carry properties), reattributed_profiles.';
grant execute on function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_identities_loop(text[], text[]);
create or replace function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[])
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  move record;
  event record;
  day_row record;
  member text;
  events_moved bigint := 0;
  duplicates bigint := 0;
  ledger_rows bigint := 0;
  raw_moved bigint := 0;
  profiles_moved bigint := 0;
  touched text[] := '{}';
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
      select l.event_key, l.day, l.event_name, false as legacy, l.properties is not null as is_raw
      from mixpanel_sync.event_ledger l where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id
      union all
      select g.event_key, g.day, g.event_name, true, false from mixpanel_sync.event_ledger_legacy g where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id
      order by 4, 1, 2
    loop
      if not event.legacy and exists (select from mixpanel_sync.event_ledger c
          where c.project_id = reattribute_identities_loop.project_id and c.distinct_id = move.to_id and c.event_key = event.event_key and c.day between event.day - 2 and event.day + 2)
        or event.legacy and exists (select from mixpanel_sync.event_ledger_legacy c where c.project_id = reattribute_identities_loop.project_id and c.distinct_id = move.to_id and c.event_key = event.event_key) then
        if event.legacy then
          delete from mixpanel_sync.event_ledger_legacy g where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id and g.event_key = event.event_key;
        else
          delete from mixpanel_sync.event_ledger l
          where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        end if;
        update mixpanel_sync.events_daily d set event_count = d.event_count - 1
        where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name and d.event_count > 1;
        get diagnostics row_count_now = row_count;
        if row_count_now = 0 then
          delete from mixpanel_sync.events_daily d
          where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name;
        end if;
        duplicates := duplicates + 1;
      elsif event.legacy then
        update mixpanel_sync.event_ledger_legacy g set distinct_id = move.to_id
        where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id and g.event_key = event.event_key;
        ledger_rows := ledger_rows + 1;
      else
        update mixpanel_sync.event_ledger l set distinct_id = move.to_id
        where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        ledger_rows := ledger_rows + 1;
        if event.is_raw then
          raw_moved := raw_moved + 1;
        end if;
      end if;
    end loop;
    -- events_daily, one row at a time
    for day_row in
      select d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id order by d.day, d.event_name
    loop
      insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
      values (reattribute_identities_loop.project_id, move.to_id, day_row.day, day_row.event_name, day_row.event_count, day_row.first_at, day_row.last_at)
      on conflict on constraint events_daily_pkey do update set
        event_count = d.event_count + excluded.event_count,
        first_at = least(d.first_at, excluded.first_at),
        last_at = greatest(d.last_at, excluded.last_at);
      delete from mixpanel_sync.events_daily d
      where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = day_row.day and d.event_name = day_row.event_name;
      events_moved := events_moved + day_row.event_count;
    end loop;
    -- the profile: the canonical one wins; else the first alias's (in id order) becomes it
    if exists (select from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id) then
      if exists (select from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.to_id) then
        delete from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id;
      else
        update mixpanel_sync.subscriber_properties p set distinct_id = move.to_id where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id;
      end if;
      profiles_moved := profiles_moved + 1;
    end if;
  end loop;
  foreach member in array touched loop
    perform mixpanel_sync.refresh_subscriber_loop(reattribute_identities_loop.project_id, member);
  end loop;
  return jsonb_build_object('reattributed_events', events_moved, 'reattributed_duplicates', duplicates,
    'reattributed_ledger_rows', ledger_rows, 'reattributed_raw_events', raw_moved,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[]) is 'Row-at-a-time reference implementation of reattribute_identities: same contract, same resulting tables and counts (property-tests/identity-loop-equals-set.test.ts). Used when events.upsert_path = ''loop''.';
grant execute on function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.abandon_stale_runs();
create or replace function mixpanel_sync.abandon_stale_runs(project_id smallint)
 returns setof mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  stale mixpanel_sync.sync_runs;
begin
  for stale in
    update mixpanel_sync.sync_runs r set
      status = 'abandoned',
      finished_at = now(),
      total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
      error = 'abandoned: still running after runs.abandon_after ('
        || mixpanel_sync.setting(abandon_stale_runs.project_id, 'runs.abandon_after') || '); its loader is presumed dead'
    where r.project_id = abandon_stale_runs.project_id and r.status = 'running'
      and r.started_at < now() - mixpanel_sync.setting(abandon_stale_runs.project_id, 'runs.abandon_after')::interval
    returning r.*
  loop
    perform mixpanel_sync.drop_staged_rows(stale.id);
    return next stale;
  end loop;
end;
$function$;
comment on function mixpanel_sync.abandon_stale_runs(project_id smallint) is 'Marks the project''s runs left running longer than runs.abandon_after as abandoned and drops their staged rows. Called by begin_run (and begin_cohorts_run) of the project: another project''s runs are never touched.';
grant execute on function mixpanel_sync.abandon_stale_runs(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.prune_history();
create or replace function mixpanel_sync.prune_history(project_id smallint)
 returns bigint
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pruned bigint;
begin
  delete from mixpanel_sync.sync_runs r
  where r.project_id = prune_history.project_id and r.status <> 'running'
    and r.finished_at < now() - mixpanel_sync.setting(prune_history.project_id, 'runs.retention')::interval;
  get diagnostics pruned = row_count;
  return pruned;
end;
$function$;
comment on function mixpanel_sync.prune_history(project_id smallint) is 'Deletes the project''s finished runs older than runs.retention, with their rejects. Called by finish_run of the project.';
grant execute on function mixpanel_sync.prune_history(project_id smallint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.count_subscribers()
 returns trigger
 language plpgsql
 set search_path to ''
as $function$
begin
  if tg_op = 'TRUNCATE' then
    update mixpanel_sync.subscriber_count c set subscribers = 0 where c.subscribers <> 0;
  elsif tg_op = 'INSERT' then
    -- of an INSERT ... ON CONFLICT DO UPDATE, the transition table holds only the rows inserted
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers + a.rows
    from (select a.project_id, count(*) as rows from added a group by a.project_id) a
    where c.project_id = a.project_id;
  else
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers - r.rows
    from (select r.project_id, count(*) as rows from removed r group by r.project_id) r
    where c.project_id = r.project_id;
  end if;
  return null;
end;
$function$;
comment on function mixpanel_sync.count_subscribers() is 'Statement trigger of subscribers: moves each project''s subscriber_count row by the project''s rows the statement inserted (transition table added) or deleted (removed); a TRUNCATE sets every project''s to 0. Updates do not change the count.';
grant execute on function mixpanel_sync.count_subscribers() to mixpanel_sync_loader;

create or replace function mixpanel_sync.record_subscriber_count()
 returns trigger
 language plpgsql
 set search_path to ''
as $function$
begin
  new.options := new.options || jsonb_build_object('subscribers',
    (select c.subscribers from mixpanel_sync.subscriber_count c where c.project_id = new.project_id));
  return new;
end;
$function$;
comment on function mixpanel_sync.record_subscriber_count() is 'Trigger of sync_runs: when an events run succeeds, records the number of its project''s subscribers after it in options.subscribers (read by sync_health events.subscribers), from mixpanel_sync.subscriber_count (exact, kept by the triggers of subscribers; no scan). Runs inside finish_run''s transaction, so the count is the applied state.';
grant execute on function mixpanel_sync.record_subscriber_count() to mixpanel_sync_loader;

