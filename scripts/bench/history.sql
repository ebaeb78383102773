-- bench only: the formula of the history the incremental suite builds with generate_series.
drop schema if exists bench_history cascade;
create schema bench_history;
comment on schema bench_history is 'bench only: generated event history for the incremental suite.';

-- User u has 30 events, on 30 distinct days of the 45 UTC days ending on end's day (never after end),
-- with 30 distinct event names out of 40: each event is its own events_daily row.
-- No `set search_path` here, on purpose: a SQL function with a SET clause is never inlined, and
-- inlining into the generate_series builds is what makes them fast; it names only built-ins.
create function bench_history.user_events(u integer, history_end timestamptz)
returns table (j integer, distinct_id text, event_name text, insert_id text, event_time timestamptz, day date, second bigint)
language sql
immutable
as $$
  select j, 'hu_' || u, 'event_' || lpad(((u + j * 7) % 40)::text, 2, '0'), 'h' || u || '_' || j,
    t.event_time, (t.event_time at time zone 'UTC')::date, extract(epoch from t.event_time)::bigint
  from generate_series(0, 29) j
  cross join lateral (
    select (history_end at time zone 'UTC')::date - 44 + (u + j) % 45 as d,
      (u::bigint * 7919 + j * 104729) % case when (u + j) % 45 = 44
        then greatest(1, extract(epoch from (history_end at time zone 'UTC')::time)::bigint) else 86400 end as s
  ) x
  cross join lateral (select (x.d::timestamp at time zone 'UTC') + x.s * interval '1 second' as event_time) t;
$$;
comment on function bench_history.user_events(integer, timestamptz) is
  'The generated history of user u: 30 events on distinct days and with distinct names, ending before history_end.';
