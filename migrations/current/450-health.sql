-- 450-health: the 15 health checks take a leading project_id smallint (docs/projects.md §5.4): each reads its project's
-- runs, watermark and settings only. sync_health (600-entry-points.sql) resolves the project and calls them.
-- Idempotent: the old signatures are dropped if they exist, the new ones created or replaced.

drop function if exists mixpanel_sync.health_events_duration();
create or replace function mixpanel_sync.health_events_duration(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.duration',
    mixpanel_sync.health_level(r.total_ms / 1000.0,
      mixpanel_sync.setting_seconds(health_events_duration.project_id, 'health.events_duration_warn'),
      mixpanel_sync.setting_seconds(health_events_duration.project_id, 'health.events_duration_critical')),
    mixpanel_sync.seconds_text(r.total_ms),
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_events_duration.project_id, 'health.events_duration_warn'),
      mixpanel_sync.setting(health_events_duration.project_id, 'health.events_duration_critical')),
    case when r.id is null then 'no data: no events run has succeeded yet'
      else format('run %s (%s, %s events received) finished %s: staging %s, applying %s',
        r.id, r.mode, r.received, r.finished_at, mixpanel_sync.seconds_text(r.stage_ms), mixpanel_sync.seconds_text(r.apply_ms))
    end
  from mixpanel_sync.last_succeeded_run(health_events_duration.project_id, 'events') r;
$function$;
comment on function mixpanel_sync.health_events_duration(project_id smallint) is 'sync_health events.duration: how long the last succeeded events run took, start to finish (total_ms).';
grant execute on function mixpanel_sync.health_events_duration(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_failed_runs(text);
create or replace function mixpanel_sync.health_failed_runs(project_id smallint, source text)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  with failed as (
    select r.id, r.error, r.options, r.finished_at
    from mixpanel_sync.sync_runs r
    where r.project_id = health_failed_runs.project_id and r.source = health_failed_runs.source
      and r.status in ('failed', 'abandoned')
      and r.finished_at > coalesce((select s.finished_at from mixpanel_sync.last_succeeded_run(health_failed_runs.project_id, health_failed_runs.source) s), '-infinity')
  ), last_failed as (
    select f.* from failed f order by f.finished_at desc, f.id desc limit 1
  )
  select health_failed_runs.source || '.failed_runs',
    mixpanel_sync.health_level((select count(*) from failed), mixpanel_sync.setting(health_failed_runs.project_id, 'health.failed_runs_warn')::numeric,
      mixpanel_sync.setting(health_failed_runs.project_id, 'health.failed_runs_critical')::numeric),
    (select count(*) from failed)::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_failed_runs.project_id, 'health.failed_runs_warn'), mixpanel_sync.setting(health_failed_runs.project_id, 'health.failed_runs_critical')),
    case
      when l.id is null then 'no ' || health_failed_runs.source || ' run failed since the last succeeded one'
      when l.options ->> 'error_code' = 'MP001' or l.error ilike '%replace guard%'
        then format('failed or abandoned %s runs in a row; last: run %s was refused by the REPLACE guard (MP001): the full '
          'run would have emptied or shrunk stored days, so nothing was applied. Check the input first (a partial export, '
          'the wrong project); if the source really holds less, rerun with the guard''s override: '
          'npm run sync:events -- --full --allow-shrink (psql: begin_run(..., allow_shrink => true)). Error: %s',
          health_failed_runs.source, l.id, l.error)
      else format('failed or abandoned %s runs in a row; last: run %s, %s', health_failed_runs.source, l.id, l.error)
    end
  from (select) one
  left join last_failed l on true;
