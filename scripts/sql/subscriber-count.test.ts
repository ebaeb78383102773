// 400-perf.sql: the subscriber count a run records (options.subscribers) is kept by statement triggers on subscribers
// (mixpanel_sync.subscriber_count) instead of a count(*) per run; and add_event_counts (ADD's per-user merge) adds only
// the keys of its second object.
// Seen failing without their protection (each trigger / function re-created mutated in a throwaway database):
// - subscribers_count_delete dropped: after the REPLACE that loses a user the kept count stays one too high;
// - count_subscribers counting every row of an INSERT … ON CONFLICT as inserted (the updated ones too): the count runs
//   ahead after the first incremental run that updates existing users;
// - add_event_counts returning `counts || more` (no sum): the reference comparison reports the summed keys.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { exportEvent, minutesBefore, syncEvents, type ExportEvent } from './run-fixtures.ts';

let db: TestDatabase;
beforeEach(async () => {
  db = await createTestDatabase();
});
afterEach(async () => {
  await db.drop();
});

async function counts(): Promise<{ kept: number; actual: number }> {
  const { rows } = await db.pool.query<{ kept: string; actual: string }>(
    `select (select c.subscribers from mixpanel_sync.subscriber_count c) as kept,
       (select count(*) from mixpanel_sync.subscribers) as actual`,
  );
  return { kept: Number(rows[0]!.kept), actual: Number(rows[0]!.actual) };
}

const events = (at: Date, users: number[], tag: string): ExportEvent[] =>
  users.map((u, i) => exportEvent(`user-${u}`, i % 2 === 0 ? 'open' : 'buy', minutesBefore(at, 5 + i), { insertId: `${tag}-${i}` }));

describe('subscriber_count', () => {
  it('equals count(*) of subscribers through full, incremental and shrinking runs, direct writes and truncate; runs record it', async () => {
    const now = new Date();
    const first = await syncEvents(db.pool, events(now, [0, 1, 2, 3, 4], 'a'));
    expect(await counts()).toEqual({ kept: 5, actual: 5 });
    expect(first.options).toMatchObject({ subscribers: 5 });

    // incremental: two known users (ON CONFLICT DO UPDATE) and two new ones
    const second = await syncEvents(db.pool, events(now, [1, 2, 7, 8], 'b'));
    expect(await counts()).toEqual({ kept: 7, actual: 7 });
    expect(second.options).toMatchObject({ subscribers: 7 });

    // a full run whose input lacks users 0 and 8: REPLACE deletes their subscribers rows
    const all = [...events(now, [0, 1, 2, 3, 4], 'a'), ...events(now, [1, 2, 7, 8], 'b')];
    const shrunk = await syncEvents(
      db.pool,
      all.filter((e) => !['user-0', 'user-8'].includes(e.properties.distinct_id as string)),
      { forceFull: true },
    );
    expect(shrunk.status).toBe('succeeded');
    expect(await counts()).toEqual({ kept: 5, actual: 5 });
    expect(shrunk.options).toMatchObject({ subscribers: 5 });

    // direct writes (psql): an upsert of one known and one new user, a delete, an update, then truncate
    await db.pool.query(
      `insert into mixpanel_sync.subscribers (project_id, distinct_id, total_events, first_event_at, last_event_at, event_counts)
       values (1, 'user-1', 9, now(), now(), '{"open": 9}'), (1, 'psql-user', 1, now(), now(), '{"open": 1}')
       on conflict (project_id, distinct_id) do update set total_events = excluded.total_events`,
    );
    expect(await counts()).toEqual({ kept: 6, actual: 6 });
    await db.pool.query(`update mixpanel_sync.subscribers set distinct_id = 'renamed' where distinct_id = 'psql-user'`);
    await db.pool.query(`delete from mixpanel_sync.subscribers where distinct_id in ('renamed', 'user-2')`);
    expect(await counts()).toEqual({ kept: 4, actual: 4 });
    await db.pool.query('truncate mixpanel_sync.subscribers');
    expect(await counts()).toEqual({ kept: 0, actual: 0 });
  });

  it('add_event_counts equals the key-by-key sum over the union of keys', async () => {
    const { rows } = await db.pool.query<{ cases: string; differ: string; sample: unknown }>(
      `with cases as (
         select i,
           (select jsonb_object_agg('e' || (i * 7 + j * 3) % 11, 1 + (i + j) % 5) from generate_series(0, i % 9) j) as counts,
           (select jsonb_object_agg('e' || (i * 5 + j) % 13, 1 + j) from generate_series(0, i % 3) j) as more
         from generate_series(1, 400) i
       ), expected as (
         select c.*, (select jsonb_object_agg(k.name, coalesce((c.counts ->> k.name)::numeric, 0) + coalesce((c.more ->> k.name)::numeric, 0))
                      from (select jsonb_object_keys(c.counts) union select jsonb_object_keys(c.more)) k (name)) as sum
         from cases c
       )
       select count(*) as cases,
         count(*) filter (where mixpanel_sync.add_event_counts(e.counts, e.more) is distinct from e.sum) as differ,
         (select mixpanel_sync.add_event_counts('{"a": 2, "b": 1}', '{"b": 3, "c": 1}')) as sample
       from expected e`,
    );
    expect(rows[0]).toEqual({ cases: '400', differ: '0', sample: { a: 2, b: 4, c: 1 } });
  });
});
