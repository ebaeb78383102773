// Runs with a selection of event names, end to end through finish_run (begin_run events => …, the CLI's --event): a
// full run replaces only the selected names (other names in the input counted not_selected), the REPLACE guard
// weighs only them, a name added later starts with a resync, and a run that leaves out names the standing selection
// (events.only) syncs keeps the watermark.
// Seen failing without each protection (removed once, then restored):
//   - replace_guard without `selection ? d.event_name` in its per-day query: the full run of 'Sign Up' over a day
//     holding 320 other events was refused (MP001, "would shrink 2024-03-08 from 320 to 1 events");
//   - begin_run without `or not selection @> standing` (no keeps_watermark on a run of ["login"] under events.only
//     ["login","purchase"]): the partial incremental run moved the watermark to its newest login event.
import { beforeEach, describe, expect, it } from 'vitest';
import { beginRun, finishRun, readWatermarks, stageRecords, writeSetting, type BeginRunOptions } from './sync-api.ts';
import { exportEvent, type ExportEvent, syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();
beforeEach(async () => {
  await writeSetting(db.pool, 'events.only', '[]');
});

const clock = new Date('2024-03-10T00:00:00Z');
const at = (day: string, second: number) => new Date(Date.parse(`${day}T00:00:00Z`) + second * 1000);

async function run(lines: ExportEvent[], options: Omit<BeginRunOptions, 'source'> = {}) {
  const begun = await beginRun(db.pool, { source: 'events', clock, ...options });
  await stageRecords(db.pool, 'events', begun.id, lines);
  return finishRun(db.pool, begun.id);
}

const rows = async (table: string, names: string[]) =>
  (
    await db.pool.query(
      `select to_jsonb(t) as row from mixpanel_sync.${table} t where t.event_name = any ($1) order by to_jsonb(t)::text`,
      [names],
    )
  ).rows.map((r) => r.row);

const counts = async () =>
  (
    await db.pool.query<{ event_name: string; events: number }>(
      'select event_name, sum(event_count)::int as events from mixpanel_sync.events_daily group by 1 order by 1',
    )
  ).rows;

describe('runs with a selection', () => {
  it('a full run of one name (--full --event login) replaces login only: other names untouched', async () => {
    await run([
      exportEvent('u1', 'login', at('2024-03-08', 10), { insertId: 'l1' }),
      exportEvent('u1', 'purchase', at('2024-03-08', 20), { insertId: 'p1' }),
      exportEvent('u2', 'purchase', at('2024-03-09', 30), { insertId: 'p2' }),
    ]);
    const purchaseBefore = [await rows('events_daily', ['purchase']), await rows('event_ledger', ['purchase'])];
    const finished = await run(
      [
        exportEvent('u1', 'login', at('2024-03-08', 10), { insertId: 'l1' }),
        exportEvent('u3', 'login', at('2024-03-09', 40), { insertId: 'l2' }),
        // a purchase in the input (e.g. --file): not selected, ignored
        exportEvent('u3', 'purchase', at('2024-03-09', 50), { insertId: 'p3' }),
      ],
      { forceFull: true, events: ['login'] },
    );
    expect(finished).toMatchObject({ status: 'succeeded', mode: 'full', received: '3', applied: '2' });
    expect(finished.options).toMatchObject({ events: ['login'], keeps_watermark: true });
    expect(await counts()).toEqual([
      { event_name: 'login', events: 2 },
      { event_name: 'purchase', events: 2 },
    ]);
    expect([await rows('events_daily', ['purchase']), await rows('event_ledger', ['purchase'])]).toEqual(purchaseBefore);
    expect(finished).toMatchObject({ not_selected: '1' });
    const { rows: subscribers } = await db.pool.query('select distinct_id from mixpanel_sync.subscribers order by 1');
    expect(subscribers.map((s) => s.distinct_id)).toEqual(['u1', 'u2', 'u3']);
  });

  it('the REPLACE guard weighs only the selected names: other names do not make it refuse, the selected ones still do', async () => {
    const purchases = Array.from({ length: 200 }, (_, i) =>
      exportEvent(`u${i % 7}`, 'purchase', at('2024-03-08', i), { insertId: `p${i}` }),
    );
    const logins = Array.from({ length: 120 }, (_, i) =>
      exportEvent(`u${i % 7}`, 'login', at('2024-03-08', 1000 + i), { insertId: `l${i}` }),
    );
    await run([...purchases, ...logins]);
    // 3 of 120 logins: shrinks login's stored events below the ratio: refused, naming the selection
    const refused = await run(logins.slice(0, 3), { forceFull: true, events: ['login'] }).catch(
      (e: unknown) => e as Error & { code?: string },
    );
    expect(refused).toMatchObject({ code: 'MP001', message: expect.stringContaining('(events of the run\'s selection ["login"])') });
    await db.pool.query("update mixpanel_sync.sync_runs set status = 'failed', finished_at = now() where status = 'running'");
    // a name with few stored events over a day full of others: not refused
    const signups = [exportEvent('u1', 'Sign Up', at('2024-03-08', 5000), { insertId: 's1' })];
    const finished = await run(signups, { forceFull: true, events: ['Sign Up'] });
    expect(finished.status).toBe('succeeded');
    expect(await counts()).toEqual([
      { event_name: 'Sign Up', events: 1 },
      { event_name: 'login', events: 120 },
      { event_name: 'purchase', events: 200 },
    ]);
  });

  it('a name added to events.only starts with a resync of its days (--resync-from DAY --event NAME); the other names stay', async () => {
    await writeSetting(db.pool, 'events.only', '["login"]');
    await run([
      exportEvent('u1', 'login', at('2024-03-08', 10), { insertId: 'l1' }),
      exportEvent('u2', 'Sign Up', at('2024-03-08', 20), { insertId: 's1' }),
    ]);
    expect(await counts()).toEqual([{ event_name: 'login', events: 1 }]);
    await writeSetting(db.pool, 'events.only', '["login", "Sign Up"]');
    const resync = await run(
      [
        exportEvent('u1', 'login', at('2024-03-08', 10), { insertId: 'l1' }),
        exportEvent('u2', 'Sign Up', at('2024-03-08', 20), { insertId: 's1' }),
      ],
      { resync: { from: '2024-03-08', to: '2024-03-09' }, events: ['Sign Up'] },
    );
    expect(resync).toMatchObject({ status: 'succeeded', applied: '1' });
    expect(resync.options).toMatchObject({ mode_reason: 'resync', events: ['Sign Up'], keeps_watermark: true });
    expect(await counts()).toEqual([
      { event_name: 'Sign Up', events: 1 },
      { event_name: 'login', events: 1 },
    ]);
  });
});

describe('the watermark with a selection', () => {
  const watermark = async () => (await readWatermarks(db.pool)).find((w) => w.source === 'events')?.watermark ?? null;

  it('an incremental run that leaves out names events.only syncs keeps the watermark; one of the standing names moves it', async () => {
    await writeSetting(db.pool, 'events.only', '["login", "purchase"]');
    await run([exportEvent('u1', 'login', at('2024-03-09', 100), { insertId: 'a' })]);
    const markBefore = await watermark();
    expect(markBefore).toEqual(at('2024-03-09', 100));
    const partial = await run([exportEvent('u1', 'login', at('2024-03-09', 5000), { insertId: 'b' })], { events: ['login'] });
    expect(partial).toMatchObject({ mode: 'incremental', status: 'succeeded', applied: '1' });
    expect(await watermark()).toEqual(markBefore);
    const standing = await run([exportEvent('u1', 'purchase', at('2024-03-09', 6000), { insertId: 'c' })]);
    expect(standing).toMatchObject({ mode: 'incremental', status: 'succeeded', applied: '1' });
    expect(standing.options.events).toEqual(['login', 'purchase']);
    expect(standing.options.keeps_watermark).toBeUndefined();
    expect(await watermark()).toEqual(at('2024-03-09', 6000));
  });

  it('a full run of one name while every name is synced (--full --event login) keeps the watermark', async () => {
    await run([
      exportEvent('u1', 'login', at('2024-03-08', 10), { insertId: 'l1' }),
      exportEvent('u2', 'purchase', at('2024-03-09', 30), { insertId: 'p2' }),
    ]);
    const markBefore = await watermark();
    expect(markBefore).toEqual(at('2024-03-09', 30));
    const finished = await run([exportEvent('u3', 'login', at('2024-03-09', 40), { insertId: 'l2' })], {
      forceFull: true,
      events: ['login'],
    });
    expect(finished).toMatchObject({ status: 'succeeded', applied: '1' });
    expect(await watermark()).toEqual(markBefore);
  });
});
