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
--   9. identity links take ids of up to 255 characters (the identity_links limit), not 256: simplified mode learns
--      $device:<id> (255) -> $user_id (255) and skips a 256-character $user_id; original mode learns a $identify of
--      255-character ids and skips a 256-character $anon_id; the runs succeed.
--      Also skipped: a 257-character $device: id, a link to an id under $device: (a $user_id that is null), an empty
--      $user_id, a 256-character $identified_id.
--      Mutants: identity_edges with `length(…) < 255` for `<= 255` (four of them, simplified and original), or with a
--      conjunct of those filters dropped (x.target <> '', x.target not like '$device:%', length(x.alias) <= 255,
--      length(o.target) <= 255).
--  10. identity links only from what each mode defines (the runs of section 9 carry these lines too): no link from
--      a rejected event, from a $device_id, $anon_id, $identified_id or alias that is not a string, from an empty id, from an
--      id to itself, from $anon_id/$identified_id on a $merge or alias on anything but $create_alias, from a $identify
--      in simplified mode or a $device_id/$user_id pair in original mode; a device that is its own cluster's canonical
--      (a $merge chose it) still joins a user; and a link already known moves its user's identified_at when seen at an
--      earlier time.
--      Mutants: identity_edges with `or` for an `and`, or a conjunct dropped, in props (line 15), simplified (32),
--      original ($identify 43-44, $create_alias 48), the not exists of simplified_first (63) and the final filter (67).
--  11. a user's identified_at is its earliest link: two devices linked in one run give the earlier time, and a known
--      link seen again later leaves it.
--      Mutants: learn_identity_links with max(n.identified_at), or with `and`/`or` swapped in its ON CONFLICT
--      condition (never earlier, or any later time).
--  12. upsert_subscriber_properties: a profile line re-sent by a run in another project time zone is read again (its
--      naive dates move with the zone), and when a profile's identical (recognised) line is followed in the batch by a
--      changed line, the change is stored.
--      Mutants: the line hash without the zone (coalesce('', r.project_timezone)); `k.line_id > p.line_id` dropped
--      (a recognised line of the profile anywhere in the batch hid the change).
--  13. the legacy ledger (keys of the formula before event_key) keeps the horizon day, like the ledger: two ADD runs on
--      the same horizon day both count a re-sent event of that day, known only by its legacy key, as a duplicate.
--      Mutant: finish_events_run deleting legacy rows with `l.day <= horizon` (the second run applied the event again).
--  14. the REPLACE guard counts a day holding exactly events.replace_guard_min_events events: with min 2 and ratio 0.5,
--      a full run that would leave 0 of a day's 2 stored events is refused with MP001.
--      Mutant: replace_guard with `s.events > min_events` (a day at the minimum not guarded).
--  15. begin_run: a resync of past days fetches up to the last second of resync_to; a run whose watermark minus
--      events.overlap falls before the ledger horizon is full, one just after it incremental.
--      Mutants: begin_run with (w.to_day - 1) for (w.to_day + 1) in a resync's fetch_to; with watermark + overlap in the
--      rule that turns a run full.
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

-- One export line of 2000-03-0x: its event, distinct_id, time, $insert_id and further properties.
create function pg_temp.ev(event text, distinct_id text, at timestamptz, insert_id text, extra jsonb) returns jsonb
language sql immutable as $$
  select jsonb_build_object('event', event, 'properties', jsonb_build_object('distinct_id', distinct_id,
    'time', extract(epoch from at)::bigint, '$insert_id', insert_id) || extra);
$$;

