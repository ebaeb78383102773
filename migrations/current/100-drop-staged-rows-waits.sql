-- drop_staged_rows waits a bounded time for the lock of its TRUNCATE instead of giving up at once (NOWAIT).
-- An autovacuum worker on a staging table holds a lock that conflicts with TRUNCATE's; PostgreSQL cancels such a
-- worker once another backend's lock request has waited deadlock_timeout, but NOWAIT never waits, so the run fell
-- back to DELETE and left the space dead until vacuum (59 MB after a 200k-line run, seen in CI on PostgreSQL 15).
-- Idempotent: create or replace with every SET clause the function had (search_path, jit).
create or replace function mixpanel_sync.drop_staged_rows(run_id bigint)
returns void
language plpgsql
set search_path = ''
set jit = off
as $$
declare
  run_source text := (select r.source from mixpanel_sync.sync_runs r where r.id = drop_staged_rows.run_id);
  alone boolean := not exists (
    select from mixpanel_sync.sync_runs r
    where r.source = run_source and r.status = 'running' and r.id <> drop_staged_rows.run_id);
  -- How long the TRUNCATE's lock request may wait (per table): twice deadlock_timeout, so that an autovacuum worker
  -- holding a conflicting lock is cancelled (after deadlock_timeout) and has as long again to let go; at least 200 ms,
  -- at most 10 s (finish_run waits no longer than that for a loader still COPYing for a run abandoned as stale).
  lock_wait text := (extract(epoch from least(
    greatest(2 * pg_catalog.current_setting('deadlock_timeout')::interval, interval '200 milliseconds'),
    interval '10 seconds')) * 1000)::bigint::text || 'ms';
  -- the caller's lock_timeout, restored right after the lock statement
  caller_lock_timeout text := pg_catalog.current_setting('lock_timeout');
begin
  -- lock_timeout applies to the lock statement only. It is set with set_config(…, true) inside the exception block:
  -- when the lock times out, the block's rollback restores the caller's value; when it is granted, the caller's value
  -- is set back by hand before anything else runs (a value set in a block that succeeds would otherwise last to the
  -- end of the caller's transaction; a function-level SET lock_timeout clause cannot be computed from deadlock_timeout,
  -- and would also apply to the DELETEs). Past the wait (a loader still COPYing for a run abandoned as stale keeps its
  -- lock), the rows are deleted.
  if run_source = 'events' then
    if alone then
      begin
        perform pg_catalog.set_config('lock_timeout', lock_wait, true);
        lock table mixpanel_sync.staged_events, mixpanel_sync.run_events in access exclusive mode;
        perform pg_catalog.set_config('lock_timeout', caller_lock_timeout, true);
        truncate mixpanel_sync.staged_events, mixpanel_sync.run_events;
        return;
      exception
        when lock_not_available then null;
      end;
    end if;
    delete from mixpanel_sync.staged_events s where s.run_id = drop_staged_rows.run_id;
    delete from mixpanel_sync.run_events e where e.run_id = drop_staged_rows.run_id;
  elsif run_source = 'profiles' then
    if alone then
      begin
        perform pg_catalog.set_config('lock_timeout', lock_wait, true);
        lock table mixpanel_sync.staged_profiles in access exclusive mode;
        perform pg_catalog.set_config('lock_timeout', caller_lock_timeout, true);
        truncate mixpanel_sync.staged_profiles;
        return;
      exception
        when lock_not_available then null;
      end;
    end if;
    delete from mixpanel_sync.staged_profiles s where s.run_id = drop_staged_rows.run_id;
  end if;
end;
$$;
comment on function mixpanel_sync.drop_staged_rows(run_id bigint) is 'Removes everything staged for a run: staged rows never outlive their run. When no other run of its source is running (the rule begin_run enforces), the staging tables of the source are TRUNCATEd, so their disk space returns at once (a DELETE would leave it dead until vacuum). The lock for the TRUNCATE waits up to twice deadlock_timeout per table (at least 200 ms, at most 10 s; lock_timeout set for that statement only), long enough for PostgreSQL to cancel an autovacuum worker holding a conflicting lock; if another run of the source is running, or the lock is still held after that wait (a loader still COPYing for a run abandoned as stale), the rows are deleted.';
