// Identity merge (issue 12) in SQL: what psql gets. Runs go through begin_run, stage_events and finish_run, whose
// finish_events_run calls apply_identity after parsing.
// Seen failing without each protection (removed once in 500-identity.sql, then restored):
//   - the run_events rewrite removed from apply_identity: "identified later" (a later event of the device counted
//     under $device:D1), "a device joined to one user" and the original-mode case failed;
//   - the re-attribution call removed from apply_identity: 7 cases failed ("New User Signup": $device:D1 kept 2);
//   - at_canonical dropped from the set-based ledger duplicate rule: "counted under both" failed;
//   - `order by ... identified_at nulls last` as `order by m.alias` (least id wins): $device:D1 became canonical and
//     8 cases failed;
//   - the `not exists` conflict filter removed from identity_edges: the second user took the device over.
import { beforeEach, describe, expect, it } from 'vitest';
import { setIdentityMode, syncEventsWithIdentity } from './identity-support.ts';
import { syncProfiles, syncTestDatabase } from './run-fixtures.ts';

const db = await syncTestDatabase();
beforeEach(async () => {
  await db.pool.query(`update mixpanel_sync.sync_settings set value = 'set' where key = 'events.upsert_path'`);
  await db.pool.query(`update mixpanel_sync.sync_settings set value = 'off' where key = 'events.store_raw'`);
});

const at = (iso: string) => Math.floor(Date.parse(iso) / 1000);

/** An export event as Mixpanel's Export API returns it: distinct_id is what Mixpanel shows now. */
function event(name: string, distinctId: string, time: string, insertId: string, extra: Record<string, unknown> = {}) {
  return { event: name, properties: { distinct_id: distinctId, time: at(time), $insert_id: insertId, ...extra } };
}

async function countsBy(table: 'events_daily' | 'event_ledger' | 'subscribers'): Promise<Record<string, number>> {
  const sql = {
    events_daily: 'select distinct_id, sum(event_count)::int as n from mixpanel_sync.events_daily group by 1',
    event_ledger: 'select distinct_id, count(*)::int as n from mixpanel_sync.event_ledger group by 1',
    subscribers: 'select distinct_id, total_events::int as n from mixpanel_sync.subscribers',
  }[table];
  const { rows } = await db.pool.query<{ distinct_id: string; n: number }>(sql);
  return Object.fromEntries(rows.map((row) => [row.distinct_id, row.n]));
}

// Mixpanel's "New User Signup" (Simplified ID Merge): two anonymous events on device D1, then a sign-up that carries
// $device_id D1 and $user_id U1. Once merged, the Export API shows all three under U1.
const adClick = (shownAs: string) => event('Ad Click', shownAs, '2024-03-09T10:00:00Z', 'i-ad', { $device_id: 'D1' });
const appOpen = (shownAs: string) => event('App Open', shownAs, '2024-03-09T10:05:00Z', 'i-open', { $device_id: 'D1' });
const signUp = event('Sign Up', 'U1', '2024-03-09T10:10:00Z', 'i-signup', { $device_id: 'D1', $user_id: 'U1' });

