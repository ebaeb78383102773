--! Previous: sha1:b3bb100fc8fe73cf44ce83571a3576702b3d3bf2
--! Hash: sha1:66af9607e81667775ad8ea95dd87d46d8257edee
--! Message: operations health

------------------------------------------------------------------------------------------
-- Operations: health checks over sync_runs and sync_watermarks (docs/operations.md).
-- Loaded after 1-events-core.sql and 2-profiles.sql.
------------------------------------------------------------------------------------------

-- Thresholds. A check is 'warn' when its value reaches the warn threshold and 'critical'
-- when it reaches the critical one. Existing rows (tuned by a DBA) are kept.
insert into mixpanel_sync.sync_settings (key, value, kind, description) values
  ('health.events_duration_warn', '60 seconds', 'interval',
   'sync_health events.duration: warn when the last events run took at least this long (total_ms).'),
  ('health.events_duration_critical', '10 minutes', 'interval',
   'sync_health events.duration: critical when the last events run took at least this long (runs start to overlap).'),
  ('health.incremental_received_warn', '50000', 'integer',
   'sync_health events.incremental_volume: warn when the last incremental run received at least this many events (is incremental mode working?).'),
  ('health.watermark_lag_warn', '6 hours', 'interval',
   'sync_health events.watermark_lag: warn when the newest applied event (the watermark) is at least this old.'),
  ('health.watermark_lag_critical', '24 hours', 'interval',
   'sync_health events.watermark_lag: critical when the watermark is at least this old.'),
  ('health.profiles_unskipped_runs_warn', '3', 'integer',
   'sync_health profiles.change_detection: warn after this many profiles runs in a row that found no existing profile unchanged (is change detection working?).'),
  ('health.failed_runs_warn', '1', 'integer',
   'sync_health <source>.failed_runs: warn after this many failed or abandoned runs in a row.'),
  ('health.failed_runs_critical', '3', 'integer',
   'sync_health <source>.failed_runs: critical after this many failed or abandoned runs in a row.'),
  ('health.running_warn', '30 minutes', 'interval',
   'sync_health runs.running: warn when a run has been running this long (critical once past runs.abandon_after).'),
  ('health.rejected_warn', '1', 'integer',
   'sync_health <source>.rejected: warn when the last run rejected at least this many rows.'),
  ('health.rejected_share_critical', '0.01', 'numeric',
   'sync_health <source>.rejected: critical when the last run rejected at least this share of what it received (0.01 = 1%).'),
  ('health.lateness_runs', '10', 'integer',
   'sync_health events.lateness: how many recent incremental events runs to look at.'),
  ('health.late_share_warn', '0.05', 'numeric',
   'sync_health events.lateness: warn when at least this share of the recent runs'' events arrived later than events.overlap '
   '(0.05 = 5%; critical when one arrived events.late_lookback late: incremental runs may miss such events).'),
  ('health.too_old_warn', '1', 'integer',
   'sync_health events.too_old: warn when incremental runs since the last full run skipped at least this many events as too old.')
on conflict (key) do nothing;


create type mixpanel_sync.health_check as (
  "check" text,
  status text,
  value text,
  threshold text,
  detail text
);
comment on type mixpanel_sync.health_check is
  'One row of sync_health: the check''s name, ok|warn|critical, the measured value, the thresholds, and what it means.';

------------------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------------------

create function mixpanel_sync.health_level(measured numeric, warn_at numeric, critical_at numeric)
returns text
language sql
immutable
set search_path = ''
as $$
  select case
    when measured >= critical_at then 'critical'
    when measured >= warn_at then 'warn'
    else 'ok'
  end;
$$;
comment on function mixpanel_sync.health_level(numeric, numeric, numeric) is
  'ok, warn (measured >= warn_at) or critical (measured >= critical_at); a null measure or threshold never alerts.';

create function mixpanel_sync.health_thresholds(warn_at text, critical_at text)
returns text
language sql
immutable
set search_path = ''
as $$
  select concat_ws(', ', 'warn >= ' || warn_at, 'critical >= ' || critical_at);
$$;
comment on function mixpanel_sync.health_thresholds(text, text) is
  'The threshold column of sync_health: "warn >= …, critical >= …" (a null level is left out).';

create function mixpanel_sync.setting_seconds(key text)
returns numeric
language sql
stable
set search_path = ''
as $$
  select extract(epoch from mixpanel_sync.setting(key)::interval);
$$;
comment on function mixpanel_sync.setting_seconds(text) is 'An interval setting in seconds.';

