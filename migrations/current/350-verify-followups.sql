-- Verify helpers after the one-run rule (issue 9 follow-up). Owner: the safety follow-up stream. Runs after
-- 300-verify-schema.sql, which moved verify_staged_run to mixpanel_sync_verify.
-- verify_staged_run begins a forced-full events run, stages and parses it for a path the verify script calls
-- directly (apply REPLACE or ADD, set or _loop), and never finishes it. Left running, that run made the script's next
-- verify_staged_run fail with MP002 (one events run at a time): it now ends by setting its run aside as failed, its
-- staged and parsed rows kept for those paths (a plain UPDATE: fail_run would drop them). verify/*.sql need no
-- wrapper for it.

create or replace function mixpanel_sync_verify.verify_staged_run(events jsonb) returns bigint language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 00:00:00+00');
begin
  perform mixpanel_sync.stage_events(run.id, events);
  insert into mixpanel_sync.staged_events (run_id, line) values (run.id, '{"event": "cut off", "properties": {"distin');
  perform mixpanel_sync.parse_staged_events(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'failed',
    finished_at = clock_timestamp(),
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint,
    error = 'verify: staged and parsed for a path called directly'
  where r.id = run.id;
  return run.id;
end;
$$;
comment on function mixpanel_sync_verify.verify_staged_run(events jsonb) is
  'Verify scripts: a forced-full run at clock 2000-02-01 with these events (and one non-JSON line) staged and parsed '
  'once, for a path the script calls directly; the run is then marked failed (error ''verify: staged and parsed for a '
  'path called directly''), its staged and parsed rows kept, so that the next verify_staged_run may begin (one events '
  'run at a time).';
