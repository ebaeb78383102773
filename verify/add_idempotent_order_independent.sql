-- verify/add_idempotent_order_independent.sql
-- Proves invariant 2 for the set-based ADD (upsert_subscribers_incremental_add), from the same non-empty prior state:
--   idempotent:        ADD(E); ADD(E) leaves events_daily, event_ledger and subscribers identical (every column) to
--                      ADD(E), and the second ADD applies nothing and counts every event of E as duplicate or too_old;
--   order-independent: ADD(A); ADD(B) leaves them identical to ADD(B); ADD(A), with A and B overlapping
--                      (event_ledger.run_id aside: it records which run applied an event, and that is the order).
-- Rows of others are untouched.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/add_idempotent_order_independent.sql   (it rolls back)
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-29 .. 2000-01-11, run clock 2000-02-01.
begin;

create function pg_temp.verify_ours(distinct_id text) returns boolean language sql immutable as $$
  select starts_with(distinct_id, 'verify:') or distinct_id ~ '^-90000000[0-9][0-9]$';
$$;

-- Deterministic export events: seed, count, first day, days. Users, times, insert ids and re-sends come from md5.
create function pg_temp.verify_events(seed text, n integer, from_day date, days integer) returns jsonb language sql immutable as $$
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
create function pg_temp.verify_snapshot(ignore text[] default '{}') returns jsonb language sql stable as $$
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore), '{}')
      from mixpanel_sync.events_daily d where pg_temp.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore), '{}')
      from mixpanel_sync.event_ledger l where pg_temp.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore), '{}')
      from mixpanel_sync.subscribers s where pg_temp.verify_ours(s.distinct_id)));
$$;

-- Null when equal, else the first difference: table, key, then the first column that differs (or a missing row).
create function pg_temp.verify_first_difference(expected jsonb, actual jsonb) returns text language sql immutable as $$
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
create function pg_temp.verify_assert_same(script text, what text, expected jsonb, actual jsonb) returns void language plpgsql as $$
declare
  problem text := pg_temp.verify_first_difference(expected, actual);
begin
  if problem is not null then
    raise exception 'verify/%: % differ: %', script, what, problem;
  end if;
end;
$$;

-- An apply_result shaped like a snapshot, for verify_assert_same.
create function pg_temp.verify_result(result mixpanel_sync.apply_result) returns jsonb language sql immutable as $$
  select jsonb_build_object('apply_result', jsonb_build_object('(applied, duplicates, too_old, users_touched)', to_jsonb(result)));
$$;

-- Count and hash sum of every row this script did not create: equal before and after means untouched.
create function pg_temp.verify_others() returns jsonb language sql stable as $$
  select jsonb_build_object('rows of others', jsonb_build_object(
    'events_daily', (select jsonb_build_array(count(*), sum(hashtextextended(d::text, 0))) from mixpanel_sync.events_daily d where not pg_temp.verify_ours(d.distinct_id)),
    'event_ledger', (select jsonb_build_array(count(*), sum(hashtextextended(l::text, 0))) from mixpanel_sync.event_ledger l where not pg_temp.verify_ours(l.distinct_id)),
    'subscribers', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.subscribers s where not pg_temp.verify_ours(s.distinct_id)),
    'sync_watermarks', (select jsonb_build_array(count(*), sum(hashtextextended(w::text, 0))) from mixpanel_sync.sync_watermarks w),
    'sync_settings', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.sync_settings s)));
$$;

-- Stages events (plus one line that is not JSON at all) for a new run of clock 2000-02-01 and parses them once.
create function pg_temp.verify_staged_run(events jsonb) returns bigint language plpgsql as $$
declare
  run mixpanel_sync.sync_runs := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00');
begin
  perform mixpanel_sync.stage_events(run.id, events);
  insert into mixpanel_sync.staged_events (run_id, line) values (run.id, '{"event": "cut off", "properties": {"distin');
  perform mixpanel_sync.parse_staged_events(run.id);
  return run.id;
end;
$$;

