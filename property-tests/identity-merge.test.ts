// Identity merge (issue 12), invariants:
//   (a) for any interleaving of runs, links learned in any order and overlap re-reads under any id of a cluster, the
//       tables ≡ one REPLACE over all the lines of all runs with every distinct_id resolved through the final map
//       (what a full re-sync from Mixpanel gives): events_daily, event_ledger (run_id aside), subscribers;
//   (b) the same runs with events.upsert_path = loop (reattribute_identities_loop and the _loop apply paths) leave
//       the same tables and the same identity_links as the set-based path.
// Runs go through finish_run with the identity step (scripts/sql/identity-support.ts: the hook once it lands).
// Seen failing without the protections (500-identity.sql changed once, then restored): without the run_events
// rewrite in apply_identity, (a) failed on the first run that re-read an event under its canonical id (events_daily
// count 2 for 1); with the ledger duplicate rule removed from reattribute_identities_loop (every row moved), (b)
// failed at once on a primary key violation in the loop path (the example: "Property failed after 1 tests"); with `row_number() … = 1` dropped from the set path's profile
// rule it failed in scripts/sql/identity.test.ts instead (profiles are not generated here).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';
import { setIdentityMode, syncEventsWithIdentity, type IdentityMode } from '../scripts/sql/identity-support.ts';
import { emptySyncTables } from '../scripts/sql/run-fixtures.ts';
import { assertSameTables, setUpsertPath, tableSnapshot, type PathImplementation } from '../scripts/sql/sync-api.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const base = Date.UTC(2024, 2, 10) / 1000;
const ignored = ['event_ledger.run_id', 'subscribers.updated_at', 'identity_links.learned_at', 'identity_links.learned_from_run'];
const eventTables = ['events_daily', 'event_ledger', 'subscribers'];

interface Line {
  event: string;
  properties: Record<string, unknown> & { distinct_id: string; time: number; $insert_id: string };
}

/** One event of Mixpanel's history and the ids the Export API may show it under (before and after merges). */
interface HistoryEvent {
  line: (shownAs: string) => Line;
  shownAs: string[];
  /** whether the event teaches a link (a sign-in, $identify, $merge) */
  links: boolean;
}

const minuteArb = fc.integer({ min: 0, max: 600 });
const nameArb = fc.constantFrom('view', 'click');

// Simplified: devices D0..D3, each joined to at most one user (U0..U2); anonymous events show under $device:<d> or,
// once Mixpanel merged the device, under its user; sign-ins carry $device_id and $user_id.
type SimplifiedEvent = { device: number; signIn: boolean; minute: number; name: string };

/** deviceUser[d]: the user device d is joined to (null: none). */
function simplifiedHistory(deviceUser: (number | null)[], events: SimplifiedEvent[]): HistoryEvent[] {
  return events.map((e, index): HistoryEvent => {
    const user = deviceUser[e.device] === null ? null : `U${deviceUser[e.device]}`;
    const props = { time: base + e.minute * 60, $insert_id: `e${index}`, $device_id: `D${e.device}` };
    if (e.signIn && user !== null) {
      return {
        line: () => ({ event: 'Sign In', properties: { ...props, distinct_id: user, $user_id: user } }),
        shownAs: [user],
        links: true,
      };
    }
    return {
      line: (shownAs) => ({ event: e.name, properties: { ...props, distinct_id: shownAs } }),
      shownAs: user === null ? [`$device:D${e.device}`] : [`$device:D${e.device}`, user],
      links: false,
    };
  });
}

const simplifiedHistoryArb = fc
  .tuple(
    fc.array(fc.option(fc.integer({ min: 0, max: 2 }), { nil: null }), { minLength: 4, maxLength: 4 }),
    fc.array(fc.record({ device: fc.integer({ min: 0, max: 3 }), signIn: fc.boolean(), minute: minuteArb, name: nameArb }), {
      minLength: 3,
      maxLength: 12,
      size: 'max',
    }),
  )
  .map(([deviceUser, events]) => simplifiedHistory(deviceUser, events));

// Original: ids A0, A1, U0, U1 (few, so that clusters join often); $identify and $merge events join them; any event may show under any id of its
// cluster (the property does not depend on which id Mixpanel picked as canonical).
const ids = ['A0', 'A1', 'U0', 'U1'];
const idArb = fc.constantFrom(...ids);
type OriginalEvent = { kind: 'plain' | 'identify' | 'merge'; id: string; other: string; minute: number; name: string };

