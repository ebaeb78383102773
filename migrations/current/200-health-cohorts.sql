------------------------------------------------------------------------------------------
-- 200-health-cohorts.sql (issue 14): the original plan's monitors in sync_health(), and cohorts.
-- Owner: the issue-14 stream. Owns mixpanel_sync.sync_health() and every health_* check below,
-- the subscriber-count trigger on sync_runs, and the cohort tables and functions.
------------------------------------------------------------------------------------------

-- The plan's thresholds (OPTIMIZATION_IMPLEMENTATION_SUMMARY.md, "Monitoring & Alerts"). Existing rows are kept.
insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('health.profiles_duration_warn', '30 seconds', 'interval',
   'sync_health profiles.duration: warn when the last profiles run took at least this long (the plan: properties sync under 30 s).'),
  ('health.profiles_duration_critical', '10 minutes', 'interval',
   'sync_health profiles.duration: critical when the last profiles run took at least this long.'),
  ('health.watermark_stalled_warn', '6 hours', 'interval',
   'sync_health events.watermark_stalled: warn when runs kept succeeding for at least this long (by their clocks, fetch_to) '
   'without moving the events watermark (the plan: watermark not advancing for 6 h).'),
  ('health.incremental_runs', '10', 'integer',
   'sync_health events.incremental_typical: how many recent incremental events runs to look at.'),
  ('health.incremental_typical_warn', '10000', 'integer',
   'sync_health events.incremental_typical: warn when the median incremental run of the recent ones received at least '
   'this many events (the plan: events per sync under 10K).'),
  ('health.profiles_skip_share_warn', '0.70', 'numeric',
   'sync_health profiles.skip_rate: warn when the last profiles run that met existing profiles skipped less than this '
   'share of them as unchanged (the plan: 70-90% skipped).'),
  ('health.subscribers_growth_warn', '0.50', 'numeric',
   'sync_health events.subscribers: warn when an events run grew the number of subscribers by more than this share '
   'over the previous run (0.50 = 50%). Any fall warns; a fall of health.subscribers_drop_critical is critical.'),
  ('health.subscribers_drop_critical', '0.01', 'numeric',
   'sync_health events.subscribers: critical when an events run lost at least this share of the subscribers (0.01 = 1%).'),
  ('health.timezone_skew_warn', '1 hour', 'interval',
   'sync_health events.timezone: warn when the median event of the recent runs is at least this far from its '
   'mp_processing_time_ms beyond what the configured project timezone explains (export times in local time).'),
  ('health.timezone_min_events', '20', 'integer',
   'sync_health events.timezone: the recent runs must hold at least this many events before it judges.')
on conflict (key) do nothing;

------------------------------------------------------------------------------------------
-- Subscriber count per events run: recorded on the run (options.subscribers) as it succeeds.
------------------------------------------------------------------------------------------

create function mixpanel_sync.record_subscriber_count()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.options := new.options || jsonb_build_object('subscribers', (select count(*) from mixpanel_sync.subscribers));
  return new;
end;
$$;
comment on function mixpanel_sync.record_subscriber_count() is
  'Trigger of sync_runs: when an events run succeeds, records the number of subscribers after it in options.subscribers '
  '(read by sync_health events.subscribers). Runs inside finish_run''s transaction, so the count is the applied state.';

create trigger sync_runs_record_subscriber_count
  before update of status on mixpanel_sync.sync_runs
  for each row
  when (new.source = 'events' and new.status = 'succeeded' and old.status is distinct from 'succeeded')
  execute function mixpanel_sync.record_subscriber_count();
comment on trigger sync_runs_record_subscriber_count on mixpanel_sync.sync_runs is
  'Records options.subscribers on each events run as it succeeds (mixpanel_sync.record_subscriber_count).';

------------------------------------------------------------------------------------------
-- The new checks: one function each, one row each
------------------------------------------------------------------------------------------

create function mixpanel_sync.health_profiles_duration()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'profiles.duration',
    mixpanel_sync.health_level(r.total_ms / 1000.0,
      mixpanel_sync.setting_seconds('health.profiles_duration_warn'),
      mixpanel_sync.setting_seconds('health.profiles_duration_critical')),
    mixpanel_sync.seconds_text(r.total_ms),
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.profiles_duration_warn'),
      mixpanel_sync.setting('health.profiles_duration_critical')),
    case when r.id is null then 'no data: no profiles run has succeeded yet'
      else format('run %s (%s profiles received: %s new, %s changed, %s unchanged) finished %s: staging %s, applying %s',
        r.id, r.received, r.inserted, r.updated, r.unchanged, r.finished_at,
        mixpanel_sync.seconds_text(r.stage_ms), mixpanel_sync.seconds_text(r.apply_ms))
    end
  from mixpanel_sync.last_succeeded_run('profiles') r;
