// One run at a time per source (MP002), race-free, and a run whose loader's session is gone abandoned at once.
// Seen failing without each protection (removed once in 100-safety-core.sql, then restored):
//   - the running-run check and the unique index removed: both racing begin_run calls started a run;
//   - the running-run check and the unique_violation handler removed (index kept): the loser got 23505, not MP002;
//   - the owner loop removed from begin_run: the run of the closed session blocked the next begin_run with MP002.
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun, finishRun } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 8 });
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query(
    'truncate mixpanel_sync.sync_runs, mixpanel_sync.sync_watermarks, mixpanel_sync.staged_events, mixpanel_sync.run_events cascade',
  );
});

async function outcome(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return 'started';
  } catch (error) {
    return (error as { code: string }).code;
  }
}

describe('one run at a time per source', () => {
  it('of two begin_run calls racing on separate sessions, exactly one starts; the other gets MP002', async () => {
    for (let trial = 0; trial < 5; trial++) {
      const sessions = await Promise.all([db.pool.connect(), db.pool.connect()]);
      try {
        const results = await Promise.all(sessions.map((client) => outcome(beginRun(client, { source: 'events' }))));
        expect(results.sort()).toEqual(['MP002', 'started']);
        const { rows } = await db.pool.query(`select id from mixpanel_sync.sync_runs where status = 'running'`);
        expect(rows).toHaveLength(1);
        await failRun(db.pool, rows[0].id, 'test: done');
      } finally {
        for (const client of sessions) client.release();
      }
    }
  });

  it('names the running run and its age, hints at --wait and fail_run; the other source is not blocked', async () => {
    const run = await beginRun(db.pool, { source: 'events' });
    const error = await beginRun(db.pool, { source: 'events' }).catch((e) => e);
    expect(error.code).toBe('MP002');
    expect(error.message).toContain(`run ${run.id} of source events is running (started`);
    expect(error.hint).toMatch(/--wait/);
    expect(error.hint).toContain(`fail_run(${run.id}`);
    const profiles = await beginRun(db.pool, { source: 'profiles' });
    expect(await outcome(beginRun(db.pool, { source: 'profiles' }))).toBe('MP002');
    await finishRun(db.pool, profiles.id);
    await failRun(db.pool, run.id, 'test: done');
    expect(await outcome(beginRun(db.pool, { source: 'events' }))).toBe('started');
  });

  it('abandons a running run whose loader session is gone, saying so, and starts the new one', async () => {
    const loader = new pg.Client({ connectionString: db.url });
    await loader.connect();
    const dead = await beginRun(loader, { source: 'events' });
    const pid = (dead.options.owner as { pid: number }).pid;
    expect(pid).toBe((await loader.query('select pg_backend_pid() as pid')).rows[0].pid);
    await loader.end();
    // the backend may take a moment to leave pg_stat_activity
    for (let i = 0; i < 50; i++) {
      const { rows } = await db.pool.query('select 1 from pg_stat_activity where pid = $1', [pid]);
      if (rows.length === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const next = await beginRun(db.pool, { source: 'events' });
    const { rows } = await db.pool.query('select status, error from mixpanel_sync.sync_runs where id = $1', [dead.id]);
    expect(rows[0].status).toBe('abandoned');
    expect(rows[0].error).toBe(`abandoned by begin_run of run ${next.id}: its loader's session (pid ${pid}) is gone`);
    await failRun(db.pool, next.id, 'test: done');
  });
});
