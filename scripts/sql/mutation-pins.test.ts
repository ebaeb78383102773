// Pins found by the mutation run of issue 15 (npm run mutate) that need a database of their own (verify/mutation_pins.sql
// holds the ones a rolled-back script can prove on any database).
// Seen failing with each mutant (written into a clone with create or replace by npm run mutate, then this file run
// against it), passing on main:
//   - reattribute_all with `and` for the `or` before `exists (… event_ledger_legacy …)`, before `exists (… subscribers …)`
//     or before `exists (… subscriber_properties …)`: an alias whose only rows are legacy ledger rows, or a profile,
//     was not moved (ids_moved 1 or 0, not 2).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

describe('reattribute_all', () => {
  it('moves an alias whose only rows are legacy ledger rows, and one whose only row is its profile', async () => {
    // the state rows written while identity.mode was off (or by the legacy key) leave: the map names two aliases of C
    await db.pool.query(`insert into mixpanel_sync.identity_links (alias, canonical) values ('C', 'C'), ('legacy-only', 'C'), ('profile-only', 'C')`);
    await db.pool.query(`insert into mixpanel_sync.event_ledger_legacy (distinct_id, event_key, day, event_name, event_time, run_id)
      values ('legacy-only', '00000000-0000-0000-0000-000000000001', '2024-03-01', 'open', '2024-03-01 10:00Z', 1)`);
    await db.pool.query(`insert into mixpanel_sync.subscriber_properties (distinct_id, name, properties)
      values ('profile-only', 'P', '{"$name": "P"}')`);
    const { rows } = await db.pool.query('select mixpanel_sync.reattribute_all() as r');
    expect(rows[0].r).toMatchObject({ ids_moved: 2 });
    const legacy = await db.pool.query('select distinct_id from mixpanel_sync.event_ledger_legacy');
    expect(legacy.rows.map((r) => r.distinct_id)).toEqual(['C']);
    const profiles = await db.pool.query('select distinct_id from mixpanel_sync.subscriber_properties');
    expect(profiles.rows.map((r) => r.distinct_id)).toEqual(['C']);
  });
});
