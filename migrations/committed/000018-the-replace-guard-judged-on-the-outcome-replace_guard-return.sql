--! Previous: sha1:45e2e2537dfb5e49058ce186a93f71865998ee97
--! Hash: sha1:74003aa12302037ea3d73b7a3695d8336444a264
--! Message: The REPLACE guard judged on the outcome: replace_guard returns the days at stake before the apply, replace_guard_outcome weighs what the apply left (no second deduplication of the run)

-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- The REPLACE guard judged on the outcome: the days a full run would shrink are found from what its apply left in
-- events_daily, not from a second deduplication of the run's events before the apply. The REPLACE deduplicates the run
-- anyway; the guard's own `select distinct day, distinct_id, event_key` over the run's events took 85-101 ms of a
-- 95,000-line steady-state finish_run (docs/performance.md), where the window's per-day sums of events_daily take a few ms.
-- 1. replace_guard(run) now returns the days at stake before the apply: each day of the window (of the run's selection)
--    holding at least events.replace_guard_min_events stored events, with that number (null when the guard does not
--    apply: an incremental run, allow_shrink). Its empty-run rule (no usable event while the window holds events) is
--    unchanged and still refuses before the apply.
-- 2. replace_guard_outcome(run, guarded), called by finish_events_run right after the REPLACE, refuses (MP001) when a
--    day at stake now holds less than events.replace_guard_ratio of what it held; finish_run's transaction then rolls
--    the apply back, as for any error.
-- 3. Both weigh the same per-day sums (replace_window_days: the window's events in events_daily, of the run's
--    selection), and both refuse through refuse_replace (MP001, its hint, the run's selection named).
-- What a day keeps is what the REPLACE counted on it: the run's usable events of that day once deduplicated, less any
-- the REPLACE counted as duplicates of an event already counted on a day outside the window (after a change of
-- project_timezone). The guard is therefore never less strict than before, and stricter only in that case.
-- Idempotent: the old replace_guard (returns void) is dropped when it is there, the others are create or replace.

drop function if exists mixpanel_sync.replace_guard(mixpanel_sync.sync_runs);

create or replace function mixpanel_sync.replace_window_days(run mixpanel_sync.sync_runs)
 returns table (day date, events numeric)
 language plpgsql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
declare
  -- The run's selection (begin_run: options->'events'; absent, null or [] = every event): a REPLACE with a selection
  -- clears only those names, so only their stored events are at stake.
  selection text[] := mixpanel_sync.run_selection(run.id);
begin
  return query
  select d.day, sum(d.event_count)
  from mixpanel_sync.events_daily d
  where d.project_id = run.project_id and d.day between run.window_from_day and run.window_to_day
    and (selection is null or d.event_name = any (selection))
  group by d.day;
end;
$function$;
comment on function mixpanel_sync.replace_window_days(run mixpanel_sync.sync_runs) is 'What the REPLACE guard weighs: the events events_daily holds now on each day of a full run''s window (of the run''s selection, options->''events'', when it has one), as (day, events), days holding none left out. replace_guard reads it before the apply, replace_guard_outcome after it.';
revoke execute on function mixpanel_sync.replace_window_days(run mixpanel_sync.sync_runs) from public;
grant execute on function mixpanel_sync.replace_window_days(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  stored numeric;
  min_events bigint := mixpanel_sync.setting(run.project_id, 'events.replace_guard_min_events')::bigint;
begin
  if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then
    return null;
  end if;
  -- Only selected events are usable (parse_new_staged_events: skip_reason 'not_selected').
  if not exists (
    select from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
      and e.day between run.window_from_day and run.window_to_day) then
    select sum(w.events) into stored from mixpanel_sync.replace_window_days(run) w;
    if stored > 0 then
      perform mixpanel_sync.refuse_replace(run, pg_catalog.format('full run %s has no usable event for %s .. %s, which hold %s stored events',
        run.id, run.window_from_day, run.window_to_day, stored));
    end if;
    return null;
  end if;
  -- The days at stake: those holding at least events.replace_guard_min_events events now, before the apply.
  return (
    select pg_catalog.jsonb_object_agg(w.day, w.events)
    from mixpanel_sync.replace_window_days(run) w
    where w.events >= min_events);
end;
$function$;
comment on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) is 'The REPLACE guard of finish_run, before the apply, for full runs (resyncs included) begun without allow_shrink: raises MP001 when the run has no usable event in its window while the window holds events; else returns the days at stake, {"<day>": stored events} for each day of the window holding at least events.replace_guard_min_events events (replace_window_days; null when none does, and for runs the guard does not apply to), which replace_guard_outcome weighs after the apply. With a selection (options->''events'') only the selected names count: the REPLACE leaves the others as they are. Usable events: reject_reason and skip_reason null.';
revoke execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) from public;
grant execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.replace_guard_outcome(run mixpanel_sync.sync_runs, guarded jsonb)
 returns void
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  shrunk record;
  ratio numeric := mixpanel_sync.setting(run.project_id, 'events.replace_guard_ratio')::numeric;
begin
  if guarded is null then
    return;
  end if;
  -- Each day at stake against what it holds now, after the apply: the first that keeps less than the ratio refuses.
  select g.key::date as day, g.value::numeric as events, coalesce(w.events, 0) as kept into shrunk
  from pg_catalog.jsonb_each_text(guarded) g
  left join mixpanel_sync.replace_window_days(run) w on w.day = g.key::date
  where coalesce(w.events, 0) < ratio * g.value::numeric
  order by g.key::date
  limit 1;
  if found then
    perform mixpanel_sync.refuse_replace(run, pg_catalog.format(
      'full run %s would shrink %s from %s to %s events (below events.replace_guard_ratio %s of days holding at least events.replace_guard_min_events %s)',
      run.id, shrunk.day, shrunk.events, shrunk.kept, ratio, mixpanel_sync.setting(run.project_id, 'events.replace_guard_min_events')));
  end if;
end;
$function$;
comment on function mixpanel_sync.replace_guard_outcome(run mixpanel_sync.sync_runs, guarded jsonb) is 'The REPLACE guard of finish_run, after the apply: raises MP001 when a day at stake (guarded: what replace_guard returned before the apply, {"<day>": stored events}) now holds less than events.replace_guard_ratio of its stored events (replace_window_days: of the run''s selection, when it has one); finish_run''s transaction then rolls the apply back. What a day keeps is what the REPLACE counted on it: the run''s usable events of the day once deduplicated, less those already counted on a day outside the window. Does nothing when guarded is null.';
revoke execute on function mixpanel_sync.replace_guard_outcome(run mixpanel_sync.sync_runs, guarded jsonb) from public;
grant execute on function mixpanel_sync.replace_guard_outcome(run mixpanel_sync.sync_runs, guarded jsonb) to mixpanel_sync_loader;

create or replace function mixpanel_sync.refuse_replace(run mixpanel_sync.sync_runs, message text)
 returns void
 language plpgsql
 set search_path to ''
as $function$
declare
  selection text[] := mixpanel_sync.run_selection(run.id);
  said text := message || case when selection is not null
    then ' (events of the run''s selection ' || pg_catalog.to_jsonb(selection)::text || ')' else '' end;
begin
  raise exception 'finish_run: REPLACE guard: %; nothing was applied', said
    using errcode = 'MP001',
      hint = 'if the smaller data is right (events deleted in Mixpanel), begin the run with '
        'mixpanel_sync.begin_run(..., allow_shrink => true) (CLI: --allow-shrink); else check the input and run again';
end;
$function$;
comment on function mixpanel_sync.refuse_replace(run mixpanel_sync.sync_runs, message text) is 'Raises the REPLACE guard''s refusal of a run (MP001, "finish_run: REPLACE guard: <message>[ (events of the run''s selection [...])]; nothing was applied") with its hint: how to override it for one run (allow_shrink), or what to check. Called by replace_guard and replace_guard_outcome.';
revoke execute on function mixpanel_sync.refuse_replace(run mixpanel_sync.sync_runs, message text) from public;
grant execute on function mixpanel_sync.refuse_replace(run mixpanel_sync.sync_runs, message text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  parsed record;
  result mixpanel_sync.apply_result;
  horizon date := mixpanel_sync.horizon_day(run.fetch_to, mixpanel_sync.setting(pid, 'events.ledger_retention')::interval);
  path text := mixpanel_sync.setting(pid, 'events.upsert_path');
  overlap_ms bigint := (extract(epoch from mixpanel_sync.setting(pid, 'events.overlap')::interval) * 1000)::bigint;
  mark mixpanel_sync.sync_watermarks;
  seen record;
  marker record;
  recomputes boolean;
  held timestamptz;
  new_processing timestamptz;
  identity jsonb;
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- The storage horizon: the project's ledger rows are kept from here on. Raw off: the ledger horizon (what ADD can
  -- deduplicate). Raw on: also events.raw_retention's days ('forever': every day).
  store_from date := mixpanel_sync.storage_horizon(pid, run.fetch_to);
  -- The day partitions are shared: only the days before every project's storage horizon are dropped, another
  -- project's horizon taken at its own clock (its last succeeded events run): this run's clock may be ahead of it.
  shared_from date := least(mixpanel_sync.storage_horizon(pid, run.fetch_to), (
    select min(mixpanel_sync.storage_horizon(p.id, coalesce((
        select max(r.fetch_to) from mixpanel_sync.sync_runs r
        where r.project_id = p.id and r.source = 'events' and r.status = 'succeeded'), run.fetch_to)))
    from mixpanel_sync.projects p where p.id <> pid));
  keeps_watermark boolean := coalesce((run.options ->> 'keeps_watermark')::boolean, false);
  -- the REPLACE guard's days at stake and their stored events, read before the apply (replace_guard)
  guarded jsonb;
begin
  -- parse_staged_events samples run_events once the run is parsed (analyze_run_events): every statement from here on is
  -- planned on the run's real size.
  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Mixpanel's "terminated early" line is not JSON, so the parse has rejected it: the probe reads the run's rejected
  -- lines only (a PK lookup each), not every staged line.
  -- The lookup is fenced (offset 0) so that it is planned on its own as an index scan on (run_id, line_id): joined,
  -- it was planned on statistics sampled before this run (they estimate it at about one row) and read every staged
  -- line of the run once per rejected line (a second 1M-line full sync with 20,000 bad lines did not finish in 7 min).
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.run_events e
  cross join lateral (
    select s.line_no, s.line_id, s.line, s.problem from mixpanel_sync.staged_events s
    where s.run_id = run.id and s.line_id = e.line_id
    offset 0
  ) s
  -- octet_length(s.line) < 256 first: it reads the length from the value's header, where length() counts the
  -- characters of the whole line; it keeps every line of fewer than 64 characters (at most 4 bytes each in UTF-8).
  -- Then length(s.line) < 64, is_terminated_early_marker's own first test, so only short lines reach the call.
  where e.run_id = run.id and e.reject_reason is not null and s.problem is null
    and octet_length(s.line) < 256 and length(s.line) < 64
    and mixpanel_sync.is_terminated_early_marker(s.line)
  order by s.line_id limit 1;
  if found then
    raise exception 'finish_run: the input of run % is incomplete: line % is Mixpanel''s "%" marker; nothing was applied',
      run.id, coalesce(marker.line_no::text, '?'), btrim(marker.line)
      using errcode = 'MP003', hint = 'the export stopped early: run the sync again (fail this run first: select mixpanel_sync.fail_run(' || run.id || ', ''input incomplete''))';
  end if;

  -- Identity merge (500-identity.sql, issue 12): learn the run's links, move the rows of ids no longer canonical,
  -- rewrite the run's events to canonical ids; before the guard and the apply path, which then see canonical ids.
  identity := mixpanel_sync.apply_identity(run.id);
  run.options := run.options || identity;
  run.links_learned := (identity ->> 'links_learned')::bigint;
  run.reattributed_events := (identity ->> 'reattributed_events')::bigint;

  if run.mode = 'full' then
    guarded := mixpanel_sync.replace_guard(run);
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_loop(run.id, run.window_from_day, run.window_to_day, store_from)
      else mixpanel_sync.upsert_subscribers_incremental(run.id, run.window_from_day, run.window_to_day, store_from)
    end;
    -- The guard judges what the apply left in the guarded days; a refusal (MP001) rolls the apply back with the rest
    -- of finish_run.
    perform mixpanel_sync.replace_guard_outcome(run, guarded);
  else
    result := case path
      when 'loop' then mixpanel_sync.upsert_subscribers_incremental_add_loop(run.id, horizon)
      else mixpanel_sync.upsert_subscribers_incremental_add(run.id, horizon)
    end;
  end if;

  -- Retention: whole day partitions before every project's storage horizon are dropped (no row is deleted; never
  -- waits: skipped when the ledger is busy). The project's own rows of the days between that and its own storage
  -- horizon (kept for another project with a longer retention) are deleted: a range of day partitions, found empty
  -- when every project keeps the same days. The legacy ledger (not partitioned, only ever empties) loses the
  -- project's rows before the ledger horizon.
  if shared_from > '-infinity' then
    perform mixpanel_sync_private.drop_ledger_partitions(shared_from);
  end if;
  if store_from > shared_from then
    delete from mixpanel_sync.event_ledger l where l.project_id = pid and l.day >= shared_from and l.day < store_from;
  end if;
  delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid and l.day < horizon;

  -- One scan of the run's valid events: what it did not apply by design (events with no distinct_id, events outside
  -- its selection), and the events that may move the watermark (in_tables): only those now in the tables (applied or
  -- already there; fetch_to already caps them, as later events were rejected).
  select count(*) filter (where e.skip_reason = 'no_user') as no_user,
    count(*) filter (where e.skip_reason = 'not_selected') as not_selected,
    max(e.event_time) filter (where e.in_tables) as event_time,
    max(e.processing_time) filter (where e.in_tables) as processing_time,
    jsonb_build_object(
      'events', count(e.lateness_ms) filter (where e.in_tables),
      'p50_ms', percentile_disc(0.5) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p90_ms', percentile_disc(0.9) within group (order by e.lateness_ms) filter (where e.in_tables),
      'p99_ms', percentile_disc(0.99) within group (order by e.lateness_ms) filter (where e.in_tables),
      'max_ms', max(e.lateness_ms) filter (where e.in_tables),
      'beyond_overlap', count(*) filter (where e.in_tables and e.lateness_ms > overlap_ms)
    ) as lateness
  into seen
  from (
    select e.skip_reason, e.event_time, e.processing_time, e.lateness_ms,
      e.skip_reason is null
        and e.day between coalesce(run.window_from_day, horizon) and coalesce(run.window_to_day, 'infinity') as in_tables
    from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null
  ) e;

  select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events' for update;
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
    where d.project_id = pid and d.day < run.window_from_day and d.last_at <= run.fetch_to;
    run.watermark_after := held;
    -- an event is processed at or after its time: later events are then read again, and deduplicated
    new_processing := held;
  end if;
  if keeps_watermark then
    null;  -- sync_watermarks untouched (a run with no watermark row leaves none)
  elsif run.watermark_after is not null then
    insert into mixpanel_sync.sync_watermarks as w (project_id, source, watermark, processing_watermark, run_id, updated_at)
    values (pid, 'events', run.watermark_after, new_processing, run.id, now())
    on conflict (project_id, source) do update set
      watermark = excluded.watermark,
      processing_watermark = excluded.processing_watermark,
      run_id = excluded.run_id,
      updated_at = excluded.updated_at;
  else
    delete from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
  end if;

  run.received := parsed.received;
  run.rejected := parsed.rejected;
  run.applied := result.applied;
  run.duplicates := result.duplicates;
  run.too_old := result.too_old;
  run.users_touched := result.users_touched;
  run.no_user := seen.no_user;
  run.not_selected := seen.not_selected;
  -- finish_run records the counts it knows; these two are recorded here.
  update mixpanel_sync.sync_runs r set no_user = seen.no_user, not_selected = seen.not_selected where r.id = run.id;
  run.lateness := seen.lateness;
  run.options := run.options || jsonb_build_object('upsert_path', path, 'horizon_day', horizon, 'store_raw', raw_on,
    'storage_horizon_day', case when store_from > '-infinity' then store_from end);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: parses once, refuses an incomplete input (Mixpanel''s "terminated early" line, which the parse rejects as not JSON: MP003, nothing applied), runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001: replace_guard before the apply, replace_guard_outcome on what the apply left), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below every project''s storage horizon (another project''s taken at the clock of its last succeeded events run) and deletes the project''s rows below its own (storage_horizon: events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
grant execute on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;
