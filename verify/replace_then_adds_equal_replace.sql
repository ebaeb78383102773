-- verify/replace_then_adds_equal_replace.sql
-- Proves invariant 3: REPLACE(W, A) followed by ADD(B1), ADD(B2), ADD(B3) with every Bi inside W — B1 re-sends part
-- of A, B2 overlaps B1 and repeats part of itself, B3 re-sends B1 whole — leaves events_daily, event_ledger and
-- subscribers identical to REPLACE(W, A ∪ B1 ∪ B2 ∪ B3), and applies as many events in total; from the same
-- non-empty prior state. event_ledger.run_id is left out: it records which run applied an event, and that differs
-- by construction. Rows of others are untouched.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/replace_then_adds_equal_replace.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace.
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-25 .. 2000-01-13, run clock 2000-02-01.
begin;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  a jsonb := mixpanel_sync_verify.verify_events('rta-a', 300, '1999-12-31', 9);
  b1 jsonb := mixpanel_sync_verify.verify_events('rta-a', 100, '1999-12-31', 9) || mixpanel_sync_verify.verify_events('rta-b1', 200, '2000-01-02', 5);
  b2 jsonb := mixpanel_sync_verify.verify_events('rta-b1', 120, '2000-01-02', 5) || mixpanel_sync_verify.verify_events('rta-b2', 150, '1999-12-31', 9)
    || mixpanel_sync_verify.verify_events('rta-b2', 50, '1999-12-31', 9);
  a_run bigint;
  add_runs bigint[];
  union_run bigint;
  add_run bigint;
  stepwise jsonb;
  at_once jsonb;
  stepwise_applied bigint;
  at_once_result mixpanel_sync.apply_result;
begin
  -- An arbitrary prior state inside and around W = 1999-12-30 .. 2000-01-10.
  perform mixpanel_sync.upsert_subscribers_incremental(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('rta-prior', 400, '1999-12-26', 18)), '1999-12-25', '2000-01-13');
  perform mixpanel_sync.upsert_subscribers_incremental_add(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('rta-prior-add', 150, '2000-01-01', 8)), '1999-12-25');

  a_run := mixpanel_sync_verify.verify_staged_run(a);
  add_runs := array[mixpanel_sync_verify.verify_staged_run(b1), mixpanel_sync_verify.verify_staged_run(b2), mixpanel_sync_verify.verify_staged_run(b1)];
  union_run := mixpanel_sync_verify.verify_staged_run(a || b1 || b2 || b1);

  begin
    stepwise_applied := (mixpanel_sync.upsert_subscribers_incremental(a_run, '1999-12-30', '2000-01-10')).applied;
    foreach add_run in array add_runs loop
      stepwise_applied := stepwise_applied + (mixpanel_sync.upsert_subscribers_incremental_add(add_run, '1999-12-30')).applied;
    end loop;
    stepwise := mixpanel_sync_verify.verify_snapshot('{run_id}');
    raise exception using errcode = 'VRFY0', message = 'undo REPLACE then ADDs';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  at_once_result := mixpanel_sync.upsert_subscribers_incremental(union_run, '1999-12-30', '2000-01-10');
  at_once := mixpanel_sync_verify.verify_snapshot('{run_id}');

  perform mixpanel_sync_verify.verify_assert_same('replace_then_adds_equal_replace',
    'tables after REPLACE(W, A ∪ B1 ∪ B2 ∪ B3) (expected) and REPLACE(W, A) then ADD(B1), ADD(B2), ADD(B3) (actual)', at_once, stepwise);
  if stepwise_applied <> at_once_result.applied then
    raise exception 'verify/replace_then_adds_equal_replace: events applied: expected % (REPLACE of the union), actual % (REPLACE then ADDs)',
      at_once_result.applied, stepwise_applied;
  end if;
  perform mixpanel_sync_verify.verify_assert_same('replace_then_adds_equal_replace', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  if at_once_result.duplicates < jsonb_array_length(b1) then
    raise exception 'verify/replace_then_adds_equal_replace: the input did not exercise duplicates (apply_result %)', at_once_result;
  end if;

  raise notice 'PASS verify/replace_then_adds_equal_replace: events_daily (% rows), event_ledger (% rows, run_id aside), subscribers (% rows) and % events applied identical for REPLACE(W, A) + ADD(B1), ADD(B2), ADD(B3) and REPLACE(W, A ∪ B1 ∪ B2 ∪ B3), W = 1999-12-30..2000-01-10, over a prior state; rows of others untouched',
    (select count(*) from jsonb_object_keys(at_once -> 'events_daily')), (select count(*) from jsonb_object_keys(at_once -> 'event_ledger')),
    (select count(*) from jsonb_object_keys(at_once -> 'subscribers')), at_once_result.applied;
end;
$$;

rollback;
