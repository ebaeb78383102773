--! Previous: sha1:cca486c13ee43be51ffc29c2fd8b5ceb26cd32a5
--! Hash: sha1:7d54624aa8932e5e00d8b2a750f3f6ddda54cd80
--! Message: The ledger's partition of the day after a run's clock is created ahead by its finish, never waiting for it

-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- The ledger's partition of the day after a run's clock is created ahead, by that run's finish, and never waits for
-- it. Before, the first finish of a new UTC day created that day's partition and attached it under locks held to its
-- commit (the creators' advisory lock, SHARE UPDATE EXCLUSIVE on the ledger), so another project's finish of the same
-- day waited for that whole finish. Now the day exists before the day begins (docs/ledger.md, docs/projects.md).

-- ensure_ledger_partitions gains "wait": false creates the missing partitions only when that needs no wait (the
-- creators' advisory lock free, SHARE UPDATE EXCLUSIVE on the ledger granted at once) and else creates none.
-- Idempotent: the two-argument function is dropped if present and the three-argument one created or replaced; a call
-- with two arguments means what it meant.
drop function if exists mixpanel_sync_private.ensure_ledger_partitions(date, date);

create or replace function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date, wait boolean default true)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  d date;
  part text;
  created integer := 0;
  locked boolean := false;
begin
  if from_day is null or to_day is null or from_day = '-infinity' or to_day = 'infinity' or to_day - from_day > 3660 then
    raise exception 'ensure_ledger_partitions: days % to % are not a range of at most 3661 days', from_day, to_day
      using errcode = 'MP004', hint = 'pass the first and last UTC day the ledger must hold, e.g. select mixpanel_sync_private.ensure_ledger_partitions(''2026-01-01'', ''2026-01-07'')';
  end if;
  d := from_day;
  while d <= to_day loop
    part := 'event_ledger_p' || to_char(d, 'YYYYMMDD');
    if to_regclass('mixpanel_sync.' || part) is null then
      if not locked then
        if wait then
          -- one creator at a time (finish_run is serialised per project; direct callers may not be)
          perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.ensure_ledger_partitions', 0));
        else
          -- another creator at work (it holds this lock to its commit), or a lock on the ledger that ATTACH would
          -- wait for (a finish dropping a partition, a session's LOCK TABLE): create nothing; a later run will.
          if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('mixpanel_sync.ensure_ledger_partitions', 0)) then
            return created;
          end if;
          begin
            lock table mixpanel_sync.event_ledger in share update exclusive mode nowait;
          exception
            when lock_not_available then
              return created;
          end;
        end if;
        locked := true;
      end if;
      if to_regclass('mixpanel_sync.' || part) is null then
        -- created apart and attached: ATTACH takes SHARE UPDATE EXCLUSIVE on the ledger, so readers and writers of
        -- other days go on; the new table is empty, so attaching it scans nothing.
        execute format('create table mixpanel_sync.%I (like mixpanel_sync.event_ledger including defaults)', part);
        execute format('alter table mixpanel_sync.%I add constraint %I check (day >= %L and day < %L)',
          part, part || '_day_check', d, d + 1);
        execute format('alter table mixpanel_sync.event_ledger attach partition mixpanel_sync.%I for values from (%L) to (%L)',
          part, d, d + 1);
        execute format('alter table mixpanel_sync.%I drop constraint %I', part, part || '_day_check');
        execute format('comment on table mixpanel_sync.%I is %L', part,
          format('The ledger''s rows of UTC day %s (a partition of mixpanel_sync.event_ledger; read and write the parent).', d));
        execute format('alter table mixpanel_sync.%I enable row level security', part);
        execute format('create policy mixpanel_sync_loader_all on mixpanel_sync.%I as permissive for all to mixpanel_sync_loader using (true) with check (true)', part);
        execute format('comment on policy mixpanel_sync_loader_all on mixpanel_sync.%I is %L', part,
          'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.');
        execute format('revoke all on table mixpanel_sync.%I from public', part);
        created := created + 1;
      end if;
    end if;
    d := d + 1;
  end loop;
  return created;
end;
$$;
comment on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date, wait boolean) is 'Creates the missing day partitions of event_ledger for the UTC days from_day..to_day (at most 3661 days; MP004 otherwise) and returns how many it created. wait (default true): waits its turn behind another creator (an advisory lock held to commit). wait false: never waits; when another creator is at work or the ledger is locked against ATTACH (SHARE UPDATE EXCLUSIVE not granted at once) it creates none and returns 0 (ensure_run_ledger_partitions creates the day after a run''s clock this way). SECURITY DEFINER (owned by the schema owner) because the loader, which calls it from the apply paths inside finish_run, may not create tables: it creates only partitions named event_ledger_pYYYYMMDD, with RLS on and the loader''s policy like the parent. Fixtures that insert ledger rows directly call it first.';
revoke execute on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date, wait boolean) from public;
grant execute on function mixpanel_sync_private.ensure_ledger_partitions(from_day date, to_day date, wait boolean) to mixpanel_sync_loader;

-- ensure_run_ledger_partitions: after the days the run writes, the day after its clock (UTC), without waiting.
create or replace function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  lo date;
  hi date;
  ahead date;
  created integer := 0;
begin
  select min(e.day), max(e.day) into lo, hi
  from mixpanel_sync.run_events e
  where e.run_id = ensure_run_ledger_partitions.run_id and e.reject_reason is null
    and (e.skip_reason is null or e.skip_reason = 'no_user')
    and e.day between from_day and to_day;
  if lo is not null then
    created := mixpanel_sync_private.ensure_ledger_partitions(lo, hi);
  end if;
  -- The next day ahead: the first finish of that day (this project's or another's) then attaches nothing under locks
  -- held to its commit. Never waits: when it cannot be created at once, a later run creates it.
  ahead := (select (s.fetch_to at time zone 'UTC')::date + 1 from mixpanel_sync.sync_runs s
    where s.id = ensure_run_ledger_partitions.run_id);
  if pg_catalog.isfinite(ahead) then
    created := created + mixpanel_sync_private.ensure_ledger_partitions(ahead, ahead, wait => false);
  end if;
  return created;
end;
$$;
comment on function mixpanel_sync.ensure_run_ledger_partitions(run_id bigint, from_day date, to_day date) is 'Before an apply path writes the ledger: creates the day partitions (ensure_ledger_partitions) for the days, within from_day..to_day, of the run''s events it may write, then the partition of the UTC day after the run''s clock (fetch_to) without waiting (wait => false: skipped when another creator is at work or the ledger is locked), so that the next day''s first finish finds its partition in place. Returns how many partitions it created.';
