-- verify/raw_events_match_daily.sql
-- Proves, with raw storage on (events.store_raw, set to 'on' inside this transaction only): after a REPLACE and an ADD
-- on top (with re-sent events), mixpanel_sync.raw_events holds exactly the distinct events given (deduplicated like
-- the aggregates; events with no distinct_id too, under a null distinct_id, once each), events_daily ≡ count(*) of
-- raw_events grouped by (distinct_id, day, event_name), no event without a distinct_id reaches events_daily, the loop
-- paths leave the same rows as the set-based ones (raw columns included), and rows this script did not create are
-- untouched.
-- Run on a migrated database (it uses the mixpanel_sync_verify.verify_* helpers): psql -v ON_ERROR_STOP=1 -f verify/raw_events_match_daily.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace. While it runs it holds the ledger's SHARE UPDATE EXCLUSIVE lock
-- (it creates day partitions for its days): a finish_run that must create a partition waits for it (a few seconds).
-- Its data: distinct_ids 'verify:…' and -90000000NN, events 'verify raw ping' with no distinct_id, days 2000-01-01 ..
-- 2000-01-08, run clock 2000-02-01.
begin;

do $$
declare
  others_before jsonb := mixpanel_sync_verify.verify_others();
  no_user_lines jsonb := '[
    {"event": "verify raw ping", "properties": {"time": 946728000, "$insert_id": "verify-raw-1", "source": "server"}},
    {"event": "verify raw ping", "properties": {"time": 946728000, "$insert_id": "verify-raw-1", "source": "re-sent"}},
    {"event": "verify raw ping", "properties": {"distinct_id": "", "time": 946814400, "$insert_id": "verify-raw-2"}},
    {"event": "verify raw ping", "properties": {"distinct_id": null, "time": 946900800}}
  ]';
  full_run bigint;
  add_run bigint;
  by_set jsonb;
  by_loop jsonb;
  mismatch record;
  raw_rows bigint;
  no_user_rows bigint;
  given bigint;
  raw_setting text := mixpanel_sync.setting(mixpanel_sync.project_id(), 'events.store_raw');
