// Rollback switches: flipping any of them between runs leaves the same tables as never flipping.
// The same sequence of runs (a full run, then incremental batches with re-sent duplicates, late
// and too-old events, plus a profiles run each time) is played into two databases: one with the
// defaults throughout, one with random flips before each run of events.upsert_path (set|loop),
// events.incremental (on|off), begin_run's force_full, and profiles.change_detection (on|off).
// A run that begin_run makes full is given all the data so far, as the loader fetches the whole window.
import fc from 'fast-check';
import type pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { beginRun, finishRun, stageRecords } from './sync-api.ts';
import { exportEvent, syncProfiles, type EngageProfile, type ExportEvent } from './run-fixtures.ts';

interface Switches {
  path: 'set' | 'loop';
  incremental: 'on' | 'off';
  changeDetection: 'on' | 'off';
  forceFull: boolean;
}
const DEFAULTS: Switches = { path: 'set', incremental: 'on', changeDetection: 'on', forceFull: false };

interface PlannedRun {
  clock: Date;
  events: ExportEvent[];
  profiles: EngageProfile[];
}

const T0 = Date.parse('2025-06-01T12:00:00Z');
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const USERS = ['u0', 'u1', 'u2', 'u3'];

// An event somewhere in [from, to], processed `delay` of the way from its time to `processedBy`.
const eventSeed = fc.record({
  user: fc.constantFrom(...USERS),
  name: fc.constantFrom('open', 'buy'),
  at: fc.double({ min: 0, max: 1, noNaN: true }),
  delay: fc.double({ min: 0, max: 1, noNaN: true }),
  insertId: fc.option(fc.integer({ min: 0, max: 40 }), { nil: undefined }),
});
type EventSeed = typeof eventSeed extends fc.Arbitrary<infer T> ? T : never;

function seeded(seeds: readonly EventSeed[], from: number, to: number, processedBy: number): ExportEvent[] {
  return seeds.map((s) => {
    const at = from + s.at * (to - from);
    const options = { processedAt: new Date(at + s.delay * (processedBy - at)) };
    return exportEvent(s.user, s.name, new Date(at), s.insertId === undefined ? options : { ...options, insertId: `i${s.insertId}` });
  });
}

const profileSeed = fc.record({
  user: fc.constantFrom(...USERS, 'u4'),
  plan: fc.constantFrom('free', 'pro', ''),
  visits: fc.integer({ min: 0, max: 2 }),
});
const profilesOf = (seeds: readonly { user: string; plan: string; visits: number }[]): EngageProfile[] =>
  seeds.map((p) => ({ $distinct_id: p.user, $properties: { $email: `${p.user}@example.com`, plan: p.plan, visits: p.visits } }));

const step = fc.record({
  hours: fc.integer({ min: 1, max: 30 }),
  fresh: fc.array(eventSeed, { maxLength: 6 }),
  late: fc.array(eventSeed, { maxLength: 2 }),
  resent: fc.array(fc.nat(), { maxLength: 4 }),
  tooOld: fc.boolean(),
  profiles: fc.array(profileSeed, { maxLength: 6 }),
  switches: fc.record({
    path: fc.constantFrom('set', 'loop'),
    incremental: fc.constantFrom('on', 'off'),
    changeDetection: fc.constantFrom('on', 'off'),
    forceFull: fc.boolean(),
  }) as fc.Arbitrary<Switches>,
});

const scenario = fc.record({
  initial: fc.array(eventSeed, { maxLength: 8 }),
  initialProfiles: fc.array(profileSeed, { maxLength: 6 }),
  initialSwitches: step.map((s) => s.switches),
  steps: fc.array(step, { minLength: 2, maxLength: 6 }),
});
type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

/** The runs of a scenario: events of the full window first, then batches of new, late, re-sent and too-old events. */
function plan(s: Scenario): { runs: PlannedRun[]; switches: Switches[] } {
  const runs: PlannedRun[] = [
    { clock: new Date(T0), events: seeded(s.initial, T0 - 50 * DAY, T0, T0), profiles: profilesOf(s.initialProfiles) },
  ];
  let clock = T0;
  for (const next of s.steps) {
    const previous = clock;
    clock += next.hours * HOUR;
    const earlier = runs.flatMap((r) => r.events);
    runs.push({
      clock: new Date(clock),
      events: [
        ...seeded(next.fresh, previous + 1000, clock, clock),
        ...seeded(next.late, previous - 4 * DAY, previous, clock).map((e) => ({
          ...e,
          properties: { ...e.properties, mp_processing_time_ms: clock },
        })),
        ...next.resent.filter(() => earlier.length > 0).map((i) => earlier[i % earlier.length]!),
        ...(next.tooOld
          ? seeded(
              [next.fresh[0] ?? s.initial[0] ?? { user: 'u0', name: 'open', at: 0, delay: 0, insertId: 1 }],
              clock - 50 * DAY,
              clock - 50 * DAY,
              clock,
            )
          : []),
      ],
      profiles: profilesOf(next.profiles),
    });
  }
  return { runs, switches: [s.initialSwitches, ...s.steps.map((x) => x.switches)] };
}

