-- Part 1 of the session's migration (issue 11, performance): plans that do not fall off a cliff, and a cheaper
-- terminated-early probe.
--
-- run_events is a work table whose rows are always a new run's (run_id only grows). Whatever autovacuum last sampled,
-- the planner then estimates "run_id = <this run>" at about 1 row. A REPLACE planned on that estimate anti-joins the
-- window's ledger rows against the run's events in a nested loop: measured on a database migrated fresh, the second
-- full sync of a 95,000-line file took 64 s in finish_run instead of 1.2 s. finish_events_run now samples run_events
-- right after the parse (3,000 rows: the statistics targets below), so every statement after it is planned on the
-- run's real size.

alter table mixpanel_sync.run_events
  alter column run_id set statistics 10,
  alter column line_id set statistics 10,
  alter column distinct_id set statistics 10,
  alter column event_key set statistics 10,
  alter column event_name set statistics 10,
  alter column event_time set statistics 10,
  alter column day set statistics 10,
  alter column processing_time set statistics 10,
  alter column lateness_ms set statistics 10,
  alter column reject_reason set statistics 10,
  alter column skip_reason set statistics 10,
  alter column legacy_key set statistics 0,
  alter column properties set statistics 0,
  alter column insert_id set statistics 0,
  alter column processing_time_ms set statistics 0;

create or replace function mixpanel_sync_private.analyze_run_events()
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  analyze mixpanel_sync.run_events;
end;
$$;
comment on function mixpanel_sync_private.analyze_run_events() is 'Samples mixpanel_sync.run_events (ANALYZE) so that the statements after the parse are planned on the running run''s real size: run ids only grow, so statistics sampled earlier estimate a new run at about one row, and a REPLACE planned on that runs its anti-joins as nested loops (64 s instead of 1.2 s measured for a second 95,000-line full sync). It samples 3,000 rows (the columns'' statistics targets: 10, and 0 for the raw columns). SECURITY DEFINER (owned by the schema owner) because only the owner may analyze the table; it analyzes nothing else.';
revoke all on function mixpanel_sync_private.analyze_run_events() from public;
grant execute on function mixpanel_sync_private.analyze_run_events() to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $function$
declare
  parsed record;
  result mixpanel_sync.apply_result;
  horizon date := mixpanel_sync.horizon_day(run.fetch_to, mixpanel_sync.setting('events.ledger_retention')::interval);
  path text := mixpanel_sync.setting('events.upsert_path');
  overlap_ms bigint := (extract(epoch from mixpanel_sync.setting('events.overlap')::interval) * 1000)::bigint;
  mark mixpanel_sync.sync_watermarks;
  seen record;
  marker record;
  recomputes boolean;
  held timestamptz;
  new_processing timestamptz;
  identity jsonb;
  raw_on boolean := mixpanel_sync.store_raw();
  raw_retention text := coalesce((select s.value from mixpanel_sync.sync_settings s where s.key = 'events.raw_retention'), 'forever');
  -- The storage horizon: the ledger keeps whole days from here on. Raw off: the ledger horizon (what ADD can
  -- deduplicate). Raw on: also events.raw_retention's days ('forever': every day).
  store_from date := case
    when not raw_on then horizon
    when raw_retention = 'forever' then '-infinity'::date
    else least(horizon, mixpanel_sync.horizon_day(run.fetch_to, raw_retention::interval))
  end;
  skipped record;
  keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);
