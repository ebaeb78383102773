// syncCohorts against the fake Mixpanel server on 127.0.0.1 and a real database: the list and filter_by_cohort pages
// staged and applied; a failure while fetching members fails the run and leaves every membership as it was.
// Seen failing without the protection: without the closing stage_cohort_members(…, complete => true) no cohort is
// marked whole and no membership is applied (the first test fails).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { syncCohorts } from './cohorts-sync.ts';
import { isLoaderFailure } from './staged-sync.ts';

const db = await createTestDatabase();
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel();
});
afterAll(async () => {
  await fake?.close();
  await db.drop();
});
beforeEach(async () => {
  await db.pool.query(
    'truncate mixpanel_sync.cohorts, mixpanel_sync.cohort_members, mixpanel_sync.sync_runs, mixpanel_sync.sync_rejects cascade',
  );
  fake.requests.length = 0;
});

const members = async () =>
  (await db.pool.query(`select cohort_id::int, distinct_id from mixpanel_sync.cohort_members order by 1, 2`)).rows.map(
    (r) => `${r.cohort_id}:${r.distinct_id}`,
  );

describe('syncCohorts', () => {
  it('pages each cohort with filter_by_cohort and applies the whole membership', async () => {
    fake.setCohorts(
      [
        { id: 1, name: 'A', count: 3 },
        { id: 2, name: 'B', count: 1 },
      ],
      { 1: ['x', 'y', 'z'], 2: ['y'] },
    );
    const summary = await syncCohorts({ pool: db.pool, mixpanel: fake.settings(), pageSize: 2 });
    expect(summary).toMatchObject({ status: 'succeeded', cohorts: 2, members: 4, added: 4, removed: 0, unchanged: 0 });
    expect(await members()).toEqual(['1:x', '1:y', '1:z', '2:y']);
    const engage = fake.requests.filter((r) => r.path === '/api/query/engage');
    expect(engage.map((r) => [r.form.filter_by_cohort, r.form.page ?? '0'])).toEqual([
      ['{"id":1}', '0'],
      ['{"id":1}', '1'],
      ['{"id":2}', '0'],
    ]);
    const again = await syncCohorts({ pool: db.pool, mixpanel: fake.settings(), pageSize: 2 });
    expect(again).toMatchObject({ members: 4, added: 0, removed: 0, unchanged: 4 });
  });

  it('an Engage failure fails the run: nothing applied, memberships as they were', async () => {
    fake.setCohorts([{ id: 1, name: 'A', count: 2 }], { 1: ['x', 'y'] });
    await syncCohorts({ pool: db.pool, mixpanel: fake.settings() });
    fake.setCohorts([{ id: 1, name: 'A', count: 1 }], { 1: ['x'] });
    fake.queueEngage({ status: 400, body: JSON.stringify({ error: 'fake bad request', status: 'error' }) });
    const error = await syncCohorts({ pool: db.pool, mixpanel: fake.settings({ maxTries: 1 }) }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isLoaderFailure(error)).toBe(true);
    expect((error as Error).message).toMatch(/^cohorts run \d+ failed: .*fake bad request/);
    expect(await members()).toEqual(['1:x', '1:y']);
    const { rows } = await db.pool.query(`select status from mixpanel_sync.sync_runs order by id`);
    expect(rows.map((r) => r.status)).toEqual(['succeeded', 'failed']);
  });
});
