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
