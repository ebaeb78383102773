-- The ORIGINAL design, rebuilt for the bench only (never part of our migrations): per-user counts
-- aggregated in TypeScript, written by loop-based plpgsql in batches of 250 users, as in the
-- optimisation plan before its changes. Created by `npm run bench` in its own databases.
drop schema if exists bench_baseline cascade;
create schema bench_baseline;
comment on schema bench_baseline is 'bench only: the original sync design, measured against mixpanel_sync.';

create table bench_baseline.user_event_counts (
  distinct_id text not null,
  event_name text not null,
  event_count bigint not null,
  first_seen timestamptz not null,
  last_seen timestamptz not null,
  primary key (distinct_id, event_name)
);
comment on table bench_baseline.user_event_counts is 'Original design: per user and event name, the count over the synced window.';

create table bench_baseline.subscribers (
  distinct_id text primary key,
  total_events bigint not null,
  first_event_at timestamptz not null,
  last_event_at timestamptz not null,
  event_counts jsonb not null,
  updated_at timestamptz not null default now()
);
comment on table bench_baseline.subscribers is 'Original design: per-user summary.';

create table bench_baseline.sync_watermarks (
  source text primary key,
  watermark timestamptz not null,
  updated_at timestamptz not null default now()
);
comment on table bench_baseline.sync_watermarks is 'Original design: latest event time synced.';

create function bench_baseline.refresh_subscriber(distinct_id text)
returns void
language sql
set search_path = ''
as $$
  insert into bench_baseline.subscribers as s (distinct_id, total_events, first_event_at, last_event_at, event_counts, updated_at)
  select c.distinct_id, sum(c.event_count), min(c.first_seen), max(c.last_seen), jsonb_object_agg(c.event_name, c.event_count), now()
  from bench_baseline.user_event_counts c
  where c.distinct_id = refresh_subscriber.distinct_id
  group by c.distinct_id
  on conflict (distinct_id) do update set
    total_events = excluded.total_events,
    first_event_at = excluded.first_event_at,
    last_event_at = excluded.last_event_at,
    event_counts = excluded.event_counts,
    updated_at = excluded.updated_at;
$$;
comment on function bench_baseline.refresh_subscriber(text) is 'Original design: one user''s summary recomputed from its counts.';

-- users: [{"distinct_id", "events": {"<name>": {"count", "first", "last"}}}]
create function bench_baseline.upsert_subscribers_incremental(users jsonb)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  u jsonb;
  e record;
  written integer := 0;
begin
  for u in select value from jsonb_array_elements(users) loop
    delete from bench_baseline.user_event_counts c where c.distinct_id = u->>'distinct_id';
    for e in select key, value from jsonb_each(u->'events') loop
      insert into bench_baseline.user_event_counts (distinct_id, event_name, event_count, first_seen, last_seen)
      values (u->>'distinct_id', e.key, (e.value->>'count')::bigint, (e.value->>'first')::timestamptz, (e.value->>'last')::timestamptz);
    end loop;
    perform bench_baseline.refresh_subscriber(u->>'distinct_id');
    written := written + 1;
  end loop;
  return written;
end;
$$;
comment on function bench_baseline.upsert_subscribers_incremental(jsonb) is
  'Original REPLACE, loop-based: per user, DELETE its counts and INSERT one row per event name, then refresh its summary.';

create function bench_baseline.upsert_subscribers_incremental_add(users jsonb)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  u jsonb;
  e record;
  written integer := 0;
begin
  for u in select value from jsonb_array_elements(users) loop
    for e in select key, value from jsonb_each(u->'events') loop
      insert into bench_baseline.user_event_counts as c (distinct_id, event_name, event_count, first_seen, last_seen)
      values (u->>'distinct_id', e.key, (e.value->>'count')::bigint, (e.value->>'first')::timestamptz, (e.value->>'last')::timestamptz)
      on conflict (distinct_id, event_name) do update set
        event_count = c.event_count + excluded.event_count,
        first_seen = least(c.first_seen, excluded.first_seen),
        last_seen = greatest(c.last_seen, excluded.last_seen);
    end loop;
    perform bench_baseline.refresh_subscriber(u->>'distinct_id');
    written := written + 1;
  end loop;
  return written;
end;
$$;
comment on function bench_baseline.upsert_subscribers_incremental_add(jsonb) is
  'Original ADD (incremental), loop-based: per user and event name, add the counts, then refresh its summary. No dedup: re-read events count twice.';
