-- 400-perf: per-run fixed costs that grow with history (issue 11, incremental_history_growth).
--
-- 1. The subscriber count each succeeded events run records (options.subscribers, read by health_subscribers) was a
--    count(*) of subscribers inside finish_run: a full scan, ≈ 80 ms per million users on every run, however small.
--    It is now kept exactly by statement-level triggers on subscribers (one row, moved by the rows each statement
--    inserts or deletes), so the health trigger reads one row.

create table mixpanel_sync.subscriber_count (
  id boolean default true not null,
  subscribers bigint not null,
  constraint subscriber_count_pkey primary key (id),
  constraint subscriber_count_one_row check (id),
  constraint subscriber_count_not_negative check (subscribers >= 0)
);
comment on table mixpanel_sync.subscriber_count is 'One row: the number of rows of mixpanel_sync.subscribers, kept exactly by the statement triggers of subscribers (mixpanel_sync.count_subscribers), so that a run''s recorded count (options.subscribers) costs one row read instead of a scan.';
comment on column mixpanel_sync.subscriber_count.id is 'Always true: the table holds one row.';
comment on column mixpanel_sync.subscriber_count.subscribers is 'count(*) of mixpanel_sync.subscribers as of this transaction.';
alter table mixpanel_sync.subscriber_count enable row level security;
create policy mixpanel_sync_loader_all on mixpanel_sync.subscriber_count as permissive for all to mixpanel_sync_loader using (true) with check (true);
comment on policy mixpanel_sync_loader_all on mixpanel_sync.subscriber_count is 'The loader reads and writes every row: RLS is on only so that roles without a policy (anon, authenticated) see nothing.';
create policy mixpanel_sync_reader_read on mixpanel_sync.subscriber_count as permissive for select to mixpanel_sync_reader using (true);
comment on policy mixpanel_sync_reader_read on mixpanel_sync.subscriber_count is 'The reader sees every row of the aggregates and profiles; RLS is on only so that roles without a policy see nothing.';
revoke all on table mixpanel_sync.subscriber_count from public;
grant select, insert, update on table mixpanel_sync.subscriber_count to mixpanel_sync_loader;
grant select on table mixpanel_sync.subscriber_count to mixpanel_sync_reader;

create function mixpanel_sync.count_subscribers()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'TRUNCATE' then
    update mixpanel_sync.subscriber_count c set subscribers = 0 where c.id;
  elsif tg_op = 'INSERT' then
    -- of an INSERT ... ON CONFLICT DO UPDATE, the transition table holds only the rows inserted
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers + (select count(*) from added)
    where c.id and exists (select from added);
  else
    update mixpanel_sync.subscriber_count c set subscribers = c.subscribers - (select count(*) from removed)
    where c.id and exists (select from removed);
  end if;
  return null;
end;
$$;
comment on function mixpanel_sync.count_subscribers() is 'Statement trigger of subscribers: moves subscriber_count by the rows the statement inserted (transition table added) or deleted (removed); a TRUNCATE sets it to 0. Updates do not change the count.';
revoke execute on function mixpanel_sync.count_subscribers() from public;
grant execute on function mixpanel_sync.count_subscribers() to mixpanel_sync_loader;

create trigger subscribers_count_insert after insert on mixpanel_sync.subscribers
  referencing new table as added for each statement execute function mixpanel_sync.count_subscribers();
comment on trigger subscribers_count_insert on mixpanel_sync.subscribers is 'Keeps mixpanel_sync.subscriber_count exact (rows inserted).';
create trigger subscribers_count_delete after delete on mixpanel_sync.subscribers
  referencing old table as removed for each statement execute function mixpanel_sync.count_subscribers();
comment on trigger subscribers_count_delete on mixpanel_sync.subscribers is 'Keeps mixpanel_sync.subscriber_count exact (rows deleted).';
create trigger subscribers_count_truncate after truncate on mixpanel_sync.subscribers
  for each statement execute function mixpanel_sync.count_subscribers();
comment on trigger subscribers_count_truncate on mixpanel_sync.subscribers is 'Keeps mixpanel_sync.subscriber_count exact (truncate: 0).';

-- The triggers above hold subscribers' SHARE ROW EXCLUSIVE lock until commit: no row can come or go between them and
-- this count.
insert into mixpanel_sync.subscriber_count (id, subscribers) select true, count(*) from mixpanel_sync.subscribers;

create or replace function mixpanel_sync.record_subscriber_count()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.options := new.options || jsonb_build_object('subscribers',
    (select c.subscribers from mixpanel_sync.subscriber_count c where c.id));
  return new;
end;
$$;
comment on function mixpanel_sync.record_subscriber_count() is 'Trigger of sync_runs: when an events run succeeds, records the number of subscribers after it in options.subscribers (read by sync_health events.subscribers), from mixpanel_sync.subscriber_count (exact, kept by the triggers of subscribers; no scan). Runs inside finish_run''s transaction, so the count is the applied state.';

-- 2. add_event_counts, called by ADD once per touched subscriber (on conflict): it rebuilt the whole object from the
--    union of both objects' keys (≈ 30 names a user); it now adds only the keys of `more` (the run's delta: one or two
--    names) onto `counts`. Same result: jsonb objects are compared and stored by key, so `||` with the summed keys is
--    the object the union built. ≈ 5× less per call (2,490 calls were 380-650 ms of an incremental run at 300k users).
create or replace function mixpanel_sync.add_event_counts(counts jsonb, more jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
  select coalesce(counts, '{}'::jsonb) || coalesce(
    (select jsonb_object_agg(m.key, coalesce((counts ->> m.key)::numeric, 0) + m.value::numeric) from jsonb_each_text(more) as m),
    '{}'::jsonb);
$$;
comment on function mixpanel_sync.add_event_counts(counts jsonb, more jsonb) is 'Two subscribers.event_counts objects added key by key (the keys of more summed onto counts; the other keys of counts kept).';
