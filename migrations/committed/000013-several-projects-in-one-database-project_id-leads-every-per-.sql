--! Previous: sha1:8fd6f8d6187a1304d23dee1612881ba196976db7
--! Hash: sha1:1d1943a51826e7be4d681c575207f53a12d81dff
--! Message: Several projects in one database: project_id leads every per-project key, settings, runs and locks per project, create_project, drop_project, project_status

--! split: 010-timeouts.sql
-- The first file of the current migration: its limits hold for every later file too (graphile-migrate runs the
-- migration as one transaction). The table changes after it take locks a running sync's statements hold: they give up
-- after 5 s (rerun `npm run migrate`) instead of queueing every reader behind them.
set local lock_timeout = '5s';
set local statement_timeout = '10min';

--! split: 100-projects-table.sql
-- 100-projects-table: several Mixpanel projects in one database (issue 13 part 3, docs/projects.md §5.1 and §5.12).
-- A project key leads every per-project key: mixpanel_sync.projects holds one row per project, and every per-project
-- table gains project_id smallint (200-keys.sql). An existing installation becomes project 1, named 'default'.
-- Idempotent: the table and its row are created only when missing; the identity's sequence is moved past the highest
-- id on every run (a no-op once it is).

create table if not exists mixpanel_sync.projects (
  -- squawk-ignore prefer-bigint-over-smallint -- a project key, not a row counter: 32,767 projects, and a smallint fits into the per-user rows' alignment padding (docs/projects.md §3)
  id smallint generated always as identity,
  name text collate "C" not null,
  mixpanel_project_id bigint,
  region text not null default 'us',
  timezone text,
  created_at timestamptz not null default now(),
  constraint projects_pkey primary key (id),
  constraint projects_name_key unique (name),
  constraint projects_mixpanel_project_id_key unique (mixpanel_project_id),
  constraint projects_name_check check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
  constraint projects_region_check check (region in ('us', 'eu', 'in'))
);
comment on table mixpanel_sync.projects is 'The Mixpanel projects this database holds, one row each (docs/projects.md). Every per-project table has project_id, which leads its keys: one project''s runs never touch another''s rows. Created with mixpanel_sync.create_project, removed with mixpanel_sync.drop_project; a function that takes a project name resolves it with mixpanel_sync.project_id (null: the only project).';
comment on column mixpanel_sync.projects.id is 'The project key (smallint: it fits into alignment padding of the per-user rows). Project 1, ''default'', holds an installation''s data from before projects.';
comment on column mixpanel_sync.projects.name is 'The database-side name (CLI --project, MIXPANEL_PROJECT): lower-case letters, digits and _, starting with a letter, at most 63 characters.';
comment on column mixpanel_sync.projects.mixpanel_project_id is 'Mixpanel''s project id; null until the first run records it (begin_run''s mixpanel_project_id). A run of another Mixpanel project is refused (MP004): Mixpanel project X is never loaded into project Y''s rows.';
comment on column mixpanel_sync.projects.region is 'The project''s data residency: us, eu or in (the API host the loader uses).';
comment on column mixpanel_sync.projects.timezone is 'The project''s timezone (an IANA name) for projects that export local time; null = UTC. begin_run uses it when it is given no project_timezone.';
comment on column mixpanel_sync.projects.created_at is 'When the project was created (project 1: when the installation was upgraded).';
alter table mixpanel_sync.projects enable row level security;
do $policies$
begin
  if not exists (select from pg_catalog.pg_policies p where p.schemaname = 'mixpanel_sync' and p.tablename = 'projects') then
    create policy mixpanel_sync_loader_read on mixpanel_sync.projects as permissive for select to mixpanel_sync_loader using (true);
    create policy mixpanel_sync_reader_read on mixpanel_sync.projects as permissive for select to mixpanel_sync_reader using (true);
    create policy mixpanel_sync_loader_record_id on mixpanel_sync.projects as permissive for update to mixpanel_sync_loader using (true) with check (true);
  end if;
end
$policies$;
comment on policy mixpanel_sync_loader_read on mixpanel_sync.projects is 'The loader reads the projects (region, timezone, Mixpanel project id); only the owner (the DBA) creates and drops them, through create_project and drop_project, and begin_run records mixpanel_project_id.';
comment on policy mixpanel_sync_loader_record_id on mixpanel_sync.projects is 'begin_run records the Mixpanel project id of a project''s first run (the loader may update that column only).';
comment on policy mixpanel_sync_reader_read on mixpanel_sync.projects is 'The reader sees every project: RLS is on only so that roles without a policy see nothing.';
revoke all on table mixpanel_sync.projects from public;
grant select on table mixpanel_sync.projects to mixpanel_sync_loader;
grant update (mixpanel_project_id) on table mixpanel_sync.projects to mixpanel_sync_loader;
grant select on table mixpanel_sync.projects to mixpanel_sync_reader;

insert into mixpanel_sync.projects (id, name) overriding system value values (1, 'default') on conflict do nothing;
select pg_catalog.setval(pg_catalog.pg_get_serial_sequence('mixpanel_sync.projects', 'id'),
  (select max(p.id) from mixpanel_sync.projects p));

--! split: 200-keys.sql
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

--! split: 300-settings-and-projects.sql
-- 300-settings-and-projects: the functions that name a project (docs/projects.md §5.1, §5.3, §5.4).
--   * mixpanel_sync.project_id(name): a project's id by name; null = the only project (MP004 with several, or for an
--     unknown name, the names in the hint). Entry points resolve their trailing `project text default null` with it.
--   * create_project / drop_project: for the DBA (revoked from the loader, like forget_event_names).
--   * The settings helpers take a leading project_id smallint: setting, setting_seconds, store_raw, identity_mode,
--     and the new storage_horizon (the first day the ledger keeps for a project, finish_events_run's store_from).
-- Idempotent: the old signatures are dropped if they exist, the new ones created or replaced.

create or replace function mixpanel_sync.project_id(name text default null)
 returns smallint
 language plpgsql
 stable
 set search_path to ''
as $function$
declare
  found_id smallint;
  projects bigint;
  chosen text := coalesce(project_id.name, nullif(pg_catalog.current_setting('mixpanel_sync.project', true), ''));
begin
  if chosen is null then
    select count(*), min(p.id) into projects, found_id from mixpanel_sync.projects p;
    if projects = 1 then
      return found_id;
    end if;
    raise exception 'this database holds % projects: name one', projects
      using errcode = 'MP004',
        hint = format('one of: %s (CLI: --project NAME or MIXPANEL_PROJECT=NAME; psql: the function''s project argument, or set mixpanel_sync.project = ''NAME'' for the session)',
          (select string_agg(p.name, ', ' order by p.name) from mixpanel_sync.projects p));
  end if;
  select p.id into found_id from mixpanel_sync.projects p where p.name = chosen;
  if not found then
    raise exception 'unknown project %', quote_literal(chosen)
      using errcode = 'MP004',
        hint = format('one of: %s; a new one: select mixpanel_sync.create_project(''%s'')',
          (select string_agg(p.name, ', ' order by p.name) from mixpanel_sync.projects p), chosen);
  end if;
  return found_id;
end;
$function$;
comment on function mixpanel_sync.project_id(name text) is 'The id of the project of this name (mixpanel_sync.projects); null: the session''s project (the setting mixpanel_sync.project, e.g. set mixpanel_sync.project = ''eu_app'' in psql, or PGOPTIONS=''-c mixpanel_sync.project=eu_app''; this is how verify/*.sql runs per project), else the only project. Raises MP004 for an unknown name, or for null when the database holds several projects, listing the names in the hint. Stable: usable in an index condition, e.g. where project_id = mixpanel_sync.project_id(''eu_app'').';
grant execute on function mixpanel_sync.project_id(name text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.setting(text);
create or replace function mixpanel_sync.setting(project_id smallint, key text)
 returns text
 language plpgsql
 stable
 set search_path to ''
as $function$
declare
  found_value text;
begin
  select s.value into found_value from mixpanel_sync.sync_settings s
  where s.project_id = setting.project_id and s.key = setting.key;
  if found_value is null then
    raise exception 'unknown setting "%" of project %: see select key, value from mixpanel_sync.sync_settings where project_id = %',
      setting.key, setting.project_id, setting.project_id
      using errcode = 'undefined_object', hint = 'the settings are the keys of mixpanel_sync.sync_setting_defaults';
  end if;
  return found_value;
end;
$function$;
comment on function mixpanel_sync.setting(project_id smallint, key text) is 'The value of one sync_settings row of a project (one primary key probe); raises for an unknown key.';
grant execute on function mixpanel_sync.setting(project_id smallint, key text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.setting_seconds(text);
create or replace function mixpanel_sync.setting_seconds(project_id smallint, key text)
 returns numeric
 language sql
 stable
 set search_path to ''
as $function$
  select extract(epoch from mixpanel_sync.setting(setting_seconds.project_id, setting_seconds.key)::interval);
$function$;
comment on function mixpanel_sync.setting_seconds(project_id smallint, key text) is 'An interval setting of a project in seconds.';
grant execute on function mixpanel_sync.setting_seconds(project_id smallint, key text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.store_raw();
create or replace function mixpanel_sync.store_raw(project_id smallint)
 returns boolean
 language sql
 stable
 set search_path to ''
as $function$
  select coalesce((select s.value from mixpanel_sync.sync_settings s
    where s.project_id = store_raw.project_id and s.key = 'events.store_raw'), 'off') = 'on';
$function$;
comment on function mixpanel_sync.store_raw(project_id smallint) is 'True when the project''s setting events.store_raw is on: its apply paths then write the raw columns and keep events with no distinct_id in the ledger.';
grant execute on function mixpanel_sync.store_raw(project_id smallint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.storage_horizon(project_id smallint, clock timestamp with time zone)
 returns date
 language sql
 stable
 set search_path to ''
as $function$
  -- Raw off: the ledger horizon (what ADD can deduplicate). Raw on: also events.raw_retention's days ('forever':
  -- every day).
  select case
    when not mixpanel_sync.store_raw(storage_horizon.project_id) then h.ledger_from
    when h.raw_retention = 'forever' then '-infinity'::date
    else least(h.ledger_from, mixpanel_sync.horizon_day(storage_horizon.clock, h.raw_retention::interval))
  end
  from (
    select mixpanel_sync.horizon_day(storage_horizon.clock,
        mixpanel_sync.setting(storage_horizon.project_id, 'events.ledger_retention')::interval) as ledger_from,
      coalesce((select s.value from mixpanel_sync.sync_settings s
        where s.project_id = storage_horizon.project_id and s.key = 'events.raw_retention'), 'forever') as raw_retention
  ) h;
$function$;
comment on function mixpanel_sync.storage_horizon(project_id smallint, clock timestamp with time zone) is 'The first UTC day whose ledger rows a project keeps at this clock: its ledger horizon (events.ledger_retention), or with events.store_raw on the earlier of that and events.raw_retention''s (''forever'': -infinity). finish_events_run keeps its project''s rows from here on, and drops the day partitions before the earliest storage horizon of all projects.';
grant execute on function mixpanel_sync.storage_horizon(project_id smallint, clock timestamp with time zone) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.identity_mode();
create or replace function mixpanel_sync.identity_mode(project_id smallint)
 returns text
 language plpgsql
 stable
 set search_path to ''
as $function$
declare
  mode text;
begin
  select s.value into mode from mixpanel_sync.sync_settings s
  where s.project_id = identity_mode.project_id and s.key = 'identity.mode';
  mode := coalesce(mode, 'off');
  if mode not in ('off', 'simplified', 'original') then
    raise exception 'identity.mode is "%", not one of off, simplified, original', mode
      using errcode = 'invalid_parameter_value',
        hint = 'update mixpanel_sync.sync_settings set value = ''simplified'' where project_id = mixpanel_sync.project_id(''name'') and key = ''identity.mode'' (the README says how to find the project''s mode)';
  end if;
  return mode;
end;
$function$;
comment on function mixpanel_sync.identity_mode(project_id smallint) is 'The project''s identity.mode setting: off, simplified or original; off when the row is missing. Raises for any other value.';
grant execute on function mixpanel_sync.identity_mode(project_id smallint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.create_project(name text, mixpanel_project_id bigint default null,
  region text default 'us', timezone text default null)
 returns mixpanel_sync.projects
 language plpgsql
 set search_path to ''
as $function$
declare
  created mixpanel_sync.projects;
begin
  if create_project.name is null or create_project.name !~ '^[a-z][a-z0-9_]{0,62}$' then
    raise exception 'create_project: % is not a project name', coalesce(quote_literal(create_project.name), 'null')
      using errcode = 'MP004', hint = 'lower-case letters, digits and _, starting with a letter, at most 63 characters: select mixpanel_sync.create_project(''eu_app'')';
  end if;
  if create_project.region is null or create_project.region not in ('us', 'eu', 'in') then
    raise exception 'create_project: region must be us, eu or in, got %', coalesce(quote_literal(create_project.region), 'null')
      using errcode = 'MP004', hint = 'the project''s data residency in Mixpanel (Project Settings)';
  end if;
  if create_project.timezone is not null
    and not exists (select from pg_catalog.pg_timezone_names z where z.name = create_project.timezone) then
    raise exception 'create_project: unknown timezone %', quote_literal(create_project.timezone)
      using errcode = 'MP004', hint = 'use an IANA name such as America/Los_Angeles (select name from pg_timezone_names), or null for UTC';
  end if;
  if exists (select from mixpanel_sync.projects p where p.name = create_project.name) then
    raise exception 'create_project: project % exists', quote_literal(create_project.name)
      using errcode = 'MP004', hint = 'select * from mixpanel_sync.projects';
  end if;
  if exists (select from mixpanel_sync.projects p where p.mixpanel_project_id = create_project.mixpanel_project_id) then
    raise exception 'create_project: Mixpanel project % is project %', create_project.mixpanel_project_id,
      (select quote_literal(p.name) from mixpanel_sync.projects p where p.mixpanel_project_id = create_project.mixpanel_project_id)
      using errcode = 'MP004', hint = 'one Mixpanel project is loaded into one project of this database';
  end if;
  insert into mixpanel_sync.projects (name, mixpanel_project_id, region, timezone)
  values (create_project.name, create_project.mixpanel_project_id, create_project.region, create_project.timezone)
  returning * into created;
  insert into mixpanel_sync.sync_settings (project_id, key, value, kind)
  select created.id, d.key, d.value, d.kind from mixpanel_sync.sync_setting_defaults d;
  insert into mixpanel_sync.subscriber_count (project_id, subscribers) values (created.id, 0);
  return created;
end;
$function$;
comment on function mixpanel_sync.create_project(name text, mixpanel_project_id bigint, region text, timezone text) is 'Creates a project (mixpanel_sync.projects) with the default settings (sync_setting_defaults) and a subscriber count of 0; returns its row. name: lower-case letters, digits and _; mixpanel_project_id: null until its first run records it; region: us, eu or in; timezone: an IANA name for projects that export local time (null: UTC). Invalid arguments: MP004. For the DBA: not granted to mixpanel_sync_loader.';
revoke execute on function mixpanel_sync.create_project(name text, mixpanel_project_id bigint, region text, timezone text) from public;
revoke execute on function mixpanel_sync.create_project(name text, mixpanel_project_id bigint, region text, timezone text) from mixpanel_sync_loader;

create or replace function mixpanel_sync.drop_project(name text)
 returns bigint
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(drop_project.name);
  running mixpanel_sync.sync_runs;
  n bigint;
  removed bigint := 0;
begin
  if drop_project.name is null then
    raise exception 'drop_project: name the project to drop' using errcode = 'MP004', hint = 'select * from mixpanel_sync.projects';
  end if;
  if (select count(*) from mixpanel_sync.projects) = 1 then
    raise exception 'drop_project: % is the only project', quote_literal(drop_project.name)
      using errcode = 'MP004', hint = 'create another project first (mixpanel_sync.create_project), or drop the schema';
  end if;
  -- No run of the project may begin or finish meanwhile: the project's begin and finish locks.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':cohorts', 0));
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':events', 0));
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':profiles', 0));
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run:' || pid, 0));
  select * into running from mixpanel_sync.sync_runs r where r.project_id = pid and r.status = 'running' limit 1;
  if found then
    raise exception 'drop_project: run % of project % is running; nothing was deleted', running.id, quote_literal(drop_project.name)
      using errcode = 'MP002', hint = format('wait for it to finish, or fail it: select mixpanel_sync.fail_run(%s, ''dropping the project'')', running.id);
  end if;
  delete from mixpanel_sync.cohort_members m where m.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.cohorts c where c.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.identity_links l where l.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.events_daily d where d.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.event_ledger l where l.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.subscribers s where s.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.subscriber_properties p where p.project_id = pid;
  get diagnostics n = row_count; removed := removed + n;
  delete from mixpanel_sync.sync_watermarks w where w.project_id = pid;
  delete from mixpanel_sync.spot_checks c where c.project_id = pid;
  delete from mixpanel_sync.run_events e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.staged_events e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.staged_profiles e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.staged_cohorts e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.staged_cohort_members e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.staged_cohort_fetches e where e.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = pid);
  delete from mixpanel_sync.sync_runs r where r.project_id = pid;
  delete from mixpanel_sync.sync_settings s where s.project_id = pid;
  delete from mixpanel_sync.subscriber_count c where c.project_id = pid;
  delete from mixpanel_sync.projects p where p.id = pid;
  return removed;
