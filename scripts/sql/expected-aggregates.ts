// Expectations a test computes without the SQL under test: events_daily and subscribers of a list of counted events,
// by their definitions (one events_daily row per user, UTC day and event name, with the count and the first and last
// time; a subscriber's totals summed from its events_daily rows).
import type { Queryable } from './sync-api.ts';

/** One counted event: its user, UTC day, name and time (epoch milliseconds, as text). */
export interface CountedEvent {
  distinct_id: string;
  day: string;
  event_name: string;
  t: string;
}

export interface DailyRow {
  distinct_id: string;
  day: string;
  event_name: string;
  n: number;
  first: string;
  last: string;
}

export interface SubscriberRow {
  distinct_id: string;
  n: number;
  first: string;
  last: string;
  event_counts: Record<string, number>;
}

/** events_daily of these events. */
export function dailyOf(events: readonly CountedEvent[]): DailyRow[] {
  const out = new Map<string, DailyRow>();
  for (const e of events) {
    const k = `${e.distinct_id}|${e.day}|${e.event_name}`;
    const g = out.get(k);
    if (!g) out.set(k, { distinct_id: e.distinct_id, day: e.day, event_name: e.event_name, n: 1, first: e.t, last: e.t });
    else {
      g.n++;
      if (BigInt(e.t) < BigInt(g.first)) g.first = e.t;
      if (BigInt(e.t) > BigInt(g.last)) g.last = e.t;
    }
  }
  return [...out.values()];
}

/** subscribers of these events_daily rows (what refresh_subscribers computes). */
export function subscribersOf(daily: readonly DailyRow[]): SubscriberRow[] {
  const out = new Map<string, SubscriberRow>();
  for (const d of daily) {
    const s = out.get(d.distinct_id) ?? { distinct_id: d.distinct_id, n: 0, first: d.first, last: d.last, event_counts: {} };
    s.n += d.n;
    if (BigInt(d.first) < BigInt(s.first)) s.first = d.first;
    if (BigInt(d.last) > BigInt(s.last)) s.last = d.last;
    s.event_counts[d.event_name] = (s.event_counts[d.event_name] ?? 0) + d.n;
    out.set(d.distinct_id, s);
  }
  return [...out.values()];
}

/** Writes these events_daily rows, and subscribers consistent with them (a pure function of events_daily), as prior state. */
export async function storeDaily(client: Queryable, daily: readonly DailyRow[]): Promise<void> {
  for (const d of daily) {
    await client.query(
      `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
       values (1, $1, $2::date, $3, $4, to_timestamp($5::bigint / 1000.0), to_timestamp($6::bigint / 1000.0))`,
      [d.distinct_id, d.day, d.event_name, d.n, d.first, d.last],
    );
  }
  await client.query(`insert into mixpanel_sync.subscribers (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts)
    select 1, distinct_id, sum(n), min(f), max(l), jsonb_object_agg(event_name, n)
    from (select distinct_id, event_name, sum(event_count) as n, min(first_at) as f, max(last_at) as l
          from mixpanel_sync.events_daily group by distinct_id, event_name) per_name
    group by distinct_id`);
}
