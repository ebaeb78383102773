-- verify/run_lifecycle_pinned.sql
-- Pins, through the run API (begin_run, stage_events, parse_staged_events, finish_run, fail_run), against expectations
-- written out in this script (hand-computed times and counts, not another path of the same code):
--   1. the incremental window: fetch_from = watermark - events.overlap, processed_after = processing watermark - overlap,
--      lookback_from = greatest(fetch_from - events.late_lookback, horizon day), fetch_to = the clock;
--   2. the horizon day: 45 days of ledger retention ending 2000-02-16 start 2000-01-03; an ADD counts an event of
--      that day a duplicate (not too_old), the ledger prune keeps that day and removes the days before it, and a
--      later ADD of the same horizon day after the prune still counts its re-sent events as duplicates;
--   3. fail_run leaves the watermark row (every column), the event tables and the counters alone, drops the run's
--      staged lines and parsed run_events (present before it: checked), marks the run failed with its error, and a
--      second fail_run keeps finished_at and total_ms;
--   4. staged rows never outlive a finished run; exact counts (received = applied + duplicates + too_old + rejected);
--   5. subscribers equal what this script's own event list says (per user totals, first/last, counts per name);
--   6. begin_run refuses a resync whose resync_from is after its resync_to, an unknown source and a null source;
--   7. a profiles run reports users_touched = inserted + updated and the zone its dates were read in;
--   8. a forced full run resets the watermark and the processing watermark to what it saw, also downwards.
-- Mutants seen failing it (written into a scratch database with create or replace, issue 15): begin_run with
-- watermark + overlap; refresh_subscribers with max(d.first_at) per event name; finish_events_run pruning l.day <= horizon; upsert_subscribers_incremental_add with
-- c.day > horizon_day; fail_run setting the events watermark to now(); fail_run without drop_staged_rows;
-- fail_run with either coalesce (error, finished_at) swapped; begin_run with `and` for the `or` before
-- `resync_from > coalesce(…)`, or with `or` for the `and` after `resync_from is not null`; finish_profiles_run with
-- inserted - updated, or coalesce('UTC', project_timezone) (survivors of the first quick mutation sample);
-- finish_events_run with coalesce(mark.processing_watermark, seen.processing_time) (a survivor of the second);
-- begin_run with `source is null and source not in (…)` (the survivor of the third).
-- Each fails here and passes on main.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/run_lifecycle_pinned.sql   (it rolls back)
-- It sets the events.* settings inside its transaction, holds finish_run's lock and the events watermark row, and
-- needs no other events run running (begin_run refuses a second one). Its data: distinct_ids 'verify:life-…',
-- 'verify:life-p…' profiles, days 2000-01-02 .. 2000-02-16, run clocks 2000-02-14 .. 2000-02-17.
begin;

-- One export line: the event, its user, its time (seconds) and $insert_id; processed a minute after it happened.
create function pg_temp.line(event text, distinct_id text, at timestamptz, insert_id text) returns jsonb language sql immutable as $$
  select jsonb_build_object('event', event, 'properties', jsonb_build_object('distinct_id', distinct_id,
    'time', extract(epoch from at)::bigint, 'mp_processing_time_ms', extract(epoch from at)::bigint * 1000 + 60000,
    '$insert_id', insert_id));
$$;

create function pg_temp.check(ok boolean, what text, expected anyelement, actual anyelement) returns void language plpgsql as $$
begin
  if ok is not true then
    raise exception 'verify/run_lifecycle_pinned: %: expected %, got %', what, expected, actual;
  end if;
end;
$$;

create function pg_temp.same(what text, expected anyelement, actual anyelement) returns void language plpgsql as $$
begin
  perform pg_temp.check(expected is not distinct from actual, what, expected, actual);
end;
$$;

create function pg_temp.staged_left(run_id bigint) returns bigint language sql stable as $$
  select (select count(*) from mixpanel_sync.staged_events s where s.run_id = staged_left.run_id)
    + (select count(*) from mixpanel_sync.run_events e where e.run_id = staged_left.run_id)
    + (select count(*) from mixpanel_sync.staged_profiles p where p.run_id = staged_left.run_id);
