--! Previous: sha1:7d54624aa8932e5e00d8b2a750f3f6ddda54cd80
--! Hash: sha1:4eba1694326bd3507c37a8f8f9a5c1b8f4e86469
--! Message: Rejected lines are read back by primary key (fenced lateral lookups): the parse's sync_rejects insert and finish_run's terminated-early probe no longer scan the run once per reject on statistics sampled before the run

-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- parse_new_staged_events writes each reject's sync_rejects row with its staged line looked up by primary key in a
-- fenced lateral subquery, not a join. The join was planned on staged_events' statistics, which were sampled before
-- the running run was staged (run ids and line ids only grow), so they estimate the run at about one line; the plan
-- then read every staged line of the run once per reject. Measured (docs/performance.md): one chunk call over a 1M-line
-- run with 28,527 bad lines had not ended after 5 minutes; 137 chunk calls of 7,350 lines took 74.8 s. Nothing else in
-- the function changes.
-- finish_events_run's probe for Mixpanel's "terminated early" marker reads each rejected line the same way, for the same
-- reason: on a second 1M-line full sync with 20,000 bad lines it had not finished after 7 minutes. Idempotent (create or
-- replace).

create or replace function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint default null, after_line_id bigint default null)
 returns bigint
 language plpgsql
 set search_path = ''
 set jit = off
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = parse_new_staged_events.run_id);
  parsed bigint;
  -- Old-formula keys only while there are old ledger rows to find them in.
  legacy boolean := exists (select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid);
  store_raw boolean := mixpanel_sync.store_raw(pid);
  -- The run's selection (null: every event).
  selection text[] := mixpanel_sync.run_selection(parse_new_staged_events.run_id);
begin
  -- Each step is a subquery fenced with "offset 0", so its expressions are computed once per
  -- line (unfenced, the planner would inline them into every later use), without a per-row
  -- function scan. The line is cast straight to jsonb when the session trusts the lines to be
  -- JSON objects (parse_staged_events tries that first), else through json_object_or_null,
  -- which never raises. A line staged with a problem is not read at all.
  with parsed_lines as (
    insert into mixpanel_sync.run_events
      (run_id, line_id, distinct_id, event_key, legacy_key, event_name, event_time, day, processing_time, lateness_ms,
       reject_reason, skip_reason, properties, insert_id, processing_time_ms)
    select
      k.run_id,
      k.line_id,
      k.distinct_id,
      case when k.event_time is not null and k.event_name is not null then
        mixpanel_sync.event_key(k.event_name, k.second, k.insert_id, k.doc) end,
      case when legacy and k.event_time is not null and k.event_name is not null then
        mixpanel_sync.legacy_event_key(k.event_name, k.second, k.insert_id, k.doc) end,
      k.event_name,
      k.event_time,
      (k.event_time at time zone 'UTC')::date,
      -- capped at the run's clock: a bad mp_processing_time_ms must not push the processing watermark.
      case when k.processing_ms > 0 and k.processing_ms < 1e14
        then least(to_timestamp(k.processing_ms / 1000), k.fetch_to) end,
      -- every cast to bigint is guarded: one absurd number must be a reject, not a failed run.
      case when k.processing_ms > 0 and k.processing_ms < 1e14 and k.event_time is not null
        then (k.processing_ms - k.time_seconds * 1000)::bigint end,
      k.reject_reason,
      k.skip_reason,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        then k.props end,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        then k.insert_id end,
      case when store_raw and k.reject_reason is null and k.skip_reason is distinct from 'not_selected'
        and k.processing_ms > 0 and k.processing_ms < 1e14
        then floor(k.processing_ms)::bigint end
    from (
      select r.*,
        case
          when r.reject_reason is not null then null
          when selection is not null and not (r.event_name = any (selection)) then 'not_selected'
          when r.distinct_id is null or r.distinct_id = '' then 'no_user'
        end as skip_reason
      from (
        select x.*,
          case
            when x.problem is not null then x.problem
            when x.doc is null then coalesce(mixpanel_sync.json_problem(x.line), 'not a JSON object')
            when jsonb_typeof(x.doc) <> 'object' then 'not a JSON object'
            when x.event_name is null and jsonb_typeof(x.d_event) <> 'null' then 'event name is not a string'
            when x.event_name is null or x.event_name = '' then 'missing event name'
            when length(x.event_name) > 255 then 'event name longer than 255 characters'
            when not x.props_is_object then 'properties missing or not an object'
            when x.distinct_id is null and jsonb_typeof(x.p_distinct_id) <> 'null'
              then 'properties.distinct_id is not a string or number'
            -- an absent, null or empty distinct_id is not a reject: skip_reason 'no_user' (when all else is valid).
            when length(x.distinct_id) > 255 then 'properties.distinct_id longer than 255 characters'
            when x.time_raw is null and jsonb_typeof(x.p_time) <> 'null' then 'properties.time is not a number'
            when x.time_raw is null then 'missing properties.time'
            when x.event_time is null then 'properties.time out of range: ' || left(x.time_raw::text, 100)
            when x.event_time > x.fetch_to then 'properties.time is after the run''s fetch_to ' || x.fetch_to::text
          end as reject_reason
        from (
          select t.*,
            case
              when t.second is null then null
              when t.project_timezone is null then to_timestamp(t.second)
              else (to_timestamp(t.second) at time zone 'UTC') at time zone t.project_timezone
            end as event_time
          from (
            select v.*, mixpanel_sync.event_second(v.time_raw) as second,
              -- Mixpanel sends seconds; some sources send milliseconds (anything from 1e11 on).
              case when v.time_raw >= 1e11 then v.time_raw / 1000 else v.time_raw end as time_seconds
            from (
              select f.*,
                case when jsonb_typeof(f.d_event) = 'string' then f.d_event #>> '{}' end as event_name,
                case when jsonb_typeof(f.p_distinct_id) in ('string', 'number') then f.p_distinct_id #>> '{}' end as distinct_id,
                case when jsonb_typeof(f.p_time) = 'number' then f.p_time::numeric end as time_raw,
                case when jsonb_typeof(f.p_processing) = 'number' then f.p_processing::numeric end as processing_ms,
                f.p_insert_id #>> '{}' as insert_id
              from (
                select o.*,
                  o.doc -> 'event' as d_event,
                  case when o.props_is_object then o.props -> 'distinct_id' end as p_distinct_id,
                  case when o.props_is_object then o.props -> 'time' end as p_time,
                  case when o.props_is_object then o.props -> '$insert_id' end as p_insert_id,
                  case when o.props_is_object then o.props -> 'mp_processing_time_ms' end as p_processing
                from (
                  select j.*, j.doc -> 'properties' as props,
                    coalesce(jsonb_typeof(j.doc -> 'properties') = 'object', false) as props_is_object
                  from (
                    select s.run_id, s.line_id, s.line, s.problem, r.fetch_to, r.project_timezone,
                      case
                        when s.problem is not null then null
                        when pg_catalog.current_setting('mixpanel_sync.trust_json_lines', true) = 'on' then s.line::jsonb
                        else mixpanel_sync.json_object_or_null(s.line)
                      end as doc
                    from mixpanel_sync.staged_events s
                    join mixpanel_sync.sync_runs r on r.id = s.run_id
                    where s.run_id = parse_new_staged_events.run_id
                      -- one index range of the run's lines: (after_line_id, up_to_line_id]; up_to_line_id alone: that line
                      and s.line_id > coalesce(after_line_id, up_to_line_id - 1, 0)
                      and s.line_id <= coalesce(up_to_line_id, 9223372036854775807)
                      -- Without after_line_id every line not parsed yet (with it, the lines after it are new).
                      -- not in (hashed once), not "not exists": after a vacuum of the emptied
                      -- run_events the planner would rescan it for every staged line.
                      and (after_line_id is not null or s.line_id not in (
                        select e.line_id from mixpanel_sync.run_events e where e.run_id = parse_new_staged_events.run_id))
                    offset 0
                  ) j offset 0
                ) o offset 0
              ) f offset 0
            ) v offset 0
          ) t offset 0
        ) x offset 0
      ) r offset 0
    ) k
    returning run_events.line_id, run_events.reject_reason
  ), rejected as (
    insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
    select parse_new_staged_events.run_id, 'events', s.line_no, s.line, p.reject_reason
    from parsed_lines p
    -- Each reject's line by its primary key, planned on its own (fenced): a join here was planned on the
    -- statistics of runs sampled before, which estimate the running run at about one staged line, and then
    -- scanned every staged line of the run once per reject (quadratic: a 1M-line chunk with 2.9 % bad lines
    -- did not end in 5 minutes). Fenced, the lookup is an index scan on (run_id, line_id) whatever the estimates.
    cross join lateral (
      select s.line_no, s.line from mixpanel_sync.staged_events s
      where s.run_id = parse_new_staged_events.run_id and s.line_id = p.line_id
      offset 0
    ) s
    where p.reject_reason is not null
  )
  select count(*) into parsed from parsed_lines;
  return parsed;
