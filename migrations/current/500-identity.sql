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