describe('simplified ID merge', () => {
  it('New User Signup: U1 = 3 and no $device:D1 row after the overlap re-read shows the events under U1', async () => {
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), appOpen('$device:D1')], {
      clock: '2024-03-09T10:06:00Z',
      forceFull: true,
    });
    expect(await countsBy('events_daily')).toEqual({ '$device:D1': 2 });

    const second = await syncEventsWithIdentity(db.pool, [adClick('U1'), appOpen('U1'), signUp], { clock: '2024-03-09T11:00:00Z' });
    expect(second.mode).toBe('incremental');
    expect(await countsBy('events_daily')).toEqual({ U1: 3 });
    expect(await countsBy('event_ledger')).toEqual({ U1: 3 });
    expect(await countsBy('subscribers')).toEqual({ U1: 3 });
    expect(Number(second.links_learned)).toBe(1);
    expect(Number(second.reattributed_events)).toBe(2);
    expect(Number(second.applied)).toBe(1);
    expect(Number(second.duplicates)).toBe(2);
    const { rows } = await db.pool.query(
      `select member, canonical, is_canonical from mixpanel_sync.identity_cluster(mixpanel_sync.project_id(), '$device:D1')`,
    );
    expect(rows).toEqual([
      { member: 'U1', canonical: 'U1', is_canonical: true },
      { member: '$device:D1', canonical: 'U1', is_canonical: false },
    ]);
  });

  it('with identity.mode off the same runs double count (the behaviour the mode fixes)', async () => {
    await setIdentityMode(db.pool, 'off');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), appOpen('$device:D1')], {
      clock: '2024-03-09T10:06:00Z',
      forceFull: true,
    });
    const second = await syncEventsWithIdentity(db.pool, [adClick('U1'), appOpen('U1'), signUp], { clock: '2024-03-09T11:00:00Z' });
    expect(await countsBy('events_daily')).toEqual({ '$device:D1': 2, U1: 3 });
    expect(second.links_learned).toBeNull();
    expect((await db.pool.query('select count(*)::int as n from mixpanel_sync.identity_links')).rows[0].n).toBe(0);
  });

  it('identified later: events beyond the overlap move to U1 when the link is learned (re-attribution)', async () => {
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), appOpen('$device:D1')], {
      clock: '2024-03-09T10:06:00Z',
      forceFull: true,
    });
    const second = await syncEventsWithIdentity(db.pool, [signUp], { clock: '2024-03-09T11:00:00Z' });
    expect(await countsBy('events_daily')).toEqual({ U1: 3 });
    expect(await countsBy('event_ledger')).toEqual({ U1: 3 });
    expect(await countsBy('subscribers')).toEqual({ U1: 3 });
    expect(Number(second.reattributed_events)).toBe(2);
    // later anonymous events of the device count under U1 too
    await syncEventsWithIdentity(db.pool, [event('App Open', '$device:D1', '2024-03-09T11:30:00Z', 'i-late', { $device_id: 'D1' })], {
      clock: '2024-03-09T12:00:00Z',
    });
    expect(await countsBy('events_daily')).toEqual({ U1: 4 });
  });

  it('an event counted under both ids before the link was known is counted once after', async () => {
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1')], { clock: '2024-03-09T10:06:00Z', forceFull: true });
    // the same event ($insert_id) re-read under U1 without the properties that would teach the link
    await syncEventsWithIdentity(db.pool, [event('Ad Click', 'U1', '2024-03-09T10:00:00Z', 'i-ad')], { clock: '2024-03-09T10:30:00Z' });
    expect(await countsBy('events_daily')).toEqual({ '$device:D1': 1, U1: 1 });
    const third = await syncEventsWithIdentity(db.pool, [signUp], { clock: '2024-03-09T11:00:00Z' });
    expect(await countsBy('events_daily')).toEqual({ U1: 2 });
    expect(await countsBy('event_ledger')).toEqual({ U1: 2 });
    expect(third.options.reattributed_duplicates).toBe(1);
  });

  it('links from the two kinds of line that carry one: $device_id shown under its user, and $device:<d> with $user_id', async () => {
    // identity_edges reads a line again only when it can hold a link: $device_id together with a distinct_id that is
    // not $device:<d> (Mixpanel shows the merged event under its user, "retroactively updated") or with $user_id.
    // Seen failing with that `or` as `and` (npm run mutate, identity_edges and-or #2): neither link was learned.
    await setIdentityMode(db.pool, 'simplified');
    const run = await syncEventsWithIdentity(
      db.pool,
      [
        event('App Open', 'U7', '2024-03-09T10:00:00Z', 'i-u7', { $device_id: 'D7' }),
        event('Sign Up', '$device:D8', '2024-03-09T10:05:00Z', 'i-d8', { $device_id: 'D8', $user_id: 'U8' }),
      ],
      { clock: '2024-03-09T11:00:00Z', forceFull: true },
    );
    expect(Number(run.links_learned)).toBe(2);
    const { rows } = await db.pool.query(
      'select alias, canonical from mixpanel_sync.identity_links where alias <> canonical order by alias',
    );
    expect(rows).toEqual([
      { alias: '$device:D7', canonical: 'U7' },
      { alias: '$device:D8', canonical: 'U8' },
    ]);
    expect(await countsBy('events_daily')).toEqual({ U7: 1, U8: 1 });
  });

  it('a device joined to one user stays with it when another user signs in on it', async () => {
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), signUp], { clock: '2024-03-09T10:30:00Z', forceFull: true });
    await syncEventsWithIdentity(db.pool, [event('Sign In', 'U2', '2024-03-09T10:40:00Z', 'i-u2', { $device_id: 'D1', $user_id: 'U2' })], {
      clock: '2024-03-09T11:00:00Z',
    });
    expect(await countsBy('events_daily')).toEqual({ U1: 2, U2: 1 });
    const { rows } = await db.pool.query(`select mixpanel_sync.identity_canonical(mixpanel_sync.project_id(), '$device:D1') as c`);
    expect(rows[0].c).toBe('U1');
  });
});

