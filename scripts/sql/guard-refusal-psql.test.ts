// Issue 9, Build 1: "A refusal fails the run: … visible in sync_health()", on the psql path too. A psql user who
// meets the REPLACE guard (MP001) must not be left with a run that blocks every later begin_run (MP002).
// The psql recipe ends a run with `select … from mixpanel_sync.finish_or_fail_run(run_id)` (150-safety-followups.sql):
// on a refusal it records the run failed (fail_run, with the SQLSTATE), warns with the SQLSTATE, message and hint, and
// returns the failed run. Seen failing without it: with plain `select mixpanel_sync.finish_run(…)` the run stayed
// 'running' ("expected 'running' to be 'failed'") and the same session's next begin_run was refused with MP002; with
// the fail_run call removed from finish_or_fail_run, the returned run was still 'running'.
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';

const db = await createTestDatabase({ poolSize: 1 });
afterAll(() => db.drop());

interface PgError {
  code?: string;
  message?: string;
  hint?: string;
}

describe('REPLACE guard refusal through plain SQL', () => {
  it('after finish_or_fail_run meets MP001, the run is failed with its code and the same session can begin the next run', async () => {
    const client = await db.pool.connect();
    try {
      const day = Math.floor(Date.now() / 1000 / 86_400) * 86_400 - 86_400;
      const { rows: first } = await client.query<{ id: string }>("select id from mixpanel_sync.begin_run('events')");
      await client.query('select mixpanel_sync.stage_events($1, $2::jsonb)', [
        first[0]!.id,
        JSON.stringify([1, 2].map((i) => ({ event: 'e', properties: { time: day + i, distinct_id: 'u', $insert_id: `i${i}` } }))),
      ]);
      const { rows: done } = await client.query<{ status: string }>('select status from mixpanel_sync.finish_or_fail_run($1)', [
        first[0]!.id,
      ]);
      expect(done[0]!.status).toBe('succeeded');

      const { rows } = await client.query<{ id: string }>("select id from mixpanel_sync.begin_run('events', force_full => true)");
      const notices: { code?: string; message?: string; hint?: string; severity?: string }[] = [];
      const onNotice = (notice: { code?: string; message?: string; hint?: string; severity?: string }) => notices.push(notice);
      client.on('notice', onNotice);
      const { rows: returned } = await client.query<{ status: string; error: string; error_code: string }>(
        "select status, error, options ->> 'error_code' as error_code from mixpanel_sync.finish_or_fail_run($1)",
        [rows[0]!.id],
      );
      client.off('notice', onNotice);
      // the refusal: recorded on the run with finish_run's own SQLSTATE and message, and said in a WARNING with its hint
      expect(returned[0]).toMatchObject({ status: 'failed', error_code: 'MP001' });
      expect(returned[0]!.error).toMatch(/^finish_run: /);
      const warning = notices.find((n) => n.severity === 'WARNING');
      expect(warning?.message).toMatch(new RegExp(`^run ${rows[0]!.id} failed \\(SQLSTATE MP001\\): finish_run: `));
      expect(warning?.hint).toMatch(/allow_shrink => true/);
      const { rows: run } = await client.query<{ status: string; error: string; error_code: string }>(
        "select status, error, options ->> 'error_code' as error_code from mixpanel_sync.sync_runs where id = $1",
        [rows[0]!.id],
      );
      expect(run[0]).toEqual(returned[0]);
      const { rows: daily } = await client.query<{ n: string }>('select count(*) as n from mixpanel_sync.events_daily');
      expect(Number(daily[0]!.n)).toBeGreaterThan(0);
      const next = await client.query<{ id: string }>("select id from mixpanel_sync.begin_run('events')").then(
        (result) => result.rows[0]!.id,
        (error: PgError) => `${error.code}: ${error.message}`,
      );
      expect(next).toMatch(/^\d+$/);
      await client.query('select mixpanel_sync.finish_or_fail_run($1)', [next]);
    } finally {
      client.release();
    }
  });

  it('the fail_run recipe: a run left running by a plain finish_run refusal is ended with fail_run', async () => {
    const client = await db.pool.connect();
    try {
      const { rows } = await client.query<{ id: string }>("select id from mixpanel_sync.begin_run('events', force_full => true)");
      const refused = await client.query('select mixpanel_sync.finish_run($1)', [rows[0]!.id]).then(
        () => null,
        (error: PgError) => error,
      );
      expect(refused?.code).toBe('MP001');
      const blocked = await client.query("select id from mixpanel_sync.begin_run('events')").then(
        () => null,
        (error: PgError) => error.code,
      );
      expect(blocked).toBe('MP002');
      await client.query("select mixpanel_sync.fail_run($1, 'refused by the REPLACE guard', 'MP001')", [rows[0]!.id]);
      const { rows: next } = await client.query<{ id: string }>("select id from mixpanel_sync.begin_run('events')");
      expect(next[0]!.id).toMatch(/^\d+$/);
      await client.query("select mixpanel_sync.fail_run($1, 'test: done')", [next[0]!.id]);
    } finally {
      client.release();
    }
  });
});
