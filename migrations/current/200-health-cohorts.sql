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
    case when i.events > 0 then mixpanel_sync.utc_offset_text(-i.p50_ms / 1000.0) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.timezone_skew_warn') || ' off the configured zone', null),
    case
      when coalesce(i.events, 0) < mixpanel_sync.setting('health.timezone_min_events')::bigint
        then format('no data: fewer than %s events in the recent runs', mixpanel_sync.setting('health.timezone_min_events'))
      when abs(i.offset_s - i.configured_s) >= mixpanel_sync.setting_seconds('health.timezone_skew_warn')
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

------------------------------------------------------------------------------------------
-- Cohorts: the cohort list (/api/query/cohorts/list) and membership (Engage filter_by_cohort)
------------------------------------------------------------------------------------------

alter table mixpanel_sync.sync_runs drop constraint sync_runs_source_check;
-- not valid, then validated: the check is added without blocking writes during the scan
alter table mixpanel_sync.sync_runs add constraint sync_runs_source_check check (source in ('events', 'profiles', 'cohorts')) not valid;
-- squawk-ignore constraint-missing-not-valid -- sync_runs is small (pruned after runs.retention): validating in this transaction is instant
alter table mixpanel_sync.sync_runs validate constraint sync_runs_source_check;

create table mixpanel_sync.cohorts (
  cohort_id bigint primary key,
  name text not null,
  description text,
  member_count bigint,
  is_visible boolean,
  created_at timestamptz,
  properties jsonb not null,
  changed_by_run_id bigint not null,
  synced_at timestamptz not null default now()
);
comment on table mixpanel_sync.cohorts is
  'Mixpanel cohorts as /api/query/cohorts/list describes them, one row per cohort; a row is rewritten only when its content changed.';
comment on column mixpanel_sync.cohorts.member_count is 'The count Mixpanel reported in the list (cohort_members holds the members themselves).';
comment on column mixpanel_sync.cohorts.properties is 'The list entry as Mixpanel sent it.';
comment on column mixpanel_sync.cohorts.changed_by_run_id is 'The cohorts run that last wrote this row (inserted or changed it).';
comment on column mixpanel_sync.cohorts.synced_at is 'When that run wrote it.';

create table mixpanel_sync.cohort_members (
  cohort_id bigint not null references mixpanel_sync.cohorts (cohort_id) on delete cascade,
  distinct_id text collate "C" not null,
  added_by_run_id bigint not null,
  primary key (cohort_id, distinct_id)
);
create index cohort_members_distinct_id_idx on mixpanel_sync.cohort_members (distinct_id);
comment on table mixpanel_sync.cohort_members is
  'Which users are in which cohort (Engage filter_by_cohort). Join to subscribers / subscriber_properties on distinct_id. '
  'A cohorts run inserts who joined and deletes who left; members who stayed are not written.';
comment on column mixpanel_sync.cohort_members.added_by_run_id is 'The cohorts run that saw this member join.';