$$;
comment on function mixpanel_sync.health_profiles_duration() is
  'sync_health profiles.duration: how long the last succeeded profiles run took, start to finish (total_ms). '
  'The plan: properties sync under 30 s.';

create function mixpanel_sync.health_watermark_stalled()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with runs as (
    select r.id, r.fetch_to, r.finished_at,
      r.watermark_after is distinct from r.watermark_before as moved
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded'
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
        mixpanel_sync.setting_seconds('health.watermark_stalled_warn'), null) end,
    case when s.runs > 0 and m.id is not null then justify_interval(date_trunc('second', s.last_clock - m.fetch_to))::text end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.watermark_stalled_warn'), null),
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
$$;
comment on function mixpanel_sync.health_watermark_stalled() is
  'sync_health events.watermark_stalled: how long (by the runs'' clocks, fetch_to) events runs have succeeded without '
  'moving the watermark, i.e. since the last run that moved it to the newest run after it. The plan''s "watermark not '
  'advancing for 6 h"; events.watermark_lag covers runs that stopped or fail.';

create function mixpanel_sync.health_incremental_typical()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.incremental_typical',
    mixpanel_sync.health_level(v.median, mixpanel_sync.setting('health.incremental_typical_warn')::numeric, null),
    v.median::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.incremental_typical_warn') || ' events (median)', null),
    case when v.runs = 0 then 'no data: no incremental events run has succeeded yet'
      else format('median events received by the last %s incremental runs (smallest %s, largest %s)%s', v.runs, v.smallest, v.largest,
        case when v.median >= mixpanel_sync.setting('health.incremental_typical_warn')::numeric
          then ': the runs fetch far more than the plan expects; check events.overlap and events.late_lookback, and how often the sync runs'
          else '' end)
    end
  from (
    select count(*) as runs, percentile_disc(0.5) within group (order by r.received) as median,
      min(r.received) as smallest, max(r.received) as largest
    from (
      select r.received from mixpanel_sync.sync_runs r
      where r.source = 'events' and r.mode = 'incremental' and r.status = 'succeeded'
      order by r.finished_at desc, r.id desc
      limit mixpanel_sync.setting('health.incremental_runs')::bigint
    ) r
  ) v;
$$;
comment on function mixpanel_sync.health_incremental_typical() is
  'sync_health events.incremental_typical: the median number of events received by the last health.incremental_runs '
  'incremental runs (the plan: events per sync under 10K), beside events.incremental_volume (one run, 50K).';

create function mixpanel_sync.health_profiles_skip_rate()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'profiles.skip_rate',
    case when r.id is null then 'ok'
      when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting('health.profiles_skip_share_warn')::numeric
        then 'warn'
      else 'ok' end,
    case when r.id is not null then
      to_char(100.0 * r.unchanged / (r.updated + r.unchanged), 'FM990.0') || '%' end,
    'warn < ' || mixpanel_sync.setting('health.profiles_skip_share_warn') || ' of existing profiles skipped',
    case when r.id is null then 'no data: no profiles run has met existing profiles yet'
      else format('run %s skipped %s of %s existing profiles as unchanged (%s new); the plan expects 70-90%% skipped%s',
        r.id, r.unchanged, r.updated + r.unchanged, r.inserted,
        case when r.unchanged::numeric / (r.updated + r.unchanged) < mixpanel_sync.setting('health.profiles_skip_share_warn')::numeric
          then ': find the property that changes on every run (profiles.change_detection explains how)' else '' end)
    end
  from (select) one
  left join lateral (
    select r.* from mixpanel_sync.sync_runs r
    where r.source = 'profiles' and r.status = 'succeeded' and r.updated + r.unchanged > 0
    order by r.finished_at desc, r.id desc
    limit 1
  ) r on true;
$$;
comment on function mixpanel_sync.health_profiles_skip_rate() is
  'sync_health profiles.skip_rate: the share of existing profiles the last profiles run that met any found unchanged '
  '(unchanged / (updated + unchanged); new profiles do not count). The plan: 70-90% skipped after the first sync.';

