-- verify/replace_loop_equals_set.sql
-- Proves: REPLACE set-based (upsert_subscribers_incremental) leaves events_daily, event_ledger and subscribers
-- identical (every column) to its row-at-a-time reference (upsert_subscribers_incremental_loop), with the same
-- apply_result, from the same non-empty prior state and the same staged input; rows outside the window and rows
-- this script did not create are untouched.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/replace_loop_equals_set.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace.
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-29 .. 2000-01-11, run clock 2000-02-01.
begin;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  prior jsonb;
  by_set jsonb;
  by_loop jsonb;
  set_result mixpanel_sync.apply_result;
  loop_result mixpanel_sync.apply_result;
  run_id bigint;
begin
  -- An arbitrary prior state: a REPLACE over 1999-12-30 .. 2000-01-10, then an ADD on top.
  perform mixpanel_sync.upsert_subscribers_incremental(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('replace-prior', 400, '1999-12-30', 12)), '1999-12-30', '2000-01-10');
  -- … with a user whose only event lies inside the window under test: REPLACE must leave no subscriber row for it.
  perform mixpanel_sync.upsert_subscribers_incremental_add(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('replace-prior-add', 150, '2000-01-01', 8)
      || '{"event": "login", "properties": {"distinct_id": "verify:only-in-window", "time": 946987200, "$insert_id": "w"}}'),
    '1999-12-30');
  prior := mixpanel_sync_verify.verify_snapshot();

  -- The run under test replaces 2000-01-03 .. 2000-01-07; its input also has events just outside the window.
  run_id := mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('replace-input', 500, '2000-01-03', 5));
  begin
    set_result := mixpanel_sync.upsert_subscribers_incremental(run_id, '2000-01-03', '2000-01-07');
    by_set := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo the set-based path';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  loop_result := mixpanel_sync.upsert_subscribers_incremental_loop(run_id, '2000-01-03', '2000-01-07');
  by_loop := mixpanel_sync_verify.verify_snapshot();

  perform mixpanel_sync_verify.verify_assert_same('replace_loop_equals_set', 'tables after the loop (expected) and the set-based REPLACE (actual)', by_loop, by_set);
  perform mixpanel_sync_verify.verify_assert_same('replace_loop_equals_set', 'apply_result of the loop (expected) and the set-based REPLACE (actual)',
    mixpanel_sync_verify.verify_result(loop_result), mixpanel_sync_verify.verify_result(set_result));
  perform mixpanel_sync_verify.verify_assert_same('replace_loop_equals_set', 'events_daily rows outside the window before (expected) and after (actual)',
    (select jsonb_build_object('events_daily', coalesce(jsonb_object_agg(key, value), '{}')) from jsonb_each(prior -> 'events_daily')
     where value ->> 'day' not between '2000-01-03' and '2000-01-07'),
    (select jsonb_build_object('events_daily', coalesce(jsonb_object_agg(key, value), '{}')) from jsonb_each(by_set -> 'events_daily')
     where value ->> 'day' not between '2000-01-03' and '2000-01-07'));
  perform mixpanel_sync_verify.verify_assert_same('replace_loop_equals_set', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  if by_set -> 'subscribers' ? '"verify:only-in-window"' or not prior -> 'subscribers' ? '"verify:only-in-window"' then
    raise exception 'verify/replace_loop_equals_set: the subscriber whose only event was inside the window: before %, after %',
      prior #> '{subscribers,"\"verify:only-in-window\""}', by_set #> '{subscribers,"\"verify:only-in-window\""}';
  end if;
  if set_result.applied = 0 or set_result.duplicates = 0 or set_result.too_old = 0 or prior = by_set then
    raise exception 'verify/replace_loop_equals_set: the input did not exercise the path (apply_result %)', set_result;
  end if;

  raise notice 'PASS verify/replace_loop_equals_set: events_daily (% rows), event_ledger (% rows), subscribers (% rows) and apply_result % identical for the set-based and loop REPLACE of 2000-01-03..2000-01-07 over a prior state; rows outside the window and rows of others untouched, a user left without events has no subscriber row',
    (select count(*) from jsonb_object_keys(by_set -> 'events_daily')), (select count(*) from jsonb_object_keys(by_set -> 'event_ledger')),
    (select count(*) from jsonb_object_keys(by_set -> 'subscribers')), set_result;
end;
$$;

rollback;
