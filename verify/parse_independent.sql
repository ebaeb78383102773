-- verify/parse_independent.sql
-- Proves the event parser (parse_staged_events → run_events) against expectations written out line by line in this
-- script, not computed by another path through the same parser (the other verify scripts compare two write paths that
-- share it):
--   1. each line's distinct_id, event name, event_time, UTC day, processing_time, lateness_ms, or the reason it is
--      rejected (its text up to the first number), hand-computed here;
--   2. event identity (the event key with its second): lines that are one event — same name, same second
--      (seconds, milliseconds, fractions of a second), same $insert_id, or without $insert_id the same JSON object
--      written in another key order — share it; any other name, second, $insert_id or content gives another one;
--      an empty $insert_id counts as none;
--   3. the seconds/milliseconds boundary: 100000000000 (1e11) is milliseconds (1973-03-03 09:46:40), 99999999999
--      is seconds (year 5138: after the run's clock, rejected), 1e14 ms is out of range;
--   4. parsing is incremental: a second parse_staged_events parses nothing again (same totals, same rows);
--   5. finishing the run gives the exact counts (received 28 = applied 12 + duplicates 3 + too_old 2 + rejected 10
--      + no_user 1: a valid event without a distinct_id is skipped, not rejected)
--      and leaves no staged line or run_events row of the run.
-- Mutants seen failing it (scratch database, create or replace, issue 15): event_second reading milliseconds from
-- 1e12, or with `< 1e11` → `<= 1e11`, or `>= 1e11` → `> 1e11`; event_key without the $insert_id; event_key taking
-- an empty $insert_id as an id; the parser keying to the millisecond; finish_run without drop_staged_rows; the parser
-- with `is distinct from 'null'` for `<> 'null'` (an absent event, distinct_id or time reported as of the wrong type);
-- the parser without `s.line_id not in (already parsed)` (the second parse fails); the parser with `processing_ms >= 0`
-- for `> 0` (either place).
-- Each fails here and passes on main.
-- Run on a migrated database: psql -v ON_ERROR_STOP=1 -f verify/parse_independent.sql   (it rolls back)
-- It needs no other events run running (begin_run refuses a second one) and holds finish_run's lock while it runs.
-- Its data: distinct_ids 'verify:parse-…' and -9000000042, run clock 2000-01-10 12:00 UTC.
begin;

create temporary table verify_lines (
  label text primary key,
  line text not null,
  -- lines of one identity class are one event; null: rejected
  identity_class text,
  distinct_id text,
  event_name text,
  event_time timestamptz,
  day date,
  processing_time timestamptz,
  lateness_ms bigint,
  -- the reject reason up to its first digit (the rest quotes the value or the clock), null when usable
  reason text,
  -- run_events.skip_reason: 'no_user' for a valid event without a distinct_id
  skip_reason text
) on commit drop;

insert into verify_lines values
  -- 946900800 s = 2000-01-03 12:00:00 UTC
  ('L01', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 946900800, "$insert_id": "k1", "mp_processing_time_ms": 946900860000}}',
    'A', 'verify:parse-a', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', '2000-01-03 12:01:00+00', 60000, null),
  -- the same event in milliseconds, 999 ms into the same second, processed at the same time: lateness 59001 ms
  ('L02', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 946900800999, "$insert_id": "k1", "mp_processing_time_ms": 946900860000}}',
    'A', 'verify:parse-a', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', '2000-01-03 12:01:00+00', 59001, null),
  -- exactly 1e11: milliseconds, 1e8 s = 1973-03-03 09:46:40 UTC (usable; too old for the run's window)
  ('L03', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 100000000000, "$insert_id": "k3"}}',
    'B', 'verify:parse-a', 'signup', '1973-03-03 09:46:40+00', '1973-03-03', null, null, null),
  -- just below 1e11: seconds, in the year 5138, after the run's clock
  ('L04', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 99999999999, "$insert_id": "k4"}}',
    null, null, null, null, null, null, null, 'properties.time is after the run''s fetch_to'),
  -- 1e14 ms = 1e11 s: out of range
  ('L05', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 100000000000000, "$insert_id": "k5"}}',
    null, null, null, null, null, null, null, 'properties.time out of range'),
  ('L06', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 0.5, "$insert_id": "k6"}}',
    null, null, null, null, null, null, null, 'properties.time out of range'),
  -- the first second there is
  ('L07', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 1, "$insert_id": "k7"}}',
    'C', 'verify:parse-a', 'signup', '1970-01-01 00:00:01+00', '1970-01-01', null, null, null),
  -- a fraction of the same second as L01: the same event
  ('L08', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 946900800.9, "$insert_id": "k1"}}',
    'A', 'verify:parse-a', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  -- another $insert_id, another name, the next second: three other events
  ('L09', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 946900800, "$insert_id": "k2"}}',
    'D', 'verify:parse-a', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L10', '{"event": "login", "properties": {"distinct_id": "verify:parse-a", "time": 946900800, "$insert_id": "k1"}}',
    'E', 'verify:parse-a', 'login', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L11', '{"event": "signup", "properties": {"distinct_id": "verify:parse-a", "time": 946900801, "$insert_id": "k1"}}',
    'F', 'verify:parse-a', 'signup', '2000-01-03 12:00:01+00', '2000-01-03', null, null, null),
  -- no $insert_id: the event is its content; L13 is L12 written in another key order and spacing
  ('L12', '{"event": "signup", "properties": {"distinct_id": "verify:parse-b", "time": 946900800, "plan": "pro"}}',
    'G', 'verify:parse-b', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L13', '{"properties":{"plan":"pro","time":946900800,"distinct_id":"verify:parse-b"},"event":"signup"}',
    'G', 'verify:parse-b', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L14', '{"event": "signup", "properties": {"distinct_id": "verify:parse-b", "time": 946900800, "plan": "free"}}',
    'H', 'verify:parse-b', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  -- an empty $insert_id is none: identified by content, unlike L12 (which has no "$insert_id" key at all)
  ('L15', '{"event": "signup", "properties": {"distinct_id": "verify:parse-b", "time": 946900800, "plan": "pro", "$insert_id": ""}}',
    'I', 'verify:parse-b', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  -- and two lines with an empty $insert_id and different content are two events
  ('L26', '{"event": "signup", "properties": {"distinct_id": "verify:parse-b", "time": 946900800, "plan": "free", "$insert_id": ""}}',
    'M', 'verify:parse-b', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  -- a numeric distinct_id is read as its text
  ('L16', '{"event": "numeric user", "properties": {"distinct_id": -9000000042, "time": 946900800, "$insert_id": "k1"}}',
    'J', '-9000000042', 'numeric user', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L17', '{"event": "", "properties": {"distinct_id": "verify:parse-a", "time": 946900800}}',
    null, null, null, null, null, null, null, 'missing event name'),
  ('L18', '{"event": "no properties"}',
    null, null, null, null, null, null, null, 'properties missing or not an object'),
  ('L19', '{"event": "text time", "properties": {"distinct_id": "verify:parse-a", "time": "946900800"}}',
    null, null, null, null, null, null, null, 'properties.time is not a number'),
  ('L20', 'not json at all',
    null, null, null, null, null, null, null, '*'),
  ('L21', '{"event": "' || repeat('x', 256) || '", "properties": {"distinct_id": "verify:parse-a", "time": 946900800}}',
    null, null, null, null, null, null, null, 'event name longer than'),
  -- an mp_processing_time_ms of 0 is no processing time (and no lateness)
  ('L30', '{"event": "signup", "properties": {"distinct_id": "verify:parse-c", "time": 946900800, "$insert_id": "k30", "mp_processing_time_ms": 0}}',
    'N', 'verify:parse-c', 'signup', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  -- a key that is absent is missing, not of the wrong type
  ('L27', '{"properties": {"distinct_id": "verify:parse-a", "time": 946900800}}',
    null, null, null, null, null, null, null, 'missing event name'),
  -- no distinct_id: not a reject but a valid event skipped as no_user (set below: skip_reason)
  ('L28', '{"event": "no user", "properties": {"time": 946900800}}',
    null, null, 'no user', '2000-01-03 12:00:00+00', '2000-01-03', null, null, null),
  ('L29', '{"event": "no time", "properties": {"distinct_id": "verify:parse-a"}}',
    null, null, null, null, null, null, null, 'missing properties.time'),
  -- the last second of a UTC day and the first of the next
  ('L24', '{"event": "signup", "properties": {"distinct_id": "verify:parse-c", "time": 946943999, "$insert_id": "k1"}}',
    'K', 'verify:parse-c', 'signup', '2000-01-03 23:59:59+00', '2000-01-03', null, null, null),
  ('L25', '{"event": "signup", "properties": {"distinct_id": "verify:parse-c", "time": 946944000, "$insert_id": "k1"}}',
    'L', 'verify:parse-c', 'signup', '2000-01-04 00:00:00+00', '2000-01-04', null, null, null);

update verify_lines set skip_reason = 'no_user' where label = 'L28';

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}';
  run mixpanel_sync.sync_runs;
  expected jsonb;
  actual jsonb;
  bad text;
  left_over bigint;
  parsed record;
begin
  update mixpanel_sync.sync_settings s set value = v.value
  from (values ('events.full_window', '45 days'), ('events.ledger_retention', '45 days'), ('events.upsert_path', 'set')) v (key, value)
  where s.key = v.key;
  -- A full run over 1999-11-27 .. 2000-01-10 (45 days ending with the clock's day).
  run := mixpanel_sync.begin_run('events', true, clock => '2000-01-10 12:00:00+00');
  insert into mixpanel_sync.staged_events (run_id, line) select run.id, l.line from verify_lines l order by l.label;
  perform mixpanel_sync.parse_staged_events(run.id);
  -- parsing is incremental (the loader may parse between COPY chunks): a second call parses nothing again
  parsed := mixpanel_sync.parse_staged_events(run.id);
  if (parsed.received, parsed.rejected) is distinct from (28::bigint, 10::bigint)
      or (select count(*) from mixpanel_sync.run_events e where e.run_id = run.id) <> 28 then
    raise exception 'verify/parse_independent: a second parse_staged_events reported (received, rejected) (%, %) and left % run_events rows, expected (28, 10) and 28',
      parsed.received, parsed.rejected, (select count(*) from mixpanel_sync.run_events e where e.run_id = run.id);
  end if;

  -- 1. Every line as this script expects it.
  select jsonb_object_agg(l.label, jsonb_build_object('distinct_id', l.distinct_id, 'event_name', l.event_name,
      'event_time', l.event_time, 'day', l.day, 'processing_time', l.processing_time, 'lateness_ms', l.lateness_ms, 'reason', l.reason, 'skip_reason', l.skip_reason))
  into expected from verify_lines l;
  -- (of a rejected line only its reason is compared)
  select jsonb_object_agg(l.label, case when e.reject_reason is null then jsonb_build_object('distinct_id', e.distinct_id,
      'event_name', e.event_name, 'event_time', e.event_time, 'day', e.day, 'processing_time', e.processing_time,
      'lateness_ms', e.lateness_ms) else jsonb_build_object('distinct_id', null, 'event_name', null, 'event_time', null, 'day', null,
      'processing_time', null, 'lateness_ms', null) end || jsonb_build_object(
      'reason', case when l.reason = '*' and e.reject_reason is not null then '*'
        else nullif(trim(trailing ': ' from substring(e.reject_reason from '^[^0-9]*')), '') end,
      'skip_reason', e.skip_reason))
  into actual
  from verify_lines l
  left join mixpanel_sync.staged_events s on s.run_id = run.id and s.line = l.line
  left join mixpanel_sync.run_events e on e.run_id = run.id and e.line_id = s.line_id;
  perform mixpanel_sync_verify.verify_assert_same('parse_independent', 'run_events per line, this script''s expectation (expected) and the parser''s (actual)',
    jsonb_build_object('run_events', expected), jsonb_build_object('run_events', actual));

  -- 2. Identity: two usable lines are one event exactly when this script put them in one class.
  select format('%s and %s: expected %s, got %s', a.label, b.label,
      case when a.identity_class = b.identity_class then 'one event' else 'two events' end,
      case when (ea.event_key, ea.event_time) = (eb.event_key, eb.event_time) then 'one event' else 'two events' end)
  into bad
  from verify_lines a
  join verify_lines b on b.label > a.label and b.distinct_id = a.distinct_id
  join mixpanel_sync.staged_events sa on sa.run_id = run.id and sa.line = a.line
  join mixpanel_sync.run_events ea on ea.run_id = run.id and ea.line_id = sa.line_id
  join mixpanel_sync.staged_events sb on sb.run_id = run.id and sb.line = b.line
  join mixpanel_sync.run_events eb on eb.run_id = run.id and eb.line_id = sb.line_id
  where a.identity_class is not null and b.identity_class is not null
    and ea.event_key is not null and eb.event_key is not null
    and (a.identity_class = b.identity_class) <> ((ea.event_key, ea.event_time) = (eb.event_key, eb.event_time))
  order by a.label, b.label limit 1;
  if bad is not null then
    raise exception 'verify/parse_independent: event identity differs from this script''s classes, first: %', bad
      using hint = 'The event key must depend on the name, the second and $insert_id (or the canonical JSON when there is none).';
  end if;
  if exists (select from verify_lines l join mixpanel_sync.staged_events s on s.run_id = run.id and s.line = l.line
      join mixpanel_sync.run_events e on e.run_id = run.id and e.line_id = s.line_id
      where l.identity_class is not null and e.event_key is null) then
    raise exception 'verify/parse_independent: a usable line has no event key';
  end if;

  -- 4. Finishing: exact counts, nothing staged left.
  run := mixpanel_sync.finish_run(run.id);
  if (run.received, run.applied, run.duplicates, run.too_old, run.rejected, run.no_user, run.not_selected)
      is distinct from (28::bigint, 12::bigint, 3::bigint, 2::bigint, 10::bigint, 1::bigint, 0::bigint) then
    raise exception 'verify/parse_independent: finished run (received, applied, duplicates, too_old, rejected, no_user, not_selected) = (%, %, %, %, %, %, %), expected (28, 12, 3, 2, 10, 1, 0)',
      run.received, run.applied, run.duplicates, run.too_old, run.rejected, run.no_user, run.not_selected;
  end if;
  select (select count(*) from mixpanel_sync.staged_events s where s.run_id = run.id)
    + (select count(*) from mixpanel_sync.run_events e where e.run_id = run.id) into left_over;
  if left_over <> 0 then
    raise exception 'verify/parse_independent: % staged lines or run_events rows left after finish_run', left_over;
  end if;
  perform mixpanel_sync_verify.verify_assert_same('parse_independent', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others() #- '{rows of others,sync_watermarks}' #- '{rows of others,sync_settings}');

  raise notice 'PASS verify/parse_independent: 28 lines parsed as this script expects them (user, name, time, UTC day, processing time, lateness, reject reason); 14 identity classes as expected (seconds, milliseconds and fractions of one second are one event; name, second, $insert_id or content apart are not; "" is no $insert_id); 1e11 read as milliseconds, 99999999999 as seconds; finished with received 28 = applied 12 + duplicates 3 + too_old 2 + rejected 10 + no_user 1, nothing staged left; rows of others untouched';
end;
$$;

rollback;
