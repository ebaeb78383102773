--! Previous: sha1:66af9607e81667775ad8ea95dd87d46d8257edee
--! Hash: sha1:63b2e1206c22c52b6a6daf0c9f71425b51025555
--! Message: verify helpers

-- Helpers of the verify/*.sql proofs: deterministic data, snapshots of the script's own rows, first-difference
-- reports. A verify script's rows have distinct_ids 'verify:…' or -90000000NN and days far in the past.
create function mixpanel_sync.verify_ours(distinct_id text) returns boolean language sql immutable
set search_path = ''
as $$
  select starts_with(distinct_id, 'verify:') or distinct_id ~ '^-90000000[0-9][0-9]$';
$$;

-- Deterministic export events: seed, count, first day, days. Users, times, insert ids and re-sends come from md5.
create function mixpanel_sync.verify_events(seed text, n integer, from_day date, days integer) returns jsonb language sql immutable
set search_path = ''
as $$
  with r as (
    select i, ('x' || substr(md5(seed || ':' || i), 1, 16))::bit(64)::bigint as h from generate_series(1, n) i
  ), t as (
    select i, h,
      extract(epoch from from_day::timestamp)::bigint
        + (((h >> 8) & 1023) % (days + 2) - 1) * 86400
        + case (h >> 18) & 7 when 0 then 0 when 1 then 86399 else ((h >> 21) & 31) * 2700 + ((h >> 26) & 1) end as second
    from r
  ), base as (
    select i, h, jsonb_build_object(
      'event', (array['signup', 'login', 'purchase', 'page view', 'ログイン'])[1 + ((h >> 30) & 7) % 5],
      'properties', jsonb_build_object(
        'distinct_id', case h & 15
          when 13 then to_jsonb('verify:' || repeat('é', 248))
          when 14 then to_jsonb('verify:ユーザー🎉'::text)
          when 15 then to_jsonb(-9000000001 - ((h >> 4) & 3))
          else to_jsonb('verify:u' || (h & 15)) end,
        'time', case when (h >> 27) & 3 = 0 then to_jsonb(second * 1000 + ((h >> 32) & 1023) % 1000) else to_jsonb(second) end,
        'mp_processing_time_ms', second * 1000 + ((h >> 44) & 65535) * 100,
        'plan', (array['free', 'pro', null])[1 + ((h >> 46) & 3) % 3],
        'amount', ((h >> 50) & 1023) / 4.0,
        'flag', (h >> 51) & 1 = 1,
        'tags', jsonb_build_array('a', (h >> 52) & 3),
        'meta', jsonb_build_object('k', (h >> 54) & 3))
        || case when (h >> 40) & 3 = 0 then '{}' else jsonb_build_object('$insert_id', 'ins' || ((h >> 42) & 31)) end
      ) as event
    from t
  ), invalid as (
    select i, (array[
      '{"event": "no properties"}',
      '{"properties": {"distinct_id": "verify:u1", "time": 946684800}}',
      '{"event": "no distinct id", "properties": {"time": 946684800}}',
      '{"event": "time as text", "properties": {"distinct_id": "verify:u1", "time": "946684800"}}',
      '{"event": "after the clock", "properties": {"distinct_id": "verify:u1", "time": 4102444800}}',
      '[1, 2]', '42'])[1 + ((h >> 58) & 7) % 7]::jsonb as event
    from r where (h >> 56) & 15 = 0
  ), lines as (
    select i, event from base
    union all select i, event from base where (h >> 60) & 3 = 0    -- exact re-sends
    union all select i, event from invalid
  )
  select jsonb_agg(l.event order by md5(seed || ':order:' || l.i || l.event::text)) from lines l;
$$;

-- The three event tables, this script's rows only, keyed by primary key; columns in `ignore` left out.
create function mixpanel_sync.verify_snapshot(ignore text[] default '{}') returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore), '{}')
      from mixpanel_sync.events_daily d where mixpanel_sync.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore), '{}')
      from mixpanel_sync.event_ledger l where mixpanel_sync.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore), '{}')
      from mixpanel_sync.subscribers s where mixpanel_sync.verify_ours(s.distinct_id)));
$$;

-- Null when equal, else the first difference: table, key, then the first column that differs (or a missing row).
create function mixpanel_sync.verify_first_difference(expected jsonb, actual jsonb) returns text language sql immutable
set search_path = ''
as $$
  select format('%s key %s: %s', r.tab, r.key, case
      when r.e is null then 'unexpected row ' || r.a::text
      when r.a is null then 'missing row ' || r.e::text
      when jsonb_typeof(r.e) <> 'object' or jsonb_typeof(r.a) <> 'object' then format('expected %s, actual %s', r.e, r.a)
      else (select format('column %s expected %s, actual %s', c, coalesce(r.e -> c, 'null'), coalesce(r.a -> c, 'null'))
            from jsonb_object_keys(r.e || r.a) c where r.e -> c is distinct from r.a -> c order by c limit 1) end)
  from (select t.tab, k.key, expected -> t.tab -> k.key as e, actual -> t.tab -> k.key as a
        from jsonb_object_keys(expected || actual) t (tab)
        cross join lateral jsonb_object_keys(coalesce(expected -> t.tab, '{}') || coalesce(actual -> t.tab, '{}')) k (key)) r
  where r.e is distinct from r.a
  order by r.tab, r.key
  limit 1;
$$;

-- Raises, naming the script and the first difference, unless the snapshots are equal.
create function mixpanel_sync.verify_assert_same(script text, what text, expected jsonb, actual jsonb) returns void language plpgsql
set search_path = ''
as $$
declare
  problem text := mixpanel_sync.verify_first_difference(expected, actual);
begin
  if problem is not null then
    raise exception 'verify/%: % differ: %', script, what, problem;
  end if;
end;
$$;

-- An apply_result shaped like a snapshot, for verify_assert_same.
create function mixpanel_sync.verify_result(result mixpanel_sync.apply_result) returns jsonb language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('apply_result', jsonb_build_object('(applied, duplicates, too_old, users_touched)', to_jsonb(result)));
$$;

-- Count and hash sum of every row this script did not create: equal before and after means untouched.
create function mixpanel_sync.verify_others() returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object('rows of others', jsonb_build_object(
    'events_daily', (select jsonb_build_array(count(*), sum(hashtextextended(d::text, 0))) from mixpanel_sync.events_daily d where not mixpanel_sync.verify_ours(d.distinct_id)),
    'event_ledger', (select jsonb_build_array(count(*), sum(hashtextextended(l::text, 0))) from mixpanel_sync.event_ledger l where not mixpanel_sync.verify_ours(l.distinct_id)),
    'subscribers', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.subscribers s where not mixpanel_sync.verify_ours(s.distinct_id)),
    'sync_watermarks', (select jsonb_build_array(count(*), sum(hashtextextended(w::text, 0))) from mixpanel_sync.sync_watermarks w),
    'sync_settings', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.sync_settings s)));
$$;

-- Stages events (plus one line that is not JSON at all) for a new run of clock 2000-02-01 and parses them once.
create function mixpanel_sync.verify_staged_run(events jsonb) returns bigint language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00');
begin
  perform mixpanel_sync.stage_events(run.id, events);
  insert into mixpanel_sync.staged_events (run_id, line) values (run.id, '{"event": "cut off", "properties": {"distin');
  perform mixpanel_sync.parse_staged_events(run.id);
  return run.id;
end;
$$;


comment on function mixpanel_sync.verify_ours(distinct_id text) is
  'Verify scripts: true for the distinct_ids a verify script creates (verify:… and -90000000NN).';
comment on function mixpanel_sync.verify_events(seed text, n integer, from_day date, days integer) is
  'Verify scripts: deterministic Mixpanel export events (seed, count, first day, days): re-sends, same-second events, missing $insert_id, day boundaries, numeric/unicode/255-character ids, ms times, bad lines.';
comment on function mixpanel_sync.verify_snapshot(text[]) is
  'Verify scripts: events_daily, event_ledger and subscribers rows of verify_ours users as jsonb keyed by primary key, columns in ignore left out.';
comment on function mixpanel_sync.verify_first_difference(expected jsonb, actual jsonb) is
  'Verify scripts: null when two verify_snapshot values are equal, else the first difference (table, key, column, expected, actual).';
comment on function mixpanel_sync.verify_assert_same(script text, what text, expected jsonb, actual jsonb) is
  'Verify scripts: raises naming the script and the first difference unless the two snapshots are equal.';
comment on function mixpanel_sync.verify_result(result mixpanel_sync.apply_result) is
  'Verify scripts: an apply_result shaped like a snapshot, for verify_assert_same.';
comment on function mixpanel_sync.verify_others() is
  'Verify scripts: count and hash sum of every row a verify script did not create, to prove it left them untouched.';
comment on function mixpanel_sync.verify_staged_run(events jsonb) is
  'Verify scripts: a forced-full run at clock 2000-02-01 with these events (and one non-JSON line) staged and parsed once.';