function originalHistory(events: OriginalEvent[]): HistoryEvent[] {
  return events.map((e, index): HistoryEvent => {
    const props = { time: base + e.minute * 60, $insert_id: `e${index}` };
    if (e.kind === 'identify') {
      return {
        line: (shownAs) => ({
          event: '$identify',
          properties: { ...props, distinct_id: shownAs, $anon_id: e.id, $identified_id: e.other },
        }),
        shownAs: [e.other, e.id],
        links: true,
      };
    }
    if (e.kind === 'merge') {
      return {
        line: (shownAs) => ({ event: '$merge', properties: { ...props, distinct_id: shownAs, $distinct_ids: [e.id, e.other] } }),
        shownAs: [e.id, e.other],
        links: true,
      };
    }
    return {
      line: (shownAs) => ({ event: e.name, properties: { ...props, distinct_id: shownAs } }),
      shownAs: [e.id, e.other],
      links: false,
    };
  });
}

const originalHistoryArb = fc
  .array(
    fc.oneof(
      fc.record({ kind: fc.constant('plain' as const), id: idArb, other: idArb, minute: minuteArb, name: nameArb }),
      fc.record({
        kind: fc.constant('identify' as const),
        id: fc.constantFrom('A0', 'A1'),
        other: fc.constantFrom('U0', 'U1'),
        minute: minuteArb,
        name: nameArb,
      }),
      fc.record({ kind: fc.constant('merge' as const), id: idArb, other: idArb, minute: minuteArb, name: nameArb }),
    ),
    { minLength: 3, maxLength: 12, size: 'max' },
  )
  .map(originalHistory);

// Always tried first (fast-check examples): an event stored under A0, then re-read under U0 before the $identify that
// links them is seen: counted under both until the link is learned, then once (the ledger duplicate rule, both paths).
const doubleCountExample: [HistoryEvent[], RunPicks[]] = [
  originalHistory([
    { kind: 'plain', id: 'A0', other: 'U0', minute: 10, name: 'view' },
    { kind: 'identify', id: 'A0', other: 'U0', minute: 20, name: 'view' },
  ]),
  [
    { withoutLinks: true, picks: [{ pick: 0, shown: 0 }] },
    { withoutLinks: true, picks: [{ pick: 0, shown: 1 }] },
    { withoutLinks: false, picks: [{ pick: 1, shown: 0 }] },
  ],
];

// Always tried first in simplified mode: an anonymous view stored under $device:D0, then a run that sees D0's sign-in
// as U0: the link is learned and the stored view moves to U0 (so that, at any number of runs, a re-attribution is met).
const reattributeExample: [HistoryEvent[], RunPicks[]] = [
  simplifiedHistory(
    [0, null, null, null],
    [
      { device: 0, signIn: false, minute: 10, name: 'view' },
      { device: 0, signIn: true, minute: 20, name: 'view' },
    ],
  ),
  [
    { withoutLinks: true, picks: [{ pick: 0, shown: 0 }] },
    { withoutLinks: false, picks: [{ pick: 1, shown: 0 }] },
  ],
];

// Always tried first in original mode: a view stored under A0, then a run that sees the $identify of A0 as U0: the
// stored view moves to U0.
const identifyMovesExample: [HistoryEvent[], RunPicks[]] = [
  originalHistory([
    { kind: 'plain', id: 'A0', other: 'U0', minute: 10, name: 'view' },
    { kind: 'identify', id: 'A0', other: 'U0', minute: 20, name: 'view' },
  ]),
  [
    { withoutLinks: true, picks: [{ pick: 0, shown: 0 }] },
    { withoutLinks: false, picks: [{ pick: 1, shown: 0 }] },
  ],
];

interface RunPicks {
  withoutLinks: boolean;
  picks: { pick: number; shown: number }[];
}

/**
 * Runs: each a list of (event index, which of its ids it shows under); re-reads across runs are allowed. A run
 * without links leaves out the events that teach one, so that events are stored under ids not linked yet.
 */
const runsArb = fc.array(
  fc.record({
    withoutLinks: fc.constantFrom(true, true, true, false),
    picks: fc.array(fc.record({ pick: fc.nat(), shown: fc.nat() }), { minLength: 1, maxLength: 10, size: 'max' }),
  }),
  { minLength: 2, maxLength: 4, size: 'max' },
);

