// The event key (mixpanel_sync.event_key) is injective, and the upgrade to it counts nothing twice.
//   1. Property: for any identities (event name, second, $insert_id or the event's content without
//      properties.distinct_id), two keys are equal exactly when the identities are: names holding 0x1f, $insert_id
//      values shaped like the old '#' || md5(...) fallback, empty $insert_id (= none) included.
//      Seen failing with the old formula (legacy_event_key in place of event_key in the query below): shrunk to two
//      events without $insert_id differing only in distinct_id (the old content hash includes it); the old 0x1f and
//      '#' || md5 collisions are pinned by the second test.
//   2. Upgrade: a database at migrations 000001..000005 syncs events with the old key; then the current migration
//      is applied and an incremental run re-reads those events plus new ones: only the new ones are applied.
//      Seen failing with the legacy lookup removed from upsert_subscribers_incremental_add (`w.legacy_key is null
//      or not exists (...)` as `true or not exists (...)`): applied 70, duplicates 0 (every re-read event twice).
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { databaseUrl } from '../scripts/db/database-url.ts';
import { createTestDatabase, templateDatabase, type TestDatabase } from './db.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

interface Identity {
  name: string;
  second: number;
  insertId: string | null;
  content: Record<string, unknown>;
}

/** JSON with object keys sorted: equal for equal jsonb values of the kinds generated here. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Mixpanel's identity, written here independently of the SQL: $insert_id when present and not empty, else the content. */
function identityOf(i: Identity): string {
  const props = { ...(i.content.properties as Record<string, unknown>) };
  delete props.distinct_id;
  const hasInsertId = i.insertId !== null && i.insertId !== '';
  return JSON.stringify([
    i.name,
    i.second,
    hasInsertId ? i.insertId : null,
    hasInsertId ? null : canonical({ ...i.content, properties: props }),
  ]);
}

const md5Shaped = fc.constantFrom('#0cc175b9c0f1b6a831c399e269772661', '#92eb5ffee6ae2fec3ad71c777531578f');
const smallText = fc.string({ unit: fc.constantFrom('a', 'b', '\x1f', '#', '1', '"', '\\'), maxLength: 4 });
const identityArb: fc.Arbitrary<Identity> = fc
  .record({
    name: smallText,
    second: fc.integer({ min: 1, max: 3 }),
    insertId: fc.option(fc.oneof(smallText, md5Shaped), { nil: null }),
    distinctId: fc.constantFrom('u1', 'u2'),
    plan: fc.option(fc.constantFrom('free', 'pro'), { nil: undefined }),
  })
  .map(({ name, second, insertId, distinctId, plan }) => ({
    name,
    second,
    insertId,
    content: { event: name, properties: { distinct_id: distinctId, time: second, ...(plan ? { plan } : {}) } },
  }));

async function keysOf(identities: Identity[]): Promise<string[]> {
  const { rows } = await db.pool.query(
    `select mixpanel_sync.event_key(x ->> 'name', (x ->> 'second')::bigint, x ->> 'insertId', x -> 'content')::text as key
     from jsonb_array_elements($1::jsonb) with ordinality as e (x, n) order by e.n`,
    [JSON.stringify(identities)],
  );
  return rows.map((r) => r.key);
}

describe('event_key', () => {
  it(
    'two identities share a key exactly when they are equal',
    async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(identityArb, { minLength: 2, maxLength: 30 }), async (identities) => {
          const keys = await keysOf(identities);
          for (let a = 0; a < identities.length; a++) {
            for (let b = a + 1; b < identities.length; b++) {
              expect(keys[a] === keys[b], `${JSON.stringify(identities[a])} vs ${JSON.stringify(identities[b])}`).toBe(
                identityOf(identities[a]!) === identityOf(identities[b]!),
              );
            }
          }
        }),
        propertyParameters(100, 200),
      );
    },
    timeoutFor(100, 200),
  );

  it('separates the collisions of the old formula, and ignores the distinct_id', async () => {
    const content = (distinctId: string) => ({ event: 'a', properties: { distinct_id: distinctId, time: 1 } });
    const { rows } = await db.pool.query(
      `select mixpanel_sync.event_key('a' || E'\\x1f' || '1', 2, 'x', '{}') = mixpanel_sync.event_key('a', 1, '2' || E'\\x1f' || 'x', '{}') as new_name,
         mixpanel_sync.legacy_event_key('a' || E'\\x1f' || '1', 2, 'x', '{}') = mixpanel_sync.legacy_event_key('a', 1, '2' || E'\\x1f' || 'x', '{}') as old_name,
         mixpanel_sync.event_key('a', 1, null, $1) = mixpanel_sync.event_key('a', 1, '#' || md5($1::jsonb::text), $1) as new_hash,
         mixpanel_sync.legacy_event_key('a', 1, null, $1) = mixpanel_sync.legacy_event_key('a', 1, '#' || md5($1::jsonb::text), $1) as old_hash,
         mixpanel_sync.event_key('a', 1, null, $1) = mixpanel_sync.event_key('a', 1, null, $2) as other_distinct_id`,
      [JSON.stringify(content('u1')), JSON.stringify(content('u2'))],
    );
    expect(rows[0]).toEqual({ new_name: false, old_name: true, new_hash: false, old_hash: true, other_distinct_id: true });
  });
});