$function$;
comment on function mixpanel_sync.health_failed_runs(project_id smallint, source text) is 'sync_health <source>.failed_runs: failed or abandoned runs of the source since its last succeeded run, with the last error; a refusal of the REPLACE guard (MP001) is named with its override.';
grant execute on function mixpanel_sync.health_failed_runs(project_id smallint, source text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_incremental_typical();
create or replace function mixpanel_sync.health_incremental_typical(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.incremental_typical',
    mixpanel_sync.health_level(v.median, mixpanel_sync.setting(health_incremental_typical.project_id, 'health.incremental_typical_warn')::numeric, null),
    v.median::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_incremental_typical.project_id, 'health.incremental_typical_warn') || ' events (median)', null),
    case when v.runs = 0 then 'no data: no incremental events run has succeeded yet'
      else format('median events received by the last %s incremental runs (smallest %s, largest %s)%s', v.runs, v.smallest, v.largest,
        case when v.median >= mixpanel_sync.setting(health_incremental_typical.project_id, 'health.incremental_typical_warn')::numeric
          then ': the runs fetch far more than the plan expects; check events.overlap and events.late_lookback, and how often the sync runs'
          else '' end)
    end
  from (
    select count(*) as runs, percentile_disc(0.5) within group (order by r.received) as median,
      min(r.received) as smallest, max(r.received) as largest
    from (
      select r.received from mixpanel_sync.sync_runs r
      where r.project_id = health_incremental_typical.project_id and r.source = 'events' and r.mode = 'incremental' and r.status = 'succeeded'
      order by r.finished_at desc, r.id desc
      limit mixpanel_sync.setting(health_incremental_typical.project_id, 'health.incremental_runs')::bigint
    ) r
  ) v;
$function$;
comment on function mixpanel_sync.health_incremental_typical(project_id smallint) is 'sync_health events.incremental_typical: the median number of events received by the last health.incremental_runs incremental runs (the plan: events per sync under 10K), beside events.incremental_volume (one run, 50K).';
grant execute on function mixpanel_sync.health_incremental_typical(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_incremental_volume();
create or replace function mixpanel_sync.health_incremental_volume(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.incremental_volume',
    case when r.mode = 'incremental'
      then mixpanel_sync.health_level(r.received, mixpanel_sync.setting(health_incremental_volume.project_id, 'health.incremental_received_warn')::numeric, null)
      else 'ok' end,
    r.received::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_incremental_volume.project_id, 'health.incremental_received_warn'), null),
    case
      when r.id is null then 'no data: no events run has succeeded yet'
      when r.mode = 'full' then format('the last events run (%s) was full: %s', r.id, r.options ->> 'mode_reason')
      else format('events received by incremental run %s (%s to %s)', r.id, r.fetch_from, r.fetch_to)
    end
  from mixpanel_sync.last_succeeded_run(health_incremental_volume.project_id, 'events') r;
$function$;
comment on function mixpanel_sync.health_incremental_volume(project_id smallint) is 'sync_health events.incremental_volume: events received by the last events run when it was incremental; a large number means the loader fetched far more than the window since the watermark.';
grant execute on function mixpanel_sync.health_incremental_volume(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_lateness();
create or replace function mixpanel_sync.health_lateness(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.lateness',
    case
      when l.max_ms >= mixpanel_sync.setting_seconds(health_lateness.project_id, 'events.late_lookback') * 1000 then 'critical'
      else mixpanel_sync.health_level(l.beyond_overlap / nullif(l.events, 0)::numeric,
        mixpanel_sync.setting(health_lateness.project_id, 'health.late_share_warn')::numeric, null)
    end,
    case when l.runs > 0 then format('%s of %s (%s%%)', l.beyond_overlap, l.events,
      coalesce(round(100.0 * l.beyond_overlap / nullif(l.events, 0), 1), 0)) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_lateness.project_id, 'health.late_share_warn') || ' of events',
      'one event ' || mixpanel_sync.setting(health_lateness.project_id, 'events.late_lookback') || ' late (events.late_lookback)'),
    case when l.runs = 0 then 'no data: no incremental events run has succeeded yet'
      else format('events later than events.overlap (%s) in the last %s incremental runs; the latest arrived %s after its time '
        '(highest p99 %s)', mixpanel_sync.setting(health_lateness.project_id, 'events.overlap'), l.runs,
        justify_interval(date_trunc('second', l.max_ms * interval '1 millisecond')),
        justify_interval(date_trunc('second', l.p99_ms * interval '1 millisecond')))
    end
  from (
    select count(*) as runs, coalesce(sum((r.lateness ->> 'events')::bigint), 0) as events,
      coalesce(sum((r.lateness ->> 'beyond_overlap')::bigint), 0) as beyond_overlap,
      max((r.lateness ->> 'max_ms')::bigint) as max_ms, max((r.lateness ->> 'p99_ms')::bigint) as p99_ms
    from (
      select r.lateness from mixpanel_sync.sync_runs r
      where r.project_id = health_lateness.project_id and r.source = 'events' and r.mode = 'incremental' and r.status = 'succeeded' and r.lateness is not null
      order by r.finished_at desc, r.id desc
      limit mixpanel_sync.setting(health_lateness.project_id, 'health.lateness_runs')::bigint
    ) r
  ) l;
