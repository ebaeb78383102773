-- verify/add_idempotent_order_independent.sql
-- Proves invariant 2 for the set-based ADD (upsert_subscribers_incremental_add), from the same non-empty prior state:
--   idempotent:        ADD(E); ADD(E) leaves events_daily, event_ledger and subscribers identical (every column) to
--                      ADD(E), and the second ADD applies nothing and counts every event of E as duplicate or too_old;
--   order-independent: ADD(A); ADD(B) leaves them identical to ADD(B); ADD(A), with A and B overlapping
--                      (event_ledger.run_id aside: it records which run applied an event, and that is the order).
-- Rows of others are untouched.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/add_idempotent_order_independent.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace.
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-29 .. 2000-01-11, run clock 2000-02-01.
begin;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  e jsonb := mixpanel_sync_verify.verify_events('idem-e', 400, '2000-01-01', 9);
  a jsonb := mixpanel_sync_verify.verify_events('idem-a', 300, '2000-01-01', 9) || mixpanel_sync_verify.verify_events('idem-b', 100, '2000-01-01', 9);
  b jsonb := mixpanel_sync_verify.verify_events('idem-b', 300, '2000-01-01', 9) || mixpanel_sync_verify.verify_events('idem-a', 80, '2000-01-01', 9);
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
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('idem-prior', 400, '1999-12-30', 12)), '1999-12-30', '2000-01-10');
  perform mixpanel_sync.upsert_subscribers_incremental_add(
    mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('idem-prior-add', 150, '2000-01-01', 8)), '1999-12-30');

  -- runs: E, E again, A, B, B, A (each staged and parsed once, before any path runs)
  runs := array[mixpanel_sync_verify.verify_staged_run(e), mixpanel_sync_verify.verify_staged_run(e), mixpanel_sync_verify.verify_staged_run(a),
    mixpanel_sync_verify.verify_staged_run(b), mixpanel_sync_verify.verify_staged_run(b), mixpanel_sync_verify.verify_staged_run(a)];

  begin
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[1], '2000-01-02');
    once := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo ADD(E)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  begin
    first := mixpanel_sync.upsert_subscribers_incremental_add(runs[1], '2000-01-02');
    second := mixpanel_sync.upsert_subscribers_incremental_add(runs[2], '2000-01-02');
    twice := mixpanel_sync_verify.verify_snapshot();
    raise exception using errcode = 'VRFY0', message = 'undo ADD(E); ADD(E)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  begin
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[3], '2000-01-02');
    perform mixpanel_sync.upsert_subscribers_incremental_add(runs[4], '2000-01-02');
    a_then_b := mixpanel_sync_verify.verify_snapshot('{run_id}');
    raise exception using errcode = 'VRFY0', message = 'undo ADD(A); ADD(B)';
  exception when sqlstate 'VRFY0' then
    null;
  end;
  perform mixpanel_sync.upsert_subscribers_incremental_add(runs[5], '2000-01-02');
  perform mixpanel_sync.upsert_subscribers_incremental_add(runs[6], '2000-01-02');
  b_then_a := mixpanel_sync_verify.verify_snapshot('{run_id}');

  perform mixpanel_sync_verify.verify_assert_same('add_idempotent_order_independent', 'tables after ADD(E) (expected) and ADD(E); ADD(E) (actual)', once, twice);
  perform mixpanel_sync_verify.verify_assert_same('add_idempotent_order_independent', 'apply_result of the second ADD(E): nothing applied (expected), actual',
    mixpanel_sync_verify.verify_result((0, first.applied + first.duplicates, first.too_old, 0)::mixpanel_sync.apply_result), mixpanel_sync_verify.verify_result(second));
  perform mixpanel_sync_verify.verify_assert_same('add_idempotent_order_independent', 'tables after ADD(A); ADD(B) (expected) and ADD(B); ADD(A) (actual)',
    a_then_b, b_then_a);
  perform mixpanel_sync_verify.verify_assert_same('add_idempotent_order_independent', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  if first.applied = 0 or first.duplicates = 0 or first.too_old = 0 then
    raise exception 'verify/add_idempotent_order_independent: the input did not exercise the path (apply_result %)', first;
  end if;

  raise notice 'PASS verify/add_idempotent_order_independent: events_daily, event_ledger and subscribers identical for ADD(E) and ADD(E); ADD(E) (% of % staged lines applied once, none the second time) and for ADD(A); ADD(B) and ADD(B); ADD(A) (% events_daily rows), over a prior state; rows of others untouched',
    first.applied, jsonb_array_length(e), (select count(*) from jsonb_object_keys(b_then_a -> 'events_daily'));
end;
$$;

rollback;