create function mixpanel_sync.seconds_text(ms bigint)
returns text
language sql
immutable
set search_path = ''
as $$
  select to_char(ms / 1000.0, 'FM999999990.0') || ' s';
$$;
comment on function mixpanel_sync.seconds_text(bigint) is 'Milliseconds as seconds for people: 72300 -> ''72.3 s''.';

create function mixpanel_sync.last_succeeded_run(source text)
returns mixpanel_sync.sync_runs
language sql
stable
set search_path = ''
as $$
  select * from mixpanel_sync.sync_runs r
  where r.source = last_succeeded_run.source and r.status = 'succeeded'
  order by r.finished_at desc, r.id desc
  limit 1;
$$;
comment on function mixpanel_sync.last_succeeded_run(text) is
  'The run of this source applied last (a row of nulls when there is none).';

------------------------------------------------------------------------------------------
-- The checks: one function each, one row each
------------------------------------------------------------------------------------------

create function mixpanel_sync.health_events_duration()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.duration',
    mixpanel_sync.health_level(r.total_ms / 1000.0,
      mixpanel_sync.setting_seconds('health.events_duration_warn'),
      mixpanel_sync.setting_seconds('health.events_duration_critical')),
    mixpanel_sync.seconds_text(r.total_ms),
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.events_duration_warn'),
      mixpanel_sync.setting('health.events_duration_critical')),
    case when r.id is null then 'no data: no events run has succeeded yet'
      else format('run %s (%s, %s events received) finished %s: staging %s, applying %s',
        r.id, r.mode, r.received, r.finished_at, mixpanel_sync.seconds_text(r.stage_ms), mixpanel_sync.seconds_text(r.apply_ms))
    end
  from mixpanel_sync.last_succeeded_run('events') r;
$$;
comment on function mixpanel_sync.health_events_duration() is
  'sync_health events.duration: how long the last succeeded events run took, start to finish (total_ms).';

create function mixpanel_sync.health_incremental_volume()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.incremental_volume',
    case when r.mode = 'incremental'
      then mixpanel_sync.health_level(r.received, mixpanel_sync.setting('health.incremental_received_warn')::numeric, null)
      else 'ok' end,
    r.received::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.incremental_received_warn'), null),
    case
      when r.id is null then 'no data: no events run has succeeded yet'
      when r.mode = 'full' then format('the last events run (%s) was full: %s', r.id, r.options ->> 'mode_reason')
      else format('events received by incremental run %s (%s to %s)', r.id, r.fetch_from, r.fetch_to)
    end
  from mixpanel_sync.last_succeeded_run('events') r;
$$;
comment on function mixpanel_sync.health_incremental_volume() is
  'sync_health events.incremental_volume: events received by the last events run when it was incremental; '
  'a large number means the loader fetched far more than the window since the watermark.';

create function mixpanel_sync.health_watermark_lag()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.watermark_lag',
    case when w.watermark is null then 'warn'
      else mixpanel_sync.health_level(extract(epoch from now() - w.watermark),
        mixpanel_sync.setting_seconds('health.watermark_lag_warn'),
        mixpanel_sync.setting_seconds('health.watermark_lag_critical')) end,
    justify_interval(date_trunc('second', now() - w.watermark))::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.watermark_lag_warn'),
      mixpanel_sync.setting('health.watermark_lag_critical')),
    case when w.watermark is null then 'never synced: run a first full sync (npm run sync:events -- --full)'
      else format('newest applied event %s, set by run %s at %s', w.watermark, coalesce(w.run_id::text, '(pruned)'), w.updated_at)
    end
  from (select) one
  left join mixpanel_sync.sync_watermarks w on w.source = 'events';
$$;
comment on function mixpanel_sync.health_watermark_lag() is
  'sync_health events.watermark_lag: now() minus the events watermark (the newest applied event time). Grows when runs fail, '
  'stop, or receive nothing new. warn ''never synced'' when there is no watermark.';