$function$;
comment on function mixpanel_sync.health_lateness(project_id smallint) is 'sync_health events.lateness: the share of events that arrived later than events.overlap in the last health.lateness_runs incremental runs (sync_runs.lateness; a full run reads its whole window whatever the lateness). The late lookback fetched them: a high share means Mixpanel or the clients deliver late. Critical once one arrived events.late_lookback late, where incremental runs stop looking.';
grant execute on function mixpanel_sync.health_lateness(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_profiles_change_detection();
create or replace function mixpanel_sync.health_profiles_change_detection(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  with compared as (
    -- runs that met existing profiles: only they can find one unchanged (a first load only inserts)
    select r.id, r.finished_at, r.unchanged
    from mixpanel_sync.sync_runs r
    where r.project_id = health_profiles_change_detection.project_id and r.source = 'profiles' and r.status = 'succeeded' and r.updated + r.unchanged > 0
  ), streak as (
    select count(*) as runs, min(c.id) as since_run
    from compared c
    where c.unchanged = 0
      and c.finished_at > coalesce((select max(k.finished_at) from compared k where k.unchanged > 0), '-infinity')
  )
  select 'profiles.change_detection',
    mixpanel_sync.health_level(s.runs, mixpanel_sync.setting(health_profiles_change_detection.project_id, 'health.profiles_unskipped_runs_warn')::numeric, null),
    s.runs::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_profiles_change_detection.project_id, 'health.profiles_unskipped_runs_warn') || ' runs', null),
    case
      when not exists (select from compared) then 'no data: no profiles run has met existing profiles yet'
      when s.runs = 0 then 'the last profiles run found unchanged profiles'
      else format('profiles runs in a row since run %s that found every existing profile changed (unchanged = 0): '
        'compare two runs'' profiles for a property that differs every time', s.since_run)
    end
  from streak s;
$function$;
comment on function mixpanel_sync.health_profiles_change_detection(project_id smallint) is 'sync_health profiles.change_detection: profiles runs in a row that met existing profiles and found none of them unchanged. The comparison runs whatever profiles.change_detection says (off only stops it from skipping writes), so a count here means it sees a change where there is none. Runs that only inserted do not count.';
grant execute on function mixpanel_sync.health_profiles_change_detection(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_profiles_duration();
create or replace function mixpanel_sync.health_profiles_duration(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'profiles.duration',
    mixpanel_sync.health_level(r.total_ms / 1000.0,
      mixpanel_sync.setting_seconds(health_profiles_duration.project_id, 'health.profiles_duration_warn'),
      mixpanel_sync.setting_seconds(health_profiles_duration.project_id, 'health.profiles_duration_critical')),
    mixpanel_sync.seconds_text(r.total_ms),
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_profiles_duration.project_id, 'health.profiles_duration_warn'),
      mixpanel_sync.setting(health_profiles_duration.project_id, 'health.profiles_duration_critical')),
    case when r.id is null then 'no data: no profiles run has succeeded yet'
      else format('run %s (%s profiles received: %s new, %s changed, %s unchanged) finished %s: staging %s, applying %s',
        r.id, r.received, r.inserted, r.updated, r.unchanged, r.finished_at,
        mixpanel_sync.seconds_text(r.stage_ms), mixpanel_sync.seconds_text(r.apply_ms))
    end
  from mixpanel_sync.last_succeeded_run(health_profiles_duration.project_id, 'profiles') r;
