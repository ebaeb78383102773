-- verify/finish_run_end_to_end.sql
-- Proves, through the whole run API (begin_run, stage_events, finish_run): a full run then an incremental run that
-- re-reads part of it leave events_daily, event_ledger, subscribers, the runs' counters, the watermark and the
-- rejects identical whether events.upsert_path is 'set' or 'loop'; and for each run: mode as expected,
-- received = applied + duplicates + too_old + rejected, every rejected line in sync_rejects with a reason,
-- watermark never past the run's fetch_to; subscribers equal their definition recomputed from events_daily.
-- Rows of others in the event tables are untouched. Run ids, line numbers and timings differ between the two
-- passes by construction (sequences), so they are left out.
-- While it runs it holds finish_run's lock and the events watermark row: run it when no sync is finishing.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/finish_run_end_to_end.sql   (it rolls back)
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 2000-01-01 .. 2000-01-11, run clocks 2000-01-10 and -11.
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

-- The state a pass leaves: event tables (run_id aside), its two runs' outcome, the watermark and the rejects.
create function pg_temp.verify_pass(path text) returns jsonb language plpgsql as $$
declare
  full_run mixpanel_sync.sync_runs;
  incremental_run mixpanel_sync.sync_runs;
begin
  update mixpanel_sync.sync_settings set value = path where key = 'events.upsert_path';
  full_run := mixpanel_sync.begin_run('events', true, clock => '2000-01-10 12:00:00+00');
  perform mixpanel_sync.stage_events(full_run.id, pg_temp.verify_events('e2e-full', 400, '2000-01-03', 7));
  insert into mixpanel_sync.staged_events (run_id, line) values (full_run.id, 'not json at all');
  perform mixpanel_sync.finish_run(full_run.id);

  incremental_run := mixpanel_sync.begin_run('events', clock => '2000-01-11 06:00:00+00');
  perform mixpanel_sync.stage_events(incremental_run.id,
    pg_temp.verify_events('e2e-full', 150, '2000-01-03', 7) || pg_temp.verify_events('e2e-incremental', 300, '2000-01-09', 2));
  perform mixpanel_sync.finish_run(incremental_run.id);

  return pg_temp.verify_snapshot('{run_id}') || jsonb_build_object(
    'sync_runs', (select jsonb_object_agg(r.mode, to_jsonb(r) - '{id,started_at,finished_at,stage_ms,apply_ms,total_ms,options}'::text[]
        || jsonb_build_object('options', r.options - 'upsert_path'))
      from mixpanel_sync.sync_runs r where r.id in (full_run.id, incremental_run.id)),
    'sync_watermarks', (select jsonb_object_agg(w.source, to_jsonb(w) - '{run_id,updated_at}'::text[])
      from mixpanel_sync.sync_watermarks w where w.source = 'events'),
    'sync_rejects', (select jsonb_object_agg(k.key, k.n) from (
        select jsonb_build_array(r.mode, j.reason, j.payload)::text as key, count(*) as n
        from mixpanel_sync.sync_rejects j join mixpanel_sync.sync_runs r on r.id = j.run_id
        where j.run_id in (full_run.id, incremental_run.id) group by 1) k));
end;
$$;

do $$
declare
  others_before jsonb := pg_temp.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}';
  by_set jsonb;
  by_loop jsonb;
  run record;
begin
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.incremental', 'on'), ('events.overlap', '2 hours'), ('events.full_window', '45 days'),
    ('events.ledger_retention', '45 days')) v (key, value)
  where s.key = v.key;

  begin
    by_set := pg_temp.verify_pass('set');
    raise exception using errcode = 'VRFY0', message = 'undo the set-based pass';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  by_loop := pg_temp.verify_pass('loop');
  perform pg_temp.verify_assert_same('finish_run_end_to_end', 'state after the runs with events.upsert_path loop (expected) and set (actual)', by_loop, by_set);

  for run in select key as mode, value as r from jsonb_each(by_loop -> 'sync_runs') loop
    if run.r ->> 'status' <> 'succeeded' or run.r ->> 'mode' <> run.mode then
      raise exception 'verify/finish_run_end_to_end: % run: status %, mode %', run.mode, run.r ->> 'status', run.r ->> 'mode';
    end if;
    if (run.r ->> 'received')::bigint <> (run.r ->> 'applied')::bigint + (run.r ->> 'duplicates')::bigint
        + (run.r ->> 'too_old')::bigint + (run.r ->> 'rejected')::bigint then
      raise exception 'verify/finish_run_end_to_end: % run: received % <> applied % + duplicates % + too_old % + rejected %', run.mode,
        run.r -> 'received', run.r -> 'applied', run.r -> 'duplicates', run.r -> 'too_old', run.r -> 'rejected';
    end if;
    if (run.r ->> 'rejected')::bigint <> (select coalesce(sum(value::bigint), 0) from jsonb_each_text(by_loop -> 'sync_rejects')
        where (key::jsonb ->> 0) = run.mode and (key::jsonb ->> 1) <> '') then
      raise exception 'verify/finish_run_end_to_end: % run: rejected % but sync_rejects holds %', run.mode, run.r -> 'rejected', by_loop -> 'sync_rejects';
    end if;
    if (run.r ->> 'watermark_after')::timestamptz > (run.r ->> 'fetch_to')::timestamptz or (run.r ->> 'rejected')::bigint = 0 then
      raise exception 'verify/finish_run_end_to_end: % run: watermark_after % past fetch_to %, or nothing rejected (%)', run.mode,
        run.r -> 'watermark_after', run.r -> 'fetch_to', run.r -> 'rejected';
    end if;
  end loop;

  -- Invariant 4: subscribers is its definition over events_daily, recomputed here independently.
  perform pg_temp.verify_assert_same('finish_run_end_to_end', 'subscribers recomputed from events_daily (expected) and stored (actual)',
    (select jsonb_build_object('subscribers', coalesce(jsonb_object_agg(to_jsonb(u.distinct_id)::text, to_jsonb(u)), '{}')) from (
      select d.distinct_id, sum(d.event_count) as total_events, min(d.first_at) as first_event_at, max(d.last_at) as last_event_at,
        (select jsonb_object_agg(c.event_name, c.n) from (select x.event_name, sum(x.event_count) as n from mixpanel_sync.events_daily x
           where x.distinct_id = d.distinct_id group by x.event_name) c) as event_counts
      from mixpanel_sync.events_daily d where pg_temp.verify_ours(d.distinct_id) group by d.distinct_id) u),
    pg_temp.verify_snapshot('{updated_at}') - 'events_daily' - 'event_ledger');
  perform pg_temp.verify_assert_same('finish_run_end_to_end', 'fingerprints of the event rows this script did not create, before (expected) and after (actual)',
    others_before, pg_temp.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}');

  raise notice 'PASS verify/finish_run_end_to_end: a full then an incremental run through begin_run/stage_events/finish_run leave identical events_daily (% rows), event_ledger, subscribers (% rows, = their definition over events_daily), run counters, watermark and rejects with upsert_path set and loop; received = applied + duplicates + too_old + rejected (full %, incremental %); watermark within fetch_to; rows of others untouched',
    (select count(*) from jsonb_object_keys(by_set -> 'events_daily')), (select count(*) from jsonb_object_keys(by_set -> 'subscribers')),
    by_set #>> '{sync_runs,full,received}', by_set #>> '{sync_runs,incremental,received}';
end;
$$;

rollback;