end;
$function$;
comment on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) is 'Parses the staged lines of a run not parsed yet into run_events (with after_line_id: the lines in (after_line_id, up_to_line_id], taken as not parsed yet; up_to_line_id alone: just that line; neither: every line not in run_events): the event, its dedup key (event_key; legacy_key while event_ledger_legacy holds rows), reject_reason (null when usable) and skip_reason (''not_selected'' when the run''s selection, sync_runs.options -> ''events'', leaves the name out; else ''no_user'' when properties.distinct_id is absent, null or ""); with setting events.store_raw = ''on'' also the raw columns (properties, insert_id, processing_time_ms) of the rows the raw table may take. Unusable lines also go to sync_rejects with their line number. A line staged with a problem is rejected with it. Time may be seconds or milliseconds (event_second) and is kept to the second, Mixpanel''s dedup grain; with a project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';

create or replace function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path = ''
 set jit = off
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
begin
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
comment on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) is 'The events part of finish_run: parses once, refuses an incomplete input (Mixpanel''s "terminated early" line, which the parse rejects as not JSON: MP003, nothing applied), runs the identity step (apply_identity), applies the REPLACE guard to full runs (MP001), REPLACE (full, a merge keeping ledger rows from the storage horizon on) or ADD (incremental) by events.upsert_path, drops the ledger''s day partitions below every project''s storage horizon (another project''s taken at the clock of its last succeeded events run) and deletes the project''s rows below its own (storage_horizon: events.ledger_retention, or events.raw_retention when longer and events.store_raw is on; REPLACE keeps ledger rows from that horizon, ADD applies from the ledger horizon), records no_user and not_selected (run_events.skip_reason), and sets the watermark. The watermark never claims data the tables do not hold: after a full run it is the newest event the run applied, or when it applied none the newest event held before its window (none: the watermark row is removed and the next run is full); a resync moves it forward only unless it lay in the resync''s days (then as a full run); an incremental run moves it forward only; a run with options -> ''keeps_watermark'' = true (begin_run: its selection leaves out names events.only syncs, which it did not fetch) leaves sync_watermarks untouched. Only events with skip_reason null move it.';
