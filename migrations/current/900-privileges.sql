-- 900-privileges: least privilege for schemas mixpanel_sync and mixpanel_sync_verify.
-- Runs last in the current migration, after every other file, so "all functions / all tables in schema" below
-- covers what the other streams create. Re-runnable: every statement is idempotent.
--
-- Model (see README "Roles, Supabase and PgBouncer"):
--   * every function runs with the caller's rights (no SECURITY DEFINER anywhere): calling a function gives no more
--     than the caller's table privileges, so the table grants and RLS policies below are the real boundary;
--   * PUBLIC may execute nothing in either schema, and has no USAGE on them (a schema created with CREATE SCHEMA
--     grants PUBLIC nothing; we revoke anyway in case a DBA granted it);
--   * RLS is enabled on every table of mixpanel_sync with policies only for the two roles shipped here, so a schema
--     exposed through PostgREST by mistake shows anon/authenticated nothing; the table owner (the role that runs the
--     migrations) is not subject to RLS, so psql sessions of the DBA work as before;
--   * mixpanel_sync_loader: everything a sync run needs (begin, stage with COPY, finish, fail, status and health);
--   * mixpanel_sync_reader: SELECT on the aggregates and profiles, nothing else.
-- Roles are cluster-wide: created NOLOGIN, only if absent; a DBA grants them to login roles
-- (`grant mixpanel_sync_loader to my_etl_user;`).

do $roles$
begin
  if not exists (select from pg_catalog.pg_roles where rolname = 'mixpanel_sync_loader') then
    begin
      create role mixpanel_sync_loader nologin;
    exception when duplicate_object or unique_violation then
      null; -- created concurrently by another database's migration on the same cluster
    end;
  end if;
  if not exists (select from pg_catalog.pg_roles where rolname = 'mixpanel_sync_reader') then
    begin
      create role mixpanel_sync_reader nologin;
    exception when duplicate_object or unique_violation then
      null;
    end;
  end if;
end
$roles$;

comment on role mixpanel_sync_loader is
  'mixpanel-pg-sync loader: runs syncs (begin_run, COPY into staged_*, stage_*, finish_run, fail_run, status, sync_health). '
  'NOLOGIN: grant it to the login role the loader connects as.';
comment on role mixpanel_sync_reader is
  'mixpanel-pg-sync reader: SELECT on the aggregates (events_daily, subscribers), profiles (subscriber_properties) and cohorts. '
  'NOLOGIN: grant it to the login roles of dashboards and analysts.';

-- ---------------------------------------------------------------------------------------------------------------------
-- Schemas: nobody by default; the two roles may look up objects in mixpanel_sync.
revoke all on schema mixpanel_sync from public;
grant usage on schema mixpanel_sync to mixpanel_sync_loader, mixpanel_sync_reader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Functions: PUBLIC executes nothing. Every function is SECURITY INVOKER, so EXECUTE on all of mixpanel_sync's
-- functions gives the loader nothing its table privileges do not; it is granted on all of them because the entry
-- points (begin_run, finish_run, …) call the internal ones (parse_*, refresh_subscribers, setting, …) with the
-- caller's rights. The reader executes nothing. mixpanel_sync_verify (proofs for psql) is for the DBA only.
revoke execute on all functions in schema mixpanel_sync from public;
grant execute on all functions in schema mixpanel_sync to mixpanel_sync_loader;
do $verify$
begin
  if exists (select from pg_catalog.pg_namespace where nspname = 'mixpanel_sync_verify') then
    revoke all on schema mixpanel_sync_verify from public;
    revoke execute on all functions in schema mixpanel_sync_verify from public;
  end if;
end
$verify$;

-- Functions created later in mixpanel_sync by the role running this migration: the loader may execute them.
-- (Revoking PUBLIC's default EXECUTE cannot be done per schema in PostgreSQL: ALTER DEFAULT PRIVILEGES IN SCHEMA only
-- adds to the global defaults. Doing it globally would change every function this role creates in any schema of the
-- database, e.g. an application's public.* RPCs on Supabase, so we do not: PUBLIC has no USAGE on the schema, which
-- already keeps it from calling anything here, and scripts/sql/privileges.test.ts fails on any function of the
-- schema whose ACL still lets PUBLIC execute it, so a later migration must revoke it as this file does.)
alter default privileges in schema mixpanel_sync grant execute on functions to mixpanel_sync_loader;

-- ---------------------------------------------------------------------------------------------------------------------
-- Tables: what each role may do, then RLS with a policy per role on each table it uses.
revoke all on all tables in schema mixpanel_sync from public;
revoke all on all sequences in schema mixpanel_sync from public;

