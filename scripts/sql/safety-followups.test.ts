// Safety follow-ups (issue 9; migration 000006, part `--! split: 150-safety-followups.sql`): the heartbeat in begin_run's dead-owner
// rule, and json_problem's detail. Seen failing without each protection (removed once, then restored):
//   - `and (r.heartbeat_at is null or r.heartbeat_at < now() - heartbeat_timeout)` removed from begin_run: the run
//     with a fresh heartbeat whose owner session was closed (what pgbouncer's server_idle_timeout does) was abandoned
//     (begin_run started a new run: "expected undefined to be 'MP002'");
//   - `or r.heartbeat_at < pg_postmaster_start_time()` removed: a run whose last beat came before the server's start
//     (its loader died with the server) blocked the next begin_run with MP002 until runs.heartbeat_timeout; the
//     crash test of scripts/cli/sync-events-truth.test.ts failed the same way ("begin_run refused: … run 1 … is running");
//   - json_problem without the detail: the lone low surrogate's reason was only "not valid JSON: invalid input syntax
//     for type json" (no "Unicode low surrogate must follow a high surrogate.").
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, failRun, finishRun, heartbeatRun, stageLines, type SyncRun } from './sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ poolSize: 4 });
});
afterAll(async () => {
  await db?.drop();
});
beforeEach(async () => {
  await db.pool.query(
    'truncate mixpanel_sync.sync_runs, mixpanel_sync.sync_watermarks, mixpanel_sync.staged_events, mixpanel_sync.run_events cascade',
  );
});

/** A run begun on a session that is then closed, as pgbouncer closes an idle server session. */
async function runOfClosedSession(heartbeat: boolean): Promise<SyncRun> {
  const owner = new pg.Client({ connectionString: db.url });
  await owner.connect();
  const run = await beginRun(owner, { source: 'events' });
  // the heartbeat comes from another session, as the loader's does
  if (heartbeat) expect(await heartbeatRun(db.pool, run.id)).toBe(true);
  const pid = (run.options.owner as { pid: number }).pid;
  await owner.end();
  for (let i = 0; i < 100; i++) {
    const { rows } = await db.pool.query('select 1 from pg_stat_activity where pid = $1', [pid]);
    if (rows.length === 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return run;
}

async function statusOf(runId: string): Promise<{ status: string; error: string | null }> {
  const { rows } = await db.pool.query('select status, error from mixpanel_sync.sync_runs where id = $1', [runId]);
  return rows[0];
}

describe('the run heartbeat', () => {
  it('a run whose owner session is gone but whose heartbeat is fresh stays running: begin_run refuses with MP002', async () => {
    const live = await runOfClosedSession(true);
    const error = await beginRun(db.pool, { source: 'events' }).catch((e: unknown) => e);
    expect((error as { code?: string }).code).toBe('MP002');
    expect(await statusOf(live.id)).toMatchObject({ status: 'running' });
    await failRun(db.pool, live.id, 'test: done');
  });

  it('once the heartbeat is older than runs.heartbeat_timeout, the run is abandoned, saying how old it was', async () => {
    const dead = await runOfClosedSession(true);
    await db.pool.query(`update mixpanel_sync.sync_runs set heartbeat_at = now() - interval '3 minutes' where id = $1`, [dead.id]);
    const next = await beginRun(db.pool, { source: 'events' });
    const { status, error } = await statusOf(dead.id);
    expect(status).toBe('abandoned');
    expect(error).toMatch(
      new RegExp(
        `^abandoned by begin_run of run ${next.id}: its loader's session \\(pid \\d+\\) is gone and its last heartbeat is 00:03:0\\d old \\(runs.heartbeat_timeout 00:02:00\\)$`,
      ),
    );
    await failRun(db.pool, next.id, 'test: done');
  });

  it('a heartbeat from before the server started does not count: the loader died with the server', async () => {
    await db.pool.query(`update mixpanel_sync.sync_settings set value = '1 day' where key = 'runs.heartbeat_timeout'`);
    try {
      const dead = await runOfClosedSession(true);
      await db.pool.query(
        `update mixpanel_sync.sync_runs set heartbeat_at = pg_postmaster_start_time() - interval '1 second' where id = $1`,
        [dead.id],
      );
      const next = await beginRun(db.pool, { source: 'events' });
      const { status, error } = await statusOf(dead.id);
      expect(status).toBe('abandoned');
      expect(error).toMatch(/is gone and it sent no heartbeat since the server started$/);
      await failRun(db.pool, next.id, 'test: done');
    } finally {
      await db.pool.query(`update mixpanel_sync.sync_settings set value = '2 minutes' where key = 'runs.heartbeat_timeout'`);
    }
  });

  it('a run that never had a heartbeat (psql) keeps the owner-session rule: abandoned at once', async () => {
    const dead = await runOfClosedSession(false);
    const next = await beginRun(db.pool, { source: 'events' });
    expect(await statusOf(dead.id)).toMatchObject({ status: 'abandoned' });
    await failRun(db.pool, next.id, 'test: done');
  });

  it('heartbeat_run touches only a running run', async () => {
    const run = await beginRun(db.pool, { source: 'events' });
    expect(await heartbeatRun(db.pool, run.id)).toBe(true);
    await finishRun(db.pool, run.id).catch(() => failRun(db.pool, run.id, 'test: done'));
    const before = (await db.pool.query('select heartbeat_at from mixpanel_sync.sync_runs where id = $1', [run.id])).rows[0].heartbeat_at;
    expect(await heartbeatRun(db.pool, run.id)).toBe(false);
    expect(await heartbeatRun(db.pool, '999999')).toBe(false);
    const after = (await db.pool.query('select heartbeat_at from mixpanel_sync.sync_runs where id = $1', [run.id])).rows[0].heartbeat_at;
    expect(after).toEqual(before);
  });
});

describe('json_problem', () => {
  it("keeps PostgreSQL's detail: a lone escaped low surrogate says why", async () => {
    const { rows } = await db.pool.query<{ problem: string }>(`select mixpanel_sync.json_problem($1) as problem`, ['{"v":"x\\udc00y"}']);
    expect(rows[0]!.problem).toBe(
      'not valid JSON: invalid input syntax for type json (Unicode low surrogate must follow a high surrogate.)',
    );
  });

  it('a rejected line carries that reason in sync_rejects', async () => {
    const run = await beginRun(db.pool, { source: 'events' });
    const second = Math.floor(Date.now() / 1000) - 3600;
    await stageLines(db.pool, 'events', run.id, [`{"event":"e","properties":{"time":${second},"distinct_id":"u","v":"\\udc00"}}`]);
    await finishRun(db.pool, run.id);
    const { rows } = await db.pool.query<{ reason: string }>('select reason from mixpanel_sync.sync_rejects where run_id = $1', [run.id]);
    expect(rows.map((r) => r.reason)).toEqual([expect.stringContaining('Unicode low surrogate must follow a high surrogate.')]);
  });
});