create function mixpanel_sync.health_subscribers()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.subscribers',
    case
      when c.after is null or c.before is null or c.before = 0 then 'ok'
      when c.after < c.before and (c.before - c.after) >= c.before * mixpanel_sync.setting('health.subscribers_drop_critical')::numeric
        then 'critical'
      when c.after < c.before then 'warn'
      when c.after - c.before > c.before * mixpanel_sync.setting('health.subscribers_growth_warn')::numeric then 'warn'
      else 'ok'
    end,
    case when c.after is not null and c.before is not null then format('%s -> %s', c.before, c.after) end,
    format('warn on any fall or growth > %s; critical on a fall >= %s',
      mixpanel_sync.setting('health.subscribers_growth_warn'), mixpanel_sync.setting('health.subscribers_drop_critical')),
    case
      when c.id is null then 'no data: no events run has succeeded yet'
      when c.before is null then format('run %s is the first events run with a recorded subscriber count (%s)', c.id, c.after)
      when c.after < c.before then format('subscribers fell by %s after run %s (%s, %s): a full run replaced days with fewer '
        'users. Compare with Mixpanel (npm run spot-check) and resync the days from the source (npm run sync:events -- --full)',
        c.before - c.after, c.id, c.mode, c.options ->> 'mode_reason')
      when c.before > 0 and c.after - c.before > c.before * mixpanel_sync.setting('health.subscribers_growth_warn')::numeric
        then format('subscribers grew by %s (%s%%) in run %s: more than history suggests; a new source of '
          'distinct_ids (an identity change, a test project)?', c.after - c.before,
          round(100.0 * (c.after - c.before) / c.before), c.id)
      else format('run %s changed subscribers by %s', c.id, c.after - c.before)
    end
  from (select) one
  left join lateral (
    select r.id, r.mode, r.options, (r.options ->> 'subscribers')::bigint as after,
      (select (p.options ->> 'subscribers')::bigint from mixpanel_sync.sync_runs p
       where p.source = 'events' and p.status = 'succeeded' and p.options ? 'subscribers'
         and (p.finished_at, p.id) < (r.finished_at, r.id)
       order by p.finished_at desc, p.id desc limit 1) as before
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded'
    order by r.finished_at desc, r.id desc
    limit 1
  ) c on true;
$$;
comment on function mixpanel_sync.health_subscribers() is
  'sync_health events.subscribers: the number of subscribers after the last events run against the run before '
  '(options.subscribers). The plan''s "user count growth matches history": any fall warns (a REPLACE that lost users), '
  'growth over health.subscribers_growth_warn warns.';

create function mixpanel_sync.utc_offset_text(seconds numeric)
returns text
language sql
immutable
set search_path = ''
as $$
  select case when seconds < 0 then '-' else '+' end
    || to_char(round(abs(seconds) / 60)::bigint / 60, 'FM00') || ':' || to_char(round(abs(seconds) / 60)::bigint % 60, 'FM00');
$$;
comment on function mixpanel_sync.utc_offset_text(numeric) is 'An offset in seconds as a UTC offset, to the nearest minute: 19800 -> ''+05:30''.';

create function mixpanel_sync.health_timezone()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with recent as (
    select r.id, r.project_timezone, (r.lateness ->> 'events')::bigint as events, (r.lateness ->> 'p50_ms')::bigint as p50_ms,
      -- the offset the configured zone explains (lateness is measured on the exported time as sent)
      coalesce(extract(epoch from (r.fetch_to at time zone r.project_timezone) - (r.fetch_to at time zone 'UTC')), 0) as configured_s
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded' and (r.lateness ->> 'events')::bigint > 0
    order by r.finished_at desc, r.id desc
    limit mixpanel_sync.setting('health.lateness_runs')::bigint
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
    case when coalesce(i.events, 0) < mixpanel_sync.setting('health.timezone_min_events')::bigint then 'ok'
      else mixpanel_sync.health_level(abs(i.offset_s - i.configured_s), mixpanel_sync.setting_seconds('health.timezone_skew_warn'), null)
    end,
    case when i.events > 0 then 'median event time ' || mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0) || ' from its processing time' end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.timezone_skew_warn') || ' off the configured zone', null),
    case
      when coalesce(i.events, 0) < mixpanel_sync.setting('health.timezone_min_events')::bigint
        then format('no data: fewer than %s events in the recent runs', mixpanel_sync.setting('health.timezone_min_events'))
      when abs(i.offset_s - i.configured_s) >= mixpanel_sync.setting_seconds('health.timezone_skew_warn')
        then format('events are stamped about %s from UTC (%s configured): the project likely exports local time of '
          'UTC%s. Its newest hours are rejected as "after the run''s fetch_to" and the rest is stored off by the offset. Set '
          'MIXPANEL_PROJECT_TIMEZONE to the project''s zone (Mixpanel: Project Settings, Timezone), then resync the window '
          '(npm run sync:events -- --full)', mixpanel_sync.utc_offset_text(i.offset_s),
          coalesce(i.project_timezone || ' = ' || mixpanel_sync.utc_offset_text(i.configured_s), 'none'),
          mixpanel_sync.utc_offset_text(i.offset_s))
      else format('event times match their processing times%s', coalesce(' read in ' || i.project_timezone, ' (UTC)'))
    end
  from implied i;