-- Staging tables (staged_*) belong to the loader role. PostgreSQL refuses COPY FROM into a table whose RLS applies to
-- the caller ("COPY FROM not supported with row-level security"), and the loader stages with COPY; a table's owner
-- (and every member of the owning role) is exempt from its RLS, so owning the staging tables is how the loader COPYs
-- while RLS stays on for everyone else. The alternatives are worse: BYPASSRLS is a role attribute that is not inherited
-- (the DBA would have to give it to the login role, for every table of the database), and a staging table without RLS
-- would show raw Mixpanel JSON to anon if the schema were exposed. Staging holds only a run's raw input; the
-- aggregates, profiles, runs and settings stay owned by the migration role.
do $staging$
declare
  t record;
begin
  -- ALTER … OWNER TO needs membership in the new owner (superusers excepted): a non-superuser migration role, e.g.
  -- Supabase's postgres (CREATEROLE), grants the loader role to itself first.
  if not (select r.rolsuper from pg_catalog.pg_roles r where r.rolname = current_user)
     and not pg_catalog.pg_has_role(current_user, 'mixpanel_sync_loader', 'member') then
    execute pg_catalog.format('grant mixpanel_sync_loader to %I', current_user);
  end if;
  -- … and the new owner needs CREATE on the schema (superusers excepted): held only for the hand-over, inside this
  -- transaction, so the loader never can create objects in the schema.
  grant create on schema mixpanel_sync to mixpanel_sync_loader;
  for t in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p') and c.relname like 'staged\_%'
    order by c.relname
  loop
    execute pg_catalog.format('alter table %s owner to mixpanel_sync_loader', t.rel);
  end loop;
  revoke create on schema mixpanel_sync from mixpanel_sync_loader;
end
$staging$;

-- The loader writes every table but the settings (a loader must not be able to switch off the REPLACE guard or
-- change the windows: settings are the DBA's, changed with UPDATE as the table owner).
do $tables$
declare
  t record;
begin
  for t in
    select c.oid::regclass as rel, c.relname, c.relowner
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p')
    order by c.relname
  loop
    execute pg_catalog.format('alter table %s enable row level security', t.rel);
    if pg_catalog.pg_get_userbyid(t.relowner) = 'mixpanel_sync_loader' then
      continue; -- staging: the loader owns it (above); RLS on, no policy needed
    elsif t.relname = 'sync_settings' then
      execute pg_catalog.format('grant select on %s to mixpanel_sync_loader', t.rel);
      execute pg_catalog.format('drop policy if exists mixpanel_sync_loader_read on %s', t.rel);
      execute pg_catalog.format('create policy mixpanel_sync_loader_read on %s as permissive for select to mixpanel_sync_loader using (true)', t.rel);
      execute pg_catalog.format('comment on policy mixpanel_sync_loader_read on %s is %L', t.rel,
        'The loader reads the settings (windows, guard thresholds, switches); only the owner (the DBA) changes them.');
    else
      execute pg_catalog.format('grant select, insert, update, delete, truncate on %s to mixpanel_sync_loader', t.rel);
      execute pg_catalog.format('drop policy if exists mixpanel_sync_loader_all on %s', t.rel);
      execute pg_catalog.format(
        'create policy mixpanel_sync_loader_all on %s as permissive for all to mixpanel_sync_loader using (true) with check (true)', t.rel);
      execute pg_catalog.format('comment on policy mixpanel_sync_loader_all on %s is %L', t.rel,
        'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.');
    end if;
  end loop;
end
$tables$;
grant usage, select on all sequences in schema mixpanel_sync to mixpanel_sync_loader;

-- The reader: aggregates and profiles (and the cohort tables, when the cohorts stream ships them).
do $reader$
declare
  t record;
begin
  for t in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind in ('r', 'p')
      and (c.relname in ('events_daily', 'subscribers', 'subscriber_properties') or c.relname like 'cohort%')
    order by c.relname
  loop
    execute pg_catalog.format('grant select on %s to mixpanel_sync_reader', t.rel);
    execute pg_catalog.format('drop policy if exists mixpanel_sync_reader_read on %s', t.rel);
    execute pg_catalog.format('create policy mixpanel_sync_reader_read on %s as permissive for select to mixpanel_sync_reader using (true)', t.rel);
    execute pg_catalog.format('comment on policy mixpanel_sync_reader_read on %s is %L', t.rel,
      'The reader sees every row of the aggregates and profiles; RLS is on only so that roles without a policy see nothing.');
  end loop;
end
$reader$;

-- ---------------------------------------------------------------------------------------------------------------------
-- Views run with the caller's rights and RLS (PG15+), never the owner's: a reader of staged_profiles_parsed needs
-- the privileges on staged_profiles itself.
alter view mixpanel_sync.staged_profiles_parsed set (security_invoker = true);
do $views$
declare
  v record;
begin
  for v in
    select c.oid::regclass as rel
    from pg_catalog.pg_class c
    where c.relnamespace in ('mixpanel_sync'::regnamespace) and c.relkind = 'v'
  loop
    execute pg_catalog.format('alter view %s set (security_invoker = true)', v.rel);
    execute pg_catalog.format('revoke all on %s from public', v.rel);
    execute pg_catalog.format('grant select on %s to mixpanel_sync_loader', v.rel);
  end loop;
end
$views$;