create unlogged table mixpanel_sync.staged_cohorts (
  run_id bigint not null,
  line_id bigint generated always as identity,
  line jsonb not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_cohorts is 'The cohort list entries of runs in progress, as received.';

create unlogged table mixpanel_sync.staged_cohort_members (
  run_id bigint not null,
  line_id bigint generated always as identity,
  cohort_id bigint not null,
  profile jsonb not null,
  primary key (run_id, line_id)
);
comment on table mixpanel_sync.staged_cohort_members is
  'Engage profiles of each cohort (filter_by_cohort) for runs in progress, as received; only $distinct_id is used.';

create unlogged table mixpanel_sync.staged_cohort_fetches (
  run_id bigint not null,
  cohort_id bigint not null,
  primary key (run_id, cohort_id)
);
comment on table mixpanel_sync.staged_cohort_fetches is
  'Cohorts whose whole membership a run in progress has staged: only their membership is replaced by finish_cohorts_run.';

create function mixpanel_sync.drop_staged_cohort_rows(run_id bigint)
returns void
language sql
set search_path = ''
as $$
  delete from mixpanel_sync.staged_cohorts s where s.run_id = drop_staged_cohort_rows.run_id;
  delete from mixpanel_sync.staged_cohort_members s where s.run_id = drop_staged_cohort_rows.run_id;
  delete from mixpanel_sync.staged_cohort_fetches s where s.run_id = drop_staged_cohort_rows.run_id;
$$;
comment on function mixpanel_sync.drop_staged_cohort_rows(bigint) is 'Removes everything staged for a cohorts run.';

create function mixpanel_sync.begin_cohorts_run(clock timestamptz default now())
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
begin
  if clock is null then
    raise exception 'begin_cohorts_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:cohorts', 0));
  perform mixpanel_sync.abandon_stale_runs();
  select * into other from mixpanel_sync.sync_runs r where r.source = 'cohorts' and r.status = 'running' order by r.started_at limit 1;
  if found then
    raise exception 'begin_cohorts_run: run % of source cohorts is running (started % ago); one cohorts run at a time',
      other.id, justify_interval(date_trunc('second', now() - other.started_at))
      using errcode = 'MP002',
        hint = format('wait for it to finish; if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died'')', other.id);
  end if;
  -- staged rows of cohorts runs that ended without finish_cohorts_run (failed, abandoned)
  delete from mixpanel_sync.staged_cohorts s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  delete from mixpanel_sync.staged_cohort_members s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  delete from mixpanel_sync.staged_cohort_fetches s where not exists (select from mixpanel_sync.sync_runs r where r.id = s.run_id and r.status = 'running');
  insert into mixpanel_sync.sync_runs (source, mode, fetch_to, options)
  values ('cohorts', 'full', clock, jsonb_build_object('mode_reason', 'cohorts are always read whole',
    'owner', jsonb_build_object('pid', pg_catalog.pg_backend_pid())))
  returning * into run;
  return run;
end;
$$;
comment on function mixpanel_sync.begin_cohorts_run(timestamptz) is
  'Begins a cohorts run (source ''cohorts'', always whole): refuses with MP002 while another cohorts run is running, '
  'abandons stale runs and clears staged rows of cohorts runs that ended without finishing.';

