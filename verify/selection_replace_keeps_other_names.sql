-- verify/selection_replace_keeps_other_names.sql
-- Proves (issue 13, choosing which events to sync): a REPLACE restricted to a selection S of event names (a run begun
-- with begin_run(..., events => S), CLI --event NAME) leaves events_daily, event_ledger and subscribers identical to a
-- REPLACE of the whole window whose input is the run's events of names in S plus the events of the other names that
-- the tables held in the window — i.e. it changes only names in S; every row of the other names is left exactly as
-- it was (every column); the set path and its _loop twin agree. event_ledger.run_id is left out of the comparison
-- with the whole-window REPLACE only: that is another run by construction.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/selection_replace_keeps_other_names.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace.
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-25 .. 2000-01-11, run clock 2000-02-01.
begin;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  selection text[] := array['login', 'ログイン'];
  prior_replace jsonb := mixpanel_sync_verify.verify_events('sel-prior', 400, '1999-12-28', 12);
  prior_add jsonb := mixpanel_sync_verify.verify_events('sel-prior-add', 150, '2000-01-01', 8);
  batch jsonb := mixpanel_sync_verify.verify_events('sel-input', 300, '2000-01-02', 6);
  whole_input jsonb;
  run mixpanel_sync.sync_runs;
  selected_run bigint;
  prior jsonb;
  by_set jsonb;
  by_loop jsonb;
  by_whole jsonb;
  set_result mixpanel_sync.apply_result;
