// Identity merge (issue 12), done-when by the CLI: Mixpanel's "New User Signup" through `npm run sync:events --
// --file …` twice, identity.mode = simplified: U1 = 3 events and no $device:D1 row (the SQL behind it:
// scripts/sql/identity.test.ts). Seen failing with the re-attribution call removed from apply_identity
// ($device:D1 kept 2 events).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { runCli } from '../fixtures/cli-runner.ts';
import { setIdentityMode } from './identity-support.ts';

let db: TestDatabase;
let scratch: string;
beforeAll(async () => {
  db = await createTestDatabase();
  scratch = mkdtempSync(path.join(os.tmpdir(), 'identity-cli-'));
});
afterAll(async () => {
  await db?.drop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

function exportFile(name: string, lines: unknown[]): string {
  const file = path.join(scratch, name);
  writeFileSync(file, `${lines.map((line) => JSON.stringify(line)).join('\n')}\n`);
  return file;
}

it('New User Signup by the CLI: U1 = 3 events, no $device:D1 row', { timeout: 120_000 }, async () => {
  await setIdentityMode(db.pool, 'simplified');
  const t = Math.floor(Date.now() / 1000) - 7200;
  const anonymous = (shownAs: string) => [
    { event: 'Ad Click', properties: { distinct_id: shownAs, time: t, $insert_id: 'ad', $device_id: 'D1' } },
    { event: 'App Open', properties: { distinct_id: shownAs, time: t + 300, $insert_id: 'open', $device_id: 'D1' } },
  ];
  const signUp = {
    event: 'Sign Up',
    properties: { distinct_id: 'U1', time: t + 600, $insert_id: 'signup', $device_id: 'D1', $user_id: 'U1' },
  };
  const env = { DATABASE_URL: db.url };

  const first = await runCli('sync:events', ['--file', exportFile('first.jsonl', anonymous('$device:D1'))], { env });
  expect(first.code, first.stderr).toBe(0);
  const second = await runCli('sync:events', ['--file', exportFile('second.jsonl', [...anonymous('U1'), signUp])], { env });
  expect(second.code, second.stderr).toBe(0);

  const { rows } = await db.pool.query<{ distinct_id: string; events: number }>(
    'select distinct_id, sum(event_count)::int as events from mixpanel_sync.events_daily group by 1 order by 1',
  );
  expect(rows).toEqual([{ distinct_id: 'U1', events: 3 }]);
  const runs = await db.pool.query<{ mode: string; links_learned: string; reattributed_events: string }>(
    'select mode, links_learned, reattributed_events from mixpanel_sync.sync_runs order by id',
  );
  expect(runs.rows).toEqual([
    { mode: 'full', links_learned: '0', reattributed_events: '0' },
    { mode: 'incremental', links_learned: '1', reattributed_events: '2' },
  ]);
  const devices = await db.pool.query(
    `select (select count(*) from mixpanel_sync.event_ledger where distinct_id = '$device:D1')
       + (select count(*) from mixpanel_sync.subscribers where distinct_id = '$device:D1')::int as n`,
  );
  expect(Number(devices.rows[0].n)).toBe(0);
});