create function mixpanel_sync.stage_cohorts(run_id bigint, list jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_cohorts', 'cohorts');
  if jsonb_typeof(list) is distinct from 'array' then
    raise exception 'stage_cohorts: the cohort list must be a JSON array, got %', coalesce(jsonb_typeof(list), 'null')
      using errcode = 'invalid_parameter_value', hint = 'pass the body of /api/query/cohorts/list as it came';
  end if;
  insert into mixpanel_sync.staged_cohorts (run_id, line)
  select stage_cohorts.run_id, e.value from jsonb_array_elements(list) with ordinality e(value, n) order by e.n;
  get diagnostics staged = row_count;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_cohorts(bigint, jsonb) is
  'Stages the cohort list of a cohorts run (the /api/query/cohorts/list array); finish_cohorts_run parses it.';

create function mixpanel_sync.stage_cohort_members(run_id bigint, cohort_id bigint, profiles jsonb, complete boolean default false)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  staged bigint;
begin
  perform mixpanel_sync.running_run(run_id, 'stage_cohort_members', 'cohorts');
  if cohort_id is null or jsonb_typeof(profiles) is distinct from 'array' then
    raise exception 'stage_cohort_members: needs a cohort_id and a JSON array of Engage profiles'
      using errcode = 'invalid_parameter_value', hint = 'pass the results array of each Engage page of filter_by_cohort';
  end if;
  insert into mixpanel_sync.staged_cohort_members (run_id, cohort_id, profile)
  select stage_cohort_members.run_id, stage_cohort_members.cohort_id, e.value
  from jsonb_array_elements(profiles) with ordinality e(value, n) order by e.n;
  get diagnostics staged = row_count;
  if complete then
    insert into mixpanel_sync.staged_cohort_fetches (run_id, cohort_id)
    values (stage_cohort_members.run_id, stage_cohort_members.cohort_id) on conflict do nothing;
  end if;
  return staged;
end;
$$;
comment on function mixpanel_sync.stage_cohort_members(bigint, bigint, jsonb, boolean) is
  'Stages one Engage page of a cohort''s members; complete => true on its last page marks the membership whole, and only '
  'cohorts marked whole have their membership replaced (a cohort fetched in part is left as it was).';

create function mixpanel_sync.cohort_list_rows(run_id bigint)
returns table (line_id bigint, line jsonb, cohort_id bigint, reject_reason text)
language sql
stable
set search_path = ''
as $$
  select s.line_id, s.line,
    case when jsonb_typeof(s.line -> 'id') = 'number' and (s.line ->> 'id') ~ '^[0-9]{1,18}$' then (s.line ->> 'id')::bigint end,
    case
      when jsonb_typeof(s.line) <> 'object' then 'cohort entry is not a JSON object'
      when jsonb_typeof(s.line -> 'id') is distinct from 'number' or (s.line ->> 'id') !~ '^[0-9]{1,18}$' then 'cohort id missing or not a positive integer'
      when jsonb_typeof(s.line -> 'name') is distinct from 'string' then 'cohort name missing or not a string'
    end
  from mixpanel_sync.staged_cohorts s
  where s.run_id = cohort_list_rows.run_id;
$$;
comment on function mixpanel_sync.cohort_list_rows(bigint) is
  'The staged cohort list of a run parsed: the cohort id, or why the entry cannot be used (reject_reason).';

create function mixpanel_sync.cohort_member_rows(run_id bigint)
returns table (line_id bigint, cohort_id bigint, profile jsonb, distinct_id text, reject_reason text)
language sql
stable
set search_path = ''
as $$
  select m.line_id, m.cohort_id, m.profile,
    case when jsonb_typeof(m.profile -> '$distinct_id') in ('string', 'number') then m.profile ->> '$distinct_id' end,
    case
      when jsonb_typeof(m.profile) <> 'object' then 'profile is not a JSON object'
      when coalesce(jsonb_typeof(m.profile -> '$distinct_id') not in ('string', 'number'), true)
        or m.profile ->> '$distinct_id' = '' then 'missing $distinct_id'
      when length(m.profile ->> '$distinct_id') > 255 then '$distinct_id longer than 255 characters'
    end
  from mixpanel_sync.staged_cohort_members m
  where m.run_id = cohort_member_rows.run_id
    and exists (select from mixpanel_sync.staged_cohort_fetches f where f.run_id = m.run_id and f.cohort_id = m.cohort_id);
$$;
comment on function mixpanel_sync.cohort_member_rows(bigint) is
  'The staged members of a run''s cohorts fetched whole, parsed: the distinct_id, or why the profile cannot be used.';

create function mixpanel_sync.finish_cohorts_run(run_id bigint)
returns mixpanel_sync.sync_runs
language plpgsql
set search_path = ''
as $$
declare
  run mixpanel_sync.sync_runs;
  began timestamptz := clock_timestamp();
  n_list bigint;
  n_list_rejected bigint;
  n_cohorts_written bigint;
  n_cohorts_removed bigint;
  n_received bigint;
  n_rejected bigint;
  n_duplicates bigint;
  n_members bigint;
  n_added bigint;
  n_removed bigint;
  n_whole bigint;
begin
  run := mixpanel_sync.running_run(run_id, 'finish_cohorts_run', 'cohorts');
  perform from mixpanel_sync.sync_runs r where r.id = run.id for update;

  -- The list: one row per usable entry (a numeric id and a name); the rest rejected with a reason.
  select count(*), count(*) filter (where l.reject_reason is not null) into n_list, n_list_rejected
  from mixpanel_sync.cohort_list_rows(run.id) l;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', l.line_id, l.line::text, l.reject_reason
  from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is not null;

  if n_list > n_list_rejected or not exists (select from mixpanel_sync.cohorts) then
    -- The list is whole: cohorts no longer in it are deleted (their members with them).
    delete from mixpanel_sync.cohorts c
    where not exists (select from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is null and l.cohort_id = c.cohort_id);
    get diagnostics n_cohorts_removed = row_count;
  else
    n_cohorts_removed := 0; -- an empty list over stored cohorts: nothing is deleted (see the run's options)
  end if;

  insert into mixpanel_sync.cohorts as c (cohort_id, name, description, member_count, is_visible, created_at, properties, changed_by_run_id, synced_at)
  select distinct on (l.cohort_id) l.cohort_id, l.line ->> 'name', l.line ->> 'description',
    case when (l.line ->> 'count') ~ '^[0-9]{1,18}$' then (l.line ->> 'count')::bigint end,
    case when jsonb_typeof(l.line -> 'is_visible') = 'number' then (l.line ->> 'is_visible') <> '0'
      when jsonb_typeof(l.line -> 'is_visible') = 'boolean' then (l.line ->> 'is_visible')::boolean end,
    case when (l.line ->> 'created') ~ '^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$' then (l.line ->> 'created')::timestamp at time zone 'UTC' end,
    l.line, finish_cohorts_run.run_id, now()
  from mixpanel_sync.cohort_list_rows(run.id) l
  where l.reject_reason is null
  order by l.cohort_id, l.line_id desc
  on conflict (cohort_id) do update set
    name = excluded.name, description = excluded.description, member_count = excluded.member_count,
    is_visible = excluded.is_visible, created_at = excluded.created_at, properties = excluded.properties,
    changed_by_run_id = excluded.changed_by_run_id, synced_at = excluded.synced_at
  where c.properties is distinct from excluded.properties;
  get diagnostics n_cohorts_written = row_count;

  -- Members: every staged profile of a cohort fetched whole (cohort_member_rows); the distinct_id as Engage gives it.
  -- A cohort fetched whole but not (validly) listed has no row in cohorts: its members are left out.
  select count(*), count(*) filter (where r.reject_reason is not null),
    count(*) filter (where r.reject_reason is null) - count(distinct (r.cohort_id, r.distinct_id)) filter (where r.reject_reason is null)
  into n_received, n_rejected, n_duplicates
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', r.line_id, r.profile::text, r.reject_reason || ' (cohort ' || r.cohort_id || ')'
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id where r.reject_reason is not null;

  -- Who left: members of the cohorts fetched whole that the fetch no longer has.
  delete from mixpanel_sync.cohort_members cm
  where cm.cohort_id in (
      select f.cohort_id from mixpanel_sync.staged_cohort_fetches f where f.run_id = finish_cohorts_run.run_id)
    and not exists (
      select from mixpanel_sync.cohort_member_rows(run.id) r
      where r.reject_reason is null and r.cohort_id = cm.cohort_id and r.distinct_id = cm.distinct_id);
  get diagnostics n_removed = row_count;

  -- Who joined; members who stayed are not touched (on conflict do nothing writes no tuple for them).
  insert into mixpanel_sync.cohort_members (cohort_id, distinct_id, added_by_run_id)
  select distinct r.cohort_id, r.distinct_id, finish_cohorts_run.run_id
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id
  where r.reject_reason is null
    and not exists (select from mixpanel_sync.cohort_members cm where cm.cohort_id = r.cohort_id and cm.distinct_id = r.distinct_id)
  on conflict do nothing;
  get diagnostics n_added = row_count;

  select count(distinct (r.cohort_id, r.distinct_id)) into n_members from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.cohort_id = r.cohort_id where r.reject_reason is null;
  select count(*) into n_whole from mixpanel_sync.staged_cohort_fetches f
  where f.run_id = finish_cohorts_run.run_id and exists (select from mixpanel_sync.cohorts c where c.cohort_id = f.cohort_id);

  perform mixpanel_sync.drop_staged_cohort_rows(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'succeeded',
    received = n_received,
    applied = n_members,
    duplicates = n_duplicates,
    rejected = n_rejected + n_list_rejected,
    too_old = 0,
    users_touched = n_added + n_removed,
    inserted = n_added,
    updated = n_removed,
    unchanged = n_members - n_added,
    options = r.options || jsonb_build_object(
      'cohorts_listed', n_list - n_list_rejected, 'cohorts_written', n_cohorts_written, 'cohorts_removed', n_cohorts_removed,
      'cohorts_fetched_whole', n_whole, 'members', n_members, 'members_added', n_added, 'members_removed', n_removed,
      'list_rejected', n_list_rejected),
    finished_at = clock_timestamp(),
    stage_ms = (extract(epoch from began - r.started_at) * 1000)::bigint,
    apply_ms = (extract(epoch from clock_timestamp() - began) * 1000)::bigint,
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint
  where r.id = run.id
  returning r.* into run;
  return run;
end;
$$;
comment on function mixpanel_sync.finish_cohorts_run(bigint) is
  'Applies a cohorts run in one transaction, set-based with change detection: cohorts upserted only when their list '
  'entry changed and deleted when no longer listed; for each cohort fetched whole, members who left deleted and who '
  'joined inserted, members who stayed untouched (an unchanged membership writes 0 tuples). Counts: received = member '
  'rows staged = applied (distinct members) + duplicates + rejected (list rejects counted in rejected too); inserted = '
  'members added, updated = members removed, unchanged = members kept; the rest in options.';

------------------------------------------------------------------------------------------
-- Spot-check against Mixpanel (npm run spot-check): chosen users' events fetched again from the
-- Export API, counted with the sync's own dedup rule, compared with events_daily and subscribers.
------------------------------------------------------------------------------------------

create table mixpanel_sync.spot_checks (
  id bigint generated always as identity primary key,
  seed text not null,
  users text[] not null,
  from_day date not null,
  to_day date not null,
  watermark timestamptz not null,
  processing_watermark timestamptz,
  project_timezone text,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  compared bigint,
  differences bigint,
  pending bigint
);
comment on table mixpanel_sync.spot_checks is
  'One row per spot-check: the users chosen (seeded), the synced window compared, and what was found.';
comment on column mixpanel_sync.spot_checks.watermark is
  'The events watermark when the check began: events after it are not synced yet (pending, not a difference).';
comment on column mixpanel_sync.spot_checks.processing_watermark is
  'The processing watermark when the check began: events Mixpanel processed after it arrived late and are pending.';

create unlogged table mixpanel_sync.staged_spot_check_events (
  check_id bigint not null references mixpanel_sync.spot_checks (id) on delete cascade,
  line_id bigint generated always as identity,
  line text not null,
  primary key (check_id, line_id)
);
comment on table mixpanel_sync.staged_spot_check_events is
  'Export lines fetched by a spot-check in progress, as received (its own scratch, never read by the sync).';

create function mixpanel_sync.begin_spot_check(users integer, seed text)
returns mixpanel_sync.spot_checks
language plpgsql
set search_path = ''
as $$
declare
  mark mixpanel_sync.sync_watermarks;
  zone text;
  chosen text[];
  check_row mixpanel_sync.spot_checks;
begin
  if users is null or users < 1 or seed is null then
    raise exception 'begin_spot_check: users must be at least 1 and seed not null' using errcode = 'invalid_parameter_value',
      hint = 'select * from mixpanel_sync.begin_spot_check(20, ''1'')';
  end if;
  select * into mark from mixpanel_sync.sync_watermarks w where w.source = 'events';
  if mark.watermark is null then
    raise exception 'begin_spot_check: nothing synced yet (no events watermark)' using errcode = 'no_data_found',
      hint = 'run npm run sync:events first';
  end if;
  -- the same users for the same seed and subscribers: ordered by a hash of seed and distinct_id
  select array_agg(s.distinct_id order by s.h, s.distinct_id) into chosen
  from (
    select s.distinct_id, md5(begin_spot_check.seed || ':' || s.distinct_id) as h
    from mixpanel_sync.subscribers s
    order by 2, 1
    limit begin_spot_check.users
  ) s;
  if chosen is null then
    raise exception 'begin_spot_check: no subscribers to check' using errcode = 'no_data_found', hint = 'run npm run sync:events first';
  end if;
  select r.project_timezone into zone from mixpanel_sync.sync_runs r
  where r.source = 'events' and r.status = 'succeeded' order by r.finished_at desc, r.id desc limit 1;
  -- staged lines of checks that never finished
  delete from mixpanel_sync.staged_spot_check_events e
  where e.check_id in (select c.id from mixpanel_sync.spot_checks c where c.started_at < now() - interval '1 day');
  insert into mixpanel_sync.spot_checks (seed, users, from_day, to_day, watermark, processing_watermark, project_timezone)
  values (seed, chosen,
    (mark.watermark at time zone 'UTC')::date - (extract(day from mixpanel_sync.setting('events.full_window')::interval)::integer - 1),
    (mark.watermark at time zone 'UTC')::date, mark.watermark, mark.processing_watermark, zone)
  returning * into check_row;
  return check_row;
end;
$$;
comment on function mixpanel_sync.begin_spot_check(integer, text) is
  'Begins a spot-check: picks `users` subscribers by md5(seed || '':'' || distinct_id) (the same seed picks the same '
  'users), and the synced window: the events.full_window days ending with the watermark''s UTC day.';

create function mixpanel_sync.stage_spot_check(check_id bigint, lines text[])
returns bigint
language sql
set search_path = ''
as $$
  insert into mixpanel_sync.staged_spot_check_events (check_id, line)
  select stage_spot_check.check_id, l.line from unnest(lines) with ordinality l(line, n) order by l.n;
  select pg_catalog.cardinality(lines)::bigint;
$$;
comment on function mixpanel_sync.stage_spot_check(bigint, text[]) is 'Stages export lines (JSONL, as received) for a spot-check.';

create function mixpanel_sync.spot_check_differences(check_id bigint)
returns table (distinct_id text, day date, event_name text, mixpanel bigint, ours bigint, pending bigint, differs boolean, reason text)
language sql
stable
set search_path = ''
as $$
  with c as (
    select * from mixpanel_sync.spot_checks k where k.id = spot_check_differences.check_id
  ), parsed as (
    select p.*, mixpanel_sync.event_second(p.time_raw) as second
    from (
      select j.doc, j.doc ->> 'event' as event_name,
        case when jsonb_typeof(j.doc #> '{properties,distinct_id}') in ('string', 'number') then j.doc #>> '{properties,distinct_id}' end as distinct_id,
        case when jsonb_typeof(j.doc #> '{properties,time}') = 'number' then (j.doc #>> '{properties,time}')::numeric end as time_raw,
        case when jsonb_typeof(j.doc #> '{properties,$insert_id}') in ('string', 'number') then j.doc #>> '{properties,$insert_id}' end as insert_id,
        case when jsonb_typeof(j.doc #> '{properties,mp_processing_time_ms}') = 'number'
          then to_timestamp((j.doc #>> '{properties,mp_processing_time_ms}')::numeric / 1000) end as processed_at
      from (
        select mixpanel_sync.json_object_or_null(s.line) as doc
        from mixpanel_sync.staged_spot_check_events s where s.check_id = spot_check_differences.check_id
      ) j
      where jsonb_typeof(j.doc -> 'event') = 'string'
    ) p
  ), events as (
    -- Mixpanel's dedup rule, the sync's own: one event per (distinct_id, event_key)
    select distinct on (e.distinct_id, e.key) e.*
    from (
      select p.distinct_id, p.event_name, p.processed_at,
        mixpanel_sync.event_key(p.event_name, p.second, p.insert_id, p.doc) as key,
        case when c.project_timezone is null then to_timestamp(p.second)
          else (to_timestamp(p.second) at time zone 'UTC') at time zone c.project_timezone end as event_time
      from parsed p cross join c
      where p.second is not null and p.distinct_id = any (c.users)
    ) e
    order by e.distinct_id, e.key
  ), theirs as (
    select e.distinct_id, (e.event_time at time zone 'UTC')::date as day, e.event_name,
      count(*) filter (where not e.pending) as events,
      count(*) filter (where e.pending) as pending
    from (
      -- pending: after the watermark, or processed by Mixpanel after the processing watermark (a late arrival)
      select e.*, (e.event_time > c.watermark or coalesce(e.processed_at > c.processing_watermark, false)) as pending
      from events e cross join c
    ) e cross join c
    where (e.event_time at time zone 'UTC')::date between c.from_day and c.to_day
    group by 1, 2, 3
  ), ours as (
    select d.distinct_id::text as distinct_id, d.day, d.event_name::text as event_name, d.event_count as events
    from mixpanel_sync.events_daily d cross join c
    where d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
  ), days_ours as (
    select distinct o.distinct_id, o.day from ours o
  ), compared as (
    select coalesce(t.distinct_id, o.distinct_id) as distinct_id, coalesce(t.day, o.day) as day,
      coalesce(t.event_name, o.event_name) as event_name,
      coalesce(t.events, 0) as mixpanel, coalesce(o.events, 0) as ours, coalesce(t.pending, 0) as pending
    from theirs t
    full join ours o on o.distinct_id = t.distinct_id and o.day = t.day and o.event_name = t.event_name
  ), by_day as (
    select x.*,
      case
        when x.mixpanel > x.ours and not exists (select from days_ours d where d.distinct_id = x.distinct_id and d.day = x.day)
          then 'missing day'
        when x.mixpanel > x.ours then 'missing events'
        when x.ours > x.mixpanel and x.mixpanel = 0 and x.pending = 0 then 'extra events (Mixpanel has none)'
        when x.ours > x.mixpanel then 'extra events'
        when x.pending > 0 then 'late arrivals after the watermark (the next run syncs them)'
      end as reason
    from compared x
  ), subscriber_totals as (
    -- subscribers (the per-user summary over every stored day) against Mixpanel's window plus the stored days
    -- outside the window, per event name
    select u.distinct_id, n.event_name,
      coalesce(((s.event_counts ->> n.event_name))::bigint, 0) as summary,
      coalesce((select sum(t.events) from theirs t where t.distinct_id = u.distinct_id and t.event_name = n.event_name), 0)
        + coalesce((select sum(d.event_count) from mixpanel_sync.events_daily d
            where d.distinct_id = u.distinct_id and d.event_name = n.event_name and d.day not between c.from_day and c.to_day), 0) as expected
    from c cross join unnest(c.users) u(distinct_id)
    left join mixpanel_sync.subscribers s on s.distinct_id = u.distinct_id
    cross join lateral (
      select k as event_name from jsonb_object_keys(coalesce(s.event_counts, '{}')) k
      union select t.event_name from theirs t where t.distinct_id = u.distinct_id
    ) n
  )
  select b.distinct_id, b.day, b.event_name, b.mixpanel, b.ours, b.pending, b.mixpanel <> b.ours, b.reason
  from by_day b where b.reason is not null
  union all
  select t.distinct_id, null, t.event_name, t.expected, t.summary, 0, true,
    'subscribers.event_counts differs (' || t.summary || ' stored, ' || t.expected || ' expected)'
  from subscriber_totals t where t.summary <> t.expected
  order by 1, 2 nulls last, 3;
$$;
comment on function mixpanel_sync.spot_check_differences(bigint) is
  'The differences a spot-check found, per user, UTC day and event name over its window: Mixpanel''s events (staged, '
  'deduplicated with event_key like the sync, read in the run''s project timezone) against events_daily, and per user '
  'and event name against subscribers.event_counts. Events after the watermark, or processed after the processing '
  'watermark, are pending (not a difference: the next run syncs them; differs false). Groups that match are not returned.';

create function mixpanel_sync.finish_spot_check(check_id bigint, compared bigint, differences bigint, pending bigint)
returns mixpanel_sync.spot_checks
language sql
set search_path = ''
as $$
  delete from mixpanel_sync.staged_spot_check_events e where e.check_id = finish_spot_check.check_id;
  update mixpanel_sync.spot_checks c set finished_at = now(), compared = finish_spot_check.compared,
    differences = finish_spot_check.differences, pending = finish_spot_check.pending
  where c.id = finish_spot_check.check_id
  returning *;
$$;
comment on function mixpanel_sync.finish_spot_check(bigint, bigint, bigint, bigint) is
  'Records what a spot-check found and drops its staged lines.';

create function mixpanel_sync.spot_check_counts(check_id bigint)
returns table (compared bigint, pending bigint)
language sql
stable
set search_path = ''
as $$
  -- (user, day, event) groups over the window on either side, and the pending events among Mixpanel's
  select
    (select count(*) from (
      select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d, mixpanel_sync.spot_checks c
      where c.id = spot_check_counts.check_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
      union
      select x.distinct_id, x.day, x.event_name from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x where x.day is not null
    ) g),
    (select coalesce(sum(x.pending), 0)::bigint from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x);
$$;
comment on function mixpanel_sync.spot_check_counts(bigint) is
  'How many (user, day, event) groups a spot-check compared, and how many of Mixpanel''s events were pending.';