$$;
comment on function mixpanel_sync.health_timezone() is
  'sync_health events.timezone: projects created before 2023 export local time. In the recent runs, the median event''s '
  'time minus its mp_processing_time_ms, rounded to a quarter hour, is the offset of the exported times from UTC; warn '
  'when it differs from the run''s project_timezone (none = UTC) by health.timezone_skew_warn, naming the likely offset.';

create or replace function mixpanel_sync.health_failed_runs(source text)
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with failed as (
    select r.id, r.error, r.options, r.finished_at
    from mixpanel_sync.sync_runs r
    where r.source = health_failed_runs.source
      and r.status in ('failed', 'abandoned')
      and r.finished_at > coalesce((select s.finished_at from mixpanel_sync.last_succeeded_run(health_failed_runs.source) s), '-infinity')
  ), last_failed as (
    select f.* from failed f order by f.finished_at desc, f.id desc limit 1
  )
  select health_failed_runs.source || '.failed_runs',
    mixpanel_sync.health_level((select count(*) from failed), mixpanel_sync.setting('health.failed_runs_warn')::numeric,
      mixpanel_sync.setting('health.failed_runs_critical')::numeric),
    (select count(*) from failed)::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.failed_runs_warn'), mixpanel_sync.setting('health.failed_runs_critical')),
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
$$;
comment on function mixpanel_sync.health_failed_runs(text) is
  'sync_health <source>.failed_runs: failed or abandoned runs of the source since its last succeeded run, with the last '
  'error; a refusal of the REPLACE guard (MP001) is named with its override.';

------------------------------------------------------------------------------------------
-- sync_health(): every check, in reading order
------------------------------------------------------------------------------------------

create or replace function mixpanel_sync.sync_health()
returns table ("check" text, status text, value text, threshold text, detail text)
language sql
stable
set search_path = ''
as $$
  select (c.result).* from (
    select 1 as position, mixpanel_sync.health_events_duration() as result
    union all select 2, mixpanel_sync.health_incremental_volume()
    union all select 3, mixpanel_sync.health_incremental_typical()
    union all select 4, mixpanel_sync.health_watermark_lag()
    union all select 5, mixpanel_sync.health_watermark_stalled()
    union all select 6, mixpanel_sync.health_lateness()
    union all select 7, mixpanel_sync.health_too_old()
    union all select 8, mixpanel_sync.health_timezone()
    union all select 9, mixpanel_sync.health_subscribers()
    union all select 10, mixpanel_sync.health_failed_runs('events')
    union all select 11, mixpanel_sync.health_rejected('events')
    union all select 12, mixpanel_sync.health_profiles_duration()
    union all select 13, mixpanel_sync.health_profiles_change_detection()
    union all select 14, mixpanel_sync.health_profiles_skip_rate()
    union all select 15, mixpanel_sync.health_failed_runs('profiles')
    union all select 16, mixpanel_sync.health_rejected('profiles')
    union all select 17, mixpanel_sync.health_running()
  ) c
  order by c.position;
$$;
comment on function mixpanel_sync.sync_health() is
  'Health of the sync, one row per check: status ok|warn|critical, the value measured, the thresholds (health.* rows in '
  'sync_settings) and a detail. select * from mixpanel_sync.sync_health(); see docs/operations.md.';