end;
$function$;
comment on function mixpanel_sync.drop_project(name text) is 'Deletes a project and every row of it in every table (aggregates, ledger, profiles, identity map, cohorts, runs and their rejects and staged rows, watermarks, spot-checks, settings, subscriber count); returns the number of data rows deleted. Refused (MP002) while a run of the project is running, and (MP004) for the only project. For the DBA: not granted to mixpanel_sync_loader.';
revoke execute on function mixpanel_sync.drop_project(name text) from public;
revoke execute on function mixpanel_sync.drop_project(name text) from mixpanel_sync_loader;

--! split: 400-helpers.sql
-- 400-helpers: the internal helpers take a leading project_id smallint (docs/projects.md §5.4); the subscriber-count
-- triggers count per project (the rows' project_id). Idempotent: old signatures dropped if they exist, then created or
-- replaced.

drop function if exists mixpanel_sync.identity_canonical(text);
create or replace function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text)
 returns text
 language sql
 stable
 set search_path to ''
as $function$
  select coalesce((select l.canonical from mixpanel_sync.identity_links l
    where l.project_id = identity_canonical.project_id and l.alias = identity_canonical.distinct_id), identity_canonical.distinct_id);
$function$;
comment on function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text) is 'The canonical id of a distinct_id of a project through its identity_links (the id itself when no link names it).';
grant execute on function mixpanel_sync.identity_canonical(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.identity_cluster(text);
create or replace function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text)
 returns table(member text, canonical text, is_canonical boolean, identified_at timestamp with time zone, learned_from_run bigint, learned_at timestamp with time zone)
 language sql
 stable
 set search_path to ''
as $function$
  select l.alias, l.canonical, l.alias = l.canonical, l.identified_at, l.learned_from_run, l.learned_at
  from mixpanel_sync.identity_links l
  where l.project_id = identity_cluster.project_id and l.canonical = mixpanel_sync.identity_canonical(identity_cluster.project_id, identity_cluster.distinct_id)
  union all
  select identity_cluster.distinct_id, identity_cluster.distinct_id, true, null, null, null
  where not exists (select from mixpanel_sync.identity_links l where l.project_id = identity_cluster.project_id and l.alias = identity_cluster.distinct_id)
  order by 3 desc, 1;
$function$;
comment on function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text) is 'The cluster of a distinct_id, canonical id first: select * from mixpanel_sync.identity_cluster(mixpanel_sync.project_id(), ''$device:D1''). An id no link names is a cluster of one.';
grant execute on function mixpanel_sync.identity_cluster(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.last_succeeded_run(text);
create or replace function mixpanel_sync.last_succeeded_run(project_id smallint, source text)
 returns mixpanel_sync.sync_runs
 language sql
 stable
 set search_path to ''
as $function$
  select * from mixpanel_sync.sync_runs r
  where r.project_id = last_succeeded_run.project_id and r.source = last_succeeded_run.source and r.status = 'succeeded'
  order by r.finished_at desc, r.id desc
  limit 1;
$function$;
comment on function mixpanel_sync.last_succeeded_run(project_id smallint, source text) is 'The run of this project and source applied last (a row of nulls when there is none).';
grant execute on function mixpanel_sync.last_succeeded_run(project_id smallint, source text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.refresh_subscribers(text[]);
create or replace function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[])
 returns void
 language sql
 set search_path to ''
 set jit to 'off'
as $function$
  with users as (
    select distinct u.distinct_id from unnest(distinct_ids) as u (distinct_id)
  ), per_event as (
    select d.distinct_id, d.event_name, sum(d.event_count) as event_count,
      min(d.first_at) as first_at, max(d.last_at) as last_at
    from users u
    join mixpanel_sync.events_daily d on d.project_id = refresh_subscribers.project_id and d.distinct_id = u.distinct_id
    group by d.distinct_id, d.event_name
  ), per_user as (
    select e.distinct_id, sum(e.event_count)::bigint as total_events, min(e.first_at) as first_event_at,
      max(e.last_at) as last_event_at, jsonb_object_agg(e.event_name, e.event_count) as event_counts
    from per_event e
    group by e.distinct_id
  ), removed as (
    delete from mixpanel_sync.subscribers s
    using users u
    where s.project_id = refresh_subscribers.project_id and s.distinct_id = u.distinct_id
      and not exists (select from per_user p where p.distinct_id = u.distinct_id)
  )
  insert into mixpanel_sync.subscribers as s
    (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  select refresh_subscribers.project_id, p.distinct_id, p.total_events, p.first_event_at, p.last_event_at, p.event_counts, now()
  from per_user p
  on conflict (project_id, distinct_id) do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
$function$;
comment on function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[]) is 'Recomputes subscribers for these users of a project from events_daily, set-based; writes only rows that change, deletes users left with no events.';
grant execute on function mixpanel_sync.refresh_subscribers(project_id smallint, distinct_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.refresh_subscriber_loop(text);
create or replace function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text)
 returns void
 language plpgsql
 set search_path to ''
as $function$
declare
  total bigint;
  first_seen timestamptz;
  last_seen timestamptz;
  counts jsonb;
begin
  select sum(d.event_count), min(d.first_at), max(d.last_at)
  into total, first_seen, last_seen
  from mixpanel_sync.events_daily d
  where d.project_id = refresh_subscriber_loop.project_id and d.distinct_id = refresh_subscriber_loop.distinct_id;

  if total is null then
    delete from mixpanel_sync.subscribers s where s.project_id = refresh_subscriber_loop.project_id and s.distinct_id = refresh_subscriber_loop.distinct_id;
    return;
  end if;

  select jsonb_object_agg(c.event_name, c.event_count) into counts
  from (
    select d.event_name, sum(d.event_count) as event_count
    from mixpanel_sync.events_daily d
    where d.project_id = refresh_subscriber_loop.project_id and d.distinct_id = refresh_subscriber_loop.distinct_id
    group by d.event_name
  ) c;

  insert into mixpanel_sync.subscribers as s
    (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  values (refresh_subscriber_loop.project_id, refresh_subscriber_loop.distinct_id, total, first_seen, last_seen, counts, now())
  on conflict on constraint subscribers_pkey do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at
  where (s.total_events, s.first_event_at, s.last_event_at, s.event_counts)
    is distinct from (excluded.total_events, excluded.first_event_at, excluded.last_event_at, excluded.event_counts);
end;
$function$;
comment on function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text) is 'Row-at-a-time reference of refresh_subscribers for one user, used by the _loop paths.';
grant execute on function mixpanel_sync.refresh_subscriber_loop(project_id smallint, distinct_id text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.merge_daily_row_loop(text, date, text, bigint, timestamp with time zone, timestamp with time zone);
create or replace function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone)
 returns boolean
 language plpgsql
 set search_path to ''
 set enable_seqscan to 'off'
 set jit to 'off'
as $function$
declare
  stored record;
begin
  select d.event_count, d.first_at, d.last_at into stored
  from mixpanel_sync.events_daily d
  where d.project_id = merge_daily_row_loop.project_id and d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  if not found then
    insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    values (merge_daily_row_loop.project_id, merge_daily_row_loop.distinct_id, merge_daily_row_loop.day,
      merge_daily_row_loop.event_name, merge_daily_row_loop.event_count, merge_daily_row_loop.first_at, merge_daily_row_loop.last_at);
    return true;
  end if;
  if (stored.event_count, stored.first_at, stored.last_at) is not distinct from (event_count, first_at, last_at) then
    return false;
  end if;
  update mixpanel_sync.events_daily d set
    event_count = merge_daily_row_loop.event_count, first_at = merge_daily_row_loop.first_at,
    last_at = merge_daily_row_loop.last_at
  where d.project_id = merge_daily_row_loop.project_id and d.distinct_id = merge_daily_row_loop.distinct_id and d.day = merge_daily_row_loop.day
    and d.event_name = merge_daily_row_loop.event_name;
  return true;
end;
$function$;
comment on function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone) is 'Row-at-a-time step of upsert_subscribers_incremental_loop: sets one events_daily row to this count and first/last time, inserting it when missing and writing nothing when it already holds them; true when it wrote.';
grant execute on function mixpanel_sync.merge_daily_row_loop(project_id smallint, distinct_id text, day date, event_name text, event_count bigint, first_at timestamp with time zone, last_at timestamp with time zone) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_identities(text[], text[]);
create or replace function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[])
 returns jsonb
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  moved record;
  profiles_moved bigint;
begin
  -- Ledger rows: an event applied under the alias and under its canonical id (or under two aliases of one cluster)
  -- was counted twice; one row is kept (the canonical's, else the least alias's), the others are dropped and their
  -- events_daily count taken back. Then events_daily rows merge (sum, least first_at, greatest last_at).
  with moves as materialized (
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
  ), ledger_rows as (
    -- (the ledger is the raw table: raw rows move with it. A key is looked up on its day and the two days either
    -- side, where a change of project timezone can have moved it.)
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id, l.properties is not null as is_raw,
      exists (select from mixpanel_sync.event_ledger c
        where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id and c.event_key = l.event_key and c.day between l.day - 2 and l.day + 2) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id, l.day) as n
    from mixpanel_sync.event_ledger l join moves m on l.project_id = reattribute_identities.project_id and l.distinct_id = m.from_id
  ), legacy_rows as (
    select l.distinct_id, l.event_key, l.day, l.event_name, m.to_id,
      exists (select from mixpanel_sync.event_ledger_legacy c where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id and c.event_key = l.event_key) as at_canonical,
      row_number() over (partition by m.to_id, l.event_key order by l.distinct_id) as n
    from mixpanel_sync.event_ledger_legacy l join moves m on l.project_id = reattribute_identities.project_id and l.distinct_id = m.from_id
  ), ledger_dropped as (
    delete from mixpanel_sync.event_ledger l using ledger_rows r
    where l.project_id = reattribute_identities.project_id and (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning l.distinct_id, l.day, l.event_name
  ), ledger_moved as (
    update mixpanel_sync.event_ledger l set distinct_id = r.to_id
    from ledger_rows r
    where l.project_id = reattribute_identities.project_id and not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key and l.day = r.day
    returning r.is_raw
  ), legacy_dropped as (
    delete from mixpanel_sync.event_ledger_legacy l using legacy_rows r
    where l.project_id = reattribute_identities.project_id and (r.at_canonical or r.n > 1) and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning l.distinct_id, l.day, l.event_name
  ), legacy_moved as (
    update mixpanel_sync.event_ledger_legacy l set distinct_id = r.to_id
    from legacy_rows r
    where l.project_id = reattribute_identities.project_id and not r.at_canonical and r.n = 1 and l.distinct_id = r.distinct_id and l.event_key = r.event_key
    returning 1
  ), dropped_counts as (
    select d.distinct_id, d.day, d.event_name, count(*) as events
    from (select * from ledger_dropped union all select * from legacy_dropped) d
    group by d.distinct_id, d.day, d.event_name
  ), alias_daily as (
    delete from mixpanel_sync.events_daily d using moves m
    where d.project_id = reattribute_identities.project_id and d.distinct_id = m.from_id
    returning d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at, m.to_id
  ), merged as (
    select a.to_id, a.day, a.event_name, sum(a.event_count - coalesce(c.events, 0)) as events,
      min(a.first_at) as first_at, max(a.last_at) as last_at
    from alias_daily a
    left join dropped_counts c on c.distinct_id = a.distinct_id and c.day = a.day and c.event_name = a.event_name
    group by a.to_id, a.day, a.event_name
  ), daily as (
    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select reattribute_identities.project_id, g.to_id, g.day, g.event_name, g.events, g.first_at, g.last_at
    from merged g
    where g.events > 0
    on conflict on constraint events_daily_pkey do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  )
  select
    (select coalesce(sum(g.events) filter (where g.events > 0), 0) from merged g) as events,
    (select count(*) from ledger_dropped) + (select count(*) from legacy_dropped) as duplicates,
    (select count(*) from ledger_moved) + (select count(*) from legacy_moved) as ledger_rows,
    (select count(*) from ledger_moved x where x.is_raw) as raw_rows
  into moved;

  -- Profiles: Mixpanel keeps the canonical id's profile. When the canonical id has none, the profile of the least
  -- alias becomes its profile; every other alias profile is removed.
  with moves as materialized (
    select m.from_id as from_id, m.to_id as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id) where m.from_id <> m.to_id
  ), alias_profiles as (
    select p.distinct_id, m.to_id,
      not exists (select from mixpanel_sync.subscriber_properties c where c.project_id = reattribute_identities.project_id and c.distinct_id = m.to_id)
        and row_number() over (partition by m.to_id order by p.distinct_id collate "C") = 1 as keeps
    from mixpanel_sync.subscriber_properties p join moves m on p.project_id = reattribute_identities.project_id and p.distinct_id = m.from_id
  ), removed as (
    delete from mixpanel_sync.subscriber_properties p using alias_profiles a
    where p.project_id = reattribute_identities.project_id and not a.keeps and p.distinct_id = a.distinct_id
    returning 1
  ), renamed as (
    update mixpanel_sync.subscriber_properties p set distinct_id = a.to_id
    from alias_profiles a
    where p.project_id = reattribute_identities.project_id and a.keeps and p.distinct_id = a.distinct_id
    returning 1
  )
  select (select count(*) from removed) + (select count(*) from renamed) into profiles_moved;

  perform mixpanel_sync.refresh_subscribers(reattribute_identities.project_id, from_ids || to_ids);
  return jsonb_build_object('reattributed_events', moved.events, 'reattributed_duplicates', moved.duplicates,
    'reattributed_ledger_rows', moved.ledger_rows, 'reattributed_raw_events', moved.raw_rows,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[]) is 'Set-based: moves every row of from_ids[i] to to_ids[i] in events_daily (rows merged: sum, least first_at, greatest last_at), event_ledger (the raw events with it) and event_ledger_legacy (an event held under both ids, or two aliases, is kept once and its extra count taken back), subscriber_properties (the canonical profile wins), and recomputes subscribers of both. Returns counts: reattributed_events (events now counted under the canonical id), reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events (moved ledger rows that carry properties), reattributed_profiles.';
grant execute on function mixpanel_sync.reattribute_identities(project_id smallint, from_ids text[], to_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_identities_loop(text[], text[]);
create or replace function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[])
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  move record;
  event record;
  day_row record;
  member text;
  events_moved bigint := 0;
  duplicates bigint := 0;
  ledger_rows bigint := 0;
  raw_moved bigint := 0;
  profiles_moved bigint := 0;
  touched text[] := '{}';
  row_count_now bigint;