describe('original ID merge', () => {
  it('$identify, $create_alias and $merge join clusters transitively; the canonical id may change', async () => {
    await setIdentityMode(db.pool, 'original');
    await syncEventsWithIdentity(
      db.pool,
      [
        event('view', 'anon-1', '2024-03-09T09:00:00Z', 'a1'),
        event('view', 'anon-1', '2024-03-09T09:01:00Z', 'a2'),
        event('$identify', 'user-late', '2024-03-09T09:30:00Z', 'id1', { $anon_id: 'anon-1', $identified_id: 'user-late' }),
        event('view', 'user-early', '2024-03-09T08:00:00Z', 'b1'),
        event('$create_alias', 'user-early', '2024-03-09T08:10:00Z', 'al1', { alias: 'alias-2' }),
      ],
      { clock: '2024-03-09T10:00:00Z', forceFull: true },
    );
    expect(await countsBy('events_daily')).toEqual({ 'user-late': 3, 'user-early': 2 });

    const merge = await syncEventsWithIdentity(
      db.pool,
      [event('$merge', 'user-late', '2024-03-09T10:30:00Z', 'm1', { $distinct_ids: ['alias-2', 'anon-1'] })],
      { clock: '2024-03-09T11:00:00Z' },
    );
    // user-early was identified first (08:10): it is the canonical id of the joined cluster
    expect(await countsBy('events_daily')).toEqual({ 'user-early': 6 });
    expect(await countsBy('subscribers')).toEqual({ 'user-early': 6 });
    expect(Number(merge.links_learned)).toBe(2); // anon-1 and user-late now name user-early
    const { rows } = await db.pool.query(
      `select member, canonical from mixpanel_sync.identity_cluster(mixpanel_sync.project_id(), 'anon-1')`,
    );
    expect(rows).toEqual([
      { member: 'user-early', canonical: 'user-early' },
      { member: 'alias-2', canonical: 'user-early' },
      { member: 'anon-1', canonical: 'user-early' },
      { member: 'user-late', canonical: 'user-early' },
    ]);
  });
});

