-- verify/projects_isolated.sql
-- Proves: several projects in one database are isolated (issue 13 part 3, docs/projects.md). Two scratch projects
-- are created; B is loaded (a full events run, profiles, a cohorts run, identity.mode simplified); A then runs on B's
-- distinct_ids, event keys, cohort id and device: a full run, an incremental run (with events whose keys B's ledger
-- holds), profiles and a cohorts run, with identity.mode simplified. Every row of B (every table, by project_id or by
-- B's runs) is unchanged, every row of the other projects (the database's own) is unchanged, and no row names a
-- project that does not exist.
-- Run on a migrated database (it uses the mixpanel_sync_verify.* helpers): psql -v ON_ERROR_STOP=1 -f verify/projects_isolated.sql
-- It runs in BEGIN … ROLLBACK and leaves no trace (the projects it creates are rolled back with everything else).
-- Seen failing (killed: cohort-members-left-no-project): finish_cohorts_run's "who left" delete without
-- `cm.project_id = pid`: A's cohorts run deleted B's members of cohort 7 ("cohort_members key [7, "verify:u1"]: missing row").
-- Its data: projects verify_isolation_a and verify_isolation_b, distinct_ids 'verify:…' and -90000000NN, days
-- 2000-01-24 .. 2000-02-01, run clocks 2000-02-01.
begin;

do $$
declare
  a mixpanel_sync.projects;
  b mixpanel_sync.projects;
  tables text[] := array['events_daily', 'event_ledger', 'event_ledger_legacy', 'subscribers', 'subscriber_properties',
    'identity_links', 'cohorts', 'cohort_members', 'sync_runs', 'sync_watermarks', 'sync_settings', 'subscriber_count',
    'spot_checks', 'sync_rejects'];
  owned text[] := array['events_daily', 'event_ledger', 'event_ledger_legacy', 'subscribers', 'subscriber_properties',
    'identity_links', 'cohorts', 'cohort_members', 'sync_runs', 'sync_watermarks', 'sync_settings', 'subscriber_count',
    'spot_checks'];
  tab text;
  n bigint;
  others_before jsonb := '{}';
  others_after jsonb := '{}';
  fingerprint jsonb;
  b_before jsonb;
  run mixpanel_sync.sync_runs;
  full_run mixpanel_sync.sync_runs;
  incremental_run mixpanel_sync.sync_runs;
  device_b jsonb := jsonb_build_array(jsonb_build_object('event', 'signup', 'properties', jsonb_build_object(
    'distinct_id', 'verify:u2', 'time', extract(epoch from timestamptz '2000-01-31 10:00Z'), '$insert_id', 'dev-b',
    '$device_id', 'verify-device', '$user_id', 'verify:u2')));
  device_a jsonb := jsonb_build_array(jsonb_build_object('event', 'signup', 'properties', jsonb_build_object(
    'distinct_id', 'verify:u1', 'time', extract(epoch from timestamptz '2000-01-31 10:05Z'), '$insert_id', 'dev-a',
    '$device_id', 'verify-device', '$user_id', 'verify:u1')),
    jsonb_build_object('event', 'open', 'properties', jsonb_build_object(
    'distinct_id', '$device:verify-device', 'time', extract(epoch from timestamptz '2000-01-31 09:00Z'), '$insert_id', 'dev-open',
    '$device_id', 'verify-device')));