do $$
declare
  others_before jsonb := pg_temp.verify_others();
  e jsonb := pg_temp.verify_events('idem-e', 400, '2000-01-01', 9);
  a jsonb := pg_temp.verify_events('idem-a', 300, '2000-01-01', 9) || pg_temp.verify_events('idem-b', 100, '2000-01-01', 9);
  b jsonb := pg_temp.verify_events('idem-b', 300, '2000-01-01', 9) || pg_temp.verify_events('idem-a', 80, '2000-01-01', 9);
  runs bigint[];
  once jsonb;
  twice jsonb;
  a_then_b jsonb;
  b_then_a jsonb;
  first mixpanel_sync.apply_result;
  second mixpanel_sync.apply_result;
begin
  -- An arbitrary prior state: a REPLACE over 1999-12-30 .. 2000-01-10, then an ADD on top.
  perform mixpanel_sync.upsert_subscribers_incremental(
    pg_temp.verify_staged_run(pg_temp.verify_events('idem-prior', 400, '1999-12-30', 12)), '1999-12-30', '2000-01-10');
  perform mixpanel_sync.upsert_subscribers_incremental_add(
    pg_temp.verify_staged_run(pg_temp.verify_events('idem-prior-add', 150, '2000-01-01', 8)), '1999-12-30');

  -- runs: E, E again, A, B, B, A (each staged and parsed once, before any path runs)
  runs := array[pg_temp.verify_staged_run(e), pg_temp.verify_staged_run(e), pg_temp.verify_staged_run(a),
    pg_temp.verify_staged_run(b), pg_temp.verify_staged_run(b), pg_temp.verify_staged_run(a)];

  begin
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[1], '2000-01-02');
    once := pg_temp.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo ADD(E)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  begin
    first := mixpanel_sync.upsert_subscribers_incremental_add(runs[1], '2000-01-02');
    second := mixpanel_sync.upsert_subscribers_incremental_add(runs[2], '2000-01-02');
    twice := pg_temp.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo ADD(E); ADD(E)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  begin
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[3], '2000-01-02');
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[4], '2000-01-02');
    a_then_b := pg_temp.verify_snapshot('{run_id}');
    raise exception using errcode = 'VRFY0', message = 'undo ADD(A); ADD(B)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  perform mixpanel_sync.upsert_subscribers_incremental_add(runs[5], '2000-01-02');
  perform mixpanel_sync.upsert_subscribers_incremental_add(runs[6], '2000-01-02');
  b_then_a := pg_temp.verify_snapshot('{run_id}');

  perform pg_temp.verify_assert_same('add_idempotent_order_independent', 'tables after ADD(E) (expected) and ADD(E); ADD(E) (actual)', once, twice);
  perform pg_temp.verify_assert_same('add_idempotent_order_independent', 'apply_result of the second ADD(E): nothing applied (expected), actual',
    pg_temp.verify_result((0, first.applied + first.duplicates, first.too_old, 0)::mixpanel_sync.apply_result), pg_temp.verify_result(second));
  perform pg_temp.verify_assert_same('add_idempotent_order_independent', 'tables after ADD(A); ADD(B) (expected) and ADD(B); ADD(A) (actual)',
    a_then_b, b_then_a);
  perform pg_temp.verify_assert_same('add_idempotent_order_independent', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, pg_temp.verify_others());
  if first.applied = 0 or first.duplicates = 0 or first.too_old = 0 then
    raise exception 'verify/add_idempotent_order_independent: the input did not exercise the path (apply_result %)', first;
  end if;

  raise notice 'PASS verify/add_idempotent_order_independent: events_daily, event_ledger and subscribers identical for ADD(E) and ADD(E); ADD(E) (% of % staged lines applied once, none the second time) and for ADD(A); ADD(B) and ADD(B); ADD(A) (% events_daily rows), over a prior state; rows of others untouched',
    first.applied, jsonb_array_length(e), (select count(*) from jsonb_object_keys(b_then_a -> 'events_daily'));
end;
$$;

rollback;