begin
  update mixpanel_sync.sync_settings set value = 'on' where key = 'events.store_raw';
  full_run := mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('raw-full', 400, '2000-01-01', 7) || no_user_lines);
  -- the ADD re-sends part of the REPLACE's input (and one event with no distinct_id) with new events
  add_run := mixpanel_sync_verify.verify_staged_run(mixpanel_sync_verify.verify_events('raw-full', 120, '2000-01-01', 7)
    || mixpanel_sync_verify.verify_events('raw-add', 200, '2000-01-05', 4) || (no_user_lines -> 0));

  for pass in 1 .. 2 loop
    begin
      if pass = 1 then
        perform mixpanel_sync.upsert_subscribers_incremental(full_run, '2000-01-01', '2000-01-07');
        perform mixpanel_sync.upsert_subscribers_incremental_add(add_run, '2000-01-01');
      else
        perform mixpanel_sync.upsert_subscribers_incremental_loop(full_run, '2000-01-01', '2000-01-07');
        perform mixpanel_sync.upsert_subscribers_incremental_add_loop(add_run, '2000-01-01');
      end if;

      -- raw_events ≡ the distinct events given: (user or '', key) of the two runs' usable lines in their days
      select count(*) into given from (
        select distinct coalesce(e.distinct_id, ''), e.event_key
        from mixpanel_sync.run_events e
        where e.run_id in (full_run, add_run) and e.reject_reason is null
          and (e.skip_reason is null or e.skip_reason = 'no_user')
          and (e.run_id = add_run and e.day >= '2000-01-01' or e.day between '2000-01-01' and '2000-01-07')) k;
      select count(*), count(*) filter (where r.distinct_id is null) into raw_rows, no_user_rows
      from mixpanel_sync.raw_events r
      where r.day between '2000-01-01' and '2000-01-11'
        and (mixpanel_sync_verify.verify_ours(r.distinct_id) or r.distinct_id is null and r.event_name = 'verify raw ping');
      if raw_rows <> given or no_user_rows <> 3 then
        raise exception 'verify/raw_events_match_daily (%): raw_events holds % rows (% with no distinct_id), the input % distinct events (3 with no distinct_id)',
          case pass when 1 then 'set' else 'loop' end, raw_rows, no_user_rows, given;
      end if;

      -- events_daily ≡ count(*) of raw_events by (user, day, name)
      for mismatch in
        with daily as (
          select d.distinct_id, d.day, d.event_name::text as event_name, d.event_count
          from mixpanel_sync.events_daily d where mixpanel_sync_verify.verify_ours(d.distinct_id)
        ), raw as (
          select r.distinct_id, r.day, r.event_name, count(*) as event_count
          from mixpanel_sync.raw_events r where mixpanel_sync_verify.verify_ours(r.distinct_id) group by 1, 2, 3
        )
        (select 'events_daily only' as side, * from (select * from daily except select * from raw) x)
        union all
        (select 'raw_events only', * from (select * from raw except select * from daily) y)
        limit 1
      loop
        raise exception 'verify/raw_events_match_daily (%): events_daily ≢ count(*) of raw_events by (user, day, name): % row %',
          case pass when 1 then 'set' else 'loop' end, mismatch.side, row_to_json(mismatch);
      end loop;
      if exists (select from mixpanel_sync.events_daily d where d.distinct_id = '' or d.event_name = 'verify raw ping') then
        raise exception 'verify/raw_events_match_daily: an event with no distinct_id reached events_daily';
      end if;
      if exists (select from mixpanel_sync.raw_events r where mixpanel_sync_verify.verify_ours(r.distinct_id) and r.properties ->> 'distinct_id' is distinct from r.distinct_id) then
        raise exception 'verify/raw_events_match_daily: a raw event whose properties.distinct_id is not its distinct_id';
      end if;

      if pass = 1 then
        by_set := mixpanel_sync_verify.verify_snapshot() || jsonb_build_object('no_user', (
          select coalesce(jsonb_object_agg(l.event_key::text, to_jsonb(l) - 'run_id'), '{}') from mixpanel_sync.event_ledger l where l.distinct_id = '' and l.event_name = 'verify raw ping'));
        raise exception using errcode = 'VRFY0', message = 'undo the set-based paths';
      end if;
      by_loop := mixpanel_sync_verify.verify_snapshot() || jsonb_build_object('no_user', (
        select coalesce(jsonb_object_agg(l.event_key::text, to_jsonb(l) - 'run_id'), '{}') from mixpanel_sync.event_ledger l where l.distinct_id = '' and l.event_name = 'verify raw ping'));
    exception when sqlstate 'VRFY0' then
      null;
    end;
  end loop;

  perform mixpanel_sync_verify.verify_assert_same('raw_events_match_daily',
    'events_daily, event_ledger (raw columns included), subscribers and the rows with no distinct_id after the loops (expected) and the set-based paths (actual)',
    by_loop, by_set);
  -- this script's rows with no distinct_id are not verify_ours, nor its setting: undone before comparing the others
  update mixpanel_sync.sync_settings set value = raw_setting where key = 'events.store_raw';
  delete from mixpanel_sync.event_ledger l where l.distinct_id = '' and l.event_name = 'verify raw ping';
  perform mixpanel_sync_verify.verify_assert_same('raw_events_match_daily', 'fingerprints of the rows this script did not create, before (expected) and after (actual)',
    others_before, mixpanel_sync_verify.verify_others());
  raise notice 'PASS verify/raw_events_match_daily: with raw storage on, REPLACE 2000-01-01..2000-01-07 then an ADD re-sending part of it: raw_events holds the % distinct events given (3 with no distinct_id, none in events_daily), events_daily ≡ count(*) of raw_events by (user, day, name); loop ≡ set (raw columns included); rows of others untouched',
    given;
end
$$;

rollback;