begin
  for move in
    select m.from_id collate "C" as from_id, m.to_id collate "C" as to_id
    from unnest(from_ids, to_ids) as m (from_id, to_id)
    where m.from_id <> m.to_id
    order by 1
  loop
    touched := touched || array[move.from_id::text, move.to_id::text];
    -- the ledgers, one row at a time: a key the canonical id already holds is a double count
    for event in
      select l.event_key, l.day, l.event_name, false as legacy, l.properties is not null as is_raw
      from mixpanel_sync.event_ledger l where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id
      union all
      select g.event_key, g.day, g.event_name, true, false from mixpanel_sync.event_ledger_legacy g where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id
      order by 4, 1, 2
    loop
      if not event.legacy and exists (select from mixpanel_sync.event_ledger c
          where c.project_id = reattribute_identities_loop.project_id and c.distinct_id = move.to_id and c.event_key = event.event_key and c.day between event.day - 2 and event.day + 2)
        or event.legacy and exists (select from mixpanel_sync.event_ledger_legacy c where c.project_id = reattribute_identities_loop.project_id and c.distinct_id = move.to_id and c.event_key = event.event_key) then
        if event.legacy then
          delete from mixpanel_sync.event_ledger_legacy g where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id and g.event_key = event.event_key;
        else
          delete from mixpanel_sync.event_ledger l
          where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        end if;
        update mixpanel_sync.events_daily d set event_count = d.event_count - 1
        where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name and d.event_count > 1;
        get diagnostics row_count_now = row_count;
        if row_count_now = 0 then
          delete from mixpanel_sync.events_daily d
          where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = event.day and d.event_name = event.event_name;
        end if;
        duplicates := duplicates + 1;
      elsif event.legacy then
        update mixpanel_sync.event_ledger_legacy g set distinct_id = move.to_id
        where g.project_id = reattribute_identities_loop.project_id and g.distinct_id = move.from_id and g.event_key = event.event_key;
        ledger_rows := ledger_rows + 1;
      else
        update mixpanel_sync.event_ledger l set distinct_id = move.to_id
        where l.project_id = reattribute_identities_loop.project_id and l.distinct_id = move.from_id and l.event_key = event.event_key and l.day = event.day;
        ledger_rows := ledger_rows + 1;
        if event.is_raw then
          raw_moved := raw_moved + 1;
        end if;
      end if;
    end loop;
    -- events_daily, one row at a time
    for day_row in
      select d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id order by d.day, d.event_name
    loop
      insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
      values (reattribute_identities_loop.project_id, move.to_id, day_row.day, day_row.event_name, day_row.event_count, day_row.first_at, day_row.last_at)
      on conflict on constraint events_daily_pkey do update set
        event_count = d.event_count + excluded.event_count,
        first_at = least(d.first_at, excluded.first_at),
        last_at = greatest(d.last_at, excluded.last_at);
      delete from mixpanel_sync.events_daily d
      where d.project_id = reattribute_identities_loop.project_id and d.distinct_id = move.from_id and d.day = day_row.day and d.event_name = day_row.event_name;
      events_moved := events_moved + day_row.event_count;
    end loop;
    -- the profile: the canonical one wins; else the first alias's (in id order) becomes it
    if exists (select from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id) then
      if exists (select from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.to_id) then
        delete from mixpanel_sync.subscriber_properties p where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id;
      else
        update mixpanel_sync.subscriber_properties p set distinct_id = move.to_id where p.project_id = reattribute_identities_loop.project_id and p.distinct_id = move.from_id;
      end if;
      profiles_moved := profiles_moved + 1;
    end if;
  end loop;
  foreach member in array touched loop
    perform mixpanel_sync.refresh_subscriber_loop(reattribute_identities_loop.project_id, member);
  end loop;
  return jsonb_build_object('reattributed_events', events_moved, 'reattributed_duplicates', duplicates,
    'reattributed_ledger_rows', ledger_rows, 'reattributed_raw_events', raw_moved,
    'reattributed_profiles', profiles_moved);
end;
$function$;
comment on function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[]) is 'Row-at-a-time reference implementation of reattribute_identities: same contract, same resulting tables and counts (property-tests/identity-loop-equals-set.test.ts). Used when events.upsert_path = ''loop''.';
grant execute on function mixpanel_sync.reattribute_identities_loop(project_id smallint, from_ids text[], to_ids text[]) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.abandon_stale_runs();
create or replace function mixpanel_sync.abandon_stale_runs(project_id smallint)
 returns setof mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  stale mixpanel_sync.sync_runs;
begin
  for stale in
    update mixpanel_sync.sync_runs r set
      status = 'abandoned',
      finished_at = now(),
      total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
      error = 'abandoned: still running after runs.abandon_after ('
        || mixpanel_sync.setting(abandon_stale_runs.project_id, 'runs.abandon_after') || '); its loader is presumed dead'
    where r.project_id = abandon_stale_runs.project_id and r.status = 'running'
      and r.started_at < now() - mixpanel_sync.setting(abandon_stale_runs.project_id, 'runs.abandon_after')::interval
    returning r.*
  loop
    perform mixpanel_sync.drop_staged_rows(stale.id);
    return next stale;
  end loop;
end;
$function$;
comment on function mixpanel_sync.abandon_stale_runs(project_id smallint) is 'Marks the project''s runs left running longer than runs.abandon_after as abandoned and drops their staged rows. Called by begin_run (and begin_cohorts_run) of the project: another project''s runs are never touched.';
grant execute on function mixpanel_sync.abandon_stale_runs(project_id smallint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.prune_history();
create or replace function mixpanel_sync.prune_history(project_id smallint)
 returns bigint
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pruned bigint;
begin
  delete from mixpanel_sync.sync_runs r
  where r.project_id = prune_history.project_id and r.status <> 'running'
    and r.finished_at < now() - mixpanel_sync.setting(prune_history.project_id, 'runs.retention')::interval;
  get diagnostics pruned = row_count;
  return pruned;
end;
$function$;
comment on function mixpanel_sync.prune_history(project_id smallint) is 'Deletes the project''s finished runs older than runs.retention, with their rejects. Called by finish_run of the project.';
grant execute on function mixpanel_sync.prune_history(project_id smallint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.count_subscribers()
 returns trigger
 language plpgsql
 set search_path to ''
as $function$
begin
  if tg_op = 'TRUNCATE' then
    update mixpanel_sync.subscriber_count c set subscribers = 0 where c.subscribers <> 0;
  elsif tg_op = 'INSERT' then
    -- of an INSERT ... ON CONFLICT DO UPDATE, the transition table holds only the rows inserted
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers + a.rows
    from (select a.project_id, count(*) as rows from added a group by a.project_id) a
    where c.project_id = a.project_id;
  else
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers - r.rows
    from (select r.project_id, count(*) as rows from removed r group by r.project_id) r
    where c.project_id = r.project_id;
  end if;
  return null;
end;
$function$;
comment on function mixpanel_sync.count_subscribers() is 'Statement trigger of subscribers: moves each project''s subscriber_count row by the project''s rows the statement inserted (transition table added) or deleted (removed); a TRUNCATE sets every project''s to 0. Updates do not change the count.';
grant execute on function mixpanel_sync.count_subscribers() to mixpanel_sync_loader;

create or replace function mixpanel_sync.record_subscriber_count()
 returns trigger
 language plpgsql
 set search_path to ''
as $function$
begin
  new.options := new.options || jsonb_build_object('subscribers',
    (select c.subscribers from mixpanel_sync.subscriber_count c where c.project_id = new.project_id));
  return new;
end;
$function$;
comment on function mixpanel_sync.record_subscriber_count() is 'Trigger of sync_runs: when an events run succeeds, records the number of its project''s subscribers after it in options.subscribers (read by sync_health events.subscribers), from mixpanel_sync.subscriber_count (exact, kept by the triggers of subscribers; no scan). Runs inside finish_run''s transaction, so the count is the applied state.';
grant execute on function mixpanel_sync.record_subscriber_count() to mixpanel_sync_loader;

--! split: 450-health.sql
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

--! split: 500-run-functions.sql
-- 500-run-functions: the run-scoped functions keep their signatures and read the project from the run (or the
-- spot-check): every statement on a per-project table gets project_id = <the run's>, the _loop twins included
-- (docs/projects.md §5.4-§5.6).
--   * finish_run serialises the finishes of one project (advisory key mixpanel_sync.finish_run:<project id>): two
--     projects' finishes run at the same time.
--   * Ledger retention with shared day partitions: drop_ledger_partitions gets the earliest storage horizon of all
--     projects, another project's at the clock of its last succeeded events run (this run's clock may be ahead of it;
--     the drop never waits: skipped when the ledger is busy); each finish deletes its own project's rows between that
--     and its own horizon.
--   * analyze_run_events: ANALYZE (SKIP_LOCKED): a finish no longer waits for another project's finish, which holds
--     the table's ANALYZE lock to its commit.
-- Unchanged (run-scoped, no per-project table): cohort_list_rows, cohort_member_rows, drop_staged_cohort_rows,
-- drop_staged_rows (it truncates only when no run of the source of any project is running: already so), fail_run,
-- finish_or_fail_run, heartbeat_run, next_line_no, number_staged_lines, parse_staged_events, parse_staged_lines,
-- record_framing, run_selection, running_run, stage_*, finish_spot_check, ensure_run_ledger_partitions.
-- Idempotent: create or replace (the SET clauses of migrations/schema.sql kept).

create or replace function mixpanel_sync.identity_edges(run_id bigint, mode text)
 returns table(alias text, target text, identified_at timestamp with time zone)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  -- The raw properties come from the staged line (usable lines only: each is a JSON object). Lines that cannot hold
  -- a link are skipped before their JSON is read again (strpos).
  with props as (
    select e.line_id, e.distinct_id, e.event_name, e.event_time, s.line::jsonb -> 'properties' as p
    from mixpanel_sync.run_events e
    join mixpanel_sync.staged_events s on s.run_id = e.run_id and s.line_id = e.line_id
    where e.run_id = identity_edges.run_id
      and e.reject_reason is null
      and case mode
        -- an event shown under $device:<d> without $user_id teaches nothing: its line is not read again
        when 'simplified' then strpos(s.line, '$device_id') > 0 and (e.distinct_id not like '$device:%' or strpos(s.line, '$user_id') > 0)
        when 'original' then e.event_name in ('$identify', '$create_alias', '$merge')
        else false
      end
    offset 0
  ), simplified as (
    -- $device:<device_id> -> $user_id; without $user_id, an export that shows the event under another id than
    -- $device:<device_id> shows it under the canonical id Mixpanel merged the device into ("retroactively updated").
    select x.alias, x.target, x.event_time, x.line_id, x.has_user
    from (
      select '$device:' || (q.p ->> '$device_id') as alias,
        case when jsonb_typeof(q.p -> '$user_id') in ('string', 'number') then q.p ->> '$user_id' else q.distinct_id end as target,
        jsonb_typeof(q.p -> '$user_id') in ('string', 'number') as has_user,
        q.event_time, q.line_id
      from props q
      where mode = 'simplified' and jsonb_typeof(q.p -> '$device_id') in ('string', 'number') and q.p ->> '$device_id' <> ''
    ) x
    where x.target <> '' and x.target not like '$device:%' and length(x.alias) <= 255 and length(x.target) <= 255
  ), simplified_first as (
    -- A device joins one user only: the first link wins (earliest event of the run; an earlier run's link is kept).
    select distinct on (f.alias) f.alias, f.target, f.event_time
    from simplified f
    order by f.alias, f.event_time, f.line_id
  ), original as (
    select q.p ->> '$anon_id' as alias, q.p ->> '$identified_id' as target, q.event_time as identified_at
    from props q
    where q.event_name = '$identify' and jsonb_typeof(q.p -> '$anon_id') in ('string', 'number')
      and jsonb_typeof(q.p -> '$identified_id') in ('string', 'number')
    union all
    select q.p ->> 'alias', q.distinct_id, q.event_time
    from props q
    where q.event_name = '$create_alias' and jsonb_typeof(q.p -> 'alias') in ('string', 'number')
    union all
    select m.first_id, m.other_id, null
    from props q
    cross join lateral (
      select d.value #>> '{}' as other_id, first_value(d.value #>> '{}') over (order by d.ordinality) as first_id
      from jsonb_array_elements(case when jsonb_typeof(q.p -> '$distinct_ids') = 'array' then q.p -> '$distinct_ids' else '[]' end)
        with ordinality as d (value, ordinality)
      where jsonb_typeof(d.value) in ('string', 'number')
    ) m
    where q.event_name = '$merge'
  )
  select f.alias, f.target, f.event_time
  from simplified_first f
  where not exists (select from mixpanel_sync.identity_links l
    where l.project_id = (select r.project_id from mixpanel_sync.sync_runs r where r.id = identity_edges.run_id) and l.alias = f.alias and l.canonical <> f.alias and l.canonical <> f.target)
  union all
  select o.alias, o.target, o.identified_at
  from original o
  where mode = 'original' and o.alias <> '' and o.target <> '' and o.alias <> o.target
    and length(o.alias) <= 255 and length(o.target) <= 255;
$function$;
comment on function mixpanel_sync.identity_edges(run_id bigint, mode text) is 'The links a run''s usable events teach in this mode, as (alias, target, identified_at: when target is the identified side). simplified: an event with $device_id and $user_id links $device:<device_id> to $user_id (an event with $device_id exported under another id than $device:<device_id> links it to that id); a device already joined to another user stays with it. original: $identify ($anon_id -> $identified_id), $create_alias (alias -> distinct_id), $merge (every id of $distinct_ids with the first; no identified side).';
grant execute on function mixpanel_sync.identity_edges(run_id bigint, mode text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[])
 returns record
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = learn_identity_links.run_id);
  edge_alias text[];
  edge_target text[];
  edge_identified timestamptz[];
begin
  select coalesce(array_agg(g.alias), '{}'), coalesce(array_agg(g.target), '{}'), coalesce(array_agg(g.identified_at), '{}')
  into edge_alias, edge_target, edge_identified
  from mixpanel_sync.identity_edges(learn_identity_links.run_id, mode) g;
  links_learned := 0;
  from_ids := '{}';
  to_ids := '{}';
  if cardinality(edge_alias) = 0 then
    return;
  end if;

  -- 1. Every id a link names gets a row (a new id is its own cluster), with its earliest identified time.
  insert into mixpanel_sync.identity_links as l (project_id, alias, canonical, identified_at, learned_from_run, learned_at)
  select pid, n.id, n.id, min(n.identified_at), learn_identity_links.run_id, now()
  from (
    select unnest(edge_alias) as id, null::timestamptz as identified_at
    union all
    select unnest(edge_target), unnest(edge_identified)
  ) n
  group by n.id
  on conflict (project_id, alias) do update set identified_at = excluded.identified_at
  where excluded.identified_at < l.identified_at or (l.identified_at is null and excluded.identified_at is not null);

  -- 2. The clusters the links touch are joined (connected components over their canonical ids), and each joined
  --    cluster's canonical id is chosen again: the earliest identified_at, then the least id. A cluster whose member
  --    just got an earlier identified_at is chosen again too. Every row whose canonical changes is learned; the
  --    former canonical ids hold the only aggregate rows to move (the invariant).
  with recursive edges as (
    select ra.canonical as a, rb.canonical as b
    from unnest(edge_alias, edge_target) as g (alias, target)
    join mixpanel_sync.identity_links ra on ra.project_id = pid and ra.alias = g.alias collate "C"
    join mixpanel_sync.identity_links rb on rb.project_id = pid and rb.alias = g.target collate "C"
  ), both_ways as (
    select e.a, e.b from edges e where e.a <> e.b
    union
    select e.b, e.a from edges e where e.a <> e.b
  ), reach (root, other) as (
    select distinct r, r from edges e, lateral (values (e.a), (e.b)) v (r)
    union
    select h.root, w.b from reach h join both_ways w on w.a = h.other
  ), component as (
    select h.root, min(h.other) as label from reach h group by h.root
  ), chosen as (
    select distinct on (c.label) c.label, m.alias as canonical
    from component c
    join mixpanel_sync.identity_links m on m.project_id = pid and m.canonical = c.root
    order by c.label, m.identified_at nulls last, m.alias
  ), changed as (
    update mixpanel_sync.identity_links l set
      canonical = h.canonical, learned_from_run = learn_identity_links.run_id, learned_at = now()
    from component c
    join chosen h on h.label = c.label
    where l.project_id = pid and l.canonical = c.root and l.canonical <> h.canonical
    returning l.alias, c.root as old_canonical, h.canonical as new_canonical
  )
  select count(*),
    coalesce(array_agg(h.alias order by h.alias) filter (where h.alias = h.old_canonical), '{}'),
    coalesce(array_agg(h.new_canonical order by h.alias) filter (where h.alias = h.old_canonical), '{}')
  into links_learned, from_ids, to_ids
  from changed h;
end;
$function$;
comment on function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[]) is 'Adds the links of a run''s events (identity_edges) to the run''s project''s identity_links, set-based: clusters joined transitively, canonical ids chosen again (earliest identified_at, then least id). Returns the rows learned and the moves to make: from_ids[i] (a former canonical id, the only ids holding aggregate rows) now belongs to to_ids[i].';
grant execute on function mixpanel_sync.learn_identity_links(run_id bigint, mode text, OUT links_learned bigint, OUT from_ids text[], OUT to_ids text[]) to mixpanel_sync_loader;

