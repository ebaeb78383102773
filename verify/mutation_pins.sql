-- verify/mutation_pins.sql
-- Pins behaviours that only the mutation run of issue 15 (npm run mutate) showed to be unpinned: each section names the
-- surviving mutant it kills (written into a clone database with create or replace; this script then failed on it and
-- passes on main). Expectations are written out here, not computed by another path of the same code.
--   1. fail_run: an explicit error_code is kept as options->>'error_code' even when the error text starts with another
--      MPnnn; without one, the code at the start of the text is kept.
--      Mutant: fail_run with coalesce(substring(error from '^\[?(MP…)'), nullif(error_code, '')) (arguments swapped).
--   2. heartbeat_run marks its own run only: with an events run and a profiles run both running, the heartbeat of one
--      leaves the other's heartbeat_at alone, and a heartbeat of a finished run records nothing.
--      Mutant: heartbeat_run with `l.id = heartbeat_run.run_id` dropped (every running run gets the heartbeat).
--   3. abandon_stale_runs abandons running runs only, and only those running LONGER than runs.abandon_after: a failed
--      run begun long ago stays failed with its error, and a run begun exactly runs.abandon_after ago is kept.
--      Mutants: abandon_stale_runs with `r.status = 'running'` dropped (finished runs rewritten as abandoned), and
--      with `r.started_at <= now() - …` (the boundary moved).
--   4. apply_identity's events_resolved (sync_runs.options) counts the run's events it rewrote to another id: with
--      identity.mode = simplified, a device's anonymous event and the sign-up under the user's own id resolve 1, not
--      the sign-up too (its id is in the map as its own canonical id).
--      Mutant: apply_identity with `l.canonical <> l.alias` dropped (ids mapped to themselves counted as resolved).
--   5. is_terminated_early_marker: the Export API's "terminated early" line is a marker only when shorter than 64
--      characters (63: a marker, 64: not), and a short line that does not say so is not one.
--      Mutants: `length(line) <= 64`; `or` for the `and`.
--   6. legacy_event_key, the key of ledger rows written before the injective event_key: known answers (md5 computed
--      outside PostgreSQL) with a $insert_id and without one.
--      Mutant: legacy_event_key with its coalesce swapped (the content hash even when there is a $insert_id).
--   7. drop_staged_rows gives the staging space back (TRUNCATE, a new empty file) when no other run of the SAME source is
--      running, even while a run of another source is: an events run failed while a profiles run runs leaves
--      staged_events at 0 bytes (a DELETE would leave its pages).
--      Mutant: drop_staged_rows with `r.source = run_source` dropped from its "alone" test (any running run of any
--      source made it DELETE).
--   8. finish_profiles_run's last resort (a line that fails even the careful path is read on its own and rejected with
--      its error; the other lines are stored): the run's own row is given a time zone PostgreSQL does not know, so the
--      one profile with a date without an offset fails both set-based paths; it alone is rejected ('could not be
--      read: …'), the two others are inserted.
--      Mutants: finish_profiles_run reading or marking every line of the run instead of the one in hand (`or` for the
--      `and`, or `p.line_id = line.line_id` / `s.line_id = line.line_id` dropped): every line rejected.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/mutation_pins.sql   (it rolls back)
-- It needs no events or profiles run running (begin_run refuses a second one) and holds finish_run's lock and the events
-- watermark row until it rolls back. Its data: distinct_ids 'verify:pin-…' and '$device:verify:pin-…', day 2000-03-01,
-- run clocks 2000-03-01 and -02.
begin;

create function pg_temp.same(what text, expected anyelement, actual anyelement) returns void language plpgsql as $$
begin
  if expected is distinct from actual then
    raise exception 'verify/mutation_pins: %: expected %, got %', what, expected, actual;
  end if;
end;
$$;

do $$
declare
  -- the script's finished run moves the watermark and it sets identity.mode: both rolled back, left out here
  others_before jsonb := mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}';
  run mixpanel_sync.sync_runs;
  profiles mixpanel_sync.sync_runs;