function runLines(history: HistoryEvent[], runs: RunPicks[]): Line[][] {
  return runs.map((run) =>
    run.picks
      .map(({ pick, shown }) => ({ event: history[pick % history.length]!, shown }))
      .filter(({ event }) => !(run.withoutLinks && event.links))
      .map(({ event, shown }) => event.line(event.shownAs[shown % event.shownAs.length]!)),
  );
}

/** The runs in order (the first one full, the others incremental); the final tables, map and identity counts. */
async function applyRuns(mode: IdentityMode, path: PathImplementation, runs: Line[][]) {
  await emptySyncTables(db.pool, { dropPartitions: false });
  await setIdentityMode(db.pool, mode);
  await setUpsertPath(db.pool, path);
  let links = 0;
  let moved = 0;
  let duplicates = 0;
  for (const [index, lines] of runs.entries()) {
    const run = await syncEventsWithIdentity(db.pool, lines, {
      clock: new Date((base + 11 * 3600 + index * 3600) * 1000),
      forceFull: index === 0,
    });
    expect(run.status).toBe('succeeded');
    links += Number(run.links_learned);
    moved += Number(run.reattributed_events);
    duplicates += Number(run.options.reattributed_duplicates ?? 0);
  }
  const tables = await tableSnapshot(db.pool, [...eventTables, 'identity_links'], ignored);
  const { rows } = await db.pool.query<{ alias: string; canonical: string }>('select alias, canonical from mixpanel_sync.identity_links');
  return { tables, map: new Map(rows.map((row) => [row.alias, row.canonical])), links, moved, duplicates };
}

/** One REPLACE over every line of every run, each distinct_id resolved through `map`, identity.mode off. */
async function replaceResolved(runs: Line[][], map: Map<string, string>) {
  await emptySyncTables(db.pool, { dropPartitions: false });
  await setIdentityMode(db.pool, 'off');
  await setUpsertPath(db.pool, 'set');
  const lines = runs.flat().map((line) => ({
    ...line,
    properties: { ...line.properties, distinct_id: map.get(line.properties.distinct_id) ?? line.properties.distinct_id },
  }));
  await syncEventsWithIdentity(db.pool, lines, { clock: new Date((base + 11 * 3600 + runs.length * 3600) * 1000), forceFull: true });
  return tableSnapshot(db.pool, eventTables, ignored);
}

const runsPerMode = 12;

describe.each([
  ['simplified' as const, simplifiedHistoryArb, [reattributeExample]],
  ['original' as const, originalHistoryArb, [doubleCountExample, identifyMovesExample]],
])('identity merge, %s', (mode, historyArb, examples: [HistoryEvent[], RunPicks[]][]) => {
  it('tables ≡ one REPLACE over all lines resolved through the final map; loop ≡ set', {
    timeout: timeoutFor(runsPerMode, 2000),
  }, async () => {
    let reattributed = 0;
    let learned = 0;
    let doubled = 0;
    await fc.assert(
      fc.asyncProperty(historyArb, runsArb, async (history, runs) => {
        const lines = runLines(history, runs);
        const bySet = await applyRuns(mode, 'set', lines);
        const byLoop = await applyRuns(mode, 'loop', lines);
        await assertSameTables(
          db.pool,
          'tables and identity_links after the loop path (expected) and the set-based path (actual)',
          byLoop.tables,
          bySet.tables,
        );
        expect(bySet.moved, 'reattributed_events, set (actual) and loop (expected)').toBe(byLoop.moved);
        const expected = await replaceResolved(lines, bySet.map);
        const actual = Object.fromEntries(eventTables.map((table) => [table, bySet.tables[table]!]));
        await assertSameTables(
          db.pool,
          'one REPLACE over all lines resolved through the final map (expected) and the runs (actual)',
          expected,
          actual,
        );
        if (bySet.moved > 0) reattributed++;
        if (bySet.links > 0) learned++;
        if (bySet.duplicates > 0) doubled++;
      }),
      { ...propertyParameters(runsPerMode, 2000), examples },
    );
    expect(learned, 'property runs that learned links').toBeGreaterThan(0);
    expect(reattributed, 'property runs that moved stored events to a canonical id').toBeGreaterThan(0);
    console.log(`identity merge, ${mode}: ${learned} runs learned links, ${reattributed} moved events, ${doubled} merged double counts`);
    if (mode === 'original')
      expect(doubled, 'property runs where an event counted under two ids of a cluster was merged').toBeGreaterThan(0);
  });
});