create or replace function mixpanel_sync.apply_identity(run_id bigint)
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = apply_identity.run_id);
  mode text := mixpanel_sync.identity_mode(pid);
  learned record;
  moved jsonb;
  rewritten bigint;
begin
  if mode = 'off' then
    return jsonb_build_object('identity_mode', mode);
  end if;
  learned := mixpanel_sync.learn_identity_links(run_id, mode);
  moved := case mixpanel_sync.setting(pid, 'events.upsert_path')
    when 'loop' then mixpanel_sync.reattribute_identities_loop(pid, learned.from_ids, learned.to_ids)
    else mixpanel_sync.reattribute_identities(pid, learned.from_ids, learned.to_ids)
  end;
  -- The run's events under canonical ids: the apply path that follows deduplicates (canonical id, key).
  update mixpanel_sync.run_events e set distinct_id = l.canonical
  from mixpanel_sync.identity_links l
  where l.project_id = pid and e.run_id = apply_identity.run_id and l.alias = e.distinct_id and l.canonical <> l.alias;
  get diagnostics rewritten = row_count;
  return jsonb_build_object('identity_mode', mode, 'links_learned', learned.links_learned,
    'events_resolved', rewritten) || moved;
end;
$function$;
comment on function mixpanel_sync.apply_identity(run_id bigint) is 'The identity step of finish_events_run (after parsing into run_events, before REPLACE/ADD), when identity.mode is not off: learns the run''s links (learn_identity_links), moves the aggregate rows of ids no longer canonical (reattribute_identities, or its _loop twin when events.upsert_path = loop), and rewrites run_events.distinct_id of the run to canonical ids. Returns {identity_mode, links_learned, events_resolved, reattributed_events, reattributed_duplicates, reattributed_ledger_rows, reattributed_raw_events, reattributed_profiles}; with mode off only {identity_mode} and nothing is changed. The caller merges it into sync_runs.options and sets sync_runs.links_learned and reattributed_events from it.';
grant execute on function mixpanel_sync.apply_identity(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint DEFAULT NULL::bigint, after_line_id bigint DEFAULT NULL::bigint)
 returns bigint
 language plpgsql
 set search_path to ''
 set jit to 'off'
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
    select s.run_id, 'events', s.line_no, s.line, p.reject_reason
    from parsed_lines p
    join mixpanel_sync.staged_events s on s.run_id = parse_new_staged_events.run_id and s.line_id = p.line_id
    where p.reject_reason is not null
  )
  select count(*) into parsed from parsed_lines;
  return parsed;
end;
$function$;
comment on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) is 'Parses the staged lines of a run not parsed yet into run_events (with after_line_id: the lines in (after_line_id, up_to_line_id], taken as not parsed yet; up_to_line_id alone: just that line; neither: every line not in run_events): the event, its dedup key (event_key; legacy_key while event_ledger_legacy holds rows), reject_reason (null when usable) and skip_reason (''not_selected'' when the run''s selection, sync_runs.options -> ''events'', leaves the name out; else ''no_user'' when properties.distinct_id is absent, null or ""); with setting events.store_raw = ''on'' also the raw columns (properties, insert_id, processing_time_ms) of the rows the raw table may take. Unusable lines also go to sync_rejects with their line number. A line staged with a problem is rejected with it. Time may be seconds or milliseconds (event_second) and is kept to the second, Mixpanel''s dedup grain; with a project_timezone on the run it is read as local time of that zone (Mixpanel projects from before 2023).';
grant execute on function mixpanel_sync.parse_new_staged_events(run_id bigint, up_to_line_id bigint, after_line_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[])
 returns record
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = insert_new_events_loop.run_id);
  raw_on boolean := mixpanel_sync.store_raw(pid);
  event record;
  current_user_id text;
  current_user_applied boolean := false;
  inserted_rows bigint;
begin
  applied := 0;
  duplicates := 0;
  outside := 0;
  distinct_ids := '{}';
  for event in
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = insert_new_events_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.line_id
  loop
    if current_user_id is distinct from event.distinct_id then
      if current_user_applied then
        distinct_ids := array_append(distinct_ids, current_user_id);
      end if;
      current_user_id := event.distinct_id;
      current_user_applied := false;
    end if;

    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;

    if event.legacy_key is not null and exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    values (pid, event.distinct_id, event.event_key, event.day, event.event_name, event.event_time, insert_new_events_loop.run_id,
      event.insert_id, event.processing_time_ms, event.properties);
    if event.distinct_id = '' then
      continue;
    end if;

    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    values (pid, event.distinct_id, event.day, event.event_name, 1, event.event_time, event.event_time)
    on conflict (project_id, distinct_id, day, event_name) do update set
      event_count = d.event_count + 1,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at);
    applied := applied + 1;
    current_user_applied := true;
  end loop;
  if current_user_applied then
    distinct_ids := array_append(distinct_ids, current_user_id);
  end if;