begin
  -- 1. fail_run's error code: the explicit one first, else the MPnnn the error text starts with, else none.
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:00:00+00');
  run := mixpanel_sync.fail_run(run.id, 'MP001: finish_run: REPLACE guard: injected by verify', 'MP003');
  perform pg_temp.same('fail_run(error ''MP001: …'', error_code ''MP003'') keeps the explicit code', 'MP003', run.options ->> 'error_code');
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:01:00+00');
  run := mixpanel_sync.fail_run(run.id, 'MP002: injected by verify');
  perform pg_temp.same('fail_run(error ''MP002: …'') without a code keeps the code of the text', 'MP002', run.options ->> 'error_code');
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:02:00+00');
  run := mixpanel_sync.fail_run(run.id, 'injected by verify');
  perform pg_temp.same('fail_run without a code or an MPnnn text records no code', null::text, run.options ->> 'error_code');

  -- 2. heartbeat_run: only the run it names, and only while that run is running.
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:03:00+00');
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:03:00+00');
  perform pg_temp.same('heartbeat of the running events run is recorded', true, mixpanel_sync.heartbeat_run(run.id));
  perform pg_temp.same('the events run has a heartbeat', true,
    (select r.heartbeat_at is not null from mixpanel_sync.sync_runs r where r.id = run.id));
  perform pg_temp.same('the profiles run, not named, has none', null::timestamptz,
    (select r.heartbeat_at from mixpanel_sync.sync_runs r where r.id = profiles.id));
  perform mixpanel_sync.fail_run(run.id, 'verify: done with the heartbeat');
  perform pg_temp.same('heartbeat of a failed run records nothing', false, mixpanel_sync.heartbeat_run(run.id));
  perform pg_temp.same('the profiles run still has no heartbeat', null::timestamptz,
    (select r.heartbeat_at from mixpanel_sync.sync_runs r where r.id = profiles.id));
  perform mixpanel_sync.fail_run(profiles.id, 'verify: done');

  -- 3. abandon_stale_runs: a finished run begun long ago is left alone; a running run is abandoned only after
  --    runs.abandon_after has passed (now() is the transaction's start: the times below are exact).
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:04:00+00');
  run := mixpanel_sync.fail_run(run.id, 'verify: an old failed run');
  update mixpanel_sync.sync_runs r set started_at = now() - interval '10 years' where r.id = run.id;
  profiles := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:05:00+00');
  update mixpanel_sync.sync_runs r set started_at = now() - mixpanel_sync.setting('runs.abandon_after')::interval
  where r.id = profiles.id;
  perform pg_temp.same('abandon_stale_runs: neither the old failed run nor a run begun exactly runs.abandon_after ago', 0::bigint,
    (select count(*) from mixpanel_sync.abandon_stale_runs() a where a.id in (run.id, profiles.id)));
  perform pg_temp.same('the old failed run keeps (status, error)', '(failed,verify: an old failed run)',
    (select format('(%s,%s)', r.status, r.error) from mixpanel_sync.sync_runs r where r.id = run.id));
  perform pg_temp.same('the run begun exactly runs.abandon_after ago is still running', 'running',
    (select r.status from mixpanel_sync.sync_runs r where r.id = profiles.id));
  update mixpanel_sync.sync_runs r set started_at = now() - mixpanel_sync.setting('runs.abandon_after')::interval - interval '1 second'
  where r.id = profiles.id;
  perform pg_temp.same('abandon_stale_runs: the run begun a second more ago is abandoned', 1::bigint,
    (select count(*) from mixpanel_sync.abandon_stale_runs() a where a.id = profiles.id and a.status = 'abandoned'));
  perform pg_temp.same('the old failed run still keeps (status, error)', '(failed,verify: an old failed run)',
    (select format('(%s,%s)', r.status, r.error) from mixpanel_sync.sync_runs r where r.id = run.id));

  -- 5. The terminated-early marker's length bound: 'terminated' + 48 or 49 spaces + 'early' is 63 or 64 characters.
  perform pg_temp.same('a 63-character terminated-early line is a marker', true,
    mixpanel_sync.is_terminated_early_marker('terminated' || repeat(' ', 48) || 'early'));
  perform pg_temp.same('a 64-character terminated-early line is not', false,
    mixpanel_sync.is_terminated_early_marker('terminated' || repeat(' ', 49) || 'early'));
  perform pg_temp.same('a short line that is not the marker is not', false, mixpanel_sync.is_terminated_early_marker('{"event": 1}'));

  -- 6. legacy_event_key's known answers: md5('Sign Up' 0x1f '946684800' 0x1f 'pin-legacy') and, without a $insert_id,
  --    md5('Sign Up' 0x1f '946684800' 0x1f '#' || md5('{"a": 1}')), as Python's hashlib computes them.
  perform pg_temp.same('legacy_event_key with a $insert_id', '268ec680-b0eb-871d-941a-7f2529ba598f'::uuid,
    mixpanel_sync.legacy_event_key('Sign Up', 946684800, 'pin-legacy', '{"a": 1}'));
  perform pg_temp.same('legacy_event_key without a $insert_id', 'e932f1c6-21b5-a960-6a4a-8786aa5d16ec'::uuid,
    mixpanel_sync.legacy_event_key('Sign Up', 946684800, '', '{"a": 1}'));

  -- 7. Staging space given back while a run of the other source is running.
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-01 12:06:00+00');
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:06:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    jsonb_build_object('event', 'App Open', 'properties', jsonb_build_object('distinct_id', 'verify:pin-s1',
      'time', extract(epoch from timestamptz '2000-03-01 10:00:00+00')::bigint, '$insert_id', 'pin-s1'))));
  perform pg_temp.same('staged_events holds pages before the drop', true, pg_catalog.pg_relation_size('mixpanel_sync.staged_events') > 0);
  perform mixpanel_sync.fail_run(run.id, 'verify: staged rows dropped while a profiles run runs');
  perform pg_temp.same('staged_events bytes after fail_run (truncated, not deleted)', 0::bigint,
    pg_catalog.pg_relation_size('mixpanel_sync.staged_events'));
  perform mixpanel_sync.fail_run(profiles.id, 'verify: done');

  -- 8. The last-resort path of finish_profiles_run, reached through a time zone no line can be read in.
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:07:00+00');
  update mixpanel_sync.sync_runs r set project_timezone = 'Verify/No_Such_Zone' where r.id = profiles.id;
  insert into mixpanel_sync.staged_profiles (run_id, line_no, line) values
    (profiles.id, 1, '{"$distinct_id": "verify:pin-p1", "$properties": {"$name": "One"}}'),
    (profiles.id, 2, '{"$distinct_id": "verify:pin-p2", "$properties": {"$name": "Two", "$created": "2000-01-01T10:00:00"}}'),
    (profiles.id, 3, '{"$distinct_id": "verify:pin-p3", "$properties": {"$name": "Three", "$created": "2000-01-01T10:00:00Z"}}');
  profiles := mixpanel_sync.finish_run(profiles.id);
  perform pg_temp.same('profiles run with an unknown zone (status, received, rejected, inserted)', '(succeeded,3,1,2)',
    format('(%s,%s,%s,%s)', profiles.status, profiles.received, profiles.rejected, profiles.inserted));
  perform pg_temp.same('the one reject: line 2, could not be read', '2: could not be read',
    (select string_agg(j.line_no || ': ' || left(j.reason, 17), ', ') from mixpanel_sync.sync_rejects j where j.run_id = profiles.id));
  perform pg_temp.same('profiles stored', 'verify:pin-p1,verify:pin-p3',
    (select string_agg(p.distinct_id, ',' order by p.distinct_id) from mixpanel_sync.subscriber_properties p
     where p.distinct_id like 'verify:pin-p%'));

  -- 4. events_resolved: the device's event is rewritten to the user; the user's own event is not.
  update mixpanel_sync.sync_settings s set value = 'simplified' where s.key = 'identity.mode';
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-02 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    jsonb_build_object('event', 'App Open', 'properties', jsonb_build_object('distinct_id', '$device:verify:pin-d1',
      'time', extract(epoch from timestamptz '2000-03-01 10:00:00+00')::bigint, '$insert_id', 'pin-1', '$device_id', 'verify:pin-d1')),
    jsonb_build_object('event', 'Sign Up', 'properties', jsonb_build_object('distinct_id', 'verify:pin-u1',
      'time', extract(epoch from timestamptz '2000-03-01 10:05:00+00')::bigint, '$insert_id', 'pin-2', '$device_id', 'verify:pin-d1',
      '$user_id', 'verify:pin-u1'))));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('identity run (status, links_learned, events_resolved)', '(succeeded,1,1)',
    format('(%s,%s,%s)', run.status, run.links_learned, run.options ->> 'events_resolved'));
  perform pg_temp.same('both events under the user', 2::bigint,
    (select sum(d.event_count) from mixpanel_sync.events_daily d where d.distinct_id = 'verify:pin-u1')::bigint);

  perform mixpanel_sync_verify.verify_assert_same('mutation_pins', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}');

  raise notice 'PASS verify/mutation_pins: fail_run kept the explicit error code over the text''s, else the text''s, else none; heartbeat_run marked only the run it names and nothing once it failed; abandon_stale_runs left an old failed run and a run of exactly runs.abandon_after alone and abandoned one a second older; identity (simplified): events_resolved 1 of 2 (the id mapped to itself not counted); terminated-early marker: 63 characters yes, 64 no; legacy_event_key = its known answers; staged_events truncated by fail_run while a profiles run runs; a profile unreadable by both set paths rejected alone by the last resort; rows of others untouched';
end;
$$;

rollback;
