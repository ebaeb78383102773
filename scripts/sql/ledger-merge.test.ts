// The ledger design (migration 000006, part `--! split: 400-ledger.sql`, docs/ledger.md), through begin_run/finish_run as psql runs it,
// for the set path and its _loop twin:
//   - REPLACE is a merge: a steady-state re-sync of the same data rewrites no row of events_daily or event_ledger
//     (same xmin/ctid), a changed re-sync rewrites only the rows that changed, and users_touched counts the users
//     whose events_daily rows changed;
//   - the ledger keeps only events.ledger_retention days (default 7) while events_daily keeps the whole 45-day window;
//     an ADD deduplicates the ledger's days and counts older events too_old.
// Seen failing without the protection (removed once in 400-ledger.sql, then restored): with the `where (d.event_count,
// d.first_at, d.last_at) is distinct from …` of the set REPLACE's events_daily upsert removed and the `is not distinct
// from` early return of merge_daily_row_loop removed, both re-sync tests failed for set and for loop (every
// events_daily row of the window had a new row version; users_touched was every user).
import { beforeEach, describe, expect, it } from 'vitest';
import { exportEvent, syncEvents, type ExportEvent, syncTestDatabase } from './run-fixtures.ts';
import { setUpsertPath, type PathImplementation } from './sync-api.ts';

const db = await syncTestDatabase();

const clock = new Date('2024-03-30T12:00:00Z');
const daysBefore = (days: number, minutes = 0): Date => new Date(clock.getTime() - days * 86_400_000 - minutes * 60_000);

/** 30 days of events for 5 users, two names, one $insert_id each. */
function history(): ExportEvent[] {
  const lines: ExportEvent[] = [];
  for (let day = 1; day <= 30; day++) {
    for (let i = 0; i < 6; i++) {
      lines.push(exportEvent(`u${i % 5}`, i % 2 === 0 ? 'view' : 'click', daysBefore(day, 60 + i), { insertId: `h-${day}-${i}` }));
    }
  }
  return lines;
}

interface RowVersion {
  key: string;
  version: string;
}

async function rowVersions(table: 'events_daily' | 'event_ledger'): Promise<Map<string, string>> {
  const key = table === 'events_daily' ? `t.distinct_id || '/' || t.day || '/' || t.event_name` : `t.distinct_id || '/' || t.event_key`;
  const { rows } = await db.pool.query<RowVersion>(
    `select ${key} as key, t.xmin::text || ':' || t.ctid::text as version from mixpanel_sync.${table} t`,
  );
  return new Map(rows.map((r) => [r.key, r.version]));
}

function rewritten(before: Map<string, string>, after: Map<string, string>): string[] {
  return [...after].filter(([key, version]) => before.get(key) !== version).map(([key]) => key);
}

describe.each<PathImplementation>(['set', 'loop'])('REPLACE as a merge (%s path)', (path) => {
  beforeEach(async () => {
    await setUpsertPath(db.pool, path);
  });

  it('a re-sync of the same data rewrites no row and touches no user', async () => {
    const lines = history();
    const first = await syncEvents(db.pool, lines, { clock, forceFull: true });
    expect(first.applied).toBe(String(lines.length));
    const daily = await rowVersions('events_daily');
    const ledger = await rowVersions('event_ledger');
    expect(daily.size).toBeGreaterThan(100);

    const again = await syncEvents(db.pool, lines, { clock, forceFull: true });
    expect(again.status).toBe('succeeded');
    expect(again.applied).toBe(String(lines.length));
    expect(again.users_touched).toBe('0');
    expect(rewritten(daily, await rowVersions('events_daily'))).toEqual([]);
    expect(rewritten(ledger, await rowVersions('event_ledger'))).toEqual([]);
  });

  it('a changed re-sync rewrites only the rows that changed', async () => {
    const lines = history();
    await syncEvents(db.pool, lines, { clock, forceFull: true });
    const daily = await rowVersions('events_daily');
    // One event of u0 two days ago is gone in Mixpanel; u4 has a new one three days ago.
    const gone = lines.findIndex((l) => l.properties.$insert_id === 'h-2-0');
    const changed = [...lines.slice(0, gone), ...lines.slice(gone + 1), exportEvent('u4', 'buy', daysBefore(3, 30), { insertId: 'new-1' })];

    const run = await syncEvents(db.pool, changed, { clock, forceFull: true });
    expect(run.users_touched).toBe('2');
    const after = await rowVersions('events_daily');
    const day = (days: number) => daysBefore(days).toISOString().slice(0, 10);
    // u0's only view of that day: its row is deleted; u4's buy: one row inserted; nothing else written.
    expect(rewritten(daily, after)).toEqual([`u4/${day(3)}/buy`]);
    expect([...daily.keys()].filter((k) => !after.has(k))).toEqual([`u0/${day(2)}/view`]);
    expect(after.size).toBe(daily.size);
  });

  it('the ledger keeps events.ledger_retention (7 days by default), events_daily the whole window', async () => {
    const { rows: setting } = await db.pool.query(`select value from mixpanel_sync.sync_settings where key = 'events.ledger_retention'`);
    expect(setting[0].value).toBe('7 days');
    const lines = history();
    const full = await syncEvents(db.pool, lines, { clock, forceFull: true });
    const { rows } = await db.pool.query(
      `select
        (select count(distinct day)::int from mixpanel_sync.events_daily) as daily_days,
        (select min(day)::text from mixpanel_sync.event_ledger) as ledger_from,
        (select count(*)::int from mixpanel_sync.event_ledger) as ledger_rows,
        (select count(*)::int from mixpanel_sync.event_ledger where run_id = $1) as written_by_replace`,
      [full.id],
    );
    // the run's clock day and the 6 before it: days 1..6 before the clock hold events
    expect(rows[0]).toEqual({
      daily_days: 30,
      ledger_from: daysBefore(6).toISOString().slice(0, 10),
      ledger_rows: 36,
      written_by_replace: 36,
    });

    // An incremental run: a re-read event of the ledger's days is a duplicate, one older than the horizon too_old.
    const later = new Date(clock.getTime() + 3_600_000);
    const add = await syncEvents(
      db.pool,
      [
        lines.find((l) => l.properties.$insert_id === 'h-1-0')!,
        exportEvent('u1', 'view', daysBefore(10), { insertId: 'late-old', processedAt: later }),
        exportEvent('u1', 'view', new Date(clock.getTime() + 60_000), { insertId: 'new-2' }),
      ],
      { clock: later },
    );
    expect({ mode: add.mode, applied: add.applied, duplicates: add.duplicates, too_old: add.too_old }).toEqual({
      mode: 'incremental',
      applied: '1',
      duplicates: '1',
      too_old: '1',
    });
  });
});