begin
  if exists (select from mixpanel_sync.projects p where p.name in ('verify_isolation_a', 'verify_isolation_b')) then
    raise exception 'verify/projects_isolated: projects verify_isolation_a or verify_isolation_b exist; this script creates them'
      using errcode = 'P0001', hint = 'drop them (mixpanel_sync.drop_project) or run the script on another database';
  end if;
  -- The rows of every project there is, before: count and hash sum per table.
  foreach tab in array tables loop
    execute format('select jsonb_build_array(count(*), sum(hashtextextended(t::text, 0))) from mixpanel_sync.%I t', tab)
      into fingerprint;
    others_before := others_before || jsonb_build_object(tab, fingerprint);
  end loop;

  a := mixpanel_sync.create_project('verify_isolation_a');
  b := mixpanel_sync.create_project('verify_isolation_b');
  update mixpanel_sync.sync_settings s set value = 'simplified'
  where s.project_id in (a.id, b.id) and s.key = 'identity.mode';

  -- B: a full events run, profiles, a cohorts run.
  run := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 06:00Z', events => '{}', project => b.name);
  perform mixpanel_sync.stage_events(run.id, mixpanel_sync_verify.verify_events('iso-b', 300, '2000-01-25', 7)
    || mixpanel_sync_verify.verify_events('iso-b-only', 100, '2000-01-25', 7) || device_b);
  run := mixpanel_sync.finish_run(run.id);
  run := mixpanel_sync.begin_run('profiles', clock => '2000-02-01 06:00Z', project => b.name);
  perform mixpanel_sync.stage_profiles(run.id, '[{"$distinct_id": "verify:u1", "$properties": {"$name": "B one"}},
    {"$distinct_id": "verify:u2", "$properties": {"$name": "B two"}}]');
  run := mixpanel_sync.finish_run(run.id);
  run := mixpanel_sync.begin_cohorts_run('2000-02-01 06:00Z', b.name);
  perform mixpanel_sync.stage_cohorts(run.id, '[{"id": 7, "name": "verify cohort of B"}]');
  perform mixpanel_sync.stage_cohort_members(run.id, 7, '[{"$distinct_id": "verify:u1"}, {"$distinct_id": "verify:u2"}]', true);
  run := mixpanel_sync.finish_cohorts_run(run.id);
  b_before := mixpanel_sync_verify.table_snapshot(tables, '{}', b.name);
  if (select count(*) from jsonb_object_keys(b_before -> 'events_daily')) = 0
    or (select count(*) from jsonb_object_keys(b_before -> 'identity_links')) = 0
    or (select count(*) from jsonb_object_keys(b_before -> 'cohort_members')) = 0 then
    raise exception 'verify/projects_isolated: B''s load wrote no rows to compare (%)', b_before;
  end if;

  -- A, on B's ids and keys: a full run, an incremental run, profiles, a cohorts run.
  full_run := mixpanel_sync.begin_run('events', true, clock => '2000-02-01 06:00Z', events => '{}', project => a.name);
  perform mixpanel_sync.stage_events(full_run.id, mixpanel_sync_verify.verify_events('iso-b', 300, '2000-01-25', 7)
    || mixpanel_sync_verify.verify_events('iso-a', 100, '2000-01-25', 7) || device_a);
  full_run := mixpanel_sync.finish_run(full_run.id);
  incremental_run := mixpanel_sync.begin_run('events', clock => '2000-02-01 12:00Z', events => '{}', project => a.name);
  -- B's own events: new to A (B's ledger holding their keys makes none of them a duplicate of A's)
  perform mixpanel_sync.stage_events(incremental_run.id, mixpanel_sync_verify.verify_events('iso-b-only', 100, '2000-01-25', 7));
  incremental_run := mixpanel_sync.finish_run(incremental_run.id);
  run := mixpanel_sync.begin_run('profiles', clock => '2000-02-01 12:00Z', project => a.name);
  perform mixpanel_sync.stage_profiles(run.id, '[{"$distinct_id": "verify:u1", "$properties": {"$name": "A one"}},
    {"$distinct_id": "verify:u3", "$properties": {"$name": "A three"}}]');
  run := mixpanel_sync.finish_run(run.id);
  run := mixpanel_sync.begin_cohorts_run('2000-02-01 12:00Z', a.name);
  perform mixpanel_sync.stage_cohorts(run.id, '[{"id": 7, "name": "verify cohort of A"}]');
  perform mixpanel_sync.stage_cohort_members(run.id, 7, '[{"$distinct_id": "verify:u3"}]', true);
  run := mixpanel_sync.finish_cohorts_run(run.id);
  if full_run.applied = 0 or incremental_run.mode <> 'incremental' or incremental_run.applied = 0
    or full_run.links_learned is null or full_run.links_learned = 0 then
    raise exception 'verify/projects_isolated: A''s runs did not exercise the paths (full run: applied %, links %; incremental: % applied %)',
      full_run.applied, full_run.links_learned, incremental_run.mode, incremental_run.applied;
  end if;

  perform mixpanel_sync_verify.verify_assert_same('projects_isolated', 'rows of project B before (expected) and after (actual) A''s runs',
    b_before, mixpanel_sync_verify.table_snapshot(tables, '{}', b.name));

  -- The other projects' rows: the same fingerprints once A's and B's rows are left out.
  foreach tab in array tables loop
    execute format(
      case when tab = any (owned)
        then 'select jsonb_build_array(count(*), sum(hashtextextended(t::text, 0))) from mixpanel_sync.%I t where t.project_id not in ($1, $2)'
        else 'select jsonb_build_array(count(*), sum(hashtextextended(t::text, 0))) from mixpanel_sync.%I t
              where t.run_id not in (select r.id from mixpanel_sync.sync_runs r where r.project_id in ($1, $2))' end, tab)
      into fingerprint using a.id, b.id;
    others_after := others_after || jsonb_build_object(tab, fingerprint);
  end loop;
  perform mixpanel_sync_verify.verify_assert_same('projects_isolated',
    'fingerprints of the other projects'' rows, before (expected) and after (actual)',
    jsonb_build_object('rows of others', others_before), jsonb_build_object('rows of others', others_after));

  -- No row names a project that does not exist.
  foreach tab in array owned loop
    execute format('select count(*) from mixpanel_sync.%I t where not exists (select from mixpanel_sync.projects p where p.id = t.project_id)', tab)
      into n;
    if n > 0 then
      raise exception 'verify/projects_isolated: % rows of mixpanel_sync.% name no project', n, tab
        using errcode = 'P0001', hint = 'select distinct project_id from mixpanel_sync.' || tab || ' except select id from mixpanel_sync.projects';
    end if;
  end loop;

  raise notice 'PASS verify/projects_isolated: A''s full (% applied, % links), incremental (% applied), profiles and cohorts runs on B''s ids, keys, cohort and device left every row of B (% tables) and of the other projects unchanged; no row names a missing project',
    full_run.applied, full_run.links_learned, incremental_run.applied, cardinality(tables);
end;
$$;

rollback;