do $$
declare
  -- the script's finished run moves the watermark and it sets identity.mode: both rolled back, left out here
  others_before jsonb := mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}';
  run mixpanel_sync.sync_runs;
  profiles mixpanel_sync.sync_runs;
  refused text;
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
  update mixpanel_sync.sync_runs r set started_at = now() - mixpanel_sync.setting(mixpanel_sync.project_id(), 'runs.abandon_after')::interval
  where r.id = profiles.id;
  perform pg_temp.same('abandon_stale_runs: neither the old failed run nor a run begun exactly runs.abandon_after ago', 0::bigint,
    (select count(*) from mixpanel_sync.abandon_stale_runs(mixpanel_sync.project_id()) a where a.id in (run.id, profiles.id)));
  perform pg_temp.same('the old failed run keeps (status, error)', '(failed,verify: an old failed run)',
    (select format('(%s,%s)', r.status, r.error) from mixpanel_sync.sync_runs r where r.id = run.id));
  perform pg_temp.same('the run begun exactly runs.abandon_after ago is still running', 'running',
    (select r.status from mixpanel_sync.sync_runs r where r.id = profiles.id));
  update mixpanel_sync.sync_runs r set started_at = now() - mixpanel_sync.setting(mixpanel_sync.project_id(), 'runs.abandon_after')::interval - interval '1 second'
  where r.id = profiles.id;
  perform pg_temp.same('abandon_stale_runs: the run begun a second more ago is abandoned', 1::bigint,
    (select count(*) from mixpanel_sync.abandon_stale_runs(mixpanel_sync.project_id()) a where a.id = profiles.id and a.status = 'abandoned'));
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

  -- 9. The 255-character bound of identity links, both modes (the ids: 'verify:pin-' and one letter repeated).
  update mixpanel_sync.sync_settings s set value = 'simplified' where s.key = 'identity.mode';
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-03 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    jsonb_build_object('event', 'Sign Up', 'properties', jsonb_build_object('distinct_id', 'verify:pin-' || repeat('u', 244),
      'time', extract(epoch from timestamptz '2000-03-02 10:00:00+00')::bigint, '$insert_id', 'pin-l1',
      '$device_id', 'verify:pin-' || repeat('d', 236), '$user_id', 'verify:pin-' || repeat('u', 244))),
    jsonb_build_object('event', 'Sign Up', 'properties', jsonb_build_object('distinct_id', 'verify:pin-l2',
      'time', extract(epoch from timestamptz '2000-03-02 10:01:00+00')::bigint, '$insert_id', 'pin-l2',
      '$device_id', 'verify:pin-e', '$user_id', 'verify:pin-' || repeat('v', 245))),
    jsonb_build_object('event', 'Sign Up', 'properties', jsonb_build_object('distinct_id', 'verify:pin-l3',
      'time', extract(epoch from timestamptz '2000-03-02 10:02:00+00')::bigint, '$insert_id', 'pin-l3',
      '$device_id', 'verify:pin-' || repeat('f', 238), '$user_id', 'verify:pin-l3')),
    jsonb_build_object('event', 'App Open', 'properties', jsonb_build_object('distinct_id', '$device:verify:pin-x',
      'time', extract(epoch from timestamptz '2000-03-02 10:03:00+00')::bigint, '$insert_id', 'pin-l4',
      '$device_id', 'verify:pin-y', '$user_id', null)),
    jsonb_build_object('event', 'App Open', 'properties', jsonb_build_object('distinct_id', 'verify:pin-l5',
      'time', extract(epoch from timestamptz '2000-03-02 10:04:00+00')::bigint, '$insert_id', 'pin-l5',
      '$device_id', 'verify:pin-z', '$user_id', '')),
    -- section 10: a $device_id that is an object, an empty $device_id, a $identify (original mode's link) read in
    -- simplified mode, a rejected event (its time is not a number), and the first link of a device the user joins later
    pg_temp.ev('App Open', 'verify:pin-sa', '2000-03-02 10:05:00+00', 'pin-sa', '{"$device_id": {"x": 1}, "$user_id": "verify:pin-sa"}'),
    pg_temp.ev('App Open', 'verify:pin-sb', '2000-03-02 10:06:00+00', 'pin-sb', '{"$device_id": "", "$user_id": "verify:pin-sb"}'),
    pg_temp.ev('$identify', 'verify:pin-sc-u', '2000-03-02 10:07:00+00', 'pin-sc',
      '{"$device_id": "verify:pin-sc", "$user_id": "verify:pin-sc-u", "$anon_id": "verify:pin-sd", "$identified_id": "verify:pin-se"}'),
    jsonb_build_object('event', 'App Open', 'properties', jsonb_build_object('distinct_id', 'verify:pin-sf', 'time', 'soon',
      '$insert_id', 'pin-sf', '$device_id', 'verify:pin-sg', '$user_id', 'verify:pin-sf')),
    pg_temp.ev('App Open', 'verify:pin-tu', '2000-03-02 10:10:00+00', 'pin-t1', '{"$device_id": "verify:pin-t", "$user_id": "verify:pin-tu"}'),
    pg_temp.ev('App Open', 'verify:pin-tu', '2000-03-02 10:20:00+00', 'pin-t2', '{"$device_id": "verify:pin-t2", "$user_id": "verify:pin-tu"}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('simplified run with ids over the bounds (status, links_learned)', '(succeeded,4)',
    format('(%s,%s)', run.status, run.links_learned));
  perform pg_temp.same('simplified: no link from a 257-character $device: id, none to a $device: id, none to an empty $user_id', 0::bigint,
    (select count(*) from mixpanel_sync.identity_links l
     where l.canonical = 'verify:pin-l3' or l.alias in ('$device:verify:pin-y', '$device:verify:pin-z')));
  perform pg_temp.same('10. simplified: links learned (device -> user) and no other row',
    '$device:verify:pin-sc>verify:pin-sc-u,$device:verify:pin-t>verify:pin-tu,$device:verify:pin-t2>verify:pin-tu',
    (select string_agg(l.alias || '>' || l.canonical, ',' order by l.alias) from mixpanel_sync.identity_links l
     where l.alias in ('$device:verify:pin-sc', '$device:verify:pin-t', '$device:verify:pin-t2', '$device:', '$device:verify:pin-sg', 'verify:pin-sd')
       or l.canonical in ('verify:pin-sa', 'verify:pin-sb', 'verify:pin-se', 'verify:pin-sf')
       or l.alias like '$device:{%'));
  perform pg_temp.same('11. a user linked twice in one run is identified at the earlier link', '2000-03-02 10:10:00+00'::timestamptz,
    (select l.identified_at from mixpanel_sync.identity_links l where l.alias = 'verify:pin-tu'));
  perform pg_temp.same('simplified: a 255-character $device: id joins the 255-character user', 'verify:pin-' || repeat('u', 244),
    (select l.canonical from mixpanel_sync.identity_links l where l.alias = '$device:verify:pin-' || repeat('d', 236)));
  perform pg_temp.same('simplified: no link to a 256-character $user_id', 0::bigint,
    (select count(*) from mixpanel_sync.identity_links l where l.alias = '$device:verify:pin-e'));
  update mixpanel_sync.sync_settings s set value = 'original' where s.key = 'identity.mode';
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-04 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    jsonb_build_object('event', '$identify', 'properties', jsonb_build_object('distinct_id', 'verify:pin-' || repeat('i', 244),
      'time', extract(epoch from timestamptz '2000-03-03 10:00:00+00')::bigint, '$insert_id', 'pin-o1',
      '$anon_id', 'verify:pin-' || repeat('a', 244), '$identified_id', 'verify:pin-' || repeat('i', 244))),
    jsonb_build_object('event', '$identify', 'properties', jsonb_build_object('distinct_id', 'verify:pin-o2',
      'time', extract(epoch from timestamptz '2000-03-03 10:01:00+00')::bigint, '$insert_id', 'pin-o2',
      '$anon_id', 'verify:pin-' || repeat('b', 245), '$identified_id', 'verify:pin-o2')),
    jsonb_build_object('event', '$identify', 'properties', jsonb_build_object('distinct_id', 'verify:pin-o3',
      'time', extract(epoch from timestamptz '2000-03-03 10:02:00+00')::bigint, '$insert_id', 'pin-o3',
      '$anon_id', 'verify:pin-o3', '$identified_id', 'verify:pin-' || repeat('j', 245))),
    -- section 10: ids that are not strings, empty ids, an id linked to itself, link properties on the wrong event,
    -- a simplified link ($device_id, $user_id) read in original mode, and a $merge whose canonical is a $device: id
    pg_temp.ev('$identify', 'verify:pin-qa', '2000-03-03 10:03:00+00', 'pin-qa', '{"$anon_id": "verify:pin-qa", "$identified_id": {"x": 1}}'),
    pg_temp.ev('$identify', 'verify:pin-qi', '2000-03-03 10:03:30+00', 'pin-qi', '{"$anon_id": {"x": 1}, "$identified_id": "verify:pin-qi"}'),
    pg_temp.ev('$create_alias', 'verify:pin-qc', '2000-03-03 10:04:00+00', 'pin-qc', '{"alias": {"x": 1}}'),
    pg_temp.ev('$merge', 'verify:pin-qn', '2000-03-03 10:05:00+00', 'pin-qm',
      '{"$anon_id": "verify:pin-qm", "$identified_id": "verify:pin-qn", "alias": "verify:pin-qo"}'),
    pg_temp.ev('$identify', 'verify:pin-qe', '2000-03-03 10:06:00+00', 'pin-qe', '{"$anon_id": "", "$identified_id": "verify:pin-qe"}'),
    pg_temp.ev('$identify', 'verify:pin-qf', '2000-03-03 10:07:00+00', 'pin-qf', '{"$anon_id": "verify:pin-qf", "$identified_id": ""}'),
    pg_temp.ev('$identify', 'verify:pin-self', '2000-03-03 10:08:00+00', 'pin-self', '{"$anon_id": "verify:pin-self", "$identified_id": "verify:pin-self"}'),
    pg_temp.ev('$identify', 'verify:pin-qh', '2000-03-03 10:09:00+00', 'pin-qg',
      '{"$anon_id": "verify:pin-qg", "$identified_id": "verify:pin-qh", "$device_id": "verify:pin-qd", "$user_id": "verify:pin-qu"}'),
    pg_temp.ev('$merge', 'verify:pin-wu', '2000-03-03 10:10:00+00', 'pin-w', '{"$distinct_ids": ["$device:verify:pin-w", "verify:pin-wu"]}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('original run with ids over the bound (status, links_learned)', '(succeeded,3)',
    format('(%s,%s)', run.status, run.links_learned));
  perform pg_temp.same('original: no link to a 256-character identified id', 0::bigint,
    (select count(*) from mixpanel_sync.identity_links l where l.alias = 'verify:pin-o3'));
  perform pg_temp.same('original: the 255-character $anon_id joins the 255-character identified id', 'verify:pin-' || repeat('i', 244),
    (select l.canonical from mixpanel_sync.identity_links l where l.alias = 'verify:pin-' || repeat('a', 244)));
  perform pg_temp.same('original: no link from a 256-character $anon_id', 0::bigint,
    (select count(*) from mixpanel_sync.identity_links l where l.canonical = 'verify:pin-o2'));
  perform pg_temp.same('10. original: links learned ($identify, $merge) and no other row',
    '$device:verify:pin-w>$device:verify:pin-w,verify:pin-qg>verify:pin-qh,verify:pin-qh>verify:pin-qh,verify:pin-wu>$device:verify:pin-w',
    (select string_agg(l.alias || '>' || l.canonical, ',' order by l.alias) from mixpanel_sync.identity_links l
     where l.alias in ('verify:pin-qa', 'verify:pin-qc', 'verify:pin-qm', 'verify:pin-qo', 'verify:pin-qf', 'verify:pin-self',
         'verify:pin-qg', 'verify:pin-qh', '$device:verify:pin-qd', '$device:verify:pin-w', 'verify:pin-wu')
       or l.canonical in ('verify:pin-qc', 'verify:pin-qe', 'verify:pin-qn', 'verify:pin-qi')));
  -- 10, continued, simplified again: the device that is its own cluster's canonical (from the $merge) joins a user;
  -- a link already in the map, seen again earlier than it was, moves the user's identified_at to the earlier time.
  update mixpanel_sync.sync_settings s set value = 'simplified' where s.key = 'identity.mode';
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-05 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    pg_temp.ev('Sign Up', 'verify:pin-wv', '2000-03-04 10:00:00+00', 'pin-wv', '{"$device_id": "verify:pin-w", "$user_id": "verify:pin-wv"}'),
    pg_temp.ev('App Open', 'verify:pin-tu', '2000-03-02 09:00:00+00', 'pin-t0', '{"$device_id": "verify:pin-t", "$user_id": "verify:pin-tu"}'),
    pg_temp.ev('App Open', 'verify:pin-sc-u', '2000-03-04 11:00:00+00', 'pin-sc2', '{"$device_id": "verify:pin-sc", "$user_id": "verify:pin-sc-u"}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('10. the $merge cluster joined the user, who is its canonical now', 'verify:pin-wv',
    (select l.canonical from mixpanel_sync.identity_links l where l.alias = 'verify:pin-wu'));
  perform pg_temp.same('10. the user''s identified_at moved to the earlier sight of the same link', '2000-03-02 09:00:00+00'::timestamptz,
    (select l.identified_at from mixpanel_sync.identity_links l where l.alias = 'verify:pin-tu'));
  perform pg_temp.same('11. a known link seen again later keeps the user''s earlier identified_at', '2000-03-02 10:07:00+00'::timestamptz,
    (select l.identified_at from mixpanel_sync.identity_links l where l.alias = 'verify:pin-sc-u'));
  update mixpanel_sync.sync_settings s set value = 'off' where s.key = 'identity.mode';

  -- 12. Profiles: the zone is part of a line's identity; the last line of a profile in a batch wins.
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:08:00+00', project_timezone => 'UTC');
  insert into mixpanel_sync.staged_profiles (run_id, line_no, line) values
    (profiles.id, 1, '{"$distinct_id": "verify:pin-z1", "$properties": {"$name": "Zed", "$created": "2000-01-01T10:00:00"}}'),
    (profiles.id, 2, '{"$distinct_id": "verify:pin-z2", "$properties": {"$name": "Before"}}');
  profiles := mixpanel_sync.finish_run(profiles.id);
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:09:00+00', project_timezone => 'America/New_York');
  insert into mixpanel_sync.staged_profiles (run_id, line_no, line) values
    (profiles.id, 1, '{"$distinct_id": "verify:pin-z1", "$properties": {"$name": "Zed", "$created": "2000-01-01T10:00:00"}}'),
    (profiles.id, 2, '{"$distinct_id": "verify:pin-z2", "$properties": {"$name": "Before"}}'),
    (profiles.id, 3, '{"$distinct_id": "verify:pin-z2", "$properties": {"$name": "After"}}');
  profiles := mixpanel_sync.finish_run(profiles.id);
  perform pg_temp.same('12. the same profile line read in New York time: created_at moved', '2000-01-01 15:00:00+00'::timestamptz,
    (select p.created_at from mixpanel_sync.subscriber_properties p where p.distinct_id = 'verify:pin-z1'));
  profiles := mixpanel_sync.begin_run('profiles', clock => '2000-03-01 12:10:00+00', project_timezone => 'America/New_York');
  insert into mixpanel_sync.staged_profiles (run_id, line_no, line) values
    (profiles.id, 1, '{"$distinct_id": "verify:pin-z2", "$properties": {"$name": "After"}}'),
    (profiles.id, 2, '{"$distinct_id": "verify:pin-z2", "$properties": {"$name": "Final"}}');
  profiles := mixpanel_sync.finish_run(profiles.id);
  perform pg_temp.same('12. a recognised line followed by a changed one: the change is stored', 'Final',
    (select p.name from mixpanel_sync.subscriber_properties p where p.distinct_id = 'verify:pin-z2'));

  -- 13. Legacy rows of the horizon day survive the run's prune: events.ledger_retention 3 days, clocks 2000-03-06 12:00
  --     and 13:00, so the horizon day is 2000-03-04; the legacy key of ('Old Event', 952164000 = 2000-03-04 10:00 UTC,
  --     $insert_id 'pin-lg') is md5('Old Event' 0x1f '952164000' 0x1f 'pin-lg'), as Python's hashlib computes it.
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.ledger_retention', '3 days'), ('events.incremental', 'on')) v (key, value) where s.key = v.key;
  insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
  values (mixpanel_sync.project_id(), 'verify:pin-lg', '24d3eedd-4cf2-938f-30b5-56eb451edfcf', '2000-03-04', 'Old Event', '2000-03-04 10:00:00+00', 0);
  run := mixpanel_sync.begin_run('events', clock => '2000-03-06 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(pg_temp.ev('Old Event', 'verify:pin-lg', '2000-03-04 10:00:00+00', 'pin-lg', '{}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('13. first ADD on the horizon day (mode, applied, duplicates)', '(incremental,0,1)',
    format('(%s,%s,%s)', run.mode, run.applied, run.duplicates));
  run := mixpanel_sync.begin_run('events', clock => '2000-03-06 13:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(pg_temp.ev('Old Event', 'verify:pin-lg', '2000-03-04 10:00:00+00', 'pin-lg', '{}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('13. second ADD on the same horizon day (mode, applied, duplicates)', '(incremental,0,1)',
    format('(%s,%s,%s)', run.mode, run.applied, run.duplicates));

  -- 14. The guard at exactly min_events: 2 events stored on 2000-03-09, then a full run over the same 2-day window
  --     with one event on 2000-03-10 only.
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.replace_guard_min_events', '2'), ('events.replace_guard_ratio', '0.5'), ('events.full_window', '2 days'))
    v (key, value) where s.key = v.key;
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-10 12:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(
    pg_temp.ev('Open', 'verify:pin-g1', '2000-03-09 10:00:00+00', 'pin-g1', '{}'),
    pg_temp.ev('Open', 'verify:pin-g1', '2000-03-09 11:00:00+00', 'pin-g2', '{}')));
  run := mixpanel_sync.finish_run(run.id);
  perform pg_temp.same('14. the first full run stored 2 events on 2000-03-09', 2::bigint,
    (select sum(d.event_count) from mixpanel_sync.events_daily d where d.distinct_id = 'verify:pin-g1')::bigint);
  run := mixpanel_sync.begin_run('events', true, clock => '2000-03-10 13:00:00+00');
  perform mixpanel_sync.stage_events(run.id, jsonb_build_array(pg_temp.ev('Open', 'verify:pin-g3', '2000-03-10 10:00:00+00', 'pin-g3', '{}')));
  begin
    perform mixpanel_sync.finish_run(run.id);
  exception
    when others then
      refused := sqlstate;
  end;
  perform pg_temp.same('14. a full run leaving 0 of a day''s 2 (= min_events) stored events is refused', 'MP001', refused);
  perform mixpanel_sync.fail_run(run.id, 'verify: refused by the guard');

  -- 15. begin_run's resync end and its watermark-before-horizon rule (ledger retention 3 days, overlap 2 hours:
  --     the clock 2000-03-20 12:00 has the horizon day 2000-03-18).
  run := mixpanel_sync.begin_run('events', clock => '2000-03-20 12:00:00+00', resync_from => '2000-03-01', resync_to => '2000-03-02');
  perform pg_temp.same('15. a resync of 2000-03-01 .. 02 (mode, fetch_to)', '(full,2000-03-02 23:59:59+00)',
    format('(%s,%s)', run.mode, to_char(run.fetch_to at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'));
  perform mixpanel_sync.fail_run(run.id, 'verify: resync begun only');
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.ledger_retention', '3 days'), ('events.overlap', '2 hours'), ('events.incremental', 'on')) v (key, value)
  where s.key = v.key;
  update mixpanel_sync.sync_watermarks w set watermark = '2000-03-18 01:00:00+00' where w.project_id = mixpanel_sync.project_id() and w.source = 'events';
  run := mixpanel_sync.begin_run('events', clock => '2000-03-20 12:00:00+00');
  perform pg_temp.same('15. watermark - overlap before the horizon day: a full run', 'full', run.mode);
  perform mixpanel_sync.fail_run(run.id, 'verify: begun only');
  update mixpanel_sync.sync_watermarks w set watermark = '2000-03-18 02:00:00+00' where w.project_id = mixpanel_sync.project_id() and w.source = 'events';
  run := mixpanel_sync.begin_run('events', clock => '2000-03-20 12:00:00+00');
  perform pg_temp.same('15. watermark - overlap exactly the horizon day''s midnight: an incremental run', 'incremental', run.mode);
  perform mixpanel_sync.fail_run(run.id, 'verify: begun only');

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

  raise notice 'PASS verify/mutation_pins: fail_run kept the explicit error code over the text''s, else the text''s, else none; heartbeat_run marked only the run it names and nothing once it failed; abandon_stale_runs left an old failed run and a run of exactly runs.abandon_after alone and abandoned one a second older; identity (simplified): events_resolved 1 of 2 (the id mapped to itself not counted); terminated-early marker: 63 characters yes, 64 no; legacy_event_key = its known answers; staged_events truncated by fail_run while a profiles run runs; a profile unreadable by both set paths rejected alone by the last resort; identity links of 255-character ids learned, of 256 skipped (both modes); no link from what neither mode defines; a $merge canonical device joined a user; an earlier sight moved identified_at, a later one did not, two links in a run kept the earlier; a profile line re-read in another zone, a changed line after a recognised one stored; a legacy-keyed event of the horizon day a duplicate in two runs; the REPLACE guard refused at exactly min_events; a resync fetched to the last second of its last day; watermark - overlap before the horizon made a run full, on it incremental; rows of others untouched';
end;
$$;

rollback;
