-- Verify helpers in their own schema, mixpanel_sync_verify: the proofs a DBA runs (verify/*.sql) and the property
-- tests (through scripts/sql/sync-api.ts) share them, and granting or dropping them never touches the sync functions
-- of mixpanel_sync. `alter function … set schema` keeps each function's oid, owner, privileges and comment; the
-- bodies are then re-created because SQL function bodies name other helpers by their schema.
-- Stale text in committed migrations (never edited): 000002 and 000003 say "Loaded after 1-events-core.sql" (they
-- follow 000001-events-core.sql), and 000002 likens staged_profiles_parsed to a view staged_events_parsed that no
-- longer exists (parse_new_staged_events parses events); README "Layout" says so too.
create schema mixpanel_sync_verify;
comment on schema mixpanel_sync_verify is
  'Helpers of the verify/*.sql proofs and of the property tests: deterministic data, whole-table snapshots and '
  'first-difference reports. Nothing in mixpanel_sync calls them; dropping this schema leaves the sync untouched.';

alter function mixpanel_sync.verify_ours(text) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_events(text, integer, date, integer) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_snapshot(text[]) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_first_difference(jsonb, jsonb) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_assert_same(text, text, jsonb, jsonb) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_result(mixpanel_sync.apply_result) set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_others() set schema mixpanel_sync_verify;
alter function mixpanel_sync.verify_staged_run(jsonb) set schema mixpanel_sync_verify;

-- The bodies that named mixpanel_sync.verify_*: the same statements, naming mixpanel_sync_verify.
create or replace function mixpanel_sync_verify.verify_snapshot(ignore text[] default '{}') returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'events_daily', (select coalesce(jsonb_object_agg(jsonb_build_array(d.distinct_id, d.day, d.event_name)::text, to_jsonb(d) - ignore), '{}')
      from mixpanel_sync.events_daily d where mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select coalesce(jsonb_object_agg(jsonb_build_array(l.distinct_id, l.event_key)::text, to_jsonb(l) - ignore), '{}')
      from mixpanel_sync.event_ledger l where mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select coalesce(jsonb_object_agg(to_jsonb(s.distinct_id)::text, to_jsonb(s) - ignore), '{}')
      from mixpanel_sync.subscribers s where mixpanel_sync_verify.verify_ours(s.distinct_id)));
$$;

create or replace function mixpanel_sync_verify.verify_assert_same(script text, what text, expected jsonb, actual jsonb) returns void
language plpgsql
set search_path = ''
as $$
declare
  problem text := mixpanel_sync_verify.verify_first_difference(expected, actual);
begin
  if problem is not null then
    raise exception 'verify/%: % differ: %', script, what, problem
      using errcode = 'P0001', hint = 'The first difference names the table, the primary key and the column; rerun the script after the fix.';
  end if;
end;
$$;

create or replace function mixpanel_sync_verify.verify_others() returns jsonb language sql stable
set search_path = ''
as $$
  select jsonb_build_object('rows of others', jsonb_build_object(
    'events_daily', (select jsonb_build_array(count(*), sum(hashtextextended(d::text, 0))) from mixpanel_sync.events_daily d where not mixpanel_sync_verify.verify_ours(d.distinct_id)),
    'event_ledger', (select jsonb_build_array(count(*), sum(hashtextextended(l::text, 0))) from mixpanel_sync.event_ledger l where not mixpanel_sync_verify.verify_ours(l.distinct_id)),
    'subscribers', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.subscribers s where not mixpanel_sync_verify.verify_ours(s.distinct_id)),
    'sync_watermarks', (select jsonb_build_array(count(*), sum(hashtextextended(w::text, 0))) from mixpanel_sync.sync_watermarks w),
    'sync_settings', (select jsonb_build_array(count(*), sum(hashtextextended(s::text, 0))) from mixpanel_sync.sync_settings s)));
$$;

-- Whole tables of mixpanel_sync, every row, in the shape verify_first_difference compares: for the property tests,
-- whose databases hold nothing but their own rows.
create function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[] default '{}') returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  result jsonb := '{}';
  tab text;
  key_columns text;
  dropped text[];
  rows_of jsonb;
begin
  foreach tab in array tables loop
    select string_agg(format('t.%I', a.attname), ', ' order by k.n)
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
    execute format('select coalesce(jsonb_object_agg(jsonb_build_array(%s)::text, to_jsonb(t) - $1), ''{}'') from mixpanel_sync.%I t',
      key_columns, tab)
      into rows_of using dropped;
    result := result || jsonb_build_object(tab, rows_of);
  end loop;
  return result;
end;
$$;

-- Keys re-printed the way jsonb prints them, so a snapshot built elsewhere (a model in a test, keys written as
-- JSON.stringify writes them) compares key by key with table_snapshot's.
create function mixpanel_sync_verify.canonical_snapshot(snapshot jsonb) returns jsonb language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(t.key, (
      select coalesce(jsonb_object_agg((k.key::jsonb)::text, k.value), '{}') from jsonb_each(t.value) k)), '{}')
  from jsonb_each(snapshot) t;
$$;

comment on function mixpanel_sync_verify.verify_ours(distinct_id text) is
  'Verify scripts: true for the distinct_ids a verify script creates (verify:… and -90000000NN).';
comment on function mixpanel_sync_verify.verify_events(seed text, n integer, from_day date, days integer) is
  'Verify scripts: deterministic Mixpanel export events (seed, count, first day, days): re-sends, same-second events, missing $insert_id, day boundaries, numeric/unicode/255-character ids, ms times, bad lines.';
comment on function mixpanel_sync_verify.verify_snapshot(text[]) is
  'Verify scripts: events_daily, event_ledger and subscribers rows of verify_ours users as jsonb keyed by primary key, columns in ignore left out.';
comment on function mixpanel_sync_verify.verify_first_difference(expected jsonb, actual jsonb) is
  'Null when two snapshots (verify_snapshot, table_snapshot) are equal, else the first difference in table, then key '
  'order: table, key, column, expected, actual (or a missing/unexpected row).';
comment on function mixpanel_sync_verify.verify_assert_same(script text, what text, expected jsonb, actual jsonb) is
  'Verify scripts: raises naming the script and the first difference unless the two snapshots are equal.';
comment on function mixpanel_sync_verify.verify_result(result mixpanel_sync.apply_result) is
  'Verify scripts: an apply_result shaped like a snapshot, for verify_assert_same.';
comment on function mixpanel_sync_verify.verify_others() is
  'Verify scripts: count and hash sum of every row a verify script did not create, to prove it left them untouched.';
comment on function mixpanel_sync_verify.verify_staged_run(events jsonb) is
  'Verify scripts: a forced-full run at clock 2000-02-01 with these events (and one non-JSON line) staged and parsed once.';
comment on function mixpanel_sync_verify.table_snapshot(tables text[], ignore text[]) is
  'Property tests: every row of the named mixpanel_sync tables as jsonb {table: {primary key as JSON text: row}}, '
  'columns listed in ignore as table.column left out; compare two with verify_first_difference.';
comment on function mixpanel_sync_verify.canonical_snapshot(snapshot jsonb) is
  'Property tests: a snapshot {table: {key: row}} whose keys (JSON texts) are re-printed as jsonb prints them, so '
  'that snapshots built outside SQL compare with table_snapshot''s in verify_first_difference.';