$$;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}'
    #- '{rows of others,sync_runs}';
  e1 jsonb := pg_temp.line('signup', 'verify:life-a', '2000-01-02 10:00:00+00', 'life-1');   -- the day before the horizon
  e2 jsonb := pg_temp.line('login', 'verify:life-a', '2000-01-03 00:00:05+00', 'life-2');    -- the horizon day
  e3 jsonb := pg_temp.line('login', 'verify:life-b', '2000-01-03 23:59:59+00', 'life-3');    -- the horizon day
  e4 jsonb := pg_temp.line('purchase', 'verify:life-b', '2000-02-14 11:00:00+00', 'life-4');
  e5 jsonb := pg_temp.line('login', 'verify:life-a', '2000-02-15 08:00:00+00', 'life-5');
  e6 jsonb := pg_temp.line('signup', 'verify:life-b', '2000-02-16 11:00:00+00', 'life-6');
  e7 jsonb := pg_temp.line('purchase', 'verify:life-a', '2000-02-16 17:00:00+00', 'life-7');
  e8 jsonb := pg_temp.line('login', 'verify:life-b', '2000-02-10 09:00:00+00', 'life-8');    -- b's second login day
  run mixpanel_sync.sync_runs;
  failed mixpanel_sync.sync_runs;
  again mixpanel_sync.sync_runs;
  mark_before jsonb;
  tables_before jsonb;
  parsed record;
  expected_subscribers jsonb;
