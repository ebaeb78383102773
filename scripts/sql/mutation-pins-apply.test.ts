// Pins of the REPLACE and ADD paths and their _loop twins against an expectation computed in this file (issue 15,
// mutation testing): loop ≡ set (property-tests/loop-equals-set.test.ts) cannot see a bug both share, and the random
// batches rarely reach a timezone-moved ledger row, a legacy-ledger row of another user, a selection, raw storage or
// ledger_from with data that tells the difference. Here one hand-made run meets a hand-made prior state that has each
// of them, and the tables and apply_result each path leaves are compared with what Mixpanel's dedup rule gives for that
// input, computed below from the run's parsed events (run_events: the parser is pinned elsewhere) and the prior rows:
//   - REPLACE [from, to] (ledger_from K): the run's events of the window (selected names), first line per
//     (distinct_id, key), less those whose key the ledger holds on a day outside the window at most two days away, or
//     whose legacy key the legacy ledger holds for the same user (after its rows of the window are deleted); the
//     window's rows (selected names) of events_daily and the ledger become exactly that (ledger rows from K on);
//   - ADD from horizon H: the run's events from H on, first line per key, less those whose key the ledger holds on a
//     day at most two days away (any day) or whose legacy key the legacy ledger holds for the same user; added.
// The tests pass on main.
// The mutants (npm run mutate keys) that survived every other proof, in the full run of d31258a or while these pins
// were written; each was written into a clone of its own (create or replace) and this file failed on it:
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|and-or|and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')|3
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|and-or|if event.legacy_key is not null and exists (|1
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|and-or|select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)|1
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|drop-conjunct|and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')|1
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|drop-conjunct|select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)|1
//   killed: mixpanel_sync.insert_new_events_loop(bigint,date,date)|drop-conjunct|select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = event.distinct_id and g.event_key = event.legacy_key)|2
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (|2
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|where (w.legacy_key is null or not exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|where g.day between from_day and to_day and (names is null or g.event_name = any (names));|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|and-or|where g.day between from_day and to_day and (names is null or g.event_name = any (names));|2
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|plus-minus|and l.day between w.day - 2 and w.day + 2 and (l.day < from_day or l.day > to_day)))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|plus-minus|and l.day between w.day - 2 and w.day + 2 and (l.day < from_day or l.day > to_day)))|2
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|plus-minus|and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|plus-minus|and not ((w.day < from_day + 2 or w.day > to_day - 2) and exists (|2
// REPLACE as a merge (full join, then DELETE/INSERT/UPDATE; measured at 4d422bb): the delete of a gone ledger row and
// the update of a changed one must match the row's whole key (prior rows u8/h, q, and i on 03-10 below):
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|drop-conjunct|and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day|1
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|drop-conjunct|and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day|5
//   killed: mixpanel_sync.upsert_subscribers_incremental(bigint,date,date,date)|drop-conjunct|and l.distinct_id = x.l_distinct_id and l.event_key = x.l_event_key and l.day = x.l_day|6
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|and-or|and not exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|and-or|select from mixpanel_sync.event_ledger_legacy g where g.distinct_id = w.distinct_id and g.event_key = w.legacy_key))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|and-or|where (w.legacy_key is null or not exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|plus-minus|where l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day between w.day - 2 and w.day + 2)|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|plus-minus|where l.distinct_id = w.distinct_id and l.event_key = w.event_key and l.day between w.day - 2 and w.day + 2)|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|and-or|and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')|3
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|and-or|where g.day between from_day and to_day and (names is null or g.event_name = any (names))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|and-or|where g.day between from_day and to_day and (names is null or g.event_name = any (names))|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|and-or|where g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|and-or|where l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;|4
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|and (e.legacy_key is null or not exists (|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|and (e.legacy_key is null or not exists (|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|and (e.skip_reason is null or raw_on and e.skip_reason = 'no_user')|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|and (names is null or l.event_name = any (names))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null and e.skip_reason is null|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where e.run_id = upsert_subscribers_incremental_loop.run_id and e.reject_reason is null|4
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where g.distinct_id = legacy_row.distinct_id and g.event_key = legacy_row.event_key;|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where l.distinct_id = e.distinct_id and l.event_key = e.event_key|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;|4
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|drop-conjunct|where l.distinct_id = event.distinct_id and l.event_key = event.event_key and l.day = event.day;|5
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and l.day between e.day - 2 and e.day + 2 and (l.day < from_day or l.day > to_day)))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and l.day between e.day - 2 and e.day + 2 and (l.day < from_day or l.day > to_day)))|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and o.day between l.day - 2 and l.day + 2 and (o.day < from_day or o.day > to_day))))|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|and o.day between l.day - 2 and l.day + 2 and (o.day < from_day or o.day > to_day))))|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|plus-minus|duplicates := duplicates + 1;|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|relational|and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then|1
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|relational|and l.day between event.day - 2 and event.day + 2 and (l.day < from_day or l.day > to_day)) then|2
//   killed: mixpanel_sync.upsert_subscribers_incremental_loop(bigint,date,date,date)|relational|if group_count > 0 and mixpanel_sync.merge_daily_row_loop(group_id, group_day, group_name, group_count, group_first, group_last) then|1
import type pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { dailyOf, type DailyRow, storeDaily, type SubscriberRow, subscribersOf } from './expected-aggregates.ts';
import { emptySyncTables, exportEvent, syncTestDatabase } from './run-fixtures.ts';
import { applyAdd, applyReplace, beginRun, parseStagedEvents, stageLines, type ApplyResult, type Queryable } from './sync-api.ts';