create function mixpanel_sync.health_lateness()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.lateness',
    case
      when l.max_ms >= mixpanel_sync.setting_seconds('events.late_lookback') * 1000 then 'critical'
      else mixpanel_sync.health_level(l.beyond_overlap / nullif(l.events, 0)::numeric,
        mixpanel_sync.setting('health.late_share_warn')::numeric, null)
    end,
    case when l.runs > 0 then format('%s of %s (%s%%)', l.beyond_overlap, l.events,
      coalesce(round(100.0 * l.beyond_overlap / nullif(l.events, 0), 1), 0)) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.late_share_warn') || ' of events',
      'one event ' || mixpanel_sync.setting('events.late_lookback') || ' late (events.late_lookback)'),
    case when l.runs = 0 then 'no data: no incremental events run has succeeded yet'
      else format('events later than events.overlap (%s) in the last %s incremental runs; the latest arrived %s after its time '
        '(highest p99 %s)', mixpanel_sync.setting('events.overlap'), l.runs,
        justify_interval(date_trunc('second', l.max_ms * interval '1 millisecond')),
        justify_interval(date_trunc('second', l.p99_ms * interval '1 millisecond')))
    end
  from (
    select count(*) as runs, coalesce(sum((r.lateness ->> 'events')::bigint), 0) as events,
      coalesce(sum((r.lateness ->> 'beyond_overlap')::bigint), 0) as beyond_overlap,
      max((r.lateness ->> 'max_ms')::bigint) as max_ms, max((r.lateness ->> 'p99_ms')::bigint) as p99_ms
    from (
      select r.lateness from mixpanel_sync.sync_runs r
      where r.source = 'events' and r.mode = 'incremental' and r.status = 'succeeded' and r.lateness is not null
      order by r.finished_at desc, r.id desc
      limit mixpanel_sync.setting('health.lateness_runs')::bigint
    ) r
  ) l;
$$;
comment on function mixpanel_sync.health_lateness() is
  'sync_health events.lateness: the share of events that arrived later than events.overlap in the last health.lateness_runs '
  'incremental runs (sync_runs.lateness; a full run reads its whole window whatever the lateness). The late lookback '
  'fetched them: a high share means Mixpanel or the clients deliver late. Critical once one arrived events.late_lookback '
  'late, where incremental runs stop looking.';

create function mixpanel_sync.health_too_old()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'events.too_old',
    mixpanel_sync.health_level(t.too_old, mixpanel_sync.setting('health.too_old_warn')::numeric, null),
    t.too_old::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.too_old_warn'), null),
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
    where r.source = 'events' and r.status = 'succeeded' and r.mode = 'full'
    order by r.finished_at desc, r.id desc
    limit 1
  ) f on true
  cross join lateral (
    select count(*) as runs, coalesce(sum(r.too_old), 0) as too_old
    from mixpanel_sync.sync_runs r
    where r.source = 'events' and r.status = 'succeeded' and r.mode = 'incremental'
      and r.finished_at > coalesce(f.finished_at, '-infinity')
  ) t;
$$;
comment on function mixpanel_sync.health_too_old() is
  'sync_health events.too_old: events that incremental runs since the last full run could not apply because they are '
  'older than the ledger retention (sum of too_old). A full run covers them.';

create function mixpanel_sync.health_profiles_change_detection()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  with compared as (
    -- runs that met existing profiles: only they can find one unchanged (a first load only inserts)
    select r.id, r.finished_at, r.unchanged
    from mixpanel_sync.sync_runs r
    where r.source = 'profiles' and r.status = 'succeeded' and r.updated + r.unchanged > 0
  ), streak as (
    select count(*) as runs, min(c.id) as since_run
    from compared c
    where c.unchanged = 0
      and c.finished_at > coalesce((select max(k.finished_at) from compared k where k.unchanged > 0), '-infinity')
  )
  select 'profiles.change_detection',
    mixpanel_sync.health_level(s.runs, mixpanel_sync.setting('health.profiles_unskipped_runs_warn')::numeric, null),
    s.runs::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.profiles_unskipped_runs_warn') || ' runs', null),
    case
      when not exists (select from compared) then 'no data: no profiles run has met existing profiles yet'
      when s.runs = 0 then 'the last profiles run found unchanged profiles'
      else format('profiles runs in a row since run %s that found every existing profile changed (unchanged = 0): '
        'compare two runs'' profiles for a property that differs every time', s.since_run)
    end
  from streak s;
$$;
comment on function mixpanel_sync.health_profiles_change_detection() is
  'sync_health profiles.change_detection: profiles runs in a row that met existing profiles and found none of them '
  'unchanged. The comparison runs whatever profiles.change_detection says (off only stops it from skipping writes), '
  'so a count here means it sees a change where there is none. Runs that only inserted do not count.';

