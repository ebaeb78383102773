-- verify/add_loop_equals_set.sql
-- Proves: ADD set-based (upsert_subscribers_incremental_add) leaves events_daily, event_ledger and subscribers
-- identical (every column) to its row-at-a-time reference (upsert_subscribers_incremental_add_loop), with the same
-- apply_result (applied, duplicates, too_old, users), from the same non-empty prior state and the same staged input
-- (re-sends, events already in the ledger, events before the horizon); rows of others are untouched.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/add_loop_equals_set.sql
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
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('add-prior', 400, '1999-12-30', 12)), '1999-12-30', '2000-01-10');
  perform mixpanel_sync.upsert_subscribers_incremental_add(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('add-prior-add', 150, '2000-01-01', 8)), '1999-12-30');
  prior := mixpanel_sync_verify.verify_snapshot();

  -- The run under test: half of it re-sends the prior ADD's events, the rest is new; horizon 2000-01-02.
  run_id := mixpanel_sync_verify.verify_staged_run(
    mixpanel_sync_verify.verify_events('add-prior-add', 75, '2000-01-01', 8) || mixpanel_sync_verify.verify_events('add-input', 400, '2000-01-01', 9));
  begin
    set_result := mixpanel_sync.upsert_subscribers_incremental_add(run_id, '2000-01-02');
    by_set := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo the set-based path';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  loop_result := mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id, '2000-01-02');
  by_loop := mixpanel_sync_verify.verify_snapshot();

  perform mixpanel_sync_verify.verify_assert_same('add_loop_equals_set', 'tables after the loop (expected) and the set-based ADD (actual)', by_loop, by_set);
  perform mixpanel_sync_verify.verify_assert_same('add_loop_equals_set', 'apply_result of the loop (expected) and the set-based ADD (actual)',
    mixpanel_sync_verify.verify_result(loop_result), mixpanel_sync_verify.verify_result(set_result));
  perform mixpanel_sync_verify.verify_assert_same('add_loop_equals_set', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  if set_result.applied = 0 or set_result.duplicates = 0 or set_result.too_old = 0 or prior = by_set then
    raise exception 'verify/add_loop_equals_set: the input did not exercise the path (apply_result %)', set_result;
  end if;

  raise notice 'PASS verify/add_loop_equals_set: events_daily (% rows), event_ledger (% rows), subscribers (% rows) and apply_result % identical for the set-based and loop ADD (horizon 2000-01-02) over a prior state; rows of others untouched',
    (select count(*) from jsonb_object_keys(by_set -> 'events_daily')), (select count(*) from jsonb_object_keys(by_set -> 'event_ledger')),
    (select count(*) from jsonb_object_keys(by_set -> 'subscribers')), set_result;
end;
$$;

rollback;