const db = await syncTestDatabase({ dropPartitions: false });
// the ledger's day partitions of every day below, once (the scenarios run in rolled-back transactions)
beforeAll(() => db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions('2024-02-25', '2024-03-15')`));

const clock = '2024-03-10T00:00:00Z';
const day = (d: number): string => `2024-03-${String(d).padStart(2, '0')}`;
const at = (d: number, hour: number, minute = 0): Date =>
  new Date(`${day(d)}T${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')}:00Z`);

/** One run_events row as the paths read it. */
interface RunEvent {
  line_id: number;
  distinct_id: string | null;
  key: string;
  legacy_key: string | null;
  event_name: string;
  t: string;
  day: string;
  reject_reason: string | null;
  skip_reason: string | null;
  insert_id: string | null;
  ptm: string | null;
  properties: unknown;
}
interface LedgerRow {
  distinct_id: string;
  key: string;
  day: string;
  event_name: string;
  t: string;
  insert_id: string | null;
  ptm: string | null;
  properties: unknown;
}
interface LegacyRow {
  distinct_id: string;
  key: string;
  day: string;
  event_name: string;
}
interface Tables {
  ledger: LedgerRow[];
  legacy: LegacyRow[];
  daily: DailyRow[];
  subscribers: SubscriberRow[];
}

const ms = (column: string) => `(extract(epoch from ${column}) * 1000)::bigint::text`;

async function readRunEvents(client: Queryable, runId: string): Promise<RunEvent[]> {
  const { rows } = await client.query<RunEvent>(
    `select line_id::int, distinct_id, event_key::text as key, legacy_key::text, event_name, ${ms('event_time')} as t, day::text,
       reject_reason, skip_reason, insert_id, processing_time_ms::text as ptm, properties
     from mixpanel_sync.run_events where run_id = $1 order by line_id`,
    [runId],
  );
  return rows;
}

async function readTables(client: Queryable): Promise<Tables> {
  const ledger = await client.query<LedgerRow>(
    `select distinct_id, event_key::text as key, day::text, event_name, ${ms('event_time')} as t, insert_id,
       processing_time_ms::text as ptm, properties from mixpanel_sync.event_ledger`,
  );
  const legacy = await client.query<LegacyRow>(
    'select distinct_id, event_key::text as key, day::text, event_name from mixpanel_sync.event_ledger_legacy',
  );
  const daily = await client.query<DailyRow>(
    `select distinct_id, day::text, event_name, event_count::int as n, ${ms('first_at')} as first, ${ms('last_at')} as last
     from mixpanel_sync.events_daily`,
  );
  const subscribers = await client.query<SubscriberRow>(
    `select distinct_id, total_events::int as n, ${ms('first_event_at')} as first, ${ms('last_event_at')} as last, event_counts
     from mixpanel_sync.subscribers`,
  );
  return sorted({ ledger: ledger.rows, legacy: legacy.rows, daily: daily.rows, subscribers: subscribers.rows });
}

/** The row versions (ctid) of the ledger and events_daily, by key: a row not rewritten keeps its ctid. */
async function rowVersions(client: Queryable): Promise<Map<string, string>> {
  const { rows } = await client.query<{ k: string; v: string }>(
    `select 'ledger|' || distinct_id || '|' || event_key || '|' || day as k, tableoid::text || ctid::text as v from mixpanel_sync.event_ledger
     union all
     select 'daily|' || distinct_id || '|' || day || '|' || event_name, ctid::text from mixpanel_sync.events_daily`,
  );
  return new Map(rows.map((r) => [r.k, r.v]));
}

/** The keys of the rows a path must leave as they were (same content before and after): not rewritten. */
function unchangedKeys(prior: Tables, after: Tables): string[] {
  const keys: string[] = [];
  const json = (x: unknown) => JSON.stringify(x);
  for (const l of prior.ledger) {
    const now = after.ledger.find((r) => r.distinct_id === l.distinct_id && r.key === l.key && r.day === l.day);
    if (now && json(now) === json(l)) keys.push(`ledger|${l.distinct_id}|${l.key}|${l.day}`);
  }
  for (const d of prior.daily) {
    const now = after.daily.find((r) => r.distinct_id === d.distinct_id && r.day === d.day && r.event_name === d.event_name);
    if (now && json(now) === json(d)) keys.push(`daily|${d.distinct_id}|${d.day}|${d.event_name}`);
  }
  return keys.sort();
}

const byKey = <T>(rows: T[], key: (r: T) => string): T[] => [...rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
function sorted(t: Tables): Tables {
  return {
    ledger: byKey(t.ledger, (r) => `${r.distinct_id}|${r.key}|${r.day}`),
    legacy: byKey(t.legacy, (r) => `${r.distinct_id}|${r.key}`),
    daily: byKey(t.daily, (r) => `${r.distinct_id}|${r.day}|${r.event_name}`),
    subscribers: byKey(t.subscribers, (r) => r.distinct_id),
  };
}

const between = (d: string, from: string, to: string) => d >= from && d <= to;
const dayDistance = (a: string, b: string) => Math.abs(Date.parse(`${a}T00:00:00Z`) - Date.parse(`${b}T00:00:00Z`)) / 86_400_000;
const ledgerRowOf = (e: RunEvent): LedgerRow => ({
  distinct_id: e.distinct_id ?? '',
  key: e.key,
  day: e.day,
  event_name: e.event_name,
  t: e.t,
  insert_id: e.insert_id,
  ptm: e.ptm,
  properties: e.properties,
});

/** The events a path may take: valid, and either not skipped or (raw storage on) skipped for having no distinct_id. */
const usable = (events: RunEvent[], raw: boolean) =>
  events.filter((e) => e.reject_reason === null && (e.skip_reason === null || (raw && e.skip_reason === 'no_user')));

/** The first line of each (distinct_id, key). */
function firstPerKey(events: RunEvent[]): RunEvent[] {
  const seen = new Set<string>();
  return events.filter((e) => {
    const k = `${e.distinct_id ?? ''}|${e.key}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

interface ReplaceCase {
  from: string;
  to: string;
  ledgerFrom: string | null;
  names: string[] | null;
  raw: boolean;
}

/** What REPLACE leaves, from the prior tables and the run's events (the rule in this file's header). */
function expectedReplace(prior: Tables, events: RunEvent[], c: ReplaceCase): { tables: Tables; result: ApplyResult } {
  const keptFrom = c.ledgerFrom && c.ledgerFrom > c.from ? c.ledgerFrom : c.from;
  const selected = (name: string) => c.names === null || c.names.includes(name);
  const inWindow = (d: string) => between(d, c.from, c.to);
  const legacy = prior.legacy.filter((g) => !(inWindow(g.day) && selected(g.event_name)));
  const kept = firstPerKey(usable(events, c.raw).filter((e) => inWindow(e.day) && selected(e.event_name))).filter((e) => {
    const id = e.distinct_id ?? '';
    if (e.legacy_key !== null && legacy.some((g) => g.distinct_id === id && g.key === e.legacy_key)) return false;
    return !prior.ledger.some((l) => l.distinct_id === id && l.key === e.key && !inWindow(l.day) && dayDistance(l.day, e.day) <= 2);
  });
  const ledger = [
    ...prior.ledger.filter((l) => !(inWindow(l.day) && selected(l.event_name))),
    ...kept.filter((e) => e.day >= keptFrom).map(ledgerRowOf),
  ];
  const target = dailyOf(kept.filter((e) => e.distinct_id !== null).map((e) => ({ ...e, distinct_id: e.distinct_id! })));
  const replaced = (d: DailyRow) => inWindow(d.day) && selected(d.event_name);
  const daily = [...prior.daily.filter((d) => !replaced(d)), ...target];
  const touched = new Set<string>();
  const same = (a: DailyRow, b: DailyRow) => a.n === b.n && a.first === b.first && a.last === b.last;
  for (const d of prior.daily.filter(replaced)) {
    const now = target.find((t) => t.distinct_id === d.distinct_id && t.day === d.day && t.event_name === d.event_name);
    if (!now || !same(now, d)) touched.add(d.distinct_id);
  }
  for (const t of target) {
    const before = prior.daily.find((d) => d.distinct_id === t.distinct_id && d.day === t.day && d.event_name === t.event_name);
    if (!before || !same(before, t)) touched.add(t.distinct_id);
  }
  const applied = kept.filter((e) => e.distinct_id !== null).length;
  const counted = events.filter((e) => e.reject_reason === null && e.skip_reason === null);
  return {
    tables: sorted({ ledger, legacy, daily, subscribers: subscribersOf(daily) }),
    result: {
      applied,
      duplicates: counted.filter((e) => inWindow(e.day) && selected(e.event_name)).length - applied,
      too_old: counted.filter((e) => !inWindow(e.day)).length,
      users_touched: touched.size,
    },
  };
}

/** What ADD from horizon leaves (the rule in this file's header). */
function expectedAdd(prior: Tables, events: RunEvent[], horizon: string, raw: boolean): { tables: Tables; result: ApplyResult } {
  const candidates = usable(events, raw);
  const inWindow = candidates.filter((e) => e.day >= horizon);
  const kept = firstPerKey(inWindow).filter((e) => {
    const id = e.distinct_id ?? '';
    if (e.legacy_key !== null && prior.legacy.some((g) => g.distinct_id === id && g.key === e.legacy_key)) return false;
    return !prior.ledger.some((l) => l.distinct_id === id && l.key === e.key && dayDistance(l.day, e.day) <= 2);
  });
  const added = dailyOf(kept.filter((e) => e.distinct_id !== null).map((e) => ({ ...e, distinct_id: e.distinct_id! })));
  const daily = prior.daily.map((d) => ({ ...d }));
  for (const a of added) {
    const d = daily.find((r) => r.distinct_id === a.distinct_id && r.day === a.day && r.event_name === a.event_name);
    if (!d) daily.push(a);
    else {
      d.n += a.n;
      if (BigInt(a.first) < BigInt(d.first)) d.first = a.first;
      if (BigInt(a.last) > BigInt(d.last)) d.last = a.last;
    }
  }
  const withUser = (list: RunEvent[]) => list.filter((e) => e.distinct_id !== null).length;
  const applied = withUser(kept);
  return {
    tables: sorted({ ledger: [...prior.ledger, ...kept.map(ledgerRowOf)], legacy: prior.legacy, daily, subscribers: subscribersOf(daily) }),
    result: {
      applied,
      duplicates: withUser(inWindow) - applied,
      too_old: withUser(candidates) - withUser(inWindow),
      users_touched: new Set(kept.filter((e) => e.distinct_id !== null).map((e) => e.distinct_id)).size,
    },
  };
}

/** One staged line: an export event of user (absent: no distinct_id), or a line without a time (a reject). */
interface Line {
  label: string;
  /** $insert_id (default: the label): two lines with one insert_id, name and second have one key */
  insertId?: string;
  user: string | null;
  name: string;
  time: Date;
  processedAt?: Date;
  reject?: boolean;
}

function lineText(l: Line): string {
  if (l.reject) return JSON.stringify({ event: l.name, properties: { distinct_id: l.user ?? 'x', $insert_id: l.label } });
  const e = exportEvent(l.user ?? '', l.name, l.time, { insertId: l.insertId ?? l.label, processedAt: l.processedAt });
  if (l.user === null) {
    const { distinct_id: _none, ...rest } = e.properties;
    return JSON.stringify({ event: e.event, properties: rest });
  }
  return JSON.stringify(e);
}

/** The lines of an earlier run that failed after parsing them (its run_events rows stay until its rows are dropped). */
const earlierLines: Line[] = [{ label: 'zz', user: 'u5', name: 'open', time: at(6, 10) }];

/**
 * In one transaction (rolled back): empty tables, events.store_raw, a legacy ledger row (so the parse computes legacy
 * keys), the run staged and parsed, then the prior state built from the parsed events (prior(events) names rows by the
 * event's label), then each path called in a savepoint of its own.
 */
async function scenario<T>(
  lines: Line[],
  options: { raw: boolean; names: string[] | null },
  prior: (byLabel: (label: string) => RunEvent) => { ledger: LedgerRow[]; legacy: LegacyRow[]; daily: DailyRow[] },
  body: (client: pg.PoolClient, runId: string, priorTables: Tables, events: RunEvent[]) => Promise<T>,
): Promise<T> {
  const client = await db.pool.connect();
  try {
    await client.query('begin');
    await emptySyncTables(client, { dropPartitions: false });
    await client.query(`update mixpanel_sync.sync_settings set value = $1 where key = 'events.store_raw'`, [options.raw ? 'on' : 'off']);
    // a legacy row of a user no event has: the parse computes legacy keys only while the legacy ledger holds rows
    await client.query(`insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
      values (1, 'legacy-only', '00000000-0000-0000-0000-0000000000aa', '${day(5)}', 'view', '${day(5)} 10:00Z', 1)`);
    // an earlier run whose parsed events are still in run_events (it failed after parsing): never the run's input
    const earlier = await beginRun(client, { source: 'events', clock, forceFull: true });
    await stageLines(client, 'events', earlier.id, earlierLines.map(lineText));
    await parseStagedEvents(client, earlier.id);
    await client.query(`update mixpanel_sync.sync_runs set status = 'failed', finished_at = now(), error = 'pin' where id = $1`, [
      earlier.id,
    ]);
    const earlierEvents = await readRunEvents(client, earlier.id);
    const run = await beginRun(client, { source: 'events', clock, forceFull: true, ...(options.names ? { events: options.names } : {}) });
    await stageLines(client, 'events', run.id, lines.map(lineText));
    await parseStagedEvents(client, run.id);
    const events = await readRunEvents(client, run.id);
    const byLabel = (label: string) => {
      const index = lines.findIndex((l) => l.label === label);
      const e = index >= 0 ? events[index] : earlierEvents[earlierLines.findIndex((l) => l.label === label)];
      if (!e) throw new Error(`no parsed event for ${label}`);
      return e;
    };
    const p = prior(byLabel);
    for (const l of p.ledger) {
      await client.query(
        `insert into mixpanel_sync.event_ledger (project_id, distinct_id, event_key, day, event_name, event_time, run_id, insert_id, processing_time_ms, properties)
         values (1, $1, $2::uuid, $3::date, $4, to_timestamp($5::bigint / 1000.0), 1, $6, $7::bigint, $8::jsonb)`,
        [l.distinct_id, l.key, l.day, l.event_name, l.t, l.insert_id, l.ptm, l.properties === null ? null : JSON.stringify(l.properties)],
      );
    }
    for (const g of p.legacy) {
      await client.query(
        `insert into mixpanel_sync.event_ledger_legacy (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
         values (1, $1, $2::uuid, $3::date, $4, $3::date + time '12:00', 1)`,
        [g.distinct_id, g.key, g.day, g.event_name],
      );
    }
    await storeDaily(client, p.daily);
    const priorTables = await readTables(client);
    return await body(client, run.id, priorTables, events);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

async function inSavepoint<T>(client: Queryable, fn: () => Promise<T>): Promise<T> {
  await client.query('savepoint path');
  try {
    return await fn();
  } finally {
    await client.query('rollback to savepoint path');
  }
}

const ledgerRow = (e: RunEvent, overrides: Partial<LedgerRow> = {}): LedgerRow => ({ ...ledgerRowOf(e), ...overrides });
const legacyRow = (user: string, key: string, onDay: string, name: string): LegacyRow => ({
  distinct_id: user,
  key,
  day: onDay,
  event_name: name,
});

// The window is 2024-03-03 .. 2024-03-07. Each event's comment says what the prior state does to it.
const replaceLines: Line[] = [
  { label: 'a', user: 'u1', name: 'open', time: at(3, 10) }, // ledger row 03-02 (a day before the window): duplicate
  { label: 'a2', user: 'u7', name: 'buy', time: at(3, 12) }, // ledger row 03-02 (a day before): duplicate, u7's only event
  { label: 'b', user: 'u1', name: 'open', time: at(4, 11) }, // ledger row 03-02 (two days away): duplicate
  { label: 'c', user: 'u2', name: 'buy', time: at(4, 12) }, // ledger row 03-01 (three days away): applied
  { label: 'd', user: 'u2', name: 'buy', time: at(7, 9) }, // ledger row 03-08 (a day after): duplicate
  { label: 'e', user: 'u3', name: 'open', time: at(6, 13) }, // ledger row 03-08 (two days away): duplicate
  { label: 'f', user: 'u3', name: 'open', time: at(5, 14) }, // ledger row 03-08 (three days away): applied
  { label: 'g', user: 'u3', name: 'open', time: at(7, 5) }, // ledger row 03-09 (two days after the window): duplicate
  { label: 'h', user: 'u2', name: 'open', time: at(3, 8) }, // ledger row 03-03 (its own day, in the window): applied
  { label: 'i', user: 'u3', name: 'buy', time: at(7, 20) }, // ledger row 03-07 (its own day) without raw columns: applied
  { label: 'j', user: 'u1', name: 'open', time: at(5, 15), processedAt: at(5, 16) }, // first of two lines: applied
  { label: 'j', user: 'u1', name: 'open', time: at(5, 15), processedAt: at(5, 17) }, // the same event again: duplicate
  { label: 'k', user: 'u2', name: 'open', time: at(2, 10) }, // before the window: too_old
  { label: 'l', user: 'u2', name: 'open', time: at(9, 10) }, // after the window: too_old
  { label: 'm', user: 'u3', name: 'buy', time: at(4, 9) }, // legacy row (u3, its legacy key) on 03-01: duplicate
  { label: 'n', user: 'u1', name: 'buy', time: at(6, 9) }, // legacy row (u1, its legacy key) on 03-06, in the window: applied
  { label: 'o', user: 'u2', name: 'open', time: at(3, 23) }, // ledger row 03-02 under u1 (another user): applied
  { label: 's', user: 'u2', name: 'buy', time: at(5, 9) }, // legacy row (u1, its legacy key): another user's: applied
  { label: 'p1', user: 'u4', name: 'open', time: at(5, 10) }, // u4's events_daily row already holds p1 + p2
  { label: 'p2', user: 'u4', name: 'open', time: at(5, 11) },
  { label: 'r', user: 'u1', name: 'open', time: at(3, 1) }, // ledger row 03-04 (in the window, a day after): applied
  { label: 'x1', user: null, name: 'open', time: at(4, 7) }, // no distinct_id: raw on, a ledger row under ''
  { label: 'x2', user: null, name: 'open', time: at(3, 7) }, // no distinct_id, ledger row ('', 03-02): not again
  { label: 'x1', user: null, name: 'open', time: at(4, 7) }, // x1 again
  { label: 'bad', user: 'u1', name: 'open', time: at(4, 1), reject: true }, // no time: rejected
  { label: 'o2', user: 'u9', name: 'view', time: at(4, 10) }, // ledger row 03-02 under u1 (another user): applied, u9's only event
  { label: 'long', user: 'u3', name: 'n'.repeat(256), time: at(5, 9) }, // rejected (name too long), with a key and a day
  // i's key and day under u1 (whose events come first): i's rewrite of its own row (raw on) leaves u1's alone
  { label: 'i1', insertId: 'i', user: 'u1', name: 'buy', time: at(7, 20) },
  { label: 'q', user: 'u3', name: 'add', time: at(7, 6) }, // u3's row of 03-07 before i's: i's rewrite leaves it alone
  { label: 'k2', user: 'u2', name: 'buy', time: at(2, 10) }, // before the window: too_old (unless not selected)
];

function replacePrior(e: (label: string) => RunEvent) {
  const t = (d: number, h: number) => String(at(d, h).getTime());
  return {
    ledger: [
      ledgerRow(e('a'), { day: day(2) }),
      // a duplicate's row on its own day (in the window) goes: the event is counted on 03-02
      ledgerRow(e('a')),
      ledgerRow(e('a2'), { day: day(2) }),
      ledgerRow(e('b'), { day: day(2) }),
      ledgerRow(e('c'), { day: day(1) }),
      ledgerRow(e('d'), { day: day(8) }),
      ledgerRow(e('d')),
      ledgerRow(e('e'), { day: day(8) }),
      ledgerRow(e('f'), { day: day(8) }),
      ledgerRow(e('g'), { day: day(9) }),
      ledgerRow(e('h')),
      ledgerRow(e('i'), { insert_id: null, ptm: null, properties: null }),
      // i's user and key three days after i (outside the window, too far to make i a duplicate): stays as it is when
      // REPLACE rewrites i's row of 03-07 (raw on)
      ledgerRow(e('i'), { day: day(10), insert_id: null, ptm: null, properties: null }),
      // q's row on its day, unchanged: i's rewrite of u3's row of 03-07 leaves it alone
      ledgerRow(e('q')),
      ledgerRow(e('o'), { distinct_id: 'u1', day: day(2) }),
      ledgerRow(e('p1')),
      ledgerRow(e('p2')),
      ledgerRow(e('r'), { day: day(4) }),
      ledgerRow(e('x2'), { distinct_id: '', day: day(2) }),
      ledgerRow(e('o2'), { distinct_id: 'u1', day: day(2) }),
      ledgerRow(e('i1')),
      // rows of the window no event of the run claims: gone (unless their name is not selected): another user's row of
      // an applied event's key and day, the row of a legacy duplicate, a no_user row (claimed with raw storage on
      // only), a rejected line's row, a row only an earlier run's event matches
      ledgerRow(e('c'), { distinct_id: 'u8' }),
      // h's key and day under u8, gone: the delete of u8's row leaves h's own (u2's, unchanged) alone
      ledgerRow(e('h'), { distinct_id: 'u8' }),
      ledgerRow(e('m')),
      ledgerRow(e('x1'), { distinct_id: '' }),
      ledgerRow(e('long')),
      ledgerRow(e('zz')),
      { ...ledgerRow(e('c')), key: '00000000-0000-0000-0000-0000000000b1', distinct_id: 'u5', day: day(6), event_name: 'open' },
      { ...ledgerRow(e('c')), key: '00000000-0000-0000-0000-0000000000b2', distinct_id: 'u3', day: day(5), event_name: 'view' },
    ],
    legacy: [
      legacyRow('u3', e('m').legacy_key!, day(1), 'buy'),
      legacyRow('u1', e('n').legacy_key!, day(6), 'buy'),
      // n's legacy key under another user, outside the window: stays
      legacyRow('u2', e('n').legacy_key!, day(1), 'buy'),
      legacyRow('u1', e('s').legacy_key!, day(1), 'buy'),
      legacyRow('u9', '00000000-0000-0000-0000-0000000000c1', day(4), 'open'),
    ],
    daily: [
      { distinct_id: 'u1', day: day(1), event_name: 'open', n: 1, first: t(1, 9), last: t(1, 9) },
      { distinct_id: 'u3', day: day(5), event_name: 'view', n: 3, first: t(5, 1), last: t(5, 3) },
      { distinct_id: 'u2', day: day(4), event_name: 'buy', n: 5, first: t(4, 1), last: t(4, 5) },
      { distinct_id: 'u4', day: day(5), event_name: 'open', n: 2, first: t(5, 10), last: t(5, 11) },
      { distinct_id: 'u5', day: day(6), event_name: 'open', n: 1, first: t(6, 1), last: t(6, 1) },
      { distinct_id: 'u6', day: day(8), event_name: 'open', n: 4, first: t(8, 1), last: t(8, 4) },
      // rows whose only events of the run are duplicates (counted on a day outside the window): gone
      { distinct_id: 'u7', day: day(3), event_name: 'buy', n: 1, first: t(3, 12), last: t(3, 12) },
      { distinct_id: 'u2', day: day(7), event_name: 'buy', n: 1, first: t(7, 9), last: t(7, 9) },
      // a row whose only event of the run is a legacy duplicate, and one only a rejected line matches: gone
      { distinct_id: 'u3', day: day(4), event_name: 'buy', n: 1, first: t(4, 9), last: t(4, 9) },
      { distinct_id: 'u3', day: day(5), event_name: 'n'.repeat(256), n: 1, first: t(5, 9), last: t(5, 9) },
    ],
  };
}

const replaceCases: ReplaceCase[] = [
  { from: day(3), to: day(7), ledgerFrom: null, names: null, raw: false },
  { from: day(3), to: day(7), ledgerFrom: day(5), names: ['open'], raw: true },
  { from: day(3), to: day(7), ledgerFrom: day(5), names: null, raw: true },
  { from: day(3), to: day(7), ledgerFrom: null, names: ['open', 'view'], raw: false },
  // a window with no event of the run: nothing applied, its rows gone
  { from: day(8), to: day(8), ledgerFrom: null, names: null, raw: false },
];

describe('REPLACE (upsert_subscribers_incremental and its _loop) against the dedup rule computed here', () => {
  for (const c of replaceCases) {
    it(`window ${c.from}..${c.to}, ledger_from ${c.ledgerFrom}, selection ${JSON.stringify(c.names)}, raw ${c.raw ? 'on' : 'off'}`, async () => {
      await scenario(replaceLines, c, replacePrior, async (client, runId, prior, events) => {
        const expected = expectedReplace(prior, events, c);
        const before = await rowVersions(client);
        const unchanged = unchangedKeys(prior, expected.tables);
        // the case means something: duplicates, too_old events, rows left as they were
        if (c.to > c.from) expect(expected.result.duplicates).toBeGreaterThan(1);
        else expect(expected.result.applied).toBe(0);
        expect(expected.result.too_old).toBeGreaterThan(1);
        expect(unchanged.length).toBeGreaterThan(5);
        for (const implementation of ['set', 'loop'] as const) {
          const got = await inSavepoint(client, async () => ({
            result: await applyReplace(client, runId, c.from, c.to, implementation, c.ledgerFrom),
            tables: await readTables(client),
            versions: await rowVersions(client),
          }));
          // REPLACE is a merge: a row whose content does not change is not rewritten
          expect(
            unchanged.filter((k) => got.versions.get(k) !== before.get(k)),
            `${implementation}: rows rewritten with the same content`,
          ).toEqual([]);
          expect(got.tables.legacy, `${implementation}: event_ledger_legacy`).toEqual(expected.tables.legacy);
          expect(got.tables.ledger, `${implementation}: event_ledger`).toEqual(expected.tables.ledger);
          expect(got.tables.daily, `${implementation}: events_daily`).toEqual(expected.tables.daily);
          expect(got.tables.subscribers, `${implementation}: subscribers`).toEqual(expected.tables.subscribers);
          expect(got.result, `${implementation}: apply_result`).toEqual(expected.result);
        }
      });
    });
  }
});

// ADD from 2024-03-03.
const addLines: Line[] = [
  { label: 'a', user: 'u1', name: 'open', time: at(3, 10) }, // ledger row 03-02 (a day before): duplicate
  { label: 'b', user: 'u1', name: 'open', time: at(4, 11) }, // ledger row 03-06 (two days after): duplicate
  { label: 'c', user: 'u2', name: 'buy', time: at(4, 12) }, // ledger row 03-01 (three days before): applied
  { label: 'd', user: 'u2', name: 'buy', time: at(6, 9) }, // ledger row 03-04 (two days before): duplicate
  { label: 'o', user: 'u2', name: 'open', time: at(5, 23) }, // ledger row 03-05 under u1 (another user): applied
  { label: 'm', user: 'u3', name: 'buy', time: at(4, 9) }, // legacy row (u3, its legacy key): duplicate
  { label: 's', user: 'u2', name: 'buy', time: at(5, 9) }, // legacy row (u1, its legacy key): another user's: applied
  { label: 'k', user: 'u2', name: 'open', time: at(2, 10) }, // before the horizon: too_old
  { label: 'j', user: 'u1', name: 'open', time: at(5, 15), processedAt: at(5, 16) }, // applied
  { label: 'j', user: 'u1', name: 'open', time: at(5, 15), processedAt: at(5, 17) }, // again: duplicate
  { label: 'e', user: 'u3', name: 'open', time: at(7, 6) }, // widens u3's 03-07 row to the left
  { label: 'f', user: 'u3', name: 'open', time: at(7, 22) }, // and to the right
  { label: 'g', user: 'u4', name: 'view', time: at(8, 9) }, // u4's first event
  { label: 'x1', user: null, name: 'open', time: at(4, 7) }, // no distinct_id: raw on, a ledger row under ''
  { label: 'x2', user: null, name: 'open', time: at(3, 7) }, // no distinct_id, ledger row ('', 03-02): not again
  { label: 'x3', user: null, name: 'open', time: at(2, 7) }, // no distinct_id, before the horizon
  { label: 'bad', user: 'u1', name: 'open', time: at(4, 1), reject: true },
];

function addPrior(e: (label: string) => RunEvent) {
  const t = (d: number, h: number) => String(at(d, h).getTime());
  return {
    ledger: [
      ledgerRow(e('a'), { day: day(2) }),
      ledgerRow(e('b'), { day: day(6) }),
      ledgerRow(e('c'), { day: day(1) }),
      ledgerRow(e('d'), { day: day(4) }),
      ledgerRow(e('o'), { distinct_id: 'u1' }),
      ledgerRow(e('x2'), { distinct_id: '', day: day(2) }),
    ],
    legacy: [legacyRow('u3', e('m').legacy_key!, day(1), 'buy'), legacyRow('u1', e('s').legacy_key!, day(5), 'buy')],
    daily: [
      { distinct_id: 'u1', day: day(5), event_name: 'open', n: 2, first: t(5, 8), last: t(5, 9) },
      { distinct_id: 'u3', day: day(7), event_name: 'open', n: 3, first: t(7, 8), last: t(7, 20) },
      { distinct_id: 'u5', day: day(6), event_name: 'open', n: 1, first: t(6, 1), last: t(6, 1) },
    ],
  };
}

describe('ADD (upsert_subscribers_incremental_add and its _loop) against the dedup rule computed here', () => {
  for (const options of [
    { raw: false, names: null },
    { raw: true, names: ['open', 'view'] },
    { raw: true, names: null },
    { raw: false, names: ['buy'] },
  ]) {
    it(`horizon ${day(3)}, selection ${JSON.stringify(options.names)}, raw ${options.raw ? 'on' : 'off'}`, async () => {
      await scenario(addLines, options, addPrior, async (client, runId, prior, events) => {
        const expected = expectedAdd(prior, events, day(3), options.raw);
        expect(expected.result.applied).toBeGreaterThan(0);
        expect(expected.result.duplicates).toBeGreaterThan(0);
        for (const implementation of ['set', 'loop'] as const) {
          const got = await inSavepoint(client, async () => ({
            result: await applyAdd(client, runId, day(3), implementation),
            tables: await readTables(client),
          }));
          expect(got.tables.legacy, `${implementation}: event_ledger_legacy`).toEqual(expected.tables.legacy);
          expect(got.tables.ledger, `${implementation}: event_ledger`).toEqual(expected.tables.ledger);
          expect(got.tables.daily, `${implementation}: events_daily`).toEqual(expected.tables.daily);
          expect(got.tables.subscribers, `${implementation}: subscribers`).toEqual(expected.tables.subscribers);
          expect(got.result, `${implementation}: apply_result`).toEqual(expected.result);
        }
      });
    });
  }
});