create function mixpanel_sync.health_failed_runs(source text)
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select health_failed_runs.source || '.failed_runs',
    mixpanel_sync.health_level(count(*), mixpanel_sync.setting('health.failed_runs_warn')::numeric,
      mixpanel_sync.setting('health.failed_runs_critical')::numeric),
    count(*)::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.failed_runs_warn'), mixpanel_sync.setting('health.failed_runs_critical')),
    case when count(*) = 0 then 'no ' || health_failed_runs.source || ' run failed since the last succeeded one'
      else format('failed or abandoned %s runs in a row; last: run %s, %s', health_failed_runs.source,
        (array_agg(r.id order by r.finished_at desc, r.id desc))[1],
        (array_agg(r.error order by r.finished_at desc, r.id desc))[1])
    end
  from mixpanel_sync.sync_runs r
  where r.source = health_failed_runs.source
    and r.status in ('failed', 'abandoned')
    and r.finished_at > coalesce((select s.finished_at from mixpanel_sync.last_succeeded_run(health_failed_runs.source) s), '-infinity');
$$;
comment on function mixpanel_sync.health_failed_runs(text) is
  'sync_health <source>.failed_runs: failed or abandoned runs of the source since its last succeeded run, with the last error.';

create function mixpanel_sync.health_rejected(source text)
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select health_rejected.source || '.rejected',
    case
      when r.rejected >= mixpanel_sync.setting('health.rejected_share_critical')::numeric * r.received and r.rejected > 0
        then 'critical'
      else mixpanel_sync.health_level(r.rejected, mixpanel_sync.setting('health.rejected_warn')::numeric, null)
    end,
    case when r.id is not null then format('%s of %s', r.rejected, r.received) end,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.rejected_warn') || ' rows',
      mixpanel_sync.setting('health.rejected_share_critical') || ' of received'),
    case when r.id is null then format('no data: no %s run has succeeded yet', health_rejected.source)
      when r.rejected = 0 then format('run %s rejected nothing', r.id)
      else format('run %s rejected %s rows: select reason, count(*) from mixpanel_sync.sync_rejects where run_id = %s group by 1',
        r.id, r.rejected, r.id)
    end
  from mixpanel_sync.last_succeeded_run(health_rejected.source) r;
$$;
comment on function mixpanel_sync.health_rejected(text) is
  'sync_health <source>.rejected: rows the last succeeded run of the source could not use (kept in sync_rejects), '
  'as a count (warn) and a share of what it received (critical).';

create function mixpanel_sync.health_running()
returns mixpanel_sync.health_check
language sql
stable
set search_path = ''
as $$
  select 'runs.running',
    mixpanel_sync.health_level(extract(epoch from now() - r.started_at),
      mixpanel_sync.setting_seconds('health.running_warn'), mixpanel_sync.setting_seconds('runs.abandon_after')),
    justify_interval(date_trunc('second', now() - r.started_at))::text,
    mixpanel_sync.health_thresholds(mixpanel_sync.setting('health.running_warn'),
      mixpanel_sync.setting('runs.abandon_after') || ' (runs.abandon_after)'),
    case when r.id is null then 'no run is running'
      else format('run %s (%s, %s) running since %s; if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died'')',
        r.id, r.source, r.mode, r.started_at, r.id)
    end
  from (select) one
  left join lateral (
    select * from mixpanel_sync.sync_runs r where r.status = 'running' order by r.started_at, r.id limit 1
  ) r on true;
$$;
comment on function mixpanel_sync.health_running() is
  'sync_health runs.running: the oldest run still running. Critical once past runs.abandon_after: the next begin_run '
  'marks it abandoned, so none has started since.';

create function mixpanel_sync.sync_health()
returns table ("check" text, status text, value text, threshold text, detail text)
language sql
stable
set search_path = ''
as $$
  select (c.result).* from (
    select 1 as position, mixpanel_sync.health_events_duration() as result
    union all select 2, mixpanel_sync.health_incremental_volume()
    union all select 3, mixpanel_sync.health_watermark_lag()
    union all select 4, mixpanel_sync.health_lateness()
    union all select 5, mixpanel_sync.health_too_old()
    union all select 6, mixpanel_sync.health_failed_runs('events')
    union all select 7, mixpanel_sync.health_rejected('events')
    union all select 8, mixpanel_sync.health_profiles_change_detection()
    union all select 9, mixpanel_sync.health_failed_runs('profiles')
    union all select 10, mixpanel_sync.health_rejected('profiles')
    union all select 11, mixpanel_sync.health_running()
  ) c
  order by c.position;
$$;
comment on function mixpanel_sync.sync_health() is
  'Health of the sync, one row per check: status ok|warn|critical, the value measured, the thresholds (health.* rows in '
  'sync_settings) and a detail. select * from mixpanel_sync.sync_health(); see docs/operations.md.';
