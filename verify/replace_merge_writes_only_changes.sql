-- verify/replace_merge_writes_only_changes.sql
-- Proves: REPLACE (upsert_subscribers_incremental and its _loop twin) is a merge that writes only what changed. Over a
-- prior state, a second REPLACE of the same window with the same events leaves every row version of events_daily and
-- event_ledger where it was (same ctid: no row rewritten, hence no dead tuple), the tables equal, and reports
-- users_touched 0; a REPLACE with one event fewer and one more writes exactly those two events' ledger and
-- events_daily rows (users_touched 2).
-- Seen failing: with the `where (l.day, l.event_name, l.event_time) is distinct from …` of the set REPLACE's ledger
-- upsert removed (400-ledger.sql), it named the first of 301 ledger rows rewritten by a REPLACE of unchanged data.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/replace_merge_writes_only_changes.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace.
-- Its data: distinct_ids 'verify:…' and -90000000NN, days 1999-12-29 .. 2000-01-11, run clock 2000-02-01.
begin;

create function pg_temp.verify_staged_run(events jsonb) returns bigint language plpgsql as $w$
begin
  update mixpanel_sync.sync_runs r set status = 'failed', finished_at = now(),
    error = 'verify: staged and parsed for a path called directly'
  where r.source = 'events' and r.status = 'running' and r.fetch_to = '2000-02-01 00:00:00+00' and r.options ->> 'mode_reason' = 'forced';
  return mixpanel_sync_verify.verify_staged_run(events);
end;
$w$;

-- Row versions (ctid) of this script's rows, keyed by primary key.
create function pg_temp.versions() returns jsonb language sql as $v$
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, d.ctid::text), '{}')
      from mixpanel_sync.events_daily d where mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, l.ctid::text), '{}')
      from mixpanel_sync.event_ledger l where mixpanel_sync_verify.verify_ours(l.distinct_id)));
$v$;

-- Keys whose row version differs between two versions() (new, gone or rewritten).
create function pg_temp.changed(a jsonb, b jsonb) returns text[] language sql as $c$
  select coalesce(array_agg(t || ' ' || k order by t, k), '{}')
  from (select 'events_daily' as t union all select 'event_ledger') tables,
    lateral (select key as k from jsonb_each_text(a -> tables.t) x
             where (b -> tables.t ->> x.key) is distinct from x.value
             union
             select key from jsonb_each_text(b -> tables.t) y where not (a -> tables.t) ? y.key) keys;
$c$;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  events jsonb := mixpanel_sync_verify.verify_events('merge-a', 300, '1999-12-31', 9)
    || '[{"event": "merge-gone", "properties": {"distinct_id": "verify:merge-gone", "time": 946900800, "$insert_id": "g"}}]'::jsonb;
  changed_events jsonb;
  path text;
  first_tables jsonb;
  first_versions jsonb;
  result mixpanel_sync.apply_result;
  rewritten text[];
begin
  -- the same events without merge-gone and with merge-new (each a user of its own, 2000-01-03 12:00 UTC)
  changed_events := mixpanel_sync_verify.verify_events('merge-a', 300, '1999-12-31', 9)
    || '[{"event": "merge-new", "properties": {"distinct_id": "verify:merge-new", "time": 946900800, "$insert_id": "m"}}]'::jsonb;

  foreach path in array array['set', 'loop'] loop
    begin
      perform mixpanel_sync.upsert_subscribers_incremental(
        pg_temp.verify_staged_run(mixpanel_sync_verify.verify_events('merge-prior', 400, '1999-12-29', 14)), '1999-12-29', '2000-01-11');
      perform (case path when 'set' then mixpanel_sync.upsert_subscribers_incremental(pg_temp.verify_staged_run(events), '1999-12-30', '2000-01-10')
        else mixpanel_sync.upsert_subscribers_incremental_loop(pg_temp.verify_staged_run(events), '1999-12-30', '2000-01-10') end);
      first_tables := mixpanel_sync_verify.verify_snapshot('{run_id}');
      first_versions := pg_temp.versions();

      -- 1. the same events again: nothing written
      result := case path when 'set' then mixpanel_sync.upsert_subscribers_incremental(pg_temp.verify_staged_run(events), '1999-12-30', '2000-01-10')
        else mixpanel_sync.upsert_subscribers_incremental_loop(pg_temp.verify_staged_run(events), '1999-12-30', '2000-01-10') end;
      rewritten := pg_temp.changed(first_versions, pg_temp.versions());
      if cardinality(rewritten) > 0 or result.users_touched <> 0 then
        raise exception 'verify/replace_merge_writes_only_changes (%): a REPLACE of unchanged data wrote % rows (first: %), users_touched %',
          path, cardinality(rewritten), rewritten[1], result.users_touched;
      end if;
      perform mixpanel_sync_verify.verify_assert_same('replace_merge_writes_only_changes',
        format('tables after REPLACE (expected) and after the same REPLACE again (actual), %s path', path), first_tables, mixpanel_sync_verify.verify_snapshot('{run_id}'));

      -- 2. one event fewer, one more: only their rows are written
      result := case path when 'set' then mixpanel_sync.upsert_subscribers_incremental(pg_temp.verify_staged_run(changed_events), '1999-12-30', '2000-01-10')
        else mixpanel_sync.upsert_subscribers_incremental_loop(pg_temp.verify_staged_run(changed_events), '1999-12-30', '2000-01-10') end;
      rewritten := pg_temp.changed(first_versions, pg_temp.versions());
      -- merge-gone: its ledger row and its events_daily row deleted; merge-new: both inserted. Nothing else.
      if cardinality(rewritten) <> 4 or result.users_touched <> 2
        or (select count(*) from unnest(rewritten) r where r like '%verify:merge-new%' or r like '%verify:merge-gone%') <> 4 then
        raise exception 'verify/replace_merge_writes_only_changes (%): a REPLACE with one event fewer and one more wrote % rows (expected 4: %), users_touched %',
          path, cardinality(rewritten), rewritten, result.users_touched;
      end if;
      raise exception using errcode = 'VRFY0', message = 'undo';
    exception when sqlstate 'VRFY0' then
      null;
    end;
  end loop;

  perform mixpanel_sync_verify.verify_assert_same('replace_merge_writes_only_changes', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  raise notice 'PASS verify/replace_merge_writes_only_changes: with the set path and the loop, a second REPLACE of the same % lines rewrote no row of events_daily or event_ledger (same ctid) and touched no user; with one event fewer and one more it wrote exactly those 4 rows; rows of others untouched',
    jsonb_array_length(events);
end;
$$;

rollback;