end;
$function$;
comment on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) is 'Row-at-a-time core of the _loop ADD: per event in [from_day, to_day] (in line order per user), a duplicate when its legacy key is in event_ledger_legacy or its key is in the ledger on its day or the two days either side, else one ledger insert (with the raw columns) and one events_daily upsert. With events.store_raw on, events with no distinct_id get their ledger row under '''' and are never counted.';
grant execute on function mixpanel_sync.insert_new_events_loop(run_id bigint, from_day date, to_day date, OUT applied bigint, OUT duplicates bigint, OUT outside bigint, OUT distinct_ids text[]) to mixpanel_sync_loader;

create or replace function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs)
 returns void
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  stored record;
  shrunk record;
  min_events bigint := mixpanel_sync.setting(pid, 'events.replace_guard_min_events')::bigint;
  ratio numeric := mixpanel_sync.setting(pid, 'events.replace_guard_ratio')::numeric;
  -- The run's selection (begin_run: options->'events'; absent, null or [] = every event): a REPLACE with a selection
  -- clears only those names, so only their stored events are at stake, and only selected events are usable.
  selection text[] := mixpanel_sync.run_selection(run.id);
  names text := case when selection is not null
    then ' (events of the run''s selection ' || pg_catalog.to_jsonb(selection)::text || ')' else '' end;
  override text := 'if the smaller data is right (events deleted in Mixpanel), begin the run with '
    'mixpanel_sync.begin_run(..., allow_shrink => true) (CLI: --allow-shrink); else check the input and run again';
begin
  if run.mode <> 'full' or coalesce((run.options ->> 'allow_shrink')::boolean, false) then
    return;
  end if;
  if not exists (
    select from mixpanel_sync.run_events e
    where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
      and e.day between run.window_from_day and run.window_to_day) then
    select count(*) as days, sum(d.event_count) as events into stored
    from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection));
    if stored.events > 0 then
      raise exception 'finish_run: REPLACE guard: full run % has no usable event for % .. %, which hold % stored events%; nothing was applied',
        run.id, run.window_from_day, run.window_to_day, stored.events, names
        using errcode = 'MP001', hint = override;
    end if;
    return;
  end if;

  select s.day, s.events, coalesce(k.kept, 0) as kept into shrunk
  from (
    select d.day, sum(d.event_count) as events
    from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day between run.window_from_day and run.window_to_day and (selection is null or d.event_name = any (selection))
    group by d.day
  ) s
  left join (
    select u.day, count(*) as kept
    from (
      select distinct e.day, e.distinct_id, e.event_key
      from mixpanel_sync.run_events e
      where e.run_id = run.id and e.reject_reason is null and e.skip_reason is null
        and e.day between run.window_from_day and run.window_to_day
    ) u
    group by u.day
  ) k on k.day = s.day
  where s.events >= min_events and coalesce(k.kept, 0) < ratio * s.events
  order by s.day
  limit 1;
  if found then
    raise exception 'finish_run: REPLACE guard: full run % would shrink % from % to % events% (below events.replace_guard_ratio % of days holding at least events.replace_guard_min_events %); nothing was applied',
      run.id, shrunk.day, shrunk.events, shrunk.kept, names, ratio, min_events
      using errcode = 'MP001', hint = override;
  end if;
end;
$function$;
comment on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) is 'The REPLACE guard of finish_run, for full runs (resyncs included) begun without allow_shrink: raises MP001 when the run has no usable event in its window while the window holds events, or when a day of the window holding at least events.replace_guard_min_events events would keep less than events.replace_guard_ratio of them. With a selection (options->''events'') only the selected names count, on both sides: the REPLACE leaves the others as they are. Usable events: reject_reason and skip_reason null.';
grant execute on function mixpanel_sync.replace_guard(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean)
 returns mixpanel_sync.profiles_result
 language sql
 set search_path to ''
 set work_mem to '64MB'
 set enable_nestloop to 'off'
 set jit to 'off'
as $function$
  with staged as materialized (
    select s.line_id, md5(coalesce(r.project_timezone, '') || E'\n' || s.line)::uuid as line_hash, r.project_id
    from mixpanel_sync.staged_profiles s
    join mixpanel_sync.sync_runs r on r.id = s.run_id
    where s.run_id = upsert_subscriber_properties.run_id
  ), known as materialized (
    -- Lines identical to the line that set a row (same zone): that row's profile, unchanged, not parsed.
    -- Without change detection every line is parsed and written, as the original did.
    select st.line_id, c.distinct_id
    from staged st
    join mixpanel_sync.subscriber_properties c on c.project_id = st.project_id and c.line_hash = st.line_hash
    where change_detection
  ), parsed as materialized (
    select p.*, st.line_hash, st.project_id
    from mixpanel_sync.staged_profiles_parsed p
    join staged st on st.line_id = p.line_id
    where p.run_id = upsert_subscriber_properties.run_id
      and p.line_id not in (select k.line_id from known k)
  ), rejected as (
    insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
    select p.run_id, 'profiles', p.line_no, p.line, p.reject_reason
    from parsed p
    where p.reject_reason is not null
    returning 1
  ), usable as (
    select k.line_id, k.distinct_id from known k
    union all
    select p.line_id, p.distinct_id from parsed p where p.reject_reason is null
  ), latest as (
    -- A profile repeated in the batch: its last usable line wins. When that is a recognised line, the
    -- profile is unchanged; else its last parsed line goes on.
    select distinct on (p.distinct_id) p.*
    from parsed p
    where p.reject_reason is null
      and not exists (select from known k where k.distinct_id = p.distinct_id and k.line_id > p.line_id)
    order by p.distinct_id, p.line_id desc
  ), compared as (
    select l.*, c.distinct_id is not null as existed,
      (c.email, c.name, c.first_name, c.last_name, c.phone, c.city, c.region, c.country_code, c.timezone,
        c.created_at, c.last_seen_at, c.properties)
      is not distinct from
      (l.email, l.name, l.first_name, l.last_name, l.phone, l.city, l.region, l.country_code, l.timezone,
        l.created_at, l.last_seen_at, l.properties) as is_unchanged
    from latest l
    left join mixpanel_sync.subscriber_properties c on c.project_id = l.project_id and c.distinct_id = l.distinct_id
  ), written as (
    insert into mixpanel_sync.subscriber_properties as s
      (project_id, distinct_id, email, name, first_name, last_name, phone, city, region, country_code, timezone,
       created_at, last_seen_at, properties, changed_by_run_id, line_hash, first_synced_at, updated_at)
    select c.project_id, c.distinct_id, c.email, c.name, c.first_name, c.last_name, c.phone, c.city, c.region, c.country_code,
      c.timezone, c.created_at, c.last_seen_at, c.properties, c.run_id, c.line_hash, now(), now()
    from compared c
    -- Unchanged profiles never reach the insert: no row lock, no WAL, no page dirtied.
    where not change_detection or not c.is_unchanged
    order by c.project_id, c.distinct_id
    on conflict (project_id, distinct_id) do update set
      email = excluded.email,
      name = excluded.name,
      first_name = excluded.first_name,
      last_name = excluded.last_name,
      phone = excluded.phone,
      city = excluded.city,
      region = excluded.region,
      country_code = excluded.country_code,
      timezone = excluded.timezone,
      created_at = excluded.created_at,
      last_seen_at = excluded.last_seen_at,
      properties = excluded.properties,
      -- Written without change detection, an unchanged row keeps its history. (The typed columns are read
      -- from properties: comparing properties and the two dates, which depend on the zone, is comparing all.)
      changed_by_run_id = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.changed_by_run_id else s.changed_by_run_id end,
      line_hash = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.line_hash else s.line_hash end,
      updated_at = case when (s.properties, s.created_at, s.last_seen_at)
        is distinct from (excluded.properties, excluded.created_at, excluded.last_seen_at)
        then excluded.updated_at else s.updated_at end
    -- The change detection itself; it also covers a row changed since the statement's snapshot.
    where not change_detection
      or (s.email, s.name, s.first_name, s.last_name, s.phone, s.city, s.region, s.country_code, s.timezone,
          s.created_at, s.last_seen_at, s.properties)
      is distinct from
         (excluded.email, excluded.name, excluded.first_name, excluded.last_name, excluded.phone, excluded.city,
          excluded.region, excluded.country_code, excluded.timezone, excluded.created_at, excluded.last_seen_at,
          excluded.properties)
    returning s.distinct_id, s.xmax = 0 as is_insert
  ), counted as (
    select count(*) filter (where w.is_insert) as inserted, count(*) filter (where not w.is_insert) as rewritten,
      count(*) as rows_written
    from written w
  ), updated as (
    -- with change detection every rewritten row changed; without it, those whose content differed
    select case when change_detection then n.rewritten
      else (select count(*) from compared c where c.existed and not c.is_unchanged) end as updated
    from counted n
  )
  select
    (select count(*) from staged),
    (select count(*) from rejected),
    (select count(*) from usable) - (select count(distinct u.distinct_id) from usable u),
    n.inserted,
    u.updated,
    (select count(distinct x.distinct_id) from usable x) - n.inserted - u.updated,
    n.rows_written,
    (select count(*) from known)
  from counted n, updated u;
$function$;
comment on function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean) is 'Applies a profiles run''s staged lines in ONE statement: a line identical to the one that set its row is unchanged without parsing; the others are parsed (rejects to sync_rejects with their line number), the last line of each profile wins, and INSERT … ON CONFLICT DO UPDATE … WHERE (columns) IS DISTINCT FROM (excluded columns) writes only what changed. change_detection false parses and writes every profile (the original behaviour). Both leave the same contents.';
grant execute on function mixpanel_sync.upsert_subscriber_properties(run_id bigint, change_detection boolean) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental.run_id);
  -- ledger rows of the window are kept from this day on (finish_run passes the storage horizon: older rows would be
  -- dropped at once); null: the whole window.
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw(pid);
  -- the run's selection: only rows of these names are merged or deleted (null: every name)
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental.run_id);
  counted record;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental.run_id, kept_from, to_day);

  -- The legacy ledger only ever empties: its rows of the window go (as before the merge).
  delete from mixpanel_sync.event_ledger_legacy g
  where g.project_id = pid and g.day between from_day and to_day and (names is null or g.event_name = any (names));

  -- The window's new content is the run's events of the window (of the selected names), deduplicated (a key fixes
  -- the name and the second; the first line of the run wins), less those already counted outside the window: a key
  -- can sit in the ledger (or, by its old-formula key, in the legacy ledger) on a day outside the window when the
  -- project timezone changed between runs (by at most two days: offsets span 26 hours). With raw storage on, the
  -- events with no distinct_id are part of it under distinct_id '' (ledger only).
  with wanted as materialized (
    select distinct on (coalesce(e.distinct_id, ''), e.event_key)
      coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id
      and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
      and e.day between from_day and to_day
      and (names is null or e.event_name = any (names))
    order by coalesce(e.distinct_id, ''), e.event_key, e.line_id
  ), kept as materialized (
    select w.*
    from wanted w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and l.day between w.day - 2 and w.day + 2 and (l.day < from_day or l.day > to_day)))
  ), ledger_diff as materialized (
    -- The window's ledger rows (of the selected names) against its new content from kept_from on, matched on the
    -- primary key: k only = a new row, l only = a row gone (also every row before kept_from), both = a row whose name,
    -- time or raw columns differ. Rows that match and are equal are not listed: they are not written.
    select k.distinct_id as k_distinct_id, k.event_key as k_event_key, k.day as k_day, k.event_name, k.event_time,
      k.insert_id, k.processing_time_ms, k.properties,
      l.distinct_id as l_distinct_id, l.event_key as l_event_key, l.day as l_day
    from (select k.* from kept k where k.day >= kept_from) k
    full join (
      select l.distinct_id, l.event_key, l.day, l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties
      from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.day between from_day and to_day and (names is null or l.event_name = any (names))
    ) l on l.distinct_id = k.distinct_id and l.event_key = k.event_key and l.day = k.day
    where k.distinct_id is null or l.distinct_id is null
      or (l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties)
        is distinct from (k.event_name, k.event_time, k.insert_id, k.processing_time_ms, k.properties)
  ), ledger_gone as (
    delete from mixpanel_sync.event_ledger l
    using ledger_diff x
    where l.project_id = pid and x.k_distinct_id is null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), ledger_new as (
    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select pid, x.k_distinct_id, x.k_event_key, x.k_day, x.event_name, x.event_time, upsert_subscribers_incremental.run_id,
      x.insert_id, x.processing_time_ms, x.properties
    from ledger_diff x
    where x.l_distinct_id is null
    order by x.k_distinct_id, x.k_event_key
    returning 1
  ), ledger_changed as (
    update mixpanel_sync.event_ledger l set
      event_name = x.event_name, event_time = x.event_time, run_id = upsert_subscribers_incremental.run_id,
      insert_id = x.insert_id, processing_time_ms = x.processing_time_ms, properties = x.properties
    from ledger_diff x
    where l.project_id = pid and x.k_distinct_id is not null and x.l_distinct_id is not null
      and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day
    returning 1
  ), target as materialized (
    select k.distinct_id, k.day, k.event_name, count(*) as event_count, min(k.event_time) as first_at,
      max(k.event_time) as last_at
    from kept k
    where k.distinct_id <> ''
    group by k.distinct_id, k.day, k.event_name
  ), daily_diff as materialized (
    -- The window's events_daily rows (of the selected names) against the target, as for the ledger: t only = new,
    -- d only = gone, both = changed (an unchanged row is not listed: no dead tuple, no index entry, no WAL).
    select t.distinct_id as t_distinct_id, t.day as t_day, t.event_name as t_event_name, t.event_count, t.first_at,
      t.last_at, d.distinct_id as d_distinct_id, d.day as d_day, d.event_name as d_event_name
    from target t
    full join (
      select d.distinct_id, d.day, d.event_name, d.event_count, d.first_at, d.last_at
      from mixpanel_sync.events_daily d
      where d.project_id = pid and d.day between from_day and to_day and (names is null or d.event_name = any (names))
    ) d on d.distinct_id = t.distinct_id and d.day = t.day and d.event_name = t.event_name
    where t.distinct_id is null or d.distinct_id is null
      or (d.event_count, d.first_at, d.last_at) is distinct from (t.event_count, t.first_at, t.last_at)
  ), daily_gone as (
    delete from mixpanel_sync.events_daily d
    using daily_diff x
    where d.project_id = pid and x.t_distinct_id is null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  ), daily_new as (
    insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select pid, x.t_distinct_id, x.t_day, x.t_event_name, x.event_count, x.first_at, x.last_at
    from daily_diff x
    where x.d_distinct_id is null
    order by x.t_distinct_id, x.t_day, x.t_event_name
    returning events_daily.distinct_id
  ), daily_changed as (
    update mixpanel_sync.events_daily d set event_count = x.event_count, first_at = x.first_at, last_at = x.last_at
    from daily_diff x
    where d.project_id = pid and x.t_distinct_id is not null and x.d_distinct_id is not null
      and d.distinct_id = x.d_distinct_id and d.day = x.d_day and d.event_name = x.d_event_name
    returning d.distinct_id
  )
  select
    (select count(*) from kept k where k.distinct_id <> '') as applied,
    array(select g.distinct_id from daily_gone g union select n.distinct_id from daily_new n
      union select c.distinct_id from daily_changed c) as touched,
    (select count(*) from ledger_gone) + (select count(*) from ledger_new) + (select count(*) from ledger_changed)
      as ledger_rows_written
  into counted;

  perform mixpanel_sync.refresh_subscribers(pid, counted.touched);
  return (
    select (counted.applied,
      count(*) filter (where e.day between from_day and to_day and (names is null or e.event_name = any (names))) - counted.applied,
      count(*) filter (where e.day not between from_day and to_day),
      cardinality(counted.touched))::mixpanel_sync.apply_result
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental.run_id and e.reject_reason is null and e.skip_reason is null
  );
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, set-based, as a merge: the days [from_day, to_day] of events_daily and event_ledger end up holding exactly the run''s events of those days, deduplicated (less events already counted outside the window, looked up two days either side), and only what changed is written: rows gone deleted, new rows inserted, a row rewritten only when IS DISTINCT FROM its new content (raw columns included). With a run selection (sync_runs.options -> ''events'') only rows of the selected names are merged or deleted; other names are untouched. Ledger rows are kept from ledger_from on (null: the whole window; finish_run passes the storage horizon). With events.store_raw on, rows carry the raw columns and events with no distinct_id are kept under distinct_id ''''. event_ledger_legacy rows of the window are deleted. applied: events the window now holds from the run; duplicates: the run''s other events of the window; too_old: its events outside the window; users_touched: users whose events_daily rows changed (their subscribers row is recomputed). Rows outside the window are untouched.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date DEFAULT NULL::date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set enable_nestloop to 'off'
 set jit to 'off'
 set enable_seqscan to 'off'
 set plan_cache_mode to 'force_generic_plan'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_loop.run_id);
  kept_from date := greatest(from_day, coalesce(ledger_from, from_day));
  raw_on boolean := mixpanel_sync.store_raw(pid);
  names text[] := mixpanel_sync.run_selection(upsert_subscribers_incremental_loop.run_id);
  event record;
  stored record;
  legacy_row record;
  daily_row record;
  ledger_row record;
  previous_id text;
  previous_key uuid;
  group_id text;
  group_day date;
  group_name text;
  group_count bigint := 0;
  group_first timestamptz;
  group_last timestamptz;
  applied bigint := 0;
  duplicates bigint := 0;
  outside bigint := 0;
  touched text[] := '{}';
  user_id text;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_loop.run_id, kept_from, to_day);

  for legacy_row in
    select g.distinct_id, g.event_key from mixpanel_sync.event_ledger_legacy g
    where g.project_id = pid and g.day between from_day and to_day and (names is null or g.event_name = any (names))
    order by g.distinct_id, g.event_key
  loop
    delete from mixpanel_sync.event_ledger_legacy g
    where g.project_id = pid and g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;
  end loop;

  -- 1. The run's events in events_daily order (a key fixes the day and the name, so repeats are adjacent, the first
  --    line first): each kept event claims its ledger row, each (user, day, name) group its events_daily row. Events
  --    with no distinct_id (raw storage on) come first, under '', and only claim their ledger row.
  for event in
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
    order by coalesce(e.distinct_id, ''), e.day, e.event_name, e.event_key, e.line_id
  loop
    if event.day < from_day or event.day > to_day then
      if event.distinct_id <> '' then
        outside := outside + 1;
      end if;
      continue;
    end if;
    if names is not null and not event.event_name = any (names) then
      continue;
    end if;
    if event.distinct_id = previous_id and event.event_key = previous_key then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;
    previous_id := event.distinct_id;
    previous_key := event.event_key;
    if event.legacy_key is not null and exists (
      select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)
      or exists (
        select from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key
          and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then
      if event.distinct_id <> '' then
        duplicates := duplicates + 1;
      end if;
      continue;
    end if;

    if event.day >= kept_from then
      select l.event_name, l.event_time, l.insert_id, l.processing_time_ms, l.properties into stored
      from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      if not found then
        insert into mixpanel_sync.event_ledger
          (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
        values (pid, event.distinct_id, event.event_key, event.day, event.event_name, event.event_time,
          upsert_subscribers_incremental_loop.run_id, event.insert_id, event.processing_time_ms, event.properties);
      elsif (stored.event_name, stored.event_time, stored.insert_id, stored.processing_time_ms, stored.properties)
        is distinct from (event.event_name, event.event_time, event.insert_id, event.processing_time_ms, event.properties) then
        update mixpanel_sync.event_ledger l set event_name = event.event_name, event_time = event.event_time,
          insert_id = event.insert_id, processing_time_ms = event.processing_time_ms, properties = event.properties,
          run_id = upsert_subscribers_incremental_loop.run_id
        where l.project_id = pid and l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;
      end if;
    end if;

    if event.distinct_id = '' then
      continue;
    end if;
    if group_count > 0 and (group_id, group_day, group_name) is distinct from (event.distinct_id, event.day, event.event_name) then
      if mixpanel_sync.merge_daily_row_loop(pid, group_id, group_day, group_name, group_count, group_first, group_last) then
        touched := array_append(touched, group_id);
      end if;
      group_count := 0;
    end if;
    if group_count = 0 then
      group_id := event.distinct_id;
      group_day := event.day;
      group_name := event.event_name;
      group_first := event.event_time;
      group_last := event.event_time;
    end if;
    group_count := group_count + 1;
    group_first := least(group_first, event.event_time);
    group_last := greatest(group_last, event.event_time);
    applied := applied + 1;
  end loop;
  if group_count > 0 and mixpanel_sync.merge_daily_row_loop(pid, group_id, group_day, group_name, group_count, group_first, group_last) then
    touched := array_append(touched, group_id);
  end if;

  -- 2. events_daily rows of the window (of the selected names) the run has no kept event for: deleted, one at a
  --    time. (The rows are found with one anti-join: a per-row lookup in run_events, which has no index for it,
  --    would make the loop quadratic.)
  for daily_row in
    select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d
    where d.project_id = pid and d.day between from_day and to_day
      and (names is null or d.event_name = any (names))
      and not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null and e.skip_reason is null
          and e.distinct_id = d.distinct_id and e.day = d.day and e.event_name = d.event_name
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger l
            where l.project_id = pid and l.distinct_id = e.distinct_id and l.event_key = e.event_key
              and l.day between e.day - 2 and e.day + 2 and (l.day < from_day or l.day > to_day)))
    order by d.distinct_id, d.day, d.event_name
  loop
    delete from mixpanel_sync.events_daily d
    where d.project_id = pid and d.distinct_id = daily_row.distinct_id and d.day = daily_row.day and d.event_name = daily_row.event_name;
    touched := array_append(touched, daily_row.distinct_id);
  end loop;

  -- 3. Ledger rows of the window (of the selected names) no kept event of the run claimed (or before kept_from):
  --    deleted, one at a time. Two branches, not `l.day < kept_from or not exists (...)`: a NOT EXISTS under OR is
  --    never an anti-join but a subplan per ledger row, and run_events has no index for it (coalesce(distinct_id, '')),
  --    so every ledger row rescanned the run's events: quadratic (1,000 users of the bench: 401 s instead of ~1 s).
  for ledger_row in
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.day between from_day and to_day
      and (names is null or l.event_name = any (names))
      and l.day < kept_from
    union all
    select l.distinct_id, l.event_key, l.day from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.day between from_day and to_day and l.day >= kept_from
      and (names is null or l.event_name = any (names))
      and (not exists (
        select from mixpanel_sync.run_events e
        where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null
          and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
          and coalesce(e.distinct_id, '') = l.distinct_id and e.event_key = l.event_key and e.day = l.day
          and (e.legacy_key is null or not exists (
            select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = e.distinct_id and g.event_key = e.legacy_key))
          and not exists (
            select from mixpanel_sync.event_ledger o
            where o.project_id = pid and o.distinct_id = l.distinct_id and o.event_key = l.event_key
              and o.day between l.day - 2 and l.day + 2 and (o.day < from_day or o.day > to_day))))
    order by 1, 2, 3
  loop
    delete from mixpanel_sync.event_ledger l
    where l.project_id = pid and l.distinct_id = ledger_row.distinct_id and l.event_key = ledger_row.event_key and l.day = ledger_row.day;
  end loop;

  for user_id in select distinct u from unnest(touched) u order by 1 loop
    perform mixpanel_sync.refresh_subscriber_loop(pid, user_id);
  end loop;
  return (applied, duplicates, outside, (select count(distinct u) from unnest(touched) u))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) is 'REPLACE, row-at-a-time reference implementation of upsert_subscribers_incremental: the same merge (only what changed is written), the same selection and raw rules, the same contract, the same resulting tables and apply_result.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_loop(run_id bigint, from_day date, to_day date, ledger_from date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_add.run_id);
  raw_on boolean := mixpanel_sync.store_raw(pid);
  result mixpanel_sync.apply_result;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add.run_id, horizon_day, 'infinity');

  with candidates as materialized (
    select coalesce(e.distinct_id, '') as distinct_id, e.event_key, e.legacy_key, e.event_name, e.event_time, e.day,
      e.line_id, e.insert_id, e.processing_time_ms, e.properties
    from mixpanel_sync.run_events e
    where e.run_id = upsert_subscribers_incremental_add.run_id and e.reject_reason is null
      and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')
  ), in_window as (
    select c.* from candidates c where c.day >= horizon_day
  ), not_on_day as materialized (
    -- An event already in the ledger on its day or the two days either side (a change of project timezone moves a
    -- key's day by at most 26 hours) is a duplicate; so is an event whose old-formula key is in the legacy ledger
    -- (same distinct_id: applied before the upgrade). Its own day first: a re-read event (the overlap, most of an
    -- incremental run) is found there in one probe of one day partition and goes no further; only the events not on
    -- their day (the new ones) are looked up on the days either side.
    select w.* from in_window w
    where not exists (
      select from mixpanel_sync.event_ledger l
      where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day = w.day)
  ), ledgered as (
    -- The days either side, as a subquery run per remaining event (one probe of each such day partition that
    -- exists), not as a NOT EXISTS: an anti-join there is planned, on a small ledger, as a second hash of the whole
    -- ledger. DO NOTHING skips repeats inside the batch: the first line wins.
    insert into mixpanel_sync.event_ledger
      (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
    select pid, w.distinct_id, w.event_key, w.day, w.event_name, w.event_time, upsert_subscribers_incremental_add.run_id,
      w.insert_id, w.processing_time_ms, w.properties
    from not_on_day w
    where (w.legacy_key is null or not exists (
        select from mixpanel_sync.event_ledger_legacy g where g.project_id = pid and g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))
      and (select true from mixpanel_sync.event_ledger l
        where l.project_id = pid and l.distinct_id = w.distinct_id and l.event_key = w.event_key
          and (l.day between w.day - 2 and w.day - 1 or l.day between w.day + 1 and w.day + 2)
        limit 1) is null
    order by w.distinct_id, w.event_key, w.line_id
    on conflict (project_id, distinct_id, event_key, day) do nothing
    returning event_ledger.distinct_id, event_ledger.day, event_ledger.event_name, event_ledger.event_time
  ), applied as (
    select l.* from ledgered l where l.distinct_id <> ''
  ), daily as (
    insert into mixpanel_sync.events_daily as d (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
    select pid, l.distinct_id, l.day, l.event_name, count(*), min(l.event_time), max(l.event_time)
    from applied l
    group by l.distinct_id, l.day, l.event_name
    on conflict (project_id, distinct_id, day, event_name) do update set
      event_count = d.event_count + excluded.event_count,
      first_at = least(d.first_at, excluded.first_at),
      last_at = greatest(d.last_at, excluded.last_at)
  ), per_name as (
    select l.distinct_id, l.event_name, count(*) as event_count, min(l.event_time) as first_at, max(l.event_time) as last_at
    from applied l
    group by l.distinct_id, l.event_name
  ), summed as (
    -- ADD only ever adds: the summary moves by the run's delta, without reading a user's history
    -- (what keeps an incremental run's cost independent of it).
    insert into mixpanel_sync.subscribers as s
      (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
    select pid, p.distinct_id, sum(p.event_count), min(p.first_at), max(p.last_at), jsonb_object_agg(p.event_name, p.event_count), now()
    from per_name p
    group by p.distinct_id
    on conflict (project_id, distinct_id) do update set
      total_events = s.total_events + excluded.total_events,
      first_event_at = least(s.first_event_at, excluded.first_event_at),
      last_event_at = greatest(s.last_event_at, excluded.last_event_at),
      event_counts = mixpanel_sync.add_event_counts(s.event_counts, excluded.event_counts),
      updated_at = excluded.updated_at
  )
  select
    (select count(*) from applied),
    (select count(*) from in_window w where w.distinct_id <> '') - (select count(*) from applied),
    (select count(*) from candidates c where c.distinct_id <> '') - (select count(*) from in_window w where w.distinct_id <> ''),
    (select count(distinct l.distinct_id) from applied l)
  into result.applied, result.duplicates, result.too_old, result.users_touched;
  return result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) is 'ADD, set-based, one statement: applies the run''s events not yet in the ledger on their day or the two days either side (nor, by their old-formula key, in event_ledger_legacy; repeats inside the run count once, the first line wins) and moves each touched subscriber by the run''s delta; events before horizon_day cannot be deduplicated and are counted too_old, not applied. The ledger is probed on the event''s own day first (one day partition), and only the events not found there on the days either side (the partitions of those days that exist): a re-read event costs one probe, a new one at most five. With events.store_raw on, ledger rows carry the raw columns and events with no distinct_id are kept under distinct_id '''' (deduplicated the same way, never counted). Idempotent and order-independent.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add(run_id bigint, horizon_day date) to mixpanel_sync_loader;

create or replace function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date)
 returns mixpanel_sync.apply_result
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = upsert_subscribers_incremental_add_loop.run_id);
  inserted record;
  user_id text;
begin
  perform mixpanel_sync.ensure_run_ledger_partitions(upsert_subscribers_incremental_add_loop.run_id, horizon_day, 'infinity');
  inserted := mixpanel_sync.insert_new_events_loop(run_id, horizon_day, 'infinity');
  foreach user_id in array inserted.distinct_ids loop
    perform mixpanel_sync.refresh_subscriber_loop(pid, user_id);
  end loop;
  return (inserted.applied, inserted.duplicates, inserted.outside, cardinality(inserted.distinct_ids))::mixpanel_sync.apply_result;
end;
$function$;
comment on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) is 'ADD, row-at-a-time reference implementation of upsert_subscribers_incremental_add: same contract, same resulting tables.';
grant execute on function mixpanel_sync.upsert_subscribers_incremental_add_loop(run_id bigint, horizon_day date) to mixpanel_sync_loader;

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
begin
  parsed := mixpanel_sync.parse_staged_events(run.id);
  -- Mixpanel's "terminated early" line is not JSON, so the parse has rejected it: the probe reads the run's rejected
  -- lines only (a PK lookup each), not every staged line.
  select s.line_no, s.line_id, s.line into marker
  from mixpanel_sync.run_events e
  join mixpanel_sync.staged_events s on s.run_id = e.run_id and s.line_id = e.line_id
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
grant execute on function mixpanel_sync.finish_events_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := run.project_id;
  change_detection boolean := mixpanel_sync.setting(pid, 'profiles.change_detection') = 'on';
  result mixpanel_sync.profiles_result;
  line record;
begin
  perform mixpanel_sync.number_staged_lines('profiles', run.id);
  -- 1. Fast path: trust every line to be a JSON object (one cast per line). A line that is not, or anything else a
  --    line can cause (nesting too deep: class 54), makes the statement fail.
  perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'on', true);
  begin
    result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
  exception
    when others then
      if not mixpanel_sync.line_can_cause(sqlstate) then
        raise;
      end if;
      -- 2. The careful path: json_object_or_null never raises, the date casts are guarded by their pattern.
      perform pg_catalog.set_config('mixpanel_sync.trust_json_lines', 'off', true);
      begin
        result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
      exception
        when others then
          if not mixpanel_sync.line_can_cause(sqlstate) then
            raise;
          end if;
          -- 3. Last resort: read each line on its own; one that still raises is marked with the error (a reject),
          --    then the careful path runs again.
          for line in
            select s.line_id from mixpanel_sync.staged_profiles s
            where s.run_id = run.id and s.problem is null
            order by s.line_id
          loop
            begin
              perform p.*::text from mixpanel_sync.staged_profiles_parsed p where p.run_id = run.id and p.line_id = line.line_id;
            exception
              when others then
                if not mixpanel_sync.line_can_cause(sqlstate) then
                  raise;
                end if;
                update mixpanel_sync.staged_profiles s set problem = 'could not be read: ' || sqlerrm
                where s.run_id = run.id and s.line_id = line.line_id;
            end;
          end loop;
          result := mixpanel_sync.upsert_subscriber_properties(run.id, change_detection);
      end;
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
$function$;
comment on function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs) is 'The profiles part of finish_run (same transaction): applies the run with upsert_subscriber_properties under profiles.change_detection (fast path, then on any error a line can cause the careful path, then line by line rejecting a line that still raises) and fills received, rejected, duplicates, inserted, updated, unchanged, users_touched and options (change_detection, rows_written, lines_recognised, dates_read_in).';
grant execute on function mixpanel_sync.finish_profiles_run(run mixpanel_sync.sync_runs) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_run(run_id bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set work_mem to '64MB'
 set jit to 'off'
as $function$
declare
  began timestamptz := clock_timestamp();
  run mixpanel_sync.sync_runs;
begin
  -- A project's finishes are serialised: apply one at a time (another project's finish goes on: its own key).
  run := mixpanel_sync.running_run(run_id, 'finish_run', null);
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run:' || run.project_id, 0));
  perform from mixpanel_sync.sync_runs r where r.id = run.id for update;

  if run.source = 'events' then
    run := mixpanel_sync.finish_events_run(run);
  else
    run := mixpanel_sync.finish_profiles_run(run);
  end if;

  perform mixpanel_sync.drop_staged_rows(run.id);
  update mixpanel_sync.sync_runs r set
    status = 'succeeded',
    received = run.received,
    applied = run.applied,
    duplicates = run.duplicates,
    rejected = run.rejected,
    too_old = run.too_old,
    users_touched = run.users_touched,
    inserted = run.inserted,
    updated = run.updated,
    unchanged = run.unchanged,
    watermark_before = run.watermark_before,
    watermark_after = run.watermark_after,
    lateness = run.lateness,
    links_learned = run.links_learned,
    reattributed_events = run.reattributed_events,
    options = run.options,
    finished_at = clock_timestamp(),
    stage_ms = (extract(epoch from began - r.started_at) * 1000)::bigint,
    apply_ms = (extract(epoch from clock_timestamp() - began) * 1000)::bigint,
    total_ms = (extract(epoch from clock_timestamp() - r.started_at) * 1000)::bigint
  where r.id = run.id
  returning r.* into run;
  perform mixpanel_sync.prune_history(run.project_id);
  return run;
end;
$function$;
comment on function mixpanel_sync.finish_run(run_id bigint) is 'Applies a run in ONE transaction: parse, reject, identity step, REPLACE guard, REPLACE or ADD, prune the ledger, advance the watermark, record counts and timings. A project''s finishes are serialised with a transaction-scoped advisory lock of its own (mixpanel_sync.finish_run:<project id>); two projects'' finishes run at the same time. On error nothing changes (MP001 guard refusal, MP003 incomplete input, …): call fail_run with the SQLSTATE.';
grant execute on function mixpanel_sync.finish_run(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.finish_cohorts_run(run_id bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := (select r.project_id from mixpanel_sync.sync_runs r where r.id = finish_cohorts_run.run_id);
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

  if n_list > n_list_rejected or not exists (select from mixpanel_sync.cohorts c where c.project_id = pid) then
    -- The list is whole: cohorts no longer in it are deleted (their members with them).
    delete from mixpanel_sync.cohorts c
    where c.project_id = pid and not exists (select from mixpanel_sync.cohort_list_rows(run.id) l where l.reject_reason is null and l.cohort_id = c.cohort_id);
    get diagnostics n_cohorts_removed = row_count;
  else
    n_cohorts_removed := 0; -- an empty list over stored cohorts: nothing is deleted (see the run's options)
  end if;

  insert into mixpanel_sync.cohorts as c (project_id, cohort_id, name, description, member_count, is_visible, created_at, properties, changed_by_run_id, synced_at)
  select distinct on (l.cohort_id) pid, l.cohort_id, l.line ->> 'name', l.line ->> 'description',
    case when (l.line ->> 'count') ~ '^[0-9]{1,18}$' then (l.line ->> 'count')::bigint end,
    case when jsonb_typeof(l.line -> 'is_visible') = 'number' then (l.line ->> 'is_visible') <> '0'
      when jsonb_typeof(l.line -> 'is_visible') = 'boolean' then (l.line ->> 'is_visible')::boolean end,
    case when (l.line ->> 'created') ~ '^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}$' then (l.line ->> 'created')::timestamp at time zone 'UTC' end,
    l.line, finish_cohorts_run.run_id, now()
  from mixpanel_sync.cohort_list_rows(run.id) l
  where l.reject_reason is null
  order by l.cohort_id, l.line_id desc
  on conflict (project_id, cohort_id) do update set
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
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id;

  insert into mixpanel_sync.sync_rejects (run_id, source, line_no, payload, reason)
  select finish_cohorts_run.run_id, 'cohorts', r.line_id, r.profile::text, r.reject_reason || ' (cohort ' || r.cohort_id || ')'
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id where r.reject_reason is not null;

  -- Who left: members of the cohorts fetched whole that the fetch no longer has.
  delete from mixpanel_sync.cohort_members cm
  where cm.project_id = pid and cm.cohort_id in (
      select f.cohort_id from mixpanel_sync.staged_cohort_fetches f where f.run_id = finish_cohorts_run.run_id)
    and not exists (
      select from mixpanel_sync.cohort_member_rows(run.id) r
      where r.reject_reason is null and r.cohort_id = cm.cohort_id and r.distinct_id = cm.distinct_id);
  get diagnostics n_removed = row_count;

  -- Who joined; members who stayed are not touched (on conflict do nothing writes no tuple for them).
  insert into mixpanel_sync.cohort_members (project_id, cohort_id, distinct_id, added_by_run_id)
  select distinct pid, r.cohort_id, r.distinct_id, finish_cohorts_run.run_id
  from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id
  where r.reject_reason is null
    and not exists (select from mixpanel_sync.cohort_members cm where cm.project_id = pid and cm.cohort_id = r.cohort_id and cm.distinct_id = r.distinct_id)
  on conflict do nothing;
  get diagnostics n_added = row_count;

  select count(distinct (r.cohort_id, r.distinct_id)) into n_members from mixpanel_sync.cohort_member_rows(run.id) r join mixpanel_sync.cohorts c0 on c0.project_id = pid and c0.cohort_id = r.cohort_id where r.reject_reason is null;
  select count(*) into n_whole from mixpanel_sync.staged_cohort_fetches f
  where f.run_id = finish_cohorts_run.run_id and exists (select from mixpanel_sync.cohorts c where c.project_id = pid and c.cohort_id = f.cohort_id);

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
$function$;
comment on function mixpanel_sync.finish_cohorts_run(run_id bigint) is 'Applies a cohorts run in one transaction, set-based with change detection: cohorts upserted only when their list entry changed and deleted when no longer listed; for each cohort fetched whole, members who left deleted and who joined inserted, members who stayed untouched (an unchanged membership writes 0 tuples). Counts: received = member rows staged = applied (distinct members) + duplicates + rejected (list rejects counted in rejected too); inserted = members added, updated = members removed, unchanged = members kept; the rest in options.';
grant execute on function mixpanel_sync.finish_cohorts_run(run_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.spot_check_differences(check_id bigint)
 returns table(distinct_id text, day date, event_name text, mixpanel bigint, ours bigint, pending bigint, differs boolean, reason text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  with c as (
    select * from mixpanel_sync.spot_checks k where k.id = spot_check_differences.check_id
  ), parsed as (
    select p.doc, p.event_name, p.distinct_id, p.time_raw, p.insert_id, p.processed_at,
      mixpanel_sync.event_second(p.time_raw) as second
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
    ) p cross join c
    -- only the names the sync keeps (c.events; [] or null = every name)
    where coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? p.event_name
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
    where d.project_id = c.project_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
      and (coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? d.event_name)
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
            where d.project_id = c.project_id and d.distinct_id = u.distinct_id and d.event_name = n.event_name and d.day not between c.from_day and c.to_day), 0) as expected
    from c cross join unnest(c.users) u(distinct_id)
    left join mixpanel_sync.subscribers s on s.project_id = c.project_id and s.distinct_id = u.distinct_id
    cross join lateral (
      select k as event_name from jsonb_object_keys(coalesce(s.event_counts, '{}')) k
      where coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? k
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
$function$;
comment on function mixpanel_sync.spot_check_differences(check_id bigint) is 'The differences a spot-check found, per user, UTC day and event name over its window: Mixpanel''s events (staged, deduplicated with event_key like the sync, read in the run''s project timezone) against events_daily, and per user and event name against subscribers.event_counts. Events after the watermark, or processed after the processing watermark, are pending (not a difference: the next run syncs them; differs false). Groups that match are not returned. Only the event names the check recorded (spot_checks.events, the setting events.only when it began; [] = every name) are compared, on both sides: stored rows of other names (removed from events.only, not yet forgotten) and Mixpanel''s events of other names are left out.';
grant execute on function mixpanel_sync.spot_check_differences(check_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync.spot_check_counts(check_id bigint)
 returns table(compared bigint, pending bigint)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  -- (user, day, event) groups over the window on either side, and the pending events among Mixpanel's
  select
    (select count(*) from (
      select d.distinct_id, d.day, d.event_name from mixpanel_sync.events_daily d, mixpanel_sync.spot_checks c
      where c.id = spot_check_counts.check_id and d.project_id = c.project_id and d.distinct_id = any (c.users) and d.day between c.from_day and c.to_day
        and (coalesce(jsonb_array_length(c.events), 0) = 0 or c.events ? d.event_name)
      union
      select x.distinct_id, x.day, x.event_name from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x where x.day is not null
    ) g),
    (select coalesce(sum(x.pending), 0)::bigint from mixpanel_sync.spot_check_differences(spot_check_counts.check_id) x);
$function$;
comment on function mixpanel_sync.spot_check_counts(check_id bigint) is 'How many (user, day, event) groups a spot-check compared (of the names it compares: spot_checks.events), and how many of Mixpanel''s events were pending.';
grant execute on function mixpanel_sync.spot_check_counts(check_id bigint) to mixpanel_sync_loader;

create or replace function mixpanel_sync_private.analyze_run_events()
 returns void
 language plpgsql
 security definer
 set search_path to ''
as $function$
begin
  -- skip_locked: another project's finish_run analyzes it too, and holds its lock to commit; then the statistics
  -- sampled last are used (this finish does not wait for the other one).
  analyze (skip_locked) mixpanel_sync.run_events;
end;
$function$;
comment on function mixpanel_sync_private.analyze_run_events() is 'Samples mixpanel_sync.run_events (ANALYZE) so that the statements after the parse are planned on the running run''s real size: run ids only grow, so statistics sampled earlier estimate a new run at about one row, and a REPLACE planned on that runs its anti-joins as nested loops (64 s instead of 1.2 s measured for a second 95,000-line full sync). It samples 3,000 rows (the columns'' statistics targets: 10, and 0 for the raw columns). SECURITY DEFINER (owned by the schema owner) because only the owner may analyze the table; it analyzes nothing else. skip_locked: while another finish_run (of another project) holds the table''s ANALYZE lock to its commit, nothing is sampled and this finish goes on with the statistics sampled last.';
grant execute on function mixpanel_sync_private.analyze_run_events() to mixpanel_sync_loader;


-- drop_staged_rows is unchanged (its "no other run of the source is running" counts every project's runs); its comment
-- says so.
comment on function mixpanel_sync.drop_staged_rows(run_id bigint) is 'Removes everything staged for a run: staged rows never outlive their run. When no other run of its source is running, in any project (begin_run allows one per project and source), the staging tables of the source are TRUNCATEd, so their disk space returns at once (a DELETE would leave it dead until vacuum). The lock for the TRUNCATE waits up to twice deadlock_timeout per table (at least 200 ms, at most 10 s; lock_timeout set for that statement only), long enough for PostgreSQL to cancel an autovacuum worker holding a conflicting lock; if another run of the source is running (of any project: another project''s staged lines are never truncated away), or the lock is still held after that wait (a loader still COPYing for a run abandoned as stale), the rows are deleted.';

--! split: 600-entry-points.sql
-- 600-entry-points: the functions a loader or a DBA calls without a run id take a trailing `project text default null`,
-- resolved once by mixpanel_sync.project_id (null: the only project, so a single-project installation calls them as
-- before): begin_run (also mixpanel_project_id bigint default null), begin_cohorts_run, begin_spot_check, sync_health,
-- reattribute_all, forget_event_names; and the property tests' mixpanel_sync_verify.table_snapshot. New:
-- sync_health_all(). Lock keys per project (docs/projects.md §5.5): begin mixpanel_sync.begin_run:<project id>:<source>
-- (forget_event_names too), finish mixpanel_sync.finish_run:<project id> (reattribute_all too).
-- Idempotent: the old signatures are dropped if they exist, the new ones created or replaced.

drop function if exists mixpanel_sync.begin_run(text, boolean, timestamp with time zone, text, date, date, boolean, text[]);
create or replace function mixpanel_sync.begin_run(source text, force_full boolean DEFAULT false, clock timestamp with time zone DEFAULT now(), project_timezone text DEFAULT NULL::text, resync_from date DEFAULT NULL::date, resync_to date DEFAULT NULL::date, allow_shrink boolean DEFAULT false, events text[] DEFAULT NULL::text[], project text DEFAULT NULL::text, mixpanel_project_id bigint DEFAULT NULL::bigint)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  -- the project: named, or the only one (MP004 otherwise)
  pid smallint := mixpanel_sync.project_id(begin_run.project);
  project_row mixpanel_sync.projects;
  mark mixpanel_sync.sync_watermarks;
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
  horizon date;
  reason text;
  new_id bigint;
  owner jsonb;
  clock_day date;
  heartbeat_timeout interval := mixpanel_sync.setting(pid, 'runs.heartbeat_timeout')::interval;
  standing jsonb;
  selection jsonb;
  selected jsonb := '{}';
begin
  if source is null or source not in ('events', 'profiles') then
    raise exception 'begin_run: source must be ''events'' or ''profiles'', got %', coalesce(quote_literal(source), 'null')
      using errcode = 'MP004', hint = 'select * from mixpanel_sync.begin_run(''events'')';
  end if;
  if clock is null then
    raise exception 'begin_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  clock_day := (clock at time zone 'UTC')::date;
  -- The project's own timezone when none is given; a different one is a configuration error.
  select * into project_row from mixpanel_sync.projects p where p.id = pid;
  if project_timezone is null then
    project_timezone := project_row.timezone;
  elsif project_row.timezone is not null and project_timezone <> project_row.timezone then
    raise exception 'begin_run: project_timezone % differs from project %''s timezone %', quote_literal(project_timezone),
      quote_literal(project_row.name), quote_literal(project_row.timezone)
      using errcode = 'MP004', hint = 'leave project_timezone out to use the project''s (CLI: unset MIXPANEL_PROJECT_TIMEZONE), or change mixpanel_sync.projects.timezone';
  end if;
  if begin_run.mixpanel_project_id is not null and project_row.mixpanel_project_id is distinct from begin_run.mixpanel_project_id
    and (project_row.mixpanel_project_id is not null
      or exists (select from mixpanel_sync.projects p where p.mixpanel_project_id = begin_run.mixpanel_project_id)) then
    raise exception 'begin_run: Mixpanel project % is not the Mixpanel project of project % (%)', begin_run.mixpanel_project_id,
      quote_literal(project_row.name), coalesce(project_row.mixpanel_project_id::text,
        'Mixpanel project ' || begin_run.mixpanel_project_id || ' is project ' || (select quote_literal(p.name) from mixpanel_sync.projects p
          where p.mixpanel_project_id = begin_run.mixpanel_project_id))
      using errcode = 'MP004', hint = 'a project''s rows come from one Mixpanel project: check MIXPANEL_PROJECT_ID and --project (MIXPANEL_PROJECT)';
  end if;
  if project_timezone is not null
    and not exists (select from pg_catalog.pg_timezone_names z where z.name = project_timezone) then
    raise exception 'begin_run: unknown project timezone %', quote_literal(project_timezone)
      using errcode = 'MP004', hint = 'use an IANA name such as America/Los_Angeles (select name from pg_timezone_names)';
  end if;
  if events is not null then
    if source is distinct from 'events' then
      raise exception 'begin_run: events (a selection of event names) is for source ''events'' only'
        using errcode = 'MP004', hint = 'leave events out for profiles';
    end if;
    if exists (select from unnest(events) n (name) where n.name is null or n.name = '' or length(n.name) > 255) then
      raise exception 'begin_run: every name in events must be a non-empty event name of at most 255 characters, got %',
        (select string_agg(coalesce(quote_literal(case when length(n.name) > 60 then left(n.name, 60) || '…' else n.name end), 'null'), ', ')
          from unnest(events) n (name)
          where n.name is null or n.name = '' or length(n.name) > 255)
        using errcode = 'MP004',
          hint = 'begin_run(''events'', events => array[''Sign Up'', ''Purchase'']) (CLI: --event NAME, repeatable); '
            'events => ''{}'' or null with events.only = [] syncs every event';
    end if;
  end if;
  if coalesce(force_full, false) and (resync_from is not null or resync_to is not null) then
    raise exception 'begin_run: force_full and resync_from/resync_to exclude each other: a resync replaces only its days, '
      'a forced full run the whole events.full_window'
      using errcode = 'MP004',
        hint = 'for chosen days: begin_run(''events'', resync_from => ..., resync_to => ...) (CLI --resync-from/--resync-to); '
          'for the whole window: begin_run(''events'', force_full => true) (CLI --full)';
  end if;
  if resync_to is not null and resync_from is null then
    raise exception 'begin_run: resync_to needs resync_from' using errcode = 'MP004',
      hint = 'begin_run(''events'', resync_from => ''YYYY-MM-DD'', resync_to => ''YYYY-MM-DD'')';
  end if;
  if resync_from is not null and (source <> 'events' or resync_from > coalesce(resync_to, resync_from)
    or coalesce(resync_to, resync_from) > clock_day) then
    raise exception 'begin_run: a resync needs source ''events'' and resync_from <= resync_to <= the clock''s UTC day (%)', clock_day
      using errcode = 'MP004', hint = 'without resync_to a resync covers resync_from only';
  end if;

  -- One begin_run per project and source at a time: the check and the insert below cannot interleave with another's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':' || source, 0));
  -- The project's first run records its Mixpanel project id (checked above; the unique key guards a race).
  if begin_run.mixpanel_project_id is not null and project_row.mixpanel_project_id is null then
    update mixpanel_sync.projects p set mixpanel_project_id = begin_run.mixpanel_project_id
    where p.id = pid and p.mixpanel_project_id is null;
  end if;

  perform mixpanel_sync.abandon_stale_runs(pid);
  new_id := pg_catalog.nextval(pg_catalog.pg_get_serial_sequence('mixpanel_sync.sync_runs', 'id'));

  -- A running run whose loader is gone is abandoned now, not after runs.abandon_after: its owner session (the one that
  -- ran its begin_run) no longer exists AND it has no heartbeat younger than runs.heartbeat_timeout and younger than
  -- the server's start. Through a
  -- transaction pooler (pgbouncer) the owner session may close while the loader works on another one: the loader's
  -- heartbeat keeps such a run alive. A run that never had a heartbeat (psql) is judged by its owner session alone.
  for other in
    select * from mixpanel_sync.sync_runs r
    where r.project_id = pid and r.source = begin_run.source and r.status = 'running'
      and r.options -> 'owner' ->> 'pid' is not null
      and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout
        -- no beat since the server (re)started: the loader's connections died with it (pg_ctl stop -m immediate)
        or r.heartbeat_at < pg_catalog.pg_postmaster_start_time())
      and not exists (
        select from pg_catalog.pg_stat_activity a
        where a.pid = (r.options -> 'owner' ->> 'pid')::integer
          -- backend_start is null for sessions of other roles without pg_read_all_stats: presumed alive.
          and (a.backend_start is null or r.options -> 'owner' ->> 'backend_start' is null
            or a.backend_start = (r.options -> 'owner' ->> 'backend_start')::timestamptz))
    for update
  loop
    update mixpanel_sync.sync_runs r set
      status = 'abandoned',
      finished_at = now(),
      total_ms = (extract(epoch from now() - r.started_at) * 1000)::bigint,
      error = format('abandoned by begin_run of run %s: its loader''s session (pid %s) is gone', new_id, other.options -> 'owner' ->> 'pid')
        || case when other.heartbeat_at < now() - heartbeat_timeout
          then format(' and its last heartbeat is %s old (runs.heartbeat_timeout %s)',
            justify_interval(date_trunc('second', now() - other.heartbeat_at)), heartbeat_timeout)
          when other.heartbeat_at is not null
          then ' and it sent no heartbeat since the server started'
          else '' end
    where r.id = other.id;
    perform mixpanel_sync.drop_staged_rows(other.id);
  end loop;

  select * into other from mixpanel_sync.sync_runs r
  where r.project_id = pid and r.source = begin_run.source and r.status = 'running'
  order by r.started_at limit 1;
  if found then
    raise exception 'begin_run: run % of source % is running (started % ago, by pid %); one % run at a time',
      other.id, source, justify_interval(date_trunc('second', now() - other.started_at)),
      coalesce(other.options -> 'owner' ->> 'pid', '?'), source
      using errcode = 'MP002',
        hint = format('wait for it to finish (CLI: --wait SECONDS); if its loader is dead: select mixpanel_sync.fail_run(%s, ''loader died''); '
          'runs still running after runs.abandon_after (%s) are abandoned by the next begin_run', other.id, mixpanel_sync.setting(pid, 'runs.abandon_after'));
  end if;

  owner := jsonb_build_object('pid', pg_catalog.pg_backend_pid(),
    'backend_start', (select a.backend_start from pg_catalog.pg_stat_activity a where a.pid = pg_catalog.pg_backend_pid()));

  begin
    if source = 'profiles' then
      insert into mixpanel_sync.sync_runs (id, project_id, source, mode, fetch_to, project_timezone, options)
      overriding system value
      values (new_id, pid, 'profiles', 'full', clock, project_timezone,
        jsonb_build_object('mode_reason', 'profiles are always read whole', 'owner', owner))
      returning * into run;
      return run;
    end if;

    -- The run's selection: events when given (an empty array: every event), else the setting events.only.
    -- Recorded sorted and without repeats in options->'events' (absent: every event), which the parse
    -- (skip_reason 'not_selected'), the REPLACE (clears only these names) and the loader's Export API request read.
    -- A selection that leaves out a name the standing selection (events.only; [] = every name) syncs did not fetch
    -- that name's events: options->'keeps_watermark' tells finish_run to leave the watermark as it is.
    standing := coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]');
    selection := case when events is null then standing
      else (select coalesce(jsonb_agg(distinct to_jsonb(n.name)), '[]') from unnest(events) n (name)) end;
    selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')
      from jsonb_array_elements(selection) e (name));
    if jsonb_array_length(selection) > 0 then
      selected := jsonb_build_object('events', selection);
      if jsonb_array_length(standing) = 0 or not selection @> standing then
        selected := selected || jsonb_build_object('keeps_watermark', true);
      end if;
    end if;

    select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
    horizon := mixpanel_sync.horizon_day(clock, mixpanel_sync.setting(pid, 'events.ledger_retention')::interval);
    reason := case
      when force_full then 'forced'
      when mixpanel_sync.setting(pid, 'events.incremental') = 'off' then 'events.incremental is off'
      when mark.watermark is null then 'no watermark yet'
      when mark.watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval < horizon::timestamp at time zone 'UTC'
        then 'watermark is older than the ledger retention'
    end;

    if resync_from is not null then
      -- REPLACE of exactly these days (resync_from alone: that day); the loader fetches them and nothing after them.
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'full', resync_from::timestamp at time zone 'UTC',
        least(clock, (w.to_day + 1)::timestamp at time zone 'UTC' - interval '1 second'), resync_from, w.to_day,
        project_timezone, jsonb_build_object('mode_reason', 'resync', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select coalesce(resync_to, resync_from) as to_day) w
      returning * into run;
    elsif reason is not null then
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, window_from_day, window_to_day, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'full', w.from_day::timestamp at time zone 'UTC', clock, w.from_day, clock_day,
        project_timezone, jsonb_build_object('mode_reason', reason, 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mixpanel_sync.horizon_day(clock, mixpanel_sync.setting(pid, 'events.full_window')::interval) as from_day) w
      returning * into run;
    else
      insert into mixpanel_sync.sync_runs
        (id, project_id, source, mode, fetch_from, fetch_to, lookback_from, processed_after, project_timezone, options)
      overriding system value
      select new_id, pid, 'events', 'incremental', f.fetch_from, clock,
        greatest(f.fetch_from - mixpanel_sync.setting(pid, 'events.late_lookback')::interval, horizon::timestamp at time zone 'UTC'),
        mark.processing_watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval,
        project_timezone, jsonb_build_object('mode_reason', 'watermark', 'allow_shrink', coalesce(allow_shrink, false), 'owner', owner) || selected
      from (select mark.watermark - mixpanel_sync.setting(pid, 'events.overlap')::interval as fetch_from) f
      returning * into run;
    end if;
  exception
    when unique_violation then
      -- another session's run of this source committed after this transaction's snapshot (e.g. repeatable read)
      raise exception 'begin_run: another % run started at the same time; one % run at a time', source, source
        using errcode = 'MP002', hint = 'wait for it to finish (CLI: --wait SECONDS), then run again';
  end;
  return run;
end;
$function$;
comment on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[], project text, mixpanel_project_id bigint) is 'Starts a run (one short transaction) and decides its mode and window. Full when there is no watermark, when forced, when events.incremental is off, or when the watermark is older than the ledger retention; else incremental from watermark - events.overlap. clock is the run''s fetch_to. project_timezone: for projects that store local time. resync_from/resync_to: a full run that replaces exactly those UTC days (resync_from alone: that one day). allow_shrink: let this full run empty or shrink stored days (the REPLACE guard of finish_run, MP001, is off). events: this run''s selection of event names (CLI --event NAME); null: the setting events.only; an empty array: every event. The selection is recorded in options->''events'' (sorted, no repeats; absent = every event): other names are skipped as not_selected, a full run replaces only the selected names in its window, and the loader asks the Export API for just them. A selection that leaves out a name events.only syncs (every name when events.only is []) records options->''keeps_watermark'' = true: the run does not move the watermark, because the other names were not fetched. One run at a time per source: refused with MP002 while another is running (a unique index makes two racing calls safe); a running run is abandoned first when its loader is gone: its owner session (options->owner: pid, backend_start) no longer exists and its heartbeat (heartbeat_at, set by heartbeat_run) is absent, older than runs.heartbeat_timeout or older than the server''s start; any run still running after runs.abandon_after is abandoned too. Through a transaction pooler (pgbouncer) the owner session may close or outlive the loader: the loader''s heartbeat is what counts there. project: the project''s name (mixpanel_sync.projects; null: the only project, MP004 when there are several); its settings, watermark and runs are the ones read, and another project''s runs are never abandoned or waited for (one run at a time per project and source). project_timezone null: the project''s timezone; a different one is refused (MP004). mixpanel_project_id: the Mixpanel project the loader reads; recorded on the project''s first run, and a run of another Mixpanel project is refused (MP004). Invalid arguments: MP004 (e.g. force_full with resync_*, an empty or over-long event name, events for profiles).';
grant execute on function mixpanel_sync.begin_run(source text, force_full boolean, clock timestamp with time zone, project_timezone text, resync_from date, resync_to date, allow_shrink boolean, events text[], project text, mixpanel_project_id bigint) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.begin_cohorts_run(timestamp with time zone);
create or replace function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone DEFAULT now(), project text DEFAULT NULL::text)
 returns mixpanel_sync.sync_runs
 language plpgsql
 set search_path to ''
as $function$
declare
  pid smallint := mixpanel_sync.project_id(begin_cohorts_run.project);
  run mixpanel_sync.sync_runs;
  other mixpanel_sync.sync_runs;
begin
  if clock is null then
    raise exception 'begin_cohorts_run: clock must not be null' using errcode = 'MP004', hint = 'leave clock out to use now()';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':cohorts', 0));
  perform mixpanel_sync.abandon_stale_runs(pid);
  select * into other from mixpanel_sync.sync_runs r where r.project_id = pid and r.source = 'cohorts' and r.status = 'running' order by r.started_at limit 1;
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
  insert into mixpanel_sync.sync_runs (project_id, source, mode, fetch_to, options)
  values (pid, 'cohorts', 'full', clock, jsonb_build_object('mode_reason', 'cohorts are always read whole',
    'owner', jsonb_build_object('pid', pg_catalog.pg_backend_pid())))
  returning * into run;
  return run;
end;
$function$;
comment on function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone, project text) is 'Begins a cohorts run (source ''cohorts'', always whole): refuses with MP002 while another cohorts run of the project is running (project: its name; null: the only project), abandons stale runs and clears staged rows of cohorts runs that ended without finishing.';
grant execute on function mixpanel_sync.begin_cohorts_run(clock timestamp with time zone, project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.begin_spot_check(integer, text);
create or replace function mixpanel_sync.begin_spot_check(users integer, seed text, project text DEFAULT NULL::text)
 returns mixpanel_sync.spot_checks
 language plpgsql
 set search_path to ''
as $function$
declare
  pid smallint := mixpanel_sync.project_id(begin_spot_check.project);
  mark mixpanel_sync.sync_watermarks;
  zone text;
  chosen text[];
  check_row mixpanel_sync.spot_checks;
  selection jsonb;
begin
  if users is null or users < 1 or seed is null then
    raise exception 'begin_spot_check: users must be at least 1 and seed not null' using errcode = 'invalid_parameter_value',
      hint = 'select * from mixpanel_sync.begin_spot_check(20, ''1'')';
  end if;
  select * into mark from mixpanel_sync.sync_watermarks w where w.project_id = pid and w.source = 'events';
  if mark.watermark is null then
    raise exception 'begin_spot_check: nothing synced yet (no events watermark)' using errcode = 'no_data_found',
      hint = 'run npm run sync:events first';
  end if;
  -- the same users for the same seed and subscribers: ordered by a hash of seed and distinct_id
  select array_agg(s.distinct_id order by s.h, s.distinct_id) into chosen
  from (
    select s.distinct_id, md5(begin_spot_check.seed || ':' || s.distinct_id) as h
    from mixpanel_sync.subscribers s
    where s.project_id = pid
    order by 2, 1
    limit begin_spot_check.users
  ) s;
  if chosen is null then
    raise exception 'begin_spot_check: no subscribers to check' using errcode = 'no_data_found', hint = 'run npm run sync:events first';
  end if;
  select r.project_timezone into zone from mixpanel_sync.sync_runs r
  where r.project_id = pid and r.source = 'events' and r.status = 'succeeded' order by r.finished_at desc, r.id desc limit 1;
  -- the names the sync keeps, as runs read them: the setting events.only, sorted ([] = every event)
  selection := (select coalesce(jsonb_agg(e.name order by e.name #>> '{}' collate "C"), '[]')
    from jsonb_array_elements(coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]')) e (name));
  -- staged lines of checks that never finished
  delete from mixpanel_sync.staged_spot_check_events e
  where e.check_id in (select c.id from mixpanel_sync.spot_checks c where c.started_at < now() - interval '1 day');
  insert into mixpanel_sync.spot_checks (project_id, seed, users, from_day, to_day, watermark, processing_watermark, project_timezone, events)
  values (pid, seed, chosen,
    (mark.watermark at time zone 'UTC')::date - (extract(day from mixpanel_sync.setting(pid, 'events.full_window')::interval)::integer - 1),
    (mark.watermark at time zone 'UTC')::date, mark.watermark, mark.processing_watermark, zone, selection)
  returning * into check_row;
  return check_row;
end;
$function$;
comment on function mixpanel_sync.begin_spot_check(users integer, seed text, project text) is 'Begins a spot-check of a project (project: its name; null: the only project): picks `users` of its subscribers by md5(seed || '':'' || distinct_id) (the same seed picks the same users), and the synced window: the events.full_window days ending with the watermark''s UTC day; and the event names the sync keeps (the setting events.only, recorded in events: the loader asks the Export API for just them, and spot_check_differences compares just them).';
grant execute on function mixpanel_sync.begin_spot_check(users integer, seed text, project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.sync_health();
create or replace function mixpanel_sync.sync_health(project text DEFAULT NULL::text)
 returns table("check" text, status text, value text, threshold text, detail text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  with p as materialized (select mixpanel_sync.project_id(sync_health.project) as id)
  select (c.result).* from (
    select 1 as position, mixpanel_sync.health_events_duration(p.id) as result from p
    union all select 2, mixpanel_sync.health_incremental_volume(p.id) from p
    union all select 3, mixpanel_sync.health_incremental_typical(p.id) from p
    union all select 4, mixpanel_sync.health_watermark_lag(p.id) from p
    union all select 5, mixpanel_sync.health_watermark_stalled(p.id) from p
    union all select 6, mixpanel_sync.health_lateness(p.id) from p
    union all select 7, mixpanel_sync.health_too_old(p.id) from p
    union all select 8, mixpanel_sync.health_timezone(p.id) from p
    union all select 9, mixpanel_sync.health_subscribers(p.id) from p
    union all select 10, mixpanel_sync.health_failed_runs(p.id, 'events') from p
    union all select 11, mixpanel_sync.health_rejected(p.id, 'events') from p
    union all select 12, mixpanel_sync.health_profiles_duration(p.id) from p
    union all select 13, mixpanel_sync.health_profiles_change_detection(p.id) from p
    union all select 14, mixpanel_sync.health_profiles_skip_rate(p.id) from p
    union all select 15, mixpanel_sync.health_failed_runs(p.id, 'profiles') from p
    union all select 16, mixpanel_sync.health_rejected(p.id, 'profiles') from p
    union all select 17, mixpanel_sync.health_running(p.id) from p
  ) c
  order by c.position;
$function$;
comment on function mixpanel_sync.sync_health(project text) is 'Health of one project''s sync (project: its name; null: the only project), one row per check: status ok|warn|critical, the value measured, the thresholds (the project''s health.* rows in sync_settings) and a detail. select * from mixpanel_sync.sync_health(); every project: select * from mixpanel_sync.sync_health_all(); see docs/operations.md.';
grant execute on function mixpanel_sync.sync_health(project text) to mixpanel_sync_loader;

create or replace function mixpanel_sync.sync_health_all()
 returns table(project text, "check" text, status text, value text, threshold text, detail text)
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  select p.name::text, h."check", h.status, h.value, h.threshold, h.detail
  from mixpanel_sync.projects p
  cross join lateral mixpanel_sync.sync_health(p.name) with ordinality as h ("check", status, value, threshold, detail, position)
  order by p.name, h.position;
$function$;
comment on function mixpanel_sync.sync_health_all() is 'sync_health of every project, one row per project and check, by project name: select * from mixpanel_sync.sync_health_all() where status <> ''ok''.';
grant execute on function mixpanel_sync.sync_health_all() to mixpanel_sync_loader;

drop function if exists mixpanel_sync.reattribute_all();
create or replace function mixpanel_sync.reattribute_all(project text DEFAULT NULL::text)
 returns jsonb
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(reattribute_all.project);
  from_ids text[];
  to_ids text[];
begin
  -- Any id stored under a non-canonical id of the map (data from before identity.mode was on, or from another mode).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.finish_run:' || pid, 0));
  select coalesce(array_agg(l.alias order by l.alias), '{}'), coalesce(array_agg(l.canonical order by l.alias), '{}')
  into from_ids, to_ids
  from mixpanel_sync.identity_links l
  where l.project_id = pid and l.alias <> l.canonical
    and (exists (select from mixpanel_sync.events_daily d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.event_ledger_legacy d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscribers d where d.project_id = pid and d.distinct_id = l.alias)
      or exists (select from mixpanel_sync.subscriber_properties d where d.project_id = pid and d.distinct_id = l.alias));
  return jsonb_build_object('ids_moved', cardinality(from_ids))
    || mixpanel_sync.reattribute_identities(pid, from_ids, to_ids);
end;
$function$;
comment on function mixpanel_sync.reattribute_all(project text) is 'One-off re-attribution of a project''s stored data through its identity_links (project: its name; null: the only project; serialised with the project''s finish_run): every row keyed by an id whose canonical is another id moves to it. Run it after switching identity.mode on and the full resync that learns the links (README, "Identity merge"). Idempotent: a second call moves nothing.';
grant execute on function mixpanel_sync.reattribute_all(project text) to mixpanel_sync_loader;

drop function if exists mixpanel_sync.forget_event_names(text[]);
create or replace function mixpanel_sync.forget_event_names(names text[], project text DEFAULT NULL::text)
 returns table(event_names text[], daily_rows bigint, events bigint, ledger_rows bigint, users_refreshed bigint)
 language plpgsql
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(forget_event_names.project);
  wanted text[];
  standing jsonb;
  still text;
  other mixpanel_sync.sync_runs;
  touched text[];
begin
  if names is null or cardinality(names) = 0
    or exists (select from unnest(names) n (name) where n.name is null or n.name = '') then
    raise exception 'forget_event_names: names must be a non-empty array of event names, got %', coalesce(names::text, 'null')
      using errcode = 'MP004', hint = 'select * from mixpanel_sync.forget_event_names(array[''Old Event''])';
  end if;
  wanted := (select array_agg(distinct n.name order by n.name) from unnest(names) n (name));

  -- A name the runs still sync would come back: only names outside events.only may be forgotten.
  standing := coalesce(mixpanel_sync.setting(pid, 'events.only')::jsonb, '[]');
  select n.name into still from unnest(wanted) n (name)
  where jsonb_array_length(standing) = 0 or standing ? n.name
  order by n.name limit 1;
  if found then
    raise exception 'forget_event_names: % is still synced (events.only is %): runs would bring it back', quote_literal(still), standing::text
      using errcode = 'MP004',
        hint = 'first set events.only to the names you keep, e.g. update mixpanel_sync.sync_settings set value = ''["Sign Up"]'' where project_id = mixpanel_sync.project_id(''name'') and key = ''events.only''';
  end if;

  -- Not while an events run is running: its finish_run could write these names again. Same lock as begin_run's.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.begin_run:' || pid || ':events', 0));
  select * into other from mixpanel_sync.sync_runs r where r.project_id = pid and r.source = 'events' and r.status = 'running' order by r.started_at limit 1;
  if found then
    raise exception 'forget_event_names: events run % is running; nothing was deleted', other.id
      using errcode = 'MP002', hint = 'run it again when the run has finished';
  end if;

  with gone as (
    delete from mixpanel_sync.events_daily d where d.project_id = pid and d.event_name = any (wanted)
    returning d.distinct_id, d.event_count
  )
  select count(*), coalesce(sum(g.event_count), 0), array_agg(distinct g.distinct_id)
  into daily_rows, events, touched
  from gone g;

  -- The ledger (with raw storage on, the raw events too) and the legacy ledger: through their parents.
  with gone as (
    delete from mixpanel_sync.event_ledger l where l.project_id = pid and l.event_name = any (wanted) returning 1
  )
  select count(*) into ledger_rows from gone;
  with gone as (
    delete from mixpanel_sync.event_ledger_legacy l where l.project_id = pid and l.event_name = any (wanted) returning 1
  )
  select ledger_rows + count(*) into ledger_rows from gone;

  perform mixpanel_sync.refresh_subscribers(pid, coalesce(touched, '{}'));
  users_refreshed := coalesce(cardinality(touched), 0);
  event_names := wanted;
  return next;
end;
$function$;
comment on function mixpanel_sync.forget_event_names(names text[], project text) is 'Deletes a project''s data of event names it no longer syncs (project: its name; null: the only project): their events_daily rows, their ledger rows (the raw events when events.store_raw is on) and legacy ledger rows, then recomputes subscribers of the users they touched (refresh_subscribers; a user left with no event is removed). Returns the names and what was deleted. Refused (MP004) for a name events.only still syncs (every name when events.only is []): remove it from events.only first, or the next runs bring it back; refused (MP002) while an events run is running. For the DBA: not granted to mixpanel_sync_loader (no run needs it). Reads events_daily whole (no index leads with event_name): one-off maintenance.';
revoke execute on function mixpanel_sync.forget_event_names(names text[], project text) from mixpanel_sync_loader;

drop function if exists mixpanel_sync_verify.table_snapshot(text[], text[]);
create or replace function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[] DEFAULT '{}'::text[], project text DEFAULT NULL::text)
 returns jsonb
 language plpgsql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
declare
  pid smallint := mixpanel_sync.project_id(table_snapshot.project);
  own_rows text;
  result jsonb := '{}';
  tab text;
  key_columns text;
  dropped text[];
  rows_of jsonb;
begin
  foreach tab in array tables loop
    -- the key without project_id (the rows are one project's), unless it is the whole key
    select coalesce(string_agg(format('t.%I', a.attname), ', ' order by k.n) filter (where a.attname <> 'project_id'),
        string_agg(format('t.%I', a.attname), ', ' order by k.n))
    into key_columns
    from pg_catalog.pg_index i
    cross join lateral unnest(i.indkey) with ordinality k (attnum, n)
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and i.indisprimary;
    if key_columns is null then
      raise exception 'mixpanel_sync.% is not a table with a primary key', tab
        using errcode = '22023', hint = 'table_snapshot takes names of mixpanel_sync tables that have a primary key.';
    end if;
    select coalesce(array_agg(substr(c, length(tab) + 2)), '{}') into dropped
    from unnest(ignore) c where starts_with(c, tab || '.');
    -- The project's rows: by project_id, else (run_events, sync_rejects, staged_*) by their run's project.
    own_rows := case
      when exists (select from pg_catalog.pg_attribute a
          where a.attrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and a.attname = 'project_id' and not a.attisdropped)
        then 't.project_id = $2'
      when exists (select from pg_catalog.pg_attribute a
          where a.attrelid = pg_catalog.to_regclass(format('mixpanel_sync.%I', tab)) and a.attname = 'run_id' and not a.attisdropped)
        then 't.run_id in (select r.id from mixpanel_sync.sync_runs r where r.project_id = $2)'
      else 'true'
    end;
    if own_rows <> 'true' then
      dropped := dropped || '{project_id}';
    end if;
    execute format('select coalesce(jsonb_object_agg(jsonb_build_array(%s)::text, to_jsonb(t) - $1), ''{}'') from mixpanel_sync.%I t where %s',
      key_columns, tab, own_rows)
      into rows_of using dropped, pid;
    result := result || jsonb_build_object(tab, rows_of);
  end loop;
  return result;
end;
$function$;
comment on function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[], project text) is 'Property tests: every row of one project (project: its name; null: the only project) of the named mixpanel_sync tables as jsonb {table: {primary key without project_id as JSON text: row without project_id}} (tables without project_id: the rows of the project''s runs, by run_id), columns listed in ignore as table.column left out; compare two with verify_first_difference.';


drop function if exists mixpanel_sync_verify.verify_snapshot(text[]);
create or replace function mixpanel_sync_verify.verify_snapshot(ignore text[] DEFAULT '{}'::text[], project text DEFAULT NULL::text)
 returns jsonb
 language sql
 stable
 set search_path to ''
 set jit to 'off'
as $function$
  with p as materialized (select mixpanel_sync.project_id(verify_snapshot.project) as id)
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore - 'project_id'), '{}')
      from mixpanel_sync.events_daily d where d.project_id = p.id and mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore - 'project_id'), '{}')
      from mixpanel_sync.event_ledger l where l.project_id = p.id and mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore - 'project_id'), '{}')
      from mixpanel_sync.subscribers s where s.project_id = p.id and mixpanel_sync_verify.verify_ours(s.distinct_id)))
  from p;
$function$;
comment on function mixpanel_sync_verify.verify_snapshot(ignore text[], project text) is 'Verify scripts: events_daily, event_ledger and subscribers rows of verify_ours users of one project (project: its name; null: the only project) as jsonb keyed by primary key without project_id, columns in ignore and project_id left out.';

--! split: 650-project-status.sql
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

--! split: 900-privileges.sql
-- 900-privileges: the functions this migration created (new signatures) are executable by PUBLIC by default; as in
-- 000006, PUBLIC executes nothing in mixpanel_sync (nor in mixpanel_sync_verify), and the DBA's functions are not the
-- loader's: create_project, drop_project, forget_event_names (revoked in their files too). Idempotent.
revoke execute on all functions in schema mixpanel_sync from public;
revoke execute on all functions in schema mixpanel_sync_verify from public;
revoke execute on function mixpanel_sync.create_project(name text, mixpanel_project_id bigint, region text, timezone text) from mixpanel_sync_loader;
revoke execute on function mixpanel_sync.drop_project(name text) from mixpanel_sync_loader;
revoke execute on function mixpanel_sync.forget_event_names(names text[], project text) from mixpanel_sync_loader;