begin
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.incremental', 'on'), ('events.overlap', '2 hours'), ('events.full_window', '45 days'),
    ('events.ledger_retention', '45 days'), ('events.late_lookback', '5 days'), ('events.upsert_path', 'set')) v (key, value)
  where s.key = v.key;

  -- A full run: window 2000-01-01 .. 2000-02-14, all five events applied; watermark 2000-02-14 11:00.
  -- (b logs in on two days: its subscriber's first_event_at comes from the earlier login.)
  run := mixpanel_sync.begin_run('events', true, clock => '2000-02-14 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(e1, e2, e3, e4, e8));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('full run (received, applied, duplicates, too_old, rejected)', '(5,5,0,0,0)',
    format('(%s,%s,%s,%s,%s)', run.received, run.applied, run.duplicates, run.too_old, run.rejected));
  perform pg_temp.same('full run watermark_after', '2000-02-14 11:00:00+00'::timestamptz, run.watermark_after);
  perform pg_temp.same('staged rows left after the full run', 0::bigint, pg_temp.staged_left(run.id));

  -- 1. The incremental window, from the watermark 11:00 and the processing watermark 11:01.
  run := mixpanel_sync.begin_run('events', clock => '2000-02-16 12:00:00+00');
  perform pg_temp.same('incremental run mode', 'incremental', run.mode);
  perform pg_temp.same('fetch_from = watermark 2000-02-14 11:00 - overlap 2 hours', '2000-02-14 09:00:00+00'::timestamptz, run.fetch_from);
  perform pg_temp.same('processed_after = processing watermark 11:01 - overlap 2 hours', '2000-02-14 09:01:00+00'::timestamptz, run.processed_after);
  perform pg_temp.same('lookback_from = greatest(fetch_from - 5 days, horizon 2000-01-03)', '2000-02-09 09:00:00+00'::timestamptz, run.lookback_from);
  perform pg_temp.same('fetch_to = the clock', '2000-02-16 12:00:00+00'::timestamptz, run.fetch_to);

  -- 2. ADD on the horizon day 2000-01-03: e1 is too old, e2 and e3 duplicates, e5 applied twice sent, e6 applied.
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(e1, e2, e3, e5, e6, e5));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('ADD run (received, applied, duplicates, too_old, rejected)', '(6,2,3,1,0)',
    format('(%s,%s,%s,%s,%s)', run.received, run.applied, run.duplicates, run.too_old, run.rejected));
  perform pg_temp.same('ADD run horizon_day', '2000-01-03', run.options ->> 'horizon_day');
  perform pg_temp.same('ADD run watermark_after', '2000-02-16 11:00:00+00'::timestamptz, run.watermark_after);
  perform pg_temp.same('ledger rows of ours before the horizon day after the prune', 0::bigint,
    (select count(*) from mixpanel_sync.event_ledger l where mixpanel_sync_verify.verify_ours(l.distinct_id) and l.day < '2000-01-03'));
  perform pg_temp.same('ledger rows of ours on the horizon day after the prune', 2::bigint,
    (select count(*) from mixpanel_sync.event_ledger l where mixpanel_sync_verify.verify_ours(l.distinct_id) and l.day = '2000-01-03'));
  perform pg_temp.same('staged rows left after the ADD run', 0::bigint, pg_temp.staged_left(run.id));

  -- 3. A run that fails after its lines were staged and parsed: fail_run touches nothing but the run.
  run := mixpanel_sync.begin_run('events', clock => '2000-02-16 18:00:00+00');
  perform pg_temp.same('second incremental fetch_from = watermark 11:00 - 2 hours', '2000-02-16 09:00:00+00'::timestamptz, run.fetch_from);
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(e7, e2));
  parsed := mixpanel_sync.parse_staged_events(run.id);
  perform pg_temp.same('lines parsed into run_events before fail_run', 2::bigint, (select count(*) from mixpanel_sync.run_events e where e.run_id = run.id));
  select to_jsonb(w) into mark_before from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id() and w.source = 'events';
  tables_before := mixpanel_sync_verify.verify_snapshot();
  failed := mixpanel_sync.fail_run(run.id, 'verify: injected failure');
  perform pg_temp.same('watermark row (every column) after fail_run', mark_before,
    (select to_jsonb(w) from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id() and w.source = 'events'));
  perform mixpanel_sync_verify.verify_assert_same('run_lifecycle_pinned', 'event tables before (expected) and after (actual) fail_run',
    tables_before, mixpanel_sync_verify.verify_snapshot());
  perform pg_temp.same('staged lines and run_events left after fail_run', 0::bigint, pg_temp.staged_left(run.id));
  perform pg_temp.same('failed run (status, error, applied, watermark_after)', '(failed,verify: injected failure,,)',
    format('(%s,%s,%s,%s)', failed.status, failed.error, failed.applied, failed.watermark_after));
  perform pg_temp.check(failed.finished_at is not null and failed.total_ms is not null, 'failed run finished_at and total_ms set', 'both set'::text,
    format('finished_at %s, total_ms %s', failed.finished_at, failed.total_ms));
  again := mixpanel_sync.fail_run(run.id, 'verify: failed twice');
  perform pg_temp.same('a second fail_run keeps (status, finished_at, total_ms)',
    format('(%s,%s,%s)', failed.status, failed.finished_at, failed.total_ms), format('(%s,%s,%s)', again.status, again.finished_at, again.total_ms));

  -- 2 again: after the prune, the horizon day's events re-sent by a later ADD (same horizon) are still duplicates.
  run := mixpanel_sync.begin_run('events', clock => '2000-02-16 19:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(e2, e3, e7));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('ADD after the prune (received, applied, duplicates, too_old, rejected)', '(3,1,2,0,0)',
    format('(%s,%s,%s,%s,%s)', run.received, run.applied, run.duplicates, run.too_old, run.rejected));
  perform pg_temp.same('events_daily on the horizon day (our rows, summed)', 2::numeric,
    (select sum(d.event_count) from mixpanel_sync.events_daily d where mixpanel_sync_verify.verify_ours(d.distinct_id) and d.day = '2000-01-03'));
  perform pg_temp.same('watermark after the last run', '2000-02-16 17:00:00+00'::timestamptz,
    (select w.watermark from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id() and w.source = 'events'));
  perform pg_temp.same('staged rows left after the last run', 0::bigint, pg_temp.staged_left(run.id));

  -- 5. subscribers from this script's own list of the events that count (e1 .. e8 once each).
  select jsonb_object_agg(to_jsonb(u.distinct_id)::text, to_jsonb(u)) into expected_subscribers
  from (
    select x.distinct_id, count(*) as total_events, min(x.at) as first_event_at, max(x.at) as last_event_at,
      (select jsonb_object_agg(n.event, n.c) from (select y.event, count(*) as c from (values
         ('verify:life-a', 'signup'), ('verify:life-a', 'login'), ('verify:life-a', 'login'), ('verify:life-a', 'purchase'),
         ('verify:life-b', 'login'), ('verify:life-b', 'login'), ('verify:life-b', 'purchase'), ('verify:life-b', 'signup')) y (distinct_id, event)
         where y.distinct_id = x.distinct_id group by y.event) n) as event_counts
    from (values
      ('verify:life-a', '2000-01-02 10:00:00+00'::timestamptz), ('verify:life-a', '2000-01-03 00:00:05+00'),
      ('verify:life-a', '2000-02-15 08:00:00+00'), ('verify:life-a', '2000-02-16 17:00:00+00'),
      ('verify:life-b', '2000-01-03 23:59:59+00'), ('verify:life-b', '2000-02-10 09:00:00+00'), ('verify:life-b', '2000-02-14 11:00:00+00'), ('verify:life-b', '2000-02-16 11:00:00+00')
    ) x (distinct_id, at)
    group by x.distinct_id) u;
  perform mixpanel_sync_verify.verify_assert_same('run_lifecycle_pinned', 'subscribers from the script''s event list (expected) and stored (actual)',
    jsonb_build_object('subscribers', expected_subscribers),
    jsonb_build_object('subscribers', (select jsonb_object_agg(k, v - 'updated_at') from jsonb_each(mixpanel_sync_verify.verify_snapshot() -> 'subscribers') s (k, v))));

  -- 8. A full run resets both watermarks to what it saw, down as well as up: an incremental run brings e9, processed
  -- at 20:00 (processing watermark 20:00); a forced full run re-sends the window, e9 without a processing time.
  run := mixpanel_sync.begin_run('events', clock => '2000-02-16 21:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(jsonb_set(pg_temp.line('login', 'verify:life-b', '2000-02-16 10:00:00+00', 'life-9'),
    '{properties,mp_processing_time_ms}', to_jsonb(extract(epoch from '2000-02-16 20:00:00+00'::timestamptz)::bigint * 1000))));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('processing watermark after e9', '2000-02-16 20:00:00+00'::timestamptz,
    (select w.processing_watermark from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id() and w.source = 'events'));
  run := mixpanel_sync.begin_run('events', true, clock => '2000-02-17 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(e4, e5, e6, e7, e8,
    pg_temp.line('login', 'verify:life-b', '2000-02-16 10:00:00+00', 'life-9') #- '{properties,mp_processing_time_ms}'));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('forced full run (received, applied, watermark, processing watermark)',
    format('(6,6,%s,%s)', '2000-02-16 17:00:00+00'::timestamptz, '2000-02-16 17:01:00+00'::timestamptz),
    (select format('(%s,%s,%s,%s)', run.received, run.applied, w.watermark, w.processing_watermark) from mixpanel_sync.sync_watermarks w where w.project_id = mixpanel_sync.project_id() and w.source = 'events'));

  -- 6. begin_run refuses a resync whose first day is after its last (SQLSTATE 22023; MP004 once the safety core lands).
  declare
    refused text;
  begin
    begin
      perform mixpanel_sync.begin_run('events', clock => '2000-02-17 12:00:00+00', resync_from => '2000-02-10', resync_to => '2000-02-09');
    exception when others then
      refused := sqlstate;
    end;
    perform pg_temp.check(refused in ('22023', 'MP004'), 'begin_run with resync_from 2000-02-10 after resync_to 2000-02-09',
      'refused (22023 or MP004)', coalesce(refused, 'a run started'));
    -- and a source it does not know, or none
    refused := null;
    begin
      perform mixpanel_sync.begin_run('nonsense', clock => '2000-02-17 12:00:00+00');
    exception when others then
      refused := sqlstate;
    end;
    perform pg_temp.check(refused in ('22023', 'MP004'), 'begin_run(''nonsense'')', 'refused (22023 or MP004)', coalesce(refused, 'a run started'));
    refused := null;
    begin
      perform mixpanel_sync.begin_run(null, clock => '2000-02-17 12:00:00+00');
    exception when others then
      refused := sqlstate;
    end;
    perform pg_temp.check(refused in ('22023', 'MP004'), 'begin_run(null)', 'refused (22023 or MP004)', coalesce(refused, 'a run started'));
  end;

  -- 7. profiles runs: users_touched = inserted + updated; options.dates_read_in names the project timezone, else UTC.
  run := mixpanel_sync.begin_run('profiles', clock => '2000-02-17 12:00:00+00', project_timezone => 'America/Los_Angeles');
  insert into mixpanel_sync.staged_profiles (run_id, line) values
    (run.id, '{"$distinct_id": "verify:life-p1", "$properties": {"$name": "One"}}'),
    (run.id, '{"$distinct_id": "verify:life-p2", "$properties": {"$name": "Two"}}');
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('first profiles run (inserted, updated, users_touched, dates_read_in)', '(2,0,2,America/Los_Angeles)',
    format('(%s,%s,%s,%s)', run.inserted, run.updated, run.users_touched, run.options ->> 'dates_read_in'));
  run := mixpanel_sync.begin_run('profiles', clock => '2000-02-17 13:00:00+00');
  insert into mixpanel_sync.staged_profiles (run_id, line) values
    (run.id, '{"$distinct_id": "verify:life-p1", "$properties": {"$name": "One, renamed"}}'),
    (run.id, '{"$distinct_id": "verify:life-p3", "$properties": {"$name": "Three"}}');
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('second profiles run (inserted, updated, users_touched, dates_read_in)', '(1,1,2,UTC)',
    format('(%s,%s,%s,%s)', run.inserted, run.updated, run.users_touched, run.options ->> 'dates_read_in'));
  perform pg_temp.same('staged rows left after the profiles runs', 0::bigint, pg_temp.staged_left(run.id));

  perform mixpanel_sync_verify.verify_assert_same('run_lifecycle_pinned', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}' #- '{rows of others,sync_runs}');

  raise notice 'PASS verify/run_lifecycle_pinned: incremental window = watermark - overlap (fetch_from, processed_after, lookback_from exact); horizon day 2000-01-03 kept by the prune and deduplicated by ADD before and after it; fail_run left the watermark row, event tables and counters alone and dropped 2 parsed lines; staged rows gone after every run; subscribers = the script''s event list (2 users, 8 events); a resync from after its last day, an unknown and a null source refused; profiles runs: users_touched = inserted + updated, dates_read_in = the project timezone or UTC; a forced full run reset both watermarks downwards; rows of others untouched';
end;
$$;

rollback;
