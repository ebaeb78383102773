-- verify/profiles_change_detection.sql
-- Proves, for mixpanel_sync.upsert_subscriber_properties and the profiles run life cycle:
--   1. change detection on ≡ off: from the same state, both leave identical subscriber_properties rows (every
--      column, updated_at and changed_by_run_id included) and report the same counts;
--   2. the counts are right: updated = exactly the profiles whose normalised content changed ("" ↔ null ↔ absent
--      is no change; the reference normalisation here is written independently), inserted = the new ones, the last
--      line of a repeated profile wins, unusable lines are rejected; with change detection on the table sees exactly
--      inserted + updated writes (pg_stat_xact_user_tables), with it off one write per profile;
--   3. a second identical sync (begin_run, staging, finish_run) writes nothing: every row keeps its ctid, xmin and
--      xmax (no new row version, not even a row lock), pg_stat_xact_user_tables counts no insert and no update, and
--      the run reports 0 inserted, 0 updated.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/profiles_change_detection.sql   (it rolls back)
-- Its data: distinct_ids 'verify:profile-…' and the numbers 9007199254000050 … 9007199254002000. It sets
-- profiles.change_detection to on inside its transaction. While it runs it holds finish_run's lock.
begin;

update mixpanel_sync.sync_settings set value = 'on' where key = 'profiles.change_detection';

create function pg_temp.verify_ours(distinct_id text) returns boolean language sql immutable as $$
  select starts_with(distinct_id, 'verify:profile-') or distinct_id ~ '^9007199254[0-9]{6}$';
$$;

-- The reference normalisation: a top-level property whose value is null or "" is the same as an absent one.
create function pg_temp.verify_normalised(properties jsonb) returns jsonb language sql immutable as $$
  select coalesce(jsonb_object_agg(e.key, e.value), '{}') from jsonb_each(properties) e
  where jsonb_typeof(e.value) <> 'null' and e.value <> to_jsonb(''::text);
$$;

-- Inserts and updates of subscriber_properties so far in this transaction.
create function pg_temp.verify_writes(out inserts bigint, out updates bigint) language sql stable as $$
  select coalesce(sum(s.n_tup_ins), 0)::bigint, coalesce(sum(s.n_tup_upd), 0)::bigint
  from pg_catalog.pg_stat_xact_user_tables s
  where s.relid = 'mixpanel_sync.subscriber_properties'::regclass;
$$;

-- One path applied to the staged run: what it reported, the inserts and updates the table saw, and our rows after it.
create function pg_temp.verify_apply(run_id bigint, change_detection boolean,
  out result mixpanel_sync.profiles_result, out inserts bigint, out updates bigint, out rows jsonb)
language plpgsql as $$
declare
  before record := pg_temp.verify_writes();
  after record;
begin
  result := mixpanel_sync.upsert_subscriber_properties(run_id, change_detection);
  after := pg_temp.verify_writes();
  inserts := after.inserts - before.inserts;
  updates := after.updates - before.updates;
  select coalesce(jsonb_agg(to_jsonb(p)), '[]') into rows
  from mixpanel_sync.subscriber_properties p where pg_temp.verify_ours(p.distinct_id);
end;
$$;

-- The first (distinct_id, column) where two sets of subscriber_properties rows differ, or null.
create function pg_temp.verify_first_difference(expected jsonb, actual jsonb) returns text language sql stable as $$
  with e as (select r.* from jsonb_populate_recordset(null::mixpanel_sync.subscriber_properties, expected) r),
  a as (select r.* from jsonb_populate_recordset(null::mixpanel_sync.subscriber_properties, actual) r),
  different as (
    select coalesce(x.distinct_id, y.distinct_id) as distinct_id, to_jsonb(x) as x, to_jsonb(y) as y
    from e x full join a y on y.distinct_id = x.distinct_id
    where to_jsonb(x) is distinct from to_jsonb(y)
  )
  select format('distinct_id %s: %s', d.distinct_id, case
    when d.x is null then 'only with change detection off'
    when d.y is null then 'only with change detection on'
    else (select format('column %s on %s, off %s', k.key, d.x -> k.key, d.y -> k.key)
          from jsonb_object_keys(d.x) k (key) where d.x -> k.key is distinct from d.y -> k.key order by k.key limit 1)
    end)
  from different d order by d.distinct_id limit 1;
$$;