begin
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.staged_events s
  -- octet_length(s.line) < 256 first: it reads the length from the value's header, where length() counts the
  -- characters of the whole line (~2.4 us a line: 230 ms of a 95,000-line finish_run); it keeps every line of fewer
  -- than 64 characters (at most 4 bytes each in UTF-8). Then length(s.line) < 64, is_terminated_early_marker's own
  -- first test, so only short lines reach the call (a SQL function with SET, called per line otherwise).
  where s.run_id = run.id and s.problem is null and octet_length(s.line) < 256 and length(s.line) < 64
    and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;

  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Every statement from here on is planned on the run's real size (analyze_run_events: run ids only grow, so older
  -- statistics estimate this run at about one row).
  perform mixpanel_sync_private.analyze_run_events();

  -- Identity merge (500-identity.sql, issue 12): learn the run's links, move the rows of ids no longer canonical,
  -- rewrite the run's events to canonical ids; before the guard and the apply path, which then see canonical ids.
  identity := mixpanel_sync.apply_identity(run.id);
  run.options := run.options || identity;
  run.links_learned := (identity ->> 'links_learned')::bigint;
  run.reattributed_events := (identity ->> 'reattributed_events')::bigint;

  if run.mode = 'full' then
    perform mixpanel_sync.replace_guard(run);
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day, store_from)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day, store_from)
    end;
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  -- Retention: whole day partitions before the storage horizon are dropped (no row is deleted); the legacy ledger
  -- (not partitioned, only ever empties) loses its rows before the ledger horizon.
  if store_from > '-infinity' then
    perform mixpanel_sync_private.drop_ledger_partitions(store_from);
  end if;
  delete from mixpanel_sync.event_ledger_legacy l where l.day < horizon;

  -- What the run did not apply by design: events with no distinct_id, events outside its selection.
  select count(*) filter (where e.skip_reason = 'no_user') as no_user,
    count(*) filter (where e.skip_reason = 'not_selected') as not_selected
  into skipped
  from mixpanel_sync.run_events e
  where e.run_id = run.id and e.reject_reason is null and e.skip_reason is not null;

  -- Only events now in the tables (applied or already there) may move the watermark;
  -- fetch_to already caps them, as later events were rejected.
  select max(e.event_time) as event_time, max(e.processing_time) as processing_time,
    jsonb_build_object(
      'events', count(e.lateness_ms),
      'p50_ms', percentile_disc(0.5) within group (order by e.lateness_ms),
      'p90_ms', percentile_disc(0.9) within group (order by e.lateness_ms),
      'p99_ms', percentile_disc(0.99) within group (order by e.lateness_ms),
      'max_ms', max(e.lateness_ms),
      'beyond_overlap', count(*) filter (where e.lateness_ms > overlap_ms)
    ) as lateness
  into seen
  from mixpanel_sync.run_events e
  where e.run_id = run.id
    and e.reject_reason is null
    and e.skip_reason is null
    and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity');

  select * into mark from mixpanel_sync.sync_watermarks w where w.source = 'events' for update;
  run.watermark_before := mark.watermark;
  -- The watermark never claims data the tables do not hold. A full run holds exactly its events in its window, so
  -- it resets the watermarks: to the newest event it applied, or, when it applied none, to the newest event the
  -- tables hold before its window (no watermark at all when they hold none: the next run is full). A resync moves
  -- them forward only, unless the watermark lies in its window: then it is recomputed like a full run's.
  -- Incremental runs only move them forward.
  recomputes := run.mode = 'full' and (run.options ->> 'mode_reason' is distinct from 'resync'
    or (mark.watermark at time zone 'UTC')::date between run.window_from_day and run.window_to_day);
  if keeps_watermark then
    -- a run whose selection (begin_run: options -> 'events') leaves out names events.only syncs did not fetch them:
    -- the watermark stays as it is, for every name (moving it would skip their events for good)
    run.watermark_after := mark.watermark;
    new_processing := mark.processing_watermark;
  elsif not recomputes then
    run.watermark_after := greatest(mark.watermark, seen.event_time);
    new_processing := greatest(mark.processing_watermark, seen.processing_time);
  elsif seen.event_time is not null then
    run.watermark_after := seen.event_time;
    new_processing := coalesce(seen.processing_time, seen.event_time);
  else
    select max(d.last_at) into held
    from mixpanel_sync.events_daily d
    where d.day < run.window_from_day and d.last_at <= run.fetch_to;
    run.watermark_after := held;
    -- an event is processed at or after its time: later events are then read again, and deduplicated
    new_processing := held;
  end if;
  if keeps_watermark then
    null;  -- sync_watermarks untouched (a run with no watermark row leaves none)
  elsif run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (source, watermark, processing_watermark, run_id, updated_at)
    values ('events', run.watermark_after, new_processing, run.id, now())
    on conflict (source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
  else
    delete from mixpanel_sync.sync_watermarks w where w.source = 'events';
  end if;

  run.received := parsed.received;
  run.rejected := parsed.rejected;
  run.applied := result.applied;
  run.duplicates := result.duplicates;
  run.too_old := result.too_old;
  run.users_touched := result.users_touched;
  run.no_user := skipped.no_user;
  run.not_selected := skipped.not_selected;
  -- finish_run records the counts it knows; these two are recorded here.
  update mixpanel_sync.sync_runs r set no_user = skipped.no_user, not_selected = skipped.not_selected where r.id = run.id;
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon, 'store_raw', raw_on,
    'storage_horizon_day', case when store_from > '-infinity' then store_from end);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: refuses an incomplete input (Mixpanel''s "terminated early" line, MP003), parses once, runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below the storage horizon (events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
grant execute on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;
