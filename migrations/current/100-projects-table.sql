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