describe('profiles and the raw events table', () => {
  it("the canonical profile wins; an alias profile becomes the canonical id's when it has none", async () => {
    await syncProfiles(db.pool, [
      { $distinct_id: '$device:D1', $properties: { $email: 'device@example.com' } },
      { $distinct_id: '$device:D2', $properties: { $email: 'device2@example.com' } },
      { $distinct_id: 'U1', $properties: { $email: 'u1@example.com' } },
    ]);
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(
      db.pool,
      [signUp, event('Sign Up', 'U2', '2024-03-09T10:20:00Z', 'i-u2', { $device_id: 'D2', $user_id: 'U2' })],
      { clock: '2024-03-09T11:00:00Z', forceFull: true },
    );
    const { rows } = await db.pool.query('select distinct_id, email from mixpanel_sync.subscriber_properties order by 1');
    expect(rows).toEqual([
      { distinct_id: 'U1', email: 'u1@example.com' },
      { distinct_id: 'U2', email: 'device2@example.com' },
    ]);
  });

  // The ledger is the raw table (200-ledger.sql): raw rows move with the ledger rows. Seen failing with the set path's
  // `l.properties is not null as is_raw` replaced by `false` (reattributed_raw_events 0, not 2).
  it('raw events (events.store_raw on) move with the ledger; a key held by both ids is kept once', async () => {
    await db.pool.query(`update mixpanel_sync.sync_settings set value = 'on' where key = 'events.store_raw'`);
    await setIdentityMode(db.pool, 'simplified');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), appOpen('$device:D1')], {
      clock: '2024-03-09T10:06:00Z',
      forceFull: true,
    });
    const run = await syncEventsWithIdentity(db.pool, [adClick('U1'), appOpen('U1'), signUp], { clock: '2024-03-09T11:00:00Z' });
    const { rows } = await db.pool.query(
      `select distinct_id, event_name, properties ->> '$insert_id' as insert_id from mixpanel_sync.raw_events order by 2`,
    );
    expect(rows).toEqual([
      { distinct_id: 'U1', event_name: 'Ad Click', insert_id: 'i-ad' },
      { distinct_id: 'U1', event_name: 'App Open', insert_id: 'i-open' },
      { distinct_id: 'U1', event_name: 'Sign Up', insert_id: 'i-signup' },
    ]);
    expect(run.options.reattributed_raw_events).toBe(2);
    expect(await countsBy('events_daily')).toEqual({ U1: 3 });
  });
});

describe('reattribute_all and the setting', () => {
  it('moves rows stored under aliases (e.g. written while the mode was off) and is idempotent', async () => {
    await setIdentityMode(db.pool, 'off');
    await syncEventsWithIdentity(db.pool, [adClick('$device:D1'), appOpen('$device:D1'), signUp], {
      clock: '2024-03-09T11:00:00Z',
      forceFull: true,
    });
    await setIdentityMode(db.pool, 'simplified');
    // a run that teaches the link but stores nothing of the device's: its rows wait for reattribute_all only if the
    // link was learned without them; here the link's run moves them at once
    await syncEventsWithIdentity(db.pool, [signUp], { clock: '2024-03-09T11:30:00Z' });
    expect(await countsBy('events_daily')).toEqual({ U1: 3 });
    // rows written under the alias behind the map's back are moved by reattribute_all
    await db.pool.query(
      `insert into mixpanel_sync.events_daily (project_id, distinct_id, day, event_name, event_count, first_at, last_at)
       values (1, '$device:D1', '2024-03-01', 'old', 2, '2024-03-01 01:00Z', '2024-03-01 02:00Z')`,
    );
    const first = await db.pool.query('select mixpanel_sync.reattribute_all() as r');
    expect(first.rows[0].r).toMatchObject({ ids_moved: 1, reattributed_events: 2 });
    expect(await countsBy('events_daily')).toEqual({ U1: 5 });
    const again = await db.pool.query('select mixpanel_sync.reattribute_all() as r');
    expect(again.rows[0].r).toMatchObject({ ids_moved: 0, reattributed_events: 0 });
  });

  it('an identity.mode that is not off, simplified or original fails the run with a hint', async () => {
    await setIdentityMode(db.pool, 'simplified');
    await db.pool.query(`alter table mixpanel_sync.sync_settings drop constraint if exists sync_settings_value_valid`);
    await db.pool.query(`update mixpanel_sync.sync_settings set value = 'sideways' where key = 'identity.mode'`);
    await expect(db.pool.query('select mixpanel_sync.identity_mode(mixpanel_sync.project_id())')).rejects.toMatchObject({ code: '22023' });
  });
});