begin
  -- A prior state: a REPLACE over 1999-12-28 .. 2000-01-08, then an ADD on top.
  perform mixpanel_sync.upsert_subscribers_incremental(mixpanel_sync_verify.verify_staged_run(prior_replace), '1999-12-28', '2000-01-08');
  perform mixpanel_sync.upsert_subscribers_incremental_add(mixpanel_sync_verify.verify_staged_run(prior_add), '1999-12-25');
  prior := mixpanel_sync_verify.verify_snapshot();

  -- The run under test: a forced full run of the names in S only, replacing W = 2000-01-03 .. 2000-01-07.
  run := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00', events => selection);
  if run.options -> 'events' is distinct from to_jsonb(selection) then
    raise exception 'verify/selection_replace_keeps_other_names: begin_run recorded the selection %, expected %', run.options -> 'events', to_jsonb(selection);
  end if;
  selected_run := run.id;
  perform mixpanel_sync.stage_events(selected_run, batch);
  perform mixpanel_sync.parse_staged_events(selected_run);
  update mixpanel_sync.sync_runs r set status = 'failed', finished_at = clock_timestamp(), error = 'verify: staged and parsed for a path called directly'
  where r.id = selected_run;

  begin
    perform mixpanel_sync.upsert_subscribers_incremental_loop(selected_run, '2000-01-03', '2000-01-07');
    by_loop := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo the loop';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  begin
    set_result := mixpanel_sync.upsert_subscribers_incremental(selected_run, '2000-01-03', '2000-01-07');
    by_set := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo the set path';
  exception when sqlstate 'VRFY0' then
    null;
  end;

  -- The whole-window REPLACE: the prior input's events of other names in W (the REPLACE's lines of its own window
  -- first, then the ADD's: REPLACE keeps an event's first line, as the prior state did), then the batch's names in S.
  with lines as (
    select e.event, e.n, s.part,
      case when jsonb_typeof(e.event #> '{properties,time}') = 'number' then (to_timestamp(
        case when (e.event #>> '{properties,time}')::numeric >= 1e11 then (e.event #>> '{properties,time}')::numeric / 1000
          else (e.event #>> '{properties,time}')::numeric end) at time zone 'UTC')::date end as day
    from (values (1, prior_replace), (2, prior_add), (3, batch)) s (part, input),
      jsonb_array_elements(s.input) with ordinality e (event, n)
    where jsonb_typeof(e.event -> 'event') = 'string'
  )
  select jsonb_agg(l.event order by l.part, l.n) into whole_input
  from lines l
  where (l.part = 3 and l.event ->> 'event' = any (selection))
    or (l.part in (1, 2) and not (l.event ->> 'event' = any (selection)) and l.day between '2000-01-03' and '2000-01-07'
      and (l.part = 2 or l.day between '1999-12-28' and '2000-01-08'));
  perform mixpanel_sync.upsert_subscribers_incremental(mixpanel_sync_verify.verify_staged_run(whole_input), '2000-01-03', '2000-01-07');
  by_whole := mixpanel_sync_verify.verify_snapshot();

  perform mixpanel_sync_verify.verify_assert_same('selection_replace_keeps_other_names',
    'tables after REPLACE(W) of the names in S plus the other names as stored (expected) and REPLACE(W) restricted to S (actual), event_ledger.run_id aside',
    (select jsonb_object_agg(t.key, case when t.key = 'event_ledger'
       then (select coalesce(jsonb_object_agg(r.key, r.value - 'run_id'), '{}') from jsonb_each(t.value) r) else t.value end)
     from jsonb_each(by_whole) t),
    (select jsonb_object_agg(t.key, case when t.key = 'event_ledger'
       then (select coalesce(jsonb_object_agg(r.key, r.value - 'run_id'), '{}') from jsonb_each(t.value) r) else t.value end)
     from jsonb_each(by_set) t));
  perform mixpanel_sync_verify.verify_assert_same('selection_replace_keeps_other_names',
    'tables after the _loop (expected) and the set path (actual), both restricted to S', by_loop, by_set);
  perform mixpanel_sync_verify.verify_assert_same('selection_replace_keeps_other_names',
    'rows of names outside S before (expected) and after REPLACE restricted to S (actual), every column',
    (select jsonb_build_object(
       'events_daily', (select coalesce(jsonb_object_agg(r.key, r.value), '{}') from jsonb_each(prior -> 'events_daily') r where not (r.value ->> 'event_name' = any (selection))),
       'event_ledger', (select coalesce(jsonb_object_agg(r.key, r.value), '{}') from jsonb_each(prior -> 'event_ledger') r where not (r.value ->> 'event_name' = any (selection))))),
    (select jsonb_build_object(
       'events_daily', (select coalesce(jsonb_object_agg(r.key, r.value), '{}') from jsonb_each(by_set -> 'events_daily') r where not (r.value ->> 'event_name' = any (selection))),
       'event_ledger', (select coalesce(jsonb_object_agg(r.key, r.value), '{}') from jsonb_each(by_set -> 'event_ledger') r where not (r.value ->> 'event_name' = any (selection))))));
  perform mixpanel_sync_verify.verify_assert_same('selection_replace_keeps_other_names', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());

  -- The input must exercise it: other names held in W before, and the selection's rows in W changed.
  if not exists (select from jsonb_each(prior -> 'events_daily') r
      where not (r.value ->> 'event_name' = any (selection)) and (r.value ->> 'day')::date between '2000-01-03' and '2000-01-07')
    or set_result.applied = 0
    or (select jsonb_object_agg(r.key, r.value) from jsonb_each(prior -> 'events_daily') r where r.value ->> 'event_name' = any (selection))
      = (select jsonb_object_agg(r.key, r.value) from jsonb_each(by_set -> 'events_daily') r where r.value ->> 'event_name' = any (selection)) then
    raise exception 'verify/selection_replace_keeps_other_names: the input did not exercise the selection (apply_result %)', set_result;
  end if;

  raise notice 'PASS verify/selection_replace_keeps_other_names: REPLACE of 2000-01-03..2000-01-07 restricted to % (% events applied) ≡ REPLACE of the window with the other names as stored: events_daily (% rows), event_ledger (% rows, run_id aside), subscribers (% rows) identical; loop ≡ set; rows of other names and of others untouched',
    selection, set_result.applied, (select count(*) from jsonb_object_keys(by_set -> 'events_daily')),
    (select count(*) from jsonb_object_keys(by_set -> 'event_ledger')), (select count(*) from jsonb_object_keys(by_set -> 'subscribers'));
end;
$$;

rollback;
