-- 650-project-status: one row per project for psql (docs/projects.md §5.4): its region, timezone and Mixpanel project
-- id, its watermarks, the last run of each source and the worst status of its sync_health. Idempotent: create or
-- replace (the same columns).
create or replace view mixpanel_sync.project_status with (security_invoker = true) as
select p.id as project_id, p.name, p.region, p.timezone, p.mixpanel_project_id,
  we.watermark as events_watermark, we.processing_watermark as events_processing_watermark,
  wp.watermark as profiles_watermark,
  le.id as last_events_run, le.status as last_events_status, le.finished_at as last_events_finished_at,
  lp.id as last_profiles_run, lp.status as last_profiles_status, lp.finished_at as last_profiles_finished_at,
  lc.id as last_cohorts_run, lc.status as last_cohorts_status, lc.finished_at as last_cohorts_finished_at,
  h.worst as health
from mixpanel_sync.projects p
left join mixpanel_sync.sync_watermarks we on we.project_id = p.id and we.source = 'events'
left join mixpanel_sync.sync_watermarks wp on wp.project_id = p.id and wp.source = 'profiles'
left join lateral (
  select r.id, r.status, r.finished_at from mixpanel_sync.sync_runs r
  where r.project_id = p.id and r.source = 'events' order by r.started_at desc, r.id desc limit 1
) le on true
left join lateral (
  select r.id, r.status, r.finished_at from mixpanel_sync.sync_runs r
  where r.project_id = p.id and r.source = 'profiles' order by r.started_at desc, r.id desc limit 1
) lp on true
left join lateral (
  select r.id, r.status, r.finished_at from mixpanel_sync.sync_runs r
  where r.project_id = p.id and r.source = 'cohorts' order by r.started_at desc, r.id desc limit 1
) lc on true
cross join lateral (
  select (array['ok', 'warn', 'critical'])[1 + coalesce(max(case s.status when 'critical' then 2 when 'warn' then 1 else 0 end), 0)] as worst
  from mixpanel_sync.sync_health(p.name) s
) h;
comment on view mixpanel_sync.project_status is 'One row per project: region, timezone, Mixpanel project id, the events and profiles watermarks, the last run of each source (id, status, finished_at) and health, the worst status of its sync_health (ok, warn, critical). select * from mixpanel_sync.project_status; the checks themselves: select * from mixpanel_sync.sync_health_all() where status <> ''ok''.';
revoke all on table mixpanel_sync.project_status from public;
grant select on table mixpanel_sync.project_status to mixpanel_sync_loader;