async function setSwitches(db: pg.Pool, switches: Switches): Promise<void> {
  await db.query(
    `update mixpanel_sync.sync_settings s set value = v.value
     from (values ('events.upsert_path', $1), ('events.incremental', $2), ('profiles.change_detection', $3)) as v (key, value)
     where s.key = v.key`,
    [switches.path, switches.incremental, switches.changeDetection],
  );
}

/** Plays the runs; a run begin_run makes full gets every event so far (what the loader fetches for the window). */
async function play(db: pg.Pool, runs: readonly PlannedRun[], switches: readonly Switches[]): Promise<{ fullReSyncs: number }> {
  const soFar = new Map<string, ExportEvent>();
  let fullReSyncs = 0;
  for (const [i, run] of runs.entries()) {
    await setSwitches(db, switches[i]!);
    for (const event of run.events) soFar.set(JSON.stringify(event), event);
    const begun = await beginRun(db, { source: 'events', clock: run.clock, forceFull: switches[i]!.forceFull });
    if (begun.mode === 'full' && i > 0) fullReSyncs++;
    const lines = begun.mode === 'full' ? [...soFar.values()] : run.events;
    await stageRecords(db, 'events', begun.id, lines);
    await finishRun(db, begun.id);
    await syncProfiles(db, run.profiles);
  }
  return { fullReSyncs };
}

/** The tables the runs produce; columns that record when or by which run a row was written are left out. */
async function results(db: pg.Pool): Promise<unknown> {
  const { rows } = await db.query(`select jsonb_build_object(
      'events_daily', (select jsonb_agg(to_jsonb(d) order by d.distinct_id, d.day, d.event_name) from mixpanel_sync.events_daily d),
      'event_ledger', (select jsonb_agg(to_jsonb(l) - 'run_id' order by l.distinct_id, l.event_key) from mixpanel_sync.event_ledger l),
      'subscribers', (select jsonb_agg(to_jsonb(s) - 'updated_at' order by s.distinct_id) from mixpanel_sync.subscribers s),
      'subscriber_properties', (select jsonb_agg(to_jsonb(p) - 'updated_at' - 'first_synced_at' order by p.distinct_id)
        from mixpanel_sync.subscriber_properties p),
      'watermark', (select w.watermark from mixpanel_sync.sync_watermarks w where w.source = 'events')) as result`);
  return rows[0].result;
}

async function reset(db: pg.Pool): Promise<void> {
  await db.query(`truncate mixpanel_sync.sync_runs, mixpanel_sync.sync_watermarks, mixpanel_sync.sync_rejects,
    mixpanel_sync.events_daily, mixpanel_sync.event_ledger, mixpanel_sync.subscribers, mixpanel_sync.subscriber_properties,
    mixpanel_sync.staged_events, mixpanel_sync.staged_profiles, mixpanel_sync.run_events restart identity`);
  await setSwitches(db, DEFAULTS);
}

let plain: TestDatabase;
let flipped: TestDatabase;
beforeAll(async () => {
  [plain, flipped] = await Promise.all([createTestDatabase(), createTestDatabase()]);
});
afterAll(async () => {
  await Promise.all([plain?.drop(), flipped?.drop()]);
});

it('flipping rollback switches between runs leaves the same tables as never flipping them', async () => {
  const used = { loop: 0, incrementalOff: 0, forceFull: 0, changeDetectionOff: 0, fullReSyncs: 0, events: 0 };
  await fc.assert(
    fc.asyncProperty(scenario, async (s) => {
      const { runs, switches } = plan(s);
      await Promise.all([reset(plain.pool), reset(flipped.pool)]);
      await play(
        plain.pool,
        runs,
        runs.map(() => DEFAULTS),
      );
      const { fullReSyncs } = await play(flipped.pool, runs, switches);
      expect(await results(flipped.pool)).toEqual(await results(plain.pool));

      used.fullReSyncs += fullReSyncs;
      used.loop += switches.filter((x) => x.path === 'loop').length;
      used.incrementalOff += switches.filter((x) => x.incremental === 'off').length;
      used.forceFull += switches.filter((x) => x.forceFull).length;
      used.changeDetectionOff += switches.filter((x) => x.changeDetection === 'off').length;
      const { rows } = await plain.pool.query('select coalesce(sum(event_count), 0)::int as n from mixpanel_sync.events_daily');
      used.events += rows[0].n;
    }),
    { numRuns: 25 },
  );
  // the property saw every switch flipped, full re-syncs after incremental runs, and data
  for (const [name, count] of Object.entries(used)) expect(count, name).toBeGreaterThan(0);
});