-- Seed: 2000 deterministic profiles (every 50th with a numeric $distinct_id), with "" and null values.
create temporary table verify_base on commit drop as
select i,
  case when i % 50 = 0 then to_jsonb(9007199254000000 + i) else to_jsonb('verify:profile-' || i) end as distinct_id,
  jsonb_build_object(
    '$email', 'user' || i || '@example.com',
    '$name', 'User ' || i,
    '$first_name', case when i % 7 = 0 then '' else 'First' || i end,
    '$last_name', case when i % 11 = 0 then null else 'Last' || i end,
    '$phone', case when i % 13 = 0 then to_jsonb(5550000 + i) else to_jsonb(''::text) end,
    '$city', (array['Paris', 'Lima', 'Oslo', ''])[i % 4 + 1],
    '$region', case when i % 3 = 0 then null else to_jsonb('Region ' || i % 5) end,
    '$country_code', (array['FR', 'PE', 'NO'])[i % 3 + 1],
    '$timezone', 'Europe/Paris',
    '$created', to_char(timestamp '2025-01-01' + i * interval '37 minutes', 'YYYY-MM-DD"T"HH24:MI:SS'),
    '$last_seen', to_char(timestamp '2026-01-01' + i * interval '11 minutes', 'YYYY-MM-DD"T"HH24:MI:SS'),
    'plan', (array['free', 'pro', 'team'])[i % 3 + 1],
    'score', i % 97,
    'tags', jsonb_build_array('a', i % 5)
  ) as properties
from generate_series(1, 2000) as i;

-- The second sync's batch: every base profile once, edited by rule; 100 repeats (an older, different version
-- earlier in the batch); 300 new profiles; 24 unusable lines.
create temporary table verify_batch on commit drop as
with edited as (
  select b.i, b.distinct_id,
    case
      when b.i % 10 = 3 then b.properties || '{"plan": "enterprise"}'                                   -- changed
      when b.i % 10 = 7 then b.properties || jsonb_build_object('$email', 'new' || b.i || '@example.com') -- changed
      when b.i % 40 = 21 then b.properties || '{"score": -1}'                                            -- changed
      when b.i % 20 = 5 then                                              -- "" <-> null only: unchanged
        (select jsonb_object_agg(e.key, case when e.value = '""' then 'null'::jsonb when e.value = 'null' then '""'::jsonb
          else e.value end) from jsonb_each(b.properties) e) || '{"nickname": null}'
      when b.i % 20 = 15 then                                             -- null and "" -> absent only: unchanged
        b.properties - array(select e.key from jsonb_each(b.properties) e where e.value in ('null', '""')) || '{"note": ""}'
      else b.properties                                                                                   -- unchanged
    end as properties
  from verify_base b
)
select row_number() over (order by k, i) as pos, line
from (
  select e.i, 1 as k, jsonb_build_object('$distinct_id', e.distinct_id, '$properties', e.properties)::text as line
  from edited e
  union all
  select e.i, 0, jsonb_build_object('$distinct_id', e.distinct_id, '$properties', e.properties || '{"plan": "stale"}')::text
  from edited e where e.i % 40 in (1, 21)
  union all
  select i, 2, jsonb_build_object('$distinct_id', 'verify:profile-' || i,
    '$properties', jsonb_build_object('$email', 'user' || i || '@example.com', 'plan', 'free'))::text
  from generate_series(2001, 2300) as i
  union all
  select i, 3, (array[
    '{"$properties": {"plan": "free"}}',
    '{"$distinct_id": "", "$properties": {}}',
    '{"$distinct_id": "verify:profile-bad", "$properties": "free"}',
    '{"$distinct_id": ["verify:profile-x"], "$properties": {}}',
    '[1, 2]',
    'not json at all'])[i % 6 + 1]
  from generate_series(1, 24) as i
) lines;

-- What the batch should leave: the reference normalisation of the last usable line of each profile.
create temporary table verify_expected on commit drop as
select distinct on (l.doc ->> '$distinct_id') l.doc ->> '$distinct_id' as distinct_id,
  pg_temp.verify_normalised(l.doc -> '$properties') as properties
from (select v.pos, mixpanel_sync.json_object_or_null(v.line) as doc from verify_batch v) l
where jsonb_typeof(l.doc -> '$distinct_id') in ('string', 'number') and l.doc ->> '$distinct_id' <> ''
  and jsonb_typeof(l.doc -> '$properties') = 'object'
order by l.doc ->> '$distinct_id', l.pos desc;

do $$
declare
  seed_run bigint;
  batch_run bigint;
  again mixpanel_sync.sync_runs;
  on_result mixpanel_sync.profiles_result;
  off_result mixpanel_sync.profiles_result;
  on_rows jsonb;
  off_rows jsonb;
  before record;
  after record;
  applied record;
  on_inserts bigint;
  on_updates bigint;
  off_inserts bigint;
  off_updates bigint;
  versions jsonb;
  expected_inserted bigint;
  expected_updated bigint;
  difference text;
