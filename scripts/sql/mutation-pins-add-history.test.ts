// Pins of ADD's ledger lookup as migration 000011 splits it (issue 11,
// incremental_history_growth): the event's own day first (not_on_day), then, for the events not found there, the days
// either side (a subquery per event). One hand-made run meets a hand-made ledger whose rows sit on the event's own day,
// a day or two away, three days away, and under another user; the expectation is Mixpanel's dedup rule as ADD states
// it, computed here from the run's parsed events and the prior rows: an event is a duplicate when the ledger holds its
// key for the same distinct_id on a day at most two days from the event's day; every other event is applied once
// (its ledger row, +1 on its events_daily row). Both paths (set and _loop) must leave exactly that.
// The mutant each case was seen failing on (written into a scratch clone, create or replace, this file failed):
//   killed: mixpanel_sync.upsert_subscribers_incremental_add(bigint,date)|drop-conjunct|where l.distinct_id = w.distinct_id and l.event_key = w.event_key|1
//     (the lookup on the days either side without its distinct_id: 'p' and 'q', whose keys the ledger holds under
//     another user a day away, were counted duplicates)
import { beforeAll, describe, expect, it } from 'vitest';
import { exportEvent, syncTestDatabase } from './run-fixtures.ts';
import { applyAdd, beginRun, parseStagedEvents, stageLines, type ApplyResult } from './sync-api.ts';

const db = await syncTestDatabase({ dropPartitions: false });
beforeAll(() => db.pool.query(`select mixpanel_sync_private.ensure_ledger_partitions('2024-03-01', '2024-03-12')`));

const clock = '2024-03-10T00:00:00Z';
const horizon = '2024-03-03';
const day = (d: number): string => `2024-03-${String(d).padStart(2, '0')}`;
const dayNumber = (iso: string): number => Date.parse(`${iso}T00:00:00Z`) / 86_400_000;

interface Case {
  label: string;
  user: string;
  name: string;
  hour: number;
  /** where the prior ledger holds the event's key: under whom, on which day of March (none: nowhere) */
  prior?: { user: string; day: number };
}

// Every event is on 2024-03-05.
const cases: Case[] = [
  { label: 'p', user: 'u2', name: 'open', hour: 10, prior: { user: 'u1', day: 4 } }, // another user's, a day before
  { label: 'q', user: 'u2', name: 'buy', hour: 11, prior: { user: 'u1', day: 6 } }, // another user's, a day after
  { label: 'r', user: 'u3', name: 'open', hour: 12, prior: { user: 'u3', day: 6 } }, // the user's, a day after
  { label: 'r2', user: 'u3', name: 'buy', hour: 12, prior: { user: 'u3', day: 7 } }, // the user's, two days after
  { label: 'r3', user: 'u3', name: 'add', hour: 12, prior: { user: 'u3', day: 3 } }, // the user's, two days before
  { label: 't', user: 'u3', name: 'view', hour: 13, prior: { user: 'u3', day: 8 } }, // the user's, three days after
  { label: 't2', user: 'u3', name: 'pay', hour: 13, prior: { user: 'u3', day: 2 } }, // the user's, three days before
  { label: 'v', user: 'u4', name: 'view', hour: 14, prior: { user: 'u4', day: 5 } }, // the user's, its own day
  { label: 'v2', user: 'u4', name: 'open', hour: 14, prior: { user: 'u1', day: 5 } }, // another user's, its own day
  { label: 'w', user: 'u5', name: 'view', hour: 15 }, // nowhere
];

interface Parsed {
  label: string;
  distinct_id: string;
  key: string;
  day: string;
  event_name: string;
}

/** Mixpanel's rule: a duplicate iff the ledger holds the key for the same distinct_id at most two days away. */
function expected(parsed: Parsed[], prior: { distinct_id: string; key: string; day: string }[]) {
  const applied = parsed.filter(
    (e) => !prior.some((l) => l.distinct_id === e.distinct_id && l.key === e.key && Math.abs(dayNumber(l.day) - dayNumber(e.day)) <= 2),
  );
  const result: ApplyResult = {
    applied: applied.length,
    duplicates: parsed.length - applied.length,
    too_old: 0,
    users_touched: new Set(applied.map((e) => e.distinct_id)).size,
  };
  const ledger = [...prior, ...applied.map((e) => ({ distinct_id: e.distinct_id, key: e.key, day: e.day }))]
    .map((l) => `${l.distinct_id}|${l.key}|${l.day}`)
    .sort();
  const daily = applied.map((e) => `${e.distinct_id}|${e.day}|${e.event_name}|1`).sort();
  return { result, ledger, daily, appliedLabels: applied.map((e) => e.label).sort() };
}

describe('ADD: own day first, then the days either side (000011)', () => {
  it('applies exactly the events whose key the ledger does not hold for their user within two days (set and loop)', async () => {
    const client = await db.pool.connect();
    try {
      await client.query('begin');
      const run = await beginRun(client, { source: 'events', clock, forceFull: false });
      const lines = cases.map((c) =>
        JSON.stringify(exportEvent(c.user, c.name, new Date(`${day(5)}T${String(c.hour).padStart(2, '0')}:00:00Z`), { insertId: c.label })),
      );
      await stageLines(client, 'events', run.id, lines);
      await parseStagedEvents(client, run.id);
      const { rows } = await client.query<Omit<Parsed, 'label'> & { line_id: number }>(
        `select line_id::int, distinct_id, event_key::text as key, day::text, event_name
         from mixpanel_sync.run_events where run_id = $1 order by line_id`,
        [run.id],
      );
      const parsed: Parsed[] = rows.map((r, i) => ({
        label: cases[i]!.label,
        distinct_id: r.distinct_id,
        key: r.key,
        day: r.day,
        event_name: r.event_name,
      }));
      const prior = cases.flatMap((c, i) => (c.prior ? [{ distinct_id: c.prior.user, key: parsed[i]!.key, day: day(c.prior.day) }] : []));
      for (const l of prior) {
        await client.query(
          `insert into mixpanel_sync.event_ledger (project_id, distinct_id, event_key, day, event_name, event_time, run_id)
           values (1, $1, $2::uuid, $3::date, 'prior', $3::date + time '12:00', 1)`,
          [l.distinct_id, l.key, l.day],
        );
      }
      const want = expected(parsed, prior);
      // the rule, spelled out for this data: the other user's rows and the rows three days away do not count
      expect(want.appliedLabels).toEqual(['p', 'q', 't', 't2', 'v2', 'w']);
      for (const implementation of ['set', 'loop'] as const) {
        await client.query('savepoint path');
        const result = await applyAdd(client, run.id, horizon, implementation);
        const ledger = await client.query<{ k: string }>(
          `select distinct_id || '|' || event_key || '|' || day as k from mixpanel_sync.event_ledger order by 1`,
        );
        const daily = await client.query<{ k: string }>(
          `select distinct_id || '|' || day || '|' || event_name || '|' || event_count as k from mixpanel_sync.events_daily order by 1`,
        );
        expect(result, `${implementation}: apply_result`).toEqual(want.result);
        expect(ledger.rows.map((r) => r.k).sort(), `${implementation}: event_ledger`).toEqual(want.ledger);
        expect(daily.rows.map((r) => r.k).sort(), `${implementation}: events_daily`).toEqual(want.daily);
        await client.query('rollback to savepoint path');
      }
    } finally {
      await client.query('rollback').catch(() => {});
      client.release();
    }
  });
});
