--! Previous: sha1:63b2e1206c22c52b6a6daf0c9f71425b51025555
--! Hash: sha1:c71bd6359986a2da843a5c21f0e3c3c1b19f7ed1
--! Message: profiles retry only bad json

-- finish_profiles_run retries the careful way only after what a line that is not JSON raises,
-- like the events path; any other error (a lock timeout, a deadlock) fails the finish at once.
create or replace function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  change_detection boolean := mixpanel_sync.setting('profiles.change_detection') = 'on';
  result mixpanel_sync.profiles_result;
begin
  -- Fast path: trust every line to be a JSON object (one cast per line). A line that is not
  -- makes the statement fail, and the lines are read again the careful way.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  exception
    -- what a line that is not JSON raises (class 22), as in parse_staged_events; a lock timeout,
    -- a deadlock or a full disk is not retried.
    when data_exception then
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  end;
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);

  run.received := result.received;
  run.rejected := result.rejected;
  run.duplicates := result.duplicates;
  run.inserted := result.inserted;
  run.updated := result.updated;
  run.unchanged := result.unchanged;
  run.users_touched := result.inserted + result.updated;
  run.options := run.options || jsonb_build_object(
    'change_detection', case when change_detection then 'on' else 'off' end,
    'rows_written', result.rows_written,
    'lines_recognised', result.recognised,
    'dates_read_in', coalesce(run.project_timezone, 'UTC'));
  return run;
end;
$$;
