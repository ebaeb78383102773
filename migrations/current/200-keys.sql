-- 200-keys: project_id leads every per-project key (docs/projects.md §5.2, §5.3 and §5.12).
--   * Per-user tables (events_daily, event_ledger, event_ledger_legacy, subscribers, subscriber_properties,
--     identity_links, cohorts, cohort_members) get project_id smallint not null, first in every key and index. No
--     foreign key to projects: it would cost a probe per written row (and a reference table under Citus).
--     events_daily is rebuilt once so that project_id sits next to day (2 + 4 bytes before the texts: no padding);
--     the others get it as their last column. event_ledger stays partitioned by day alone.
--   * Bookkeeping: sync_runs, sync_watermarks, spot_checks, sync_settings and subscriber_count get project_id (a
--     foreign key to projects). Run ids stay global, so run_events, sync_rejects and staged_* get no column: their
--     project is their run's. One running run per (project, source); watermarks and the subscriber count per project.
--   * Settings: sync_setting_defaults (key, value, kind, description) holds the defaults, filled from the literal
--     list below (not from an installation's customised rows); sync_settings holds the values per project
--     (project_id, key, value, kind) and loses its description.
--   * Existing rows become project 1 ('default'): the column is added with default 1, then the default is dropped,
--     so that no later insert lands in project 1 silently.
-- Idempotent: the table changes run once, when sync_runs has no project_id yet; the comments, the view and the
-- defaults' rows are written on every run (the same text: no change).

create table if not exists mixpanel_sync.sync_setting_defaults (
  key text not null,
  value text not null,
  kind text not null,
  description text not null,
  constraint sync_setting_defaults_pkey primary key (key),
  constraint sync_setting_defaults_key_kind_key unique (key, kind),
  constraint sync_setting_defaults_kind_check check (kind in ('interval', 'interval_or_forever', 'integer', 'numeric', 'ratio', 'on_off', 'set_loop', 'identity_mode', 'event_names')),
  constraint sync_setting_defaults_value_valid check (mixpanel_sync.setting_value_is_valid(kind, value))
);
comment on table mixpanel_sync.sync_setting_defaults is 'Every setting: its kind, its description and the value a new project starts with (create_project copies them into sync_settings). A migration that adds a setting inserts its row here, then one sync_settings row per project. Change a project''s value in sync_settings, not here.';
comment on constraint sync_setting_defaults_kind_check on mixpanel_sync.sync_setting_defaults is 'The kinds mixpanel_sync.setting_value_is_valid knows.';
alter table mixpanel_sync.sync_setting_defaults enable row level security;
do $policies$
begin
  if not exists (select from pg_catalog.pg_policies p where p.schemaname = 'mixpanel_sync' and p.tablename = 'sync_setting_defaults') then
    create policy mixpanel_sync_loader_read on mixpanel_sync.sync_setting_defaults as permissive for select to mixpanel_sync_loader using (true);
  end if;
end
$policies$;
comment on policy mixpanel_sync_loader_read on mixpanel_sync.sync_setting_defaults is 'The loader reads the settings'' descriptions; only the owner (the DBA) changes them.';
revoke all on table mixpanel_sync.sync_setting_defaults from public;
grant select on table mixpanel_sync.sync_setting_defaults to mixpanel_sync_loader;

insert into mixpanel_sync.sync_setting_defaults (key, value, kind, description) values
  ('events.full_window', '45 days', 'interval', 'A full run replaces this many whole UTC days, ending with the day of the run''s clock.'),
  ('events.incremental', 'on', 'on_off', 'on: incremental runs from the watermark. off: every run is a full run over events.full_window.'),
  ('events.late_lookback', '5 days', 'interval', 'How far before fetch_from an incremental run looks for late-arriving events (by mp_processing_time_ms).'),
  ('events.ledger_retention', '7 days', 'interval', 'How long the ledger remembers applied events, in whole UTC days ending with the run''s day (default 7 days: events.overlap + events.late_lookback + a margin). An incremental run (ADD) can deduplicate only events of these days: an older event is counted too_old, not applied, and the next full run (REPLACE over events.full_window) counts it. A watermark older than this makes the next run full. REPLACE rebuilds events_daily for its whole window whatever this is.'),
  ('events.only', '[]', 'event_names', 'Which events runs sync: a JSON array of event names, e.g. ["Sign Up", "Purchase"]; [] (the default) syncs every event. Events of other names are skipped (counted not_selected), the Export API is asked for just these names, and a full run (REPLACE) clears only these names in its window: data of other names is kept. One run may choose its own names: begin_run(..., events => array[...]) (CLI: --event NAME). A name added later starts with a resync of its history (CLI: --resync-from DAY --event NAME); a name removed keeps its data until deleted with mixpanel_sync.forget_event_names(array[NAME]).'),
  ('events.overlap', '2 hours', 'interval', 'Incremental runs start this long before the watermark. Re-read events are counted as duplicates, never twice.'),
  ('events.raw_retention', '45 days', 'interval_or_forever', 'With events.store_raw = on: how long the ledger keeps raw events, in whole UTC days ending with the run''s day, or ''forever''. Whole day partitions older than the longer of this and events.ledger_retention are dropped by finish_run. What an incremental run can deduplicate (too_old) still follows events.ledger_retention.'),
  ('events.replace_guard_min_events', '100', 'integer', 'REPLACE guard: a UTC day of a full run''s window holding at least this many events is guarded: the run is refused (MP001) when it would keep less than events.replace_guard_ratio of them. Override for one run: begin_run(..., allow_shrink => true), CLI --allow-shrink.'),
  ('events.replace_guard_ratio', '0.5', 'ratio', 'REPLACE guard: the share of a guarded day''s stored events a full run must keep (0 to 1; 0 turns the per-day check off). A full run with no usable event over a window that holds events is always refused without allow_shrink.'),
  ('events.store_raw', 'off', 'on_off', 'Keep every event''s raw content in the ledger (event_ledger.insert_id, processing_time_ms, properties; read it through the view mixpanel_sync.raw_events): on | off. When on, a full run writes ledger rows for its whole window (not only the ledger retention''s days), events with no distinct_id (counted no_user) are kept too under distinct_id '''' (shown as null by raw_events), and the ledger keeps events.raw_retention days. Takes effect on the next run; a full run fills in the properties of events stored while it was off.'),
  ('events.upsert_path', 'set', 'set_loop', 'set: set-based REPLACE/ADD (fast). loop: the row-at-a-time reference implementations (rollback path).'),
  ('health.events_duration_critical', '10 minutes', 'interval', 'sync_health events.duration: critical when the last events run took at least this long (runs start to overlap).'),
  ('health.events_duration_warn', '60 seconds', 'interval', 'sync_health events.duration: warn when the last events run took at least this long (total_ms).'),
  ('health.failed_runs_critical', '3', 'integer', 'sync_health <source>.failed_runs: critical after this many failed or abandoned runs in a row.'),
  ('health.failed_runs_warn', '1', 'integer', 'sync_health <source>.failed_runs: warn after this many failed or abandoned runs in a row.'),
  ('health.incremental_received_warn', '50000', 'integer', 'sync_health events.incremental_volume: warn when the last incremental run received at least this many events (is incremental mode working?).'),
  ('health.incremental_runs', '10', 'integer', 'sync_health events.incremental_typical: how many recent incremental events runs to look at.'),
  ('health.incremental_typical_warn', '10000', 'integer', 'sync_health events.incremental_typical: warn when the median incremental run of the recent ones received at least this many events (the plan: events per sync under 10K).'),
  ('health.late_share_warn', '0.05', 'numeric', 'sync_health events.lateness: warn when at least this share of the recent runs'' events arrived later than events.overlap (0.05 = 5%; critical when one arrived events.late_lookback late: incremental runs may miss such events).'),
  ('health.lateness_runs', '10', 'integer', 'sync_health events.lateness: how many recent incremental events runs to look at.'),
  ('health.profiles_duration_critical', '10 minutes', 'interval', 'sync_health profiles.duration: critical when the last profiles run took at least this long.'),
  ('health.profiles_duration_warn', '30 seconds', 'interval', 'sync_health profiles.duration: warn when the last profiles run took at least this long (the plan: properties sync under 30 s).'),
  ('health.profiles_skip_share_warn', '0.70', 'numeric', 'sync_health profiles.skip_rate: warn when the last profiles run that met existing profiles skipped less than this share of them as unchanged (the plan: 70-90% skipped).'),
  ('health.profiles_unskipped_runs_warn', '3', 'integer', 'sync_health profiles.change_detection: warn after this many profiles runs in a row that found no existing profile unchanged (is change detection working?).'),
  ('health.rejected_share_critical', '0.01', 'numeric', 'sync_health <source>.rejected: critical when the last run rejected at least this share of what it received (0.01 = 1%).'),
  ('health.rejected_warn', '1', 'integer', 'sync_health <source>.rejected: warn when the last run rejected at least this many rows.'),
  ('health.running_warn', '30 minutes', 'interval', 'sync_health runs.running: warn when a run has been running this long (critical once past runs.abandon_after).'),
  ('health.subscribers_drop_critical', '0.01', 'numeric', 'sync_health events.subscribers: critical when an events run lost at least this share of the subscribers (0.01 = 1%).'),
  ('health.subscribers_growth_warn', '0.50', 'numeric', 'sync_health events.subscribers: warn when an events run grew the number of subscribers by more than this share over the previous run (0.50 = 50%). Any fall warns; a fall of health.subscribers_drop_critical is critical.'),
  ('health.timezone_min_events', '20', 'integer', 'sync_health events.timezone: the recent runs must hold at least this many events before it judges.'),
  ('health.timezone_skew_warn', '1 hour', 'interval', 'sync_health events.timezone: warn when the median event of the recent runs is at least this far from its mp_processing_time_ms beyond what the configured project timezone explains (export times in local time).'),
  ('health.too_old_warn', '1', 'integer', 'sync_health events.too_old: warn when incremental runs since the last full run skipped at least this many events as too old.'),
  ('health.watermark_lag_critical', '24 hours', 'interval', 'sync_health events.watermark_lag: critical when the watermark is at least this old.'),
  ('health.watermark_lag_warn', '6 hours', 'interval', 'sync_health events.watermark_lag: warn when the newest applied event (the watermark) is at least this old.'),
  ('health.watermark_stalled_warn', '6 hours', 'interval', 'sync_health events.watermark_stalled: warn when runs kept succeeding for at least this long (by their clocks, fetch_to) without moving the events watermark (the plan: watermark not advancing for 6 h).'),
  ('identity.mode', 'off', 'identity_mode', 'Mixpanel ID Merge of the project (Project Settings > Identity Merge): off (distinct_ids taken as they come), simplified (Simplified ID Merge: an event with $device_id and $user_id joins $device:<device_id> to the user), original (Original ID Merge: $identify, $create_alias, $merge). Switching on: see the README, "Identity merge".'),
  ('profiles.change_detection', 'on', 'on_off', 'on: unchanged profiles are not written. off: every profile is written (the original behaviour).'),
  ('runs.abandon_after', '2 hours', 'interval', 'A run still running after this long is marked abandoned (its loader is presumed dead) and its staged rows dropped.'),
  ('runs.heartbeat_timeout', '2 minutes', 'interval', 'A running run whose loader sent a heartbeat (heartbeat_run) within this interval is alive, even when the server session of its begin_run is gone (through a transaction pooler such as pgbouncer that session may be closed while the loader works on another): begin_run abandons it only once its owner session is gone AND its heartbeat is older than this. Keep it well above the loader''s heartbeat interval (30 s).'),
  ('runs.retention', '90 days', 'interval', 'Finished runs and their rejects older than this are pruned.')
on conflict (key) do nothing;

-- The rebuild below copies every per-user row once, under locks taken up front (lock_timeout still 5 s): its time
-- grows with the tables (≈ 130k rows/s measured for a key rebuild, so about an hour for 450M rows), and a timeout
-- would only throw that work away with the locks held all along. Unbounded for this statement; plan a window for it.
set local statement_timeout = 0;
do $keys$
begin
  if exists (select from pg_catalog.pg_attribute a
      where a.attrelid = 'mixpanel_sync.sync_runs'::regclass and a.attname = 'project_id' and not a.attisdropped) then
    return;
  end if;

  -- events_daily: rebuilt with project_id next to day (the 000009 way: created in the new order, rows copied, the old
  -- table dropped, the new one renamed, its constraints, index, policies and grants re-created). Nothing depends on
  -- its row type.
  lock table mixpanel_sync.events_daily in access exclusive mode;
  create table mixpanel_sync.events_daily_keyed (
    event_count bigint constraint events_daily_event_count_not_null not null,
    first_at timestamptz constraint events_daily_first_at_not_null not null,
    last_at timestamptz constraint events_daily_last_at_not_null not null,
    day date constraint events_daily_day_not_null not null,
    project_id smallint constraint events_daily_project_id_not_null not null,
    distinct_id text collate "C" constraint events_daily_distinct_id_not_null not null,
    event_name text collate "C" constraint events_daily_event_name_not_null not null
  );
  insert into mixpanel_sync.events_daily_keyed (event_count, first_at, last_at, day, project_id, distinct_id, event_name)
  select d.event_count, d.first_at, d.last_at, d.day, 1, d.distinct_id, d.event_name
  from mixpanel_sync.events_daily d
  order by d.distinct_id, d.day, d.event_name;
  drop table mixpanel_sync.events_daily;
  alter table mixpanel_sync.events_daily_keyed rename to events_daily;
  alter table mixpanel_sync.events_daily
    add constraint events_daily_event_count_check check (event_count > 0),
    add constraint events_daily_pkey primary key (project_id, distinct_id, day, event_name);
  create index events_daily_day_idx on mixpanel_sync.events_daily using btree (project_id, day);
  alter table mixpanel_sync.events_daily enable row level security;
  create policy mixpanel_sync_loader_all on mixpanel_sync.events_daily as permissive for all to mixpanel_sync_loader using (true) with check (true);
  create policy mixpanel_sync_reader_read on mixpanel_sync.events_daily as permissive for select to mixpanel_sync_reader using (true);
  grant delete, insert, select, truncate, update on table mixpanel_sync.events_daily to mixpanel_sync_loader;
  grant select on table mixpanel_sync.events_daily to mixpanel_sync_reader;
  analyze mixpanel_sync.events_daily;

  -- The ledger (partitioned by day: the column and the key reach every partition).
  alter table mixpanel_sync.event_ledger add column project_id smallint not null default 1;
  alter table mixpanel_sync.event_ledger alter column project_id drop default;
  alter table mixpanel_sync.event_ledger drop constraint event_ledger_pkey;
  alter table mixpanel_sync.event_ledger add constraint event_ledger_pkey primary key (project_id, distinct_id, event_key, day);

  alter table mixpanel_sync.event_ledger_legacy add column project_id smallint not null default 1;
  alter table mixpanel_sync.event_ledger_legacy alter column project_id drop default;
  alter table mixpanel_sync.event_ledger_legacy drop constraint event_ledger_legacy_pkey,
    add constraint event_ledger_legacy_pkey primary key (project_id, distinct_id, event_key);
  drop index mixpanel_sync.event_ledger_legacy_day_idx;
  create index event_ledger_legacy_day_idx on mixpanel_sync.event_ledger_legacy using btree (project_id, day);

  alter table mixpanel_sync.subscribers add column project_id smallint not null default 1;
  alter table mixpanel_sync.subscribers alter column project_id drop default;
  alter table mixpanel_sync.subscribers drop constraint subscribers_pkey,
    add constraint subscribers_pkey primary key (project_id, distinct_id);

  alter table mixpanel_sync.subscriber_properties add column project_id smallint not null default 1;
  alter table mixpanel_sync.subscriber_properties alter column project_id drop default;
  alter table mixpanel_sync.subscriber_properties drop constraint subscriber_properties_pkey,
    add constraint subscriber_properties_pkey primary key (project_id, distinct_id);

  alter table mixpanel_sync.identity_links add column project_id smallint not null default 1;
  alter table mixpanel_sync.identity_links alter column project_id drop default;
  alter table mixpanel_sync.identity_links drop constraint identity_links_canonical_fkey;
  alter table mixpanel_sync.identity_links drop constraint identity_links_pkey,
    add constraint identity_links_pkey primary key (project_id, alias);
  alter table mixpanel_sync.identity_links add constraint identity_links_canonical_fkey
    foreign key (project_id, canonical) references mixpanel_sync.identity_links (project_id, alias);
  drop index mixpanel_sync.identity_links_canonical_idx;
  create index identity_links_canonical_idx on mixpanel_sync.identity_links using btree (project_id, canonical);

  alter table mixpanel_sync.cohort_members drop constraint cohort_members_cohort_id_fkey;
  alter table mixpanel_sync.cohorts add column project_id smallint not null default 1;
  alter table mixpanel_sync.cohorts alter column project_id drop default;
  alter table mixpanel_sync.cohorts drop constraint cohorts_pkey,
    add constraint cohorts_pkey primary key (project_id, cohort_id);
  alter table mixpanel_sync.cohort_members add column project_id smallint not null default 1;
  alter table mixpanel_sync.cohort_members alter column project_id drop default;
  alter table mixpanel_sync.cohort_members drop constraint cohort_members_pkey,
    add constraint cohort_members_pkey primary key (project_id, cohort_id, distinct_id);
  alter table mixpanel_sync.cohort_members add constraint cohort_members_cohort_id_fkey
    foreign key (project_id, cohort_id) references mixpanel_sync.cohorts (project_id, cohort_id) on delete cascade;
  drop index mixpanel_sync.cohort_members_distinct_id_idx;
  create index cohort_members_distinct_id_idx on mixpanel_sync.cohort_members using btree (project_id, distinct_id);

  -- Bookkeeping.
  alter table mixpanel_sync.sync_runs add column project_id smallint not null default 1
    constraint sync_runs_project_id_fkey references mixpanel_sync.projects (id);
  alter table mixpanel_sync.sync_runs alter column project_id drop default;
  drop index mixpanel_sync.sync_runs_one_running_per_source_idx;
  create unique index sync_runs_one_running_per_source_idx on mixpanel_sync.sync_runs using btree (project_id, source)
    where status = 'running';
  drop index mixpanel_sync.sync_runs_source_started_at_idx;
  create index sync_runs_source_started_at_idx on mixpanel_sync.sync_runs using btree (project_id, source, started_at desc);

  alter table mixpanel_sync.sync_watermarks add column project_id smallint not null default 1
    constraint sync_watermarks_project_id_fkey references mixpanel_sync.projects (id);
  alter table mixpanel_sync.sync_watermarks alter column project_id drop default;
  alter table mixpanel_sync.sync_watermarks drop constraint sync_watermarks_pkey,
    add constraint sync_watermarks_pkey primary key (project_id, source);

  alter table mixpanel_sync.spot_checks add column project_id smallint not null default 1
    constraint spot_checks_project_id_fkey references mixpanel_sync.projects (id);
  alter table mixpanel_sync.spot_checks alter column project_id drop default;

  alter table mixpanel_sync.subscriber_count add column project_id smallint not null default 1
    constraint subscriber_count_project_id_fkey references mixpanel_sync.projects (id);
  alter table mixpanel_sync.subscriber_count alter column project_id drop default;
  alter table mixpanel_sync.subscriber_count drop constraint subscriber_count_pkey;
  alter table mixpanel_sync.subscriber_count drop column id;
  alter table mixpanel_sync.subscriber_count add constraint subscriber_count_pkey primary key (project_id);

  -- Settings: the values of project 1 are the installation's rows (customised ones kept); a row whose key is no
  -- setting any more is dropped, a setting without a row gets its default.
  alter table mixpanel_sync.sync_settings add column project_id smallint not null default 1
    constraint sync_settings_project_id_fkey references mixpanel_sync.projects (id);
  alter table mixpanel_sync.sync_settings alter column project_id drop default;
  delete from mixpanel_sync.sync_settings s
  where not exists (select from mixpanel_sync.sync_setting_defaults d where d.key = s.key and d.kind = s.kind);
  insert into mixpanel_sync.sync_settings (project_id, key, value, kind, description)
  select 1, d.key, d.value, d.kind, d.description from mixpanel_sync.sync_setting_defaults d
  where not exists (select from mixpanel_sync.sync_settings s where s.key = d.key);
  alter table mixpanel_sync.sync_settings drop constraint sync_settings_pkey,
    add constraint sync_settings_pkey primary key (project_id, key);
  alter table mixpanel_sync.sync_settings drop column description;
  alter table mixpanel_sync.sync_settings add constraint sync_settings_key_kind_fkey
    foreign key (key, kind) references mixpanel_sync.sync_setting_defaults (key, kind);
end
$keys$;
-- the later files define functions only: back to the migration's bound
set local statement_timeout = '10min';

comment on table mixpanel_sync.events_daily is 'Event counts per project, user, UTC day and event name: the grain at which REPLACE and ADD are both exact.';
comment on column mixpanel_sync.events_daily.project_id is 'The project (mixpanel_sync.projects.id); it leads the key.';
comment on policy mixpanel_sync_loader_all on mixpanel_sync.events_daily is 'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.';
comment on policy mixpanel_sync_reader_read on mixpanel_sync.events_daily is 'The reader sees every row of the aggregates and profiles; RLS is on only so that roles without a policy see nothing.';
comment on column mixpanel_sync.event_ledger.project_id is 'The project (mixpanel_sync.projects.id); it leads the key. The day partitions are shared by every project.';
comment on column mixpanel_sync.event_ledger_legacy.project_id is 'The project (mixpanel_sync.projects.id); it leads the key.';
comment on column mixpanel_sync.subscribers.project_id is 'The project (mixpanel_sync.projects.id); it leads the key.';
comment on column mixpanel_sync.subscriber_properties.project_id is 'The project (mixpanel_sync.projects.id); it leads the key.';
comment on column mixpanel_sync.identity_links.project_id is 'The project (mixpanel_sync.projects.id); it leads the key: each project has its own identity map.';
comment on column mixpanel_sync.cohorts.project_id is 'The project (mixpanel_sync.projects.id); it leads the key: cohort ids may repeat across projects.';
comment on column mixpanel_sync.cohort_members.project_id is 'The project (mixpanel_sync.projects.id); it leads the key.';
comment on column mixpanel_sync.sync_runs.project_id is 'The project the run belongs to. Run ids are global: run_events, sync_rejects and the staging tables belong to their run''s project.';
comment on index mixpanel_sync.sync_runs_one_running_per_source_idx is 'At most one running run per project and source: two begin_run calls racing for the same source of a project cannot both start (MP002).';
comment on column mixpanel_sync.sync_watermarks.project_id is 'The project (mixpanel_sync.projects.id); one watermark per project and source.';
comment on column mixpanel_sync.spot_checks.project_id is 'The project whose data the spot-check compared.';
comment on table mixpanel_sync.subscriber_count is 'One row per project: the number of its rows in mixpanel_sync.subscribers, kept exactly by the statement triggers of subscribers (mixpanel_sync.count_subscribers), so that a run''s recorded count (options.subscribers) costs one row read instead of a scan. Per project, so that two projects'' finishes never wait on one row.';
comment on column mixpanel_sync.subscriber_count.project_id is 'The project (mixpanel_sync.projects.id).';
comment on column mixpanel_sync.subscriber_count.subscribers is 'count(*) of the project''s rows of mixpanel_sync.subscribers as of this transaction.';
comment on table mixpanel_sync.sync_settings is 'Tunables and rollback switches, one row per project and setting (kinds and descriptions: sync_setting_defaults). Each takes effect on the next run of its project; values are checked on write. update mixpanel_sync.sync_settings set value = ''14 days'' where project_id = mixpanel_sync.project_id(''eu_app'') and key = ''events.ledger_retention'';';
comment on column mixpanel_sync.sync_settings.project_id is 'The project (mixpanel_sync.projects.id) the value is for.';

-- The raw events, with their project (a column added at the end: create or replace keeps the view's other columns).
create or replace view mixpanel_sync.raw_events with (security_invoker = true) as
select l.distinct_id, l.event_name, l.event_time, l.day, l.insert_id,
  l.processing_time_ms as mp_processing_time_ms, l.properties, l.event_key, l.run_id, l.project_id
from mixpanel_sync.event_ledger l
where l.properties is not null and l.distinct_id <> ''
union all
select null::text collate "C" as distinct_id, l.event_name, l.event_time, l.day, l.insert_id,
  l.processing_time_ms as mp_processing_time_ms, l.properties, l.event_key, l.run_id, l.project_id
from mixpanel_sync.event_ledger l
where l.properties is not null and l.distinct_id = '';
comment on view mixpanel_sync.raw_events is 'The raw events kept with events.store_raw = on: one row per distinct event (deduplicated like the aggregates: by project, distinct_id and event_key), with its $insert_id, mp_processing_time_ms, whole properties and project_id. distinct_id is null for events with no distinct_id (counted no_user, not in events_daily). Filter on project_id and day to read only the rows and partitions needed; README "Raw events" has recipes.';