begin
  -- Sync 1: the base set, through the run life cycle.
  seed_run := (mixpanel_sync.begin_run('profiles')).id;
  insert into mixpanel_sync.staged_profiles (run_id, line)
  select seed_run, jsonb_build_object('$distinct_id', b.distinct_id, '$properties', b.properties)::text
  from verify_base b order by b.i;
  perform mixpanel_sync.finish_run(seed_run);
  -- Backdated: in one transaction now() never moves, so without this updated_at could not tell a rewrite of an
  -- unchanged profile from a change. (Seen failing, issue 15: an upsert_subscriber_properties that sets updated_at on
  -- every row it writes passed before this line, and fails check 1 on updated_at with it.)
  update mixpanel_sync.subscriber_properties p set updated_at = '2000-01-01 00:00:00+00' where pg_temp.verify_ours(p.distinct_id);

  -- Sync 2, staged once and applied by both paths from the same state.
  batch_run := (mixpanel_sync.begin_run('profiles')).id;
  insert into mixpanel_sync.staged_profiles (run_id, line) select batch_run, v.line from verify_batch v order by v.pos;

  -- With change detection, in a block that is rolled back: what it did stays in the variables.
  begin
    applied := pg_temp.verify_apply(batch_run, true);
    on_result := applied.result;
    on_inserts := applied.inserts;
    on_updates := applied.updates;
    on_rows := applied.rows;
    raise sqlstate 'PV001';
  exception
    when sqlstate 'PV001' then null;
  end;
  -- Without change detection, from the same state.
  applied := pg_temp.verify_apply(batch_run, false);
  off_result := applied.result;
  off_inserts := applied.inserts;
  off_updates := applied.updates;
  off_rows := applied.rows;

  select count(*) filter (where b.i is null),
    count(*) filter (where b.i is not null and x.properties <> pg_temp.verify_normalised(b.properties))
  into expected_inserted, expected_updated
  from verify_expected x left join verify_base b on b.distinct_id #>> '{}' = x.distinct_id;
  if (expected_inserted, expected_updated) <> (300::bigint, 450::bigint) then
    raise exception 'verify/profiles_change_detection: the seeded data is not what this proof expects (% inserted, % updated; expected 300, 450)',
      expected_inserted, expected_updated;
  end if;

  -- 1. the two paths
  difference := pg_temp.verify_first_difference(on_rows, off_rows);
  if difference is not null then
    raise exception 'verify/profiles_change_detection: change detection on and off leave different rows, first: %', difference;
  end if;
  if (on_result.received, on_result.rejected, on_result.duplicates, on_result.inserted, on_result.updated, on_result.unchanged)
    is distinct from
     (off_result.received, off_result.rejected, off_result.duplicates, off_result.inserted, off_result.updated, off_result.unchanged) then
    raise exception 'verify/profiles_change_detection: counts (received, rejected, duplicates, inserted, updated, unchanged, rows_written, recognised) differ: on %, off %',
      on_result, off_result;
  end if;

  if (select count(*) from jsonb_array_elements(on_rows) r where (r ->> 'updated_at')::timestamptz = '2000-01-01 00:00:00+00')
      <> 2000 - expected_updated then
    raise exception 'verify/profiles_change_detection: % rows kept the backdated updated_at, expected the % unchanged profiles',
      (select count(*) from jsonb_array_elements(on_rows) r where (r ->> 'updated_at')::timestamptz = '2000-01-01 00:00:00+00'), 2000 - expected_updated;
  end if;

  -- 2. the counts and the contents
  if (on_result.received, on_result.rejected, on_result.duplicates, on_result.inserted, on_result.updated, on_result.unchanged)
    is distinct from (2424::bigint, 24::bigint, 100::bigint, expected_inserted, expected_updated, 2000 - expected_updated) then
    raise exception 'verify/profiles_change_detection: counts (received, rejected, duplicates, inserted, updated, unchanged, rows_written, recognised) %, expected (2424, 24, 100, %, %, %, …)',
      on_result, expected_inserted, expected_updated, 2000 - expected_updated;
  end if;
  select format('distinct_id %s: properties %s, expected %s', x.distinct_id, p.properties, x.properties) into difference
  from verify_expected x
  left join mixpanel_sync.subscriber_properties p on p.distinct_id = x.distinct_id
  where p.properties is distinct from x.properties
  order by x.distinct_id limit 1;
  if difference is not null then
    raise exception 'verify/profiles_change_detection: a stored profile is not the last line of the batch, first: %', difference;
  end if;
  -- the typed columns: the reserved properties as text, the dates (all valid, naive) read as UTC
  select format('distinct_id %s: typed columns %s, properties say %s', p.distinct_id, t.typed, t.expected) into difference
  from mixpanel_sync.subscriber_properties p
  cross join lateral (select
    jsonb_build_array(p.email, p.name, p.first_name, p.last_name, p.phone, p.city, p.region, p.country_code, p.timezone,
      p.created_at, p.last_seen_at) as typed,
    jsonb_build_array(p.properties ->> '$email', p.properties ->> '$name', p.properties ->> '$first_name',
      p.properties ->> '$last_name', p.properties ->> '$phone', p.properties ->> '$city', p.properties ->> '$region',
      p.properties ->> '$country_code', p.properties ->> '$timezone',
      (p.properties ->> '$created')::timestamp at time zone 'UTC', (p.properties ->> '$last_seen')::timestamp at time zone 'UTC')
      as expected) t
  where pg_temp.verify_ours(p.distinct_id) and t.typed <> t.expected
  order by p.distinct_id limit 1;
  if difference is not null then
    raise exception 'verify/profiles_change_detection: typed columns differ from the properties, first: %', difference;
  end if;
  if (on_inserts, on_updates) <> (expected_inserted, expected_updated) then
    raise exception 'verify/profiles_change_detection: with change detection on the table saw % inserts and % updates, expected % and %',
      on_inserts, on_updates, expected_inserted, expected_updated;
  end if;
  if (off_inserts, off_updates) <> (expected_inserted, 2000::bigint) then
    raise exception 'verify/profiles_change_detection: with change detection off the table saw % inserts and % updates, expected % and 2000',
      off_inserts, off_updates, expected_inserted;
  end if;

  -- 3. a second identical sync, in a subtransaction of its own (a row it rewrote would get a new xmin too)
  select jsonb_object_agg(p.distinct_id, jsonb_build_array(p.ctid, p.xmin, p.xmax)) into versions
  from mixpanel_sync.subscriber_properties p where pg_temp.verify_ours(p.distinct_id);
  -- sync 2 was applied by hand above; its run is closed (one profiles run at a time) and its staged lines dropped
  perform mixpanel_sync.fail_run(batch_run, 'verify: applied by upsert_subscriber_properties directly');
  before := pg_temp.verify_writes();
  begin
    again := mixpanel_sync.begin_run('profiles');
    insert into mixpanel_sync.staged_profiles (run_id, line) select again.id, v.line from verify_batch v order by v.pos;
    again := mixpanel_sync.finish_run(again.id);
  exception
    when sqlstate 'PV002' then null; -- never raised: the clause makes the block a subtransaction
  end;
  after := pg_temp.verify_writes();
  if again.status <> 'succeeded' or (again.inserted, again.updated, again.unchanged) <> (0::bigint, 0::bigint, 2300::bigint) then
    raise exception 'verify/profiles_change_detection: the second identical sync reported % inserted, % updated, % unchanged (%), expected 0, 0, 2300',
      again.inserted, again.updated, again.unchanged, again.status;
  end if;
  -- a line that set its row is recognised, not parsed: all usable lines but the 100 stale repeats and the 200
  -- blank-shuffled lines (their rows kept the line that set them, since their content did not change)
  if (again.options ->> 'lines_recognised')::bigint <> 2100 then
    raise exception 'verify/profiles_change_detection: the second identical sync recognised % of its lines unparsed, expected 2100',
      again.options ->> 'lines_recognised';
  end if;
  select format('distinct_id %s: (ctid, xmin, xmax) %s -> %s', p.distinct_id, versions -> p.distinct_id,
      jsonb_build_array(p.ctid, p.xmin, p.xmax))
  into difference
  from mixpanel_sync.subscriber_properties p
  where pg_temp.verify_ours(p.distinct_id) and jsonb_build_array(p.ctid, p.xmin, p.xmax) is distinct from versions -> p.distinct_id
  order by p.distinct_id limit 1;
  if difference is not null then
    raise exception 'verify/profiles_change_detection: the second identical sync wrote or locked a row, first: %', difference;
  end if;
  if (after.inserts - before.inserts, after.updates - before.updates) <> (0::bigint, 0::bigint) then
    raise exception 'verify/profiles_change_detection: the second identical sync counted % inserts and % updates in pg_stat_xact_user_tables, expected none',
      after.inserts - before.inserts, after.updates - before.updates;
  end if;

  raise notice 'PASS verify/profiles_change_detection: change detection on and off leave identical rows and counts (% lines: % inserted, % updated, % unchanged, % repeats, % rejected; on wrote % rows, off %); a second identical sync recognised 2100 lines without parsing them and wrote and locked 0 rows',
    on_result.received, on_result.inserted, on_result.updated, on_result.unchanged, on_result.duplicates, on_result.rejected,
    on_result.rows_written, off_result.rows_written;
end;
$$;

rollback;
