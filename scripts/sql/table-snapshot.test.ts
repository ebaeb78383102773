// mixpanel_sync_verify.table_snapshot / canonical_snapshot / verify_first_difference through the SQL API: the one
// definition of "equal tables" that the property tests and the verify/*.sql proofs share. Each case below was seen
// failing with the comparison weakened: firstDifference returning null always (every "names" case fails), and
// firstDifference without canonical_snapshot (the model-keys case fails: '["u1","2024-03-01","login"]' is not the
// key jsonb prints).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { assertSameTables, beginRun, finishRun, firstDifference, stageRecords, tableSnapshot } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  const run = await beginRun(db.pool, { source: 'events', forceFull: true, clock: '2024-03-03T00:00:00Z' });
  const at = Date.UTC(2024, 2, 1, 10) / 1000;
  await stageRecords(db.pool, 'events', run.id, [
    { event: 'login', properties: { distinct_id: 'u1', time: at, $insert_id: 'a' } },
    { event: 'login', properties: { distinct_id: 'u1', time: at + 60, $insert_id: 'b' } },
    { event: 'signup', properties: { distinct_id: 'u2', time: at, $insert_id: 'c' } },
  ]);
  await finishRun(db.pool, run.id);
});
afterAll(async () => {
  await db?.drop();
});

const tables = ['events_daily', 'event_ledger', 'subscribers'];

describe('table snapshots compared in SQL', () => {
  it('equal tables have no difference; a changed column, a missing and an unexpected row are named', async () => {
    const stored = await tableSnapshot(db.pool, tables);
    expect(Object.keys(stored.events_daily!)).toHaveLength(2);
    expect(await firstDifference(db.pool, stored, await tableSnapshot(db.pool, tables))).toBeNull();

    const client = await db.pool.connect();
    try {
      await client.query('begin');
      await client.query(`update mixpanel_sync.events_daily set event_count = 3 where distinct_id = 'u1'`);
      expect(await firstDifference(db.pool, stored, await tableSnapshot(client, tables))).toBe(
        'events_daily key ["u1", "2024-03-01", "login"]: column event_count expected 2, actual 3',
      );
      await client.query(`delete from mixpanel_sync.subscribers where distinct_id = 'u2'`);
      const subscribers = { subscribers: stored.subscribers! };
      expect(await firstDifference(db.pool, subscribers, await tableSnapshot(client, ['subscribers']))).toMatch(
        /^subscribers key \["u2"\]: missing row \{.*"distinct_id": "u2"/,
      );
      expect(await firstDifference(db.pool, await tableSnapshot(client, ['subscribers']), subscribers)).toMatch(
        /^subscribers key \["u2"\]: unexpected row \{.*"distinct_id": "u2"/,
      );
      await expect(
        assertSameTables(db.pool, 'stored (expected) and after the delete (actual)', stored, await tableSnapshot(client, tables)),
      ).rejects.toThrow(
        /^stored \(expected\) and after the delete \(actual\): events_daily key \["u1", "2024-03-01", "login"\]: column event_count/,
      );
    } finally {
      await client.query('rollback');
      client.release();
    }
  });

  it('leaves out ignored columns, and compares a model keyed the way JSON.stringify writes keys', async () => {
    const stored = await tableSnapshot(db.pool, ['events_daily'], ['events_daily.first_at', 'events_daily.last_at']);
    const row = stored.events_daily!['["u1", "2024-03-01", "login"]']!;
    expect(row).toEqual({ distinct_id: 'u1', day: '2024-03-01', event_name: 'login', event_count: 2 });
    const model = {
      events_daily: {
        [JSON.stringify(['u1', '2024-03-01', 'login'])]: { distinct_id: 'u1', day: '2024-03-01', event_name: 'login', event_count: 2 },
        [JSON.stringify(['u2', '2024-03-01', 'signup'])]: { distinct_id: 'u2', day: '2024-03-01', event_name: 'signup', event_count: 1 },
      },
    };
    expect(await firstDifference(db.pool, model, stored)).toBeNull();
    model.events_daily[JSON.stringify(['u2', '2024-03-01', 'signup'])]!.event_count = 5;
    expect(await firstDifference(db.pool, model, stored)).toBe(
      'events_daily key ["u2", "2024-03-01", "signup"]: column event_count expected 5, actual 1',
    );
  });

  it('refuses a table without a primary key, naming it', async () => {
    await expect(tableSnapshot(db.pool, ['no_such_table'])).rejects.toThrow(
      'mixpanel_sync.no_such_table is not a table with a primary key',
    );
  });
});