describe('upgrade from the old key', () => {
  it('an incremental run after the upgrade re-reading old events counts none of them twice', async () => {
    const template = templateDatabase();
    const name = `${template.prefix}_upgrade_${process.pid}`;
    const admin = new pg.Client({ connectionString: template.serverUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${name}`);
    await admin.query(`create database ${name}`);
    const client = new pg.Client({ connectionString: databaseUrl(template.serverUrl, name) });
    await client.connect();
    try {
      const migrations = path.resolve(import.meta.dirname, '../migrations');
      const sqlFiles = async (folder: string) =>
        (await readdir(path.join(migrations, folder)))
          .filter((f) => f.endsWith('.sql'))
          .sort()
          .map((f) => path.join(migrations, folder, f));
      // 000001–000005: the schema of the old key; 000006 on: the injective key and the legacy ledger
      const committed = await sqlFiles('committed');
      const beforeUpgrade = (file: string) => Number(path.basename(file).slice(0, 6)) <= 5;
      for (const file of committed.filter(beforeUpgrade)) await client.query(await readFile(file, 'utf8'));

      const at = Date.UTC(2024, 2, 9, 10) / 1000;
      const old = Array.from({ length: 60 }, (_, i) => ({
        event: i % 3 === 0 ? 'a\x1fb' : 'view',
        properties: { distinct_id: `u${i % 5}`, time: at + i * 60, ...(i % 2 === 0 ? { $insert_id: `ins-${i}` } : { plan: `p${i}` }) },
      }));
      const fresh = Array.from({ length: 10 }, (_, i) => ({
        event: 'later',
        properties: { distinct_id: `u${i % 5}`, time: at + 7200 + i },
      }));
      // the old code: begin_run(source, force_full, clock) of 000001
      const full = await client.query(`select id from mixpanel_sync.begin_run('events', true, '2024-03-09T12:00:00Z')`);
      await client.query('select mixpanel_sync.stage_events($1, $2::jsonb)', [full.rows[0].id, JSON.stringify(old)]);
      await client.query('select mixpanel_sync.finish_run($1)', [full.rows[0].id]);
      const stored = async () => (await client.query('select sum(event_count)::int as n from mixpanel_sync.events_daily')).rows[0].n;
      expect(await stored()).toBe(60);

      for (const file of committed.filter((file) => !beforeUpgrade(file))) await client.query(await readFile(file, 'utf8'));
      const legacy = await client.query('select count(*)::int as n from mixpanel_sync.event_ledger_legacy');
      expect(legacy.rows[0].n).toBe(60);

      for (const loop of [false, true]) {
        await client.query('begin');
        await client.query(`update mixpanel_sync.sync_settings set value = $1 where key = 'events.upsert_path'`, [loop ? 'loop' : 'set']);
        const run = await client.query(`select id, mode from mixpanel_sync.begin_run('events', clock => '2024-03-09T14:00:00Z')`);
        expect(run.rows[0].mode).toBe('incremental');
        await client.query('select mixpanel_sync.stage_events($1, $2::jsonb)', [run.rows[0].id, JSON.stringify([...old, ...fresh])]);
        const done = await client.query('select applied::int, duplicates::int, too_old::int from mixpanel_sync.finish_run($1)', [
          run.rows[0].id,
        ]);
        expect(done.rows[0]).toEqual({ applied: 10, duplicates: 60, too_old: 0 });
        expect(await stored()).toBe(70);
        const subscribers = await client.query('select sum(total_events)::int as n from mixpanel_sync.subscribers');
        expect(subscribers.rows[0].n).toBe(70);
        await client.query('rollback');
      }
    } finally {
      await client.end();
      await admin.query(`drop database if exists ${name}`);
      await admin.end();
    }
  }, 120_000);
});