$function$;
comment on function mixpanel_sync.health_profiles_duration(project_id smallint) is 'sync_health profiles.duration: how long the last succeeded profiles run took, start to finish (total_ms). The plan: properties sync under 30 s.';
grant execute on function mixpanel_sync.health_profiles_duration(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_profiles_skip_rate();
create or replace function mixpanel_sync.health_profiles_skip_rate(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'profiles.skip_rate',
    case when r.id is null then 'ok'
      when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting(health_profiles_skip_rate.project_id, 'health.profiles_skip_share_warn')::numeric
        then 'warn'
      else 'ok' end,
    case when r.id is not null then
      to_char(100.0 * r.unchanged / (r.updated + r.unchanged), 'FM990.0') || '%' end,
    'warn < ' || mixpanel_sync.setting(health_profiles_skip_rate.project_id, 'health.profiles_skip_share_warn') || ' of existing profiles skipped',
    case when r.id is null then 'no data: no profiles run has met existing profiles yet'
      else format('run %s skipped %s of %s existing profiles as unchanged (%s new); the plan expects 70-90%% skipped%s',
        r.id, r.unchanged, r.updated + r.unchanged, r.inserted,
        case when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting(health_profiles_skip_rate.project_id, 'health.profiles_skip_share_warn')::numeric
          then ': find the property that changes on every run (profiles.change_detection explains how)' else '' end)
    end
  from (select) one
  left join lateral (
    select r.* from mixpanel_sync.sync_runs r
    where r.project_id = health_profiles_skip_rate.project_id and r.source = 'profiles' and r.status = 'succeeded' and r.updated + r.unchanged > 0
    order by r.finished_at desc, r.id desc
    limit 1
  ) r on true;
$function$;
comment on function mixpanel_sync.health_profiles_skip_rate(project_id smallint) is 'sync_health profiles.skip_rate: the share of existing profiles the last profiles run that met any found unchanged (unchanged / (updated + unchanged); new profiles do not count). The plan: 70-90% skipped after the first sync.';
grant execute on function mixpanel_sync.health_profiles_skip_rate(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_rejected(text);
create or replace function mixpanel_sync.health_rejected(project_id smallint, source text)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select health_rejected.source || '.rejected',
    case
      when r.rejected >= mixpanel_sync.setting(health_rejected.project_id, 'health.rejected_share_critical')::numeric * r.received and r.rejected > 0
        then 'critical'
      else mixpanel_sync.health_level(r.rejected, mixpanel_sync.setting(health_rejected.project_id, 'health.rejected_warn')::numeric, null)
    end,
    case when r.id is not null then format('%s of %s', r.rejected, r.received) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_rejected.project_id, 'health.rejected_warn') || ' rows',
      mixpanel_sync.setting(health_rejected.project_id, 'health.rejected_share_critical') || ' of received'),
    case when r.id is null then format('no data: no %s run has succeeded yet', health_rejected.source)
      when r.rejected = 0 then format('run %s rejected nothing', r.id)
      else format('run %s rejected %s rows: select reason, count(*) from mixpanel_sync.sync_rejects where run_id = %s group by 1',
        r.id, r.rejected, r.id)
    end
  from mixpanel_sync.last_succeeded_run(health_rejected.project_id, health_rejected.source) r;
$function$;
comment on function mixpanel_sync.health_rejected(project_id smallint, source text) is 'sync_health <source>.rejected: rows the last succeeded run of the source could not use (kept in sync_rejects), as a count (warn) and a share of what it received (critical).';
grant execute on function mixpanel_sync.health_rejected(project_id smallint, source text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_running();
create or replace function mixpanel_sync.health_running(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'runs.running',
    mixpanel_sync.health_level(extract(epoch from now() - r.started_at),
      mixpanel_sync.setting_seconds(health_running.project_id, 'health.running_warn'), mixpanel_sync.setting_seconds(health_running.project_id, 'runs.abandon_after')),
    justify_interval(date_trunc('second', now() - r.started_at))::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_running.project_id, 'health.running_warn'),
      mixpanel_sync.setting(health_running.project_id, 'runs.abandon_after') || ' (runs.abandon_after)'),
    case when r.id is null then 'no run is running'
      else format('run %s (%s, %s) running since %s; if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died'')',
        r.id, r.source, r.mode, r.started_at, r.id)
    end
  from (select) one
  left join lateral (
    select * from mixpanel_sync.sync_runs r where r.project_id = health_running.project_id and r.status = 'running' order by r.started_at, r.id limit 1
  ) r on true;
$function$;
comment on function mixpanel_sync.health_running(project_id smallint) is 'sync_health runs.running: the oldest run still running. Critical once past runs.abandon_after: the next begin_run marks it abandoned, so none has started since.';
grant execute on function mixpanel_sync.health_running(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_subscribers();
create or replace function mixpanel_sync.health_subscribers(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.subscribers',
    case
      when c.after is null or c.before is null or c.before = 0 then 'ok'
      when c.after < c.before and (c.before - c.after) >= c.before * mixpanel_sync.setting(health_subscribers.project_id, 'health.subscribers_drop_critical')::numeric
        then 'critical'
      when c.after < c.before then 'warn'
      when c.after - c.before > c.before * mixpanel_sync.setting(health_subscribers.project_id, 'health.subscribers_growth_warn')::numeric then 'warn'
      else 'ok'
    end,
    case when c.after is not null and c.before is not null then format('%s -> %s', c.before, c.after) end,
    format('warn on any fall or growth > %s; critical on a fall >= %s',
      mixpanel_sync.setting(health_subscribers.project_id, 'health.subscribers_growth_warn'), mixpanel_sync.setting(health_subscribers.project_id, 'health.subscribers_drop_critical')),
    case
      when c.id is null then 'no data: no events run has succeeded yet'
      when c.before is null then format('run %s is the first events run with a recorded subscriber count (%s)', c.id, c.after)
      when c.after < c.before then format('subscribers fell by %s after run %s (%s, %s): a full run replaced days with fewer '
        'users. Compare with Mixpanel (npm run spot-check) and resync the days from the source (npm run sync:events -- --full)',
        c.before - c.after, c.id, c.mode, c.options ->> 'mode_reason')
      when c.before > 0 and c.after - c.before > c.before * mixpanel_sync.setting(health_subscribers.project_id, 'health.subscribers_growth_warn')::numeric
        then format('subscribers grew by %s (%s%%) in run %s: more than history suggests; a new source of '
          'distinct_ids (an identity change, a test project)?', c.after - c.before,
          round(100.0 * (c.after - c.before) / c.before), c.id)
      else format('run %s changed subscribers by %s', c.id, c.after - c.before)
    end
  from (select) one
  left join lateral (
    select r.id, r.mode, r.options, (r.options ->> 'subscribers')::bigint as after,
      (select (p.options ->> 'subscribers')::bigint from mixpanel_sync.sync_runs p
       where p.project_id = health_subscribers.project_id and p.source = 'events' and p.status = 'succeeded' and p.options ? 'subscribers'
         and (p.finished_at, p.id) < (r.finished_at, r.id)
       order by p.finished_at desc, p.id desc limit 1) as before
    from mixpanel_sync.sync_runs r
    where r.project_id = health_subscribers.project_id and r.source = 'events' and r.status = 'succeeded'
    order by r.finished_at desc, r.id desc
    limit 1
  ) c on true;
$function$;
comment on function mixpanel_sync.health_subscribers(project_id smallint) is 'sync_health events.subscribers: the number of subscribers after the last events run against the run before (options.subscribers). The plan''s "user count growth matches history": any fall warns (a REPLACE that lost users), growth over health.subscribers_growth_warn warns.';
grant execute on function mixpanel_sync.health_subscribers(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_timezone();
create or replace function mixpanel_sync.health_timezone(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  with recent as (
    select r.id, r.project_timezone, (r.lateness ->> 'events')::bigint as events, (r.lateness ->> 'p50_ms')::bigint as p50_ms,
      -- the offset the configured zone explains (lateness is measured on the exported time as sent)
      coalesce(extract(epoch from (r.fetch_to at time zone r.project_timezone) - (r.fetch_to at time zone 'UTC')), 0) as configured_s
    from mixpanel_sync.sync_runs r
    where r.project_id = health_timezone.project_id and r.source = 'events' and r.status = 'succeeded' and (r.lateness ->> 'events')::bigint > 0
    order by r.finished_at desc, r.id desc
    limit mixpanel_sync.setting(health_timezone.project_id, 'health.lateness_runs')::bigint
  ), seen as (
    select sum(r.events) as events,
      percentile_disc(0.5) within group (order by r.p50_ms) as p50_ms,
      (array_agg(r.configured_s order by r.id desc))[1] as configured_s,
      (array_agg(r.project_timezone order by r.id desc))[1] as project_timezone
    from recent r
  ), implied as (
    -- time = true time + offset and processing = true time + delay, so -(median lateness) is the offset (delay is small);
    -- offsets come in quarter hours
    select s.*, round(-s.p50_ms / 900000.0) * 900 as offset_s from seen s
  )
  select 'events.timezone',
    case when coalesce(i.events, 0) < mixpanel_sync.setting(health_timezone.project_id, 'health.timezone_min_events')::bigint then 'ok'
      else mixpanel_sync.health_level(abs(i.offset_s - i.configured_s), mixpanel_sync.setting_seconds(health_timezone.project_id, 'health.timezone_skew_warn'), null)
    end,
    case when i.events > 0 then mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_timezone.project_id, 'health.timezone_skew_warn') || ' off the configured zone', null),
    case
      when coalesce(i.events, 0) < mixpanel_sync.setting(health_timezone.project_id, 'health.timezone_min_events')::bigint
        then format('no data: fewer than %s events in the recent runs', mixpanel_sync.setting(health_timezone.project_id, 'health.timezone_min_events'))
      when abs(i.offset_s - i.configured_s) >= mixpanel_sync.setting_seconds(health_timezone.project_id, 'health.timezone_skew_warn')
        then format('the median event time is about %s from its mp_processing_time_ms (%s configured): the project likely exports local time of '
          'UTC%s. Its newest hours are rejected as "after the run''s fetch_to" and the rest is stored off by the offset. Set '
          'MIXPANEL_PROJECT_TIMEZONE to the project''s zone (Mixpanel: Project Settings, Timezone), then resync the window '
          '(npm run sync:events -- --full)', mixpanel_sync.utc_offset_text(i.offset_s),
          coalesce(i.project_timezone || ' = ' || mixpanel_sync.utc_offset_text(i.configured_s), 'none'),
          mixpanel_sync.utc_offset_text(i.offset_s))
      else format('the median event time is %s from its mp_processing_time_ms: event times match their processing times%s',
        mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0), coalesce(' read in ' || i.project_timezone, ' (UTC)'))
    end
  from implied i;
$function$;
comment on function mixpanel_sync.health_timezone(project_id smallint) is 'sync_health events.timezone: projects created before 2023 export local time. In the recent runs, the median event''s time minus its mp_processing_time_ms, rounded to a quarter hour, is the offset of the exported times from UTC; warn when it differs from the run''s project_timezone (none = UTC) by health.timezone_skew_warn, naming the likely offset.';
grant execute on function mixpanel_sync.health_timezone(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_too_old();
create or replace function mixpanel_sync.health_too_old(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.too_old',
    mixpanel_sync.health_level(t.too_old, mixpanel_sync.setting(health_too_old.project_id, 'health.too_old_warn')::numeric, null),
    t.too_old::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_too_old.project_id, 'health.too_old_warn'), null),
    case
      when f.id is null and t.runs = 0 then 'no data: no events run has succeeded yet'
      when t.runs = 0 then format('no incremental run since the last full run (%s)', f.id)
      else format('events older than events.ledger_retention skipped by %s incremental runs since the last full run (%s)%s',
        t.runs, coalesce(f.id::text, 'pruned'),
        case when t.too_old > 0 then ': a full run applies them (npm run sync:events -- --full)' else '' end)
    end
  from (select) one
  left join lateral (
    select r.id, r.finished_at from mixpanel_sync.sync_runs r
    where r.project_id = health_too_old.project_id and r.source = 'events' and r.status = 'succeeded' and r.mode = 'full'
    order by r.finished_at desc, r.id desc
    limit 1
  ) f on true
  cross join lateral (
    select count(*) as runs, coalesce(sum(r.too_old), 0) as too_old
    from mixpanel_sync.sync_runs r
    where r.project_id = health_too_old.project_id and r.source = 'events' and r.status = 'succeeded' and r.mode = 'incremental'
      and r.finished_at > coalesce(f.finished_at, '-infinity')
  ) t;
$function$;
comment on function mixpanel_sync.health_too_old(project_id smallint) is 'sync_health events.too_old: events that incremental runs since the last full run could not apply because they are older than the ledger retention (sum of too_old). A full run covers them.';
grant execute on function mixpanel_sync.health_too_old(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_watermark_lag();
create or replace function mixpanel_sync.health_watermark_lag(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  select 'events.watermark_lag',
    case when w.watermark is null then 'warn'
      else mixpanel_sync.health_level(extract(epoch from now() - w.watermark),
        mixpanel_sync.setting_seconds(health_watermark_lag.project_id, 'health.watermark_lag_warn'),
        mixpanel_sync.setting_seconds(health_watermark_lag.project_id, 'health.watermark_lag_critical')) end,
    justify_interval(date_trunc('second', now() - w.watermark))::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_watermark_lag.project_id, 'health.watermark_lag_warn'),
      mixpanel_sync.setting(health_watermark_lag.project_id, 'health.watermark_lag_critical')),
    case when w.watermark is null then 'never synced: run a first full sync (npm run sync:events -- --full)'
      else format('newest applied event %s, set by run %s at %s', w.watermark, coalesce(w.run_id::text, '(pruned)'), w.updated_at)
    end
  from (select) one
  left join mixpanel_sync.sync_watermarks w on w.project_id = health_watermark_lag.project_id and w.source = 'events';
$function$;
comment on function mixpanel_sync.health_watermark_lag(project_id smallint) is 'sync_health events.watermark_lag: now() minus the events watermark (the newest applied event time). Grows when runs fail, stop, or receive nothing new. warn ''never synced'' when there is no watermark.';
grant execute on function mixpanel_sync.health_watermark_lag(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.health_watermark_stalled();
create or replace function mixpanel_sync.health_watermark_stalled(project_id smallint)
 returns mixpanel_sync.health_check
 language sql
 stable
 set search_path to ''
as $function$
  with runs as (
    select r.id, r.fetch_to, r.finished_at,
      r.watermark_after is distinct from r.watermark_before as moved
    from mixpanel_sync.sync_runs r
    where r.project_id = health_watermark_stalled.project_id and r.source = 'events' and r.status = 'succeeded'
  ), last_move as (
    select m.id, m.fetch_to from runs m where m.moved order by m.finished_at desc, m.id desc limit 1
  ), since as (
    select count(*) as runs, max(s.fetch_to) as last_clock
    from runs s
    where not s.moved and s.finished_at > coalesce((select m2.finished_at from runs m2 where m2.id = (select id from last_move)), '-infinity')
  )
  select 'events.watermark_stalled',
    case when s.runs = 0 or m.id is null then 'ok'
      else mixpanel_sync.health_level(extract(epoch from s.last_clock - m.fetch_to),
        mixpanel_sync.setting_seconds(health_watermark_stalled.project_id, 'health.watermark_stalled_warn'), null) end,
    case when s.runs > 0 and m.id is not null then justify_interval(date_trunc('second', s.last_clock - m.fetch_to))::text end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting(health_watermark_stalled.project_id, 'health.watermark_stalled_warn'), null),
    case
      when m.id is null and s.runs = 0 then 'no data: no events run has moved the watermark yet'
      when m.id is null then format('%s succeeded events runs and none moved the watermark: they received no usable event', s.runs)
      when s.runs = 0 then format('the last events run (%s) moved the watermark', m.id)
      else format('%s succeeded events runs since run %s (clock %s) left the watermark where it was: they received '
        'nothing new. Is the project still sending events, and is the loader reading the right project?', s.runs, m.id, m.fetch_to)
    end
  from (select) one
  left join last_move m on true
  cross join since s;
$function$;
comment on function mixpanel_sync.health_watermark_stalled(project_id smallint) is 'sync_health events.watermark_stalled: how long (by the runs'' clocks, fetch_to) events runs have succeeded without moving the watermark, i.e. since the last run that moved it to the newest run after it. The plan''s "watermark not advancing for 6 h"; events.watermark_lag covers runs that stopped or fail.';
grant execute on function mixpanel_sync.health_watermark_stalled(project_id smallint) to mixpanel_sync_loader;
