// Profiles change detection, as properties over random profile sets and random edits (including edits that only
// turn "" into null into absent, which change nothing):
//   - updated = exactly the profiles whose normalised content changed: counted so, and only their rows get a new
//     version (ctid, xmin) and this run's changed_by_run_id; every other row keeps ctid, xmin and xmax;
//   - the table holds the last usable line of each profile, normalised, with the typed columns read from it;
//   - idempotence: the same batch again reports 0 inserted, 0 updated and writes (or locks) no row;
//   - change detection on ≡ off: same rows (every column) and same counts from the same state.
// The oracle is a model in TypeScript: top-level properties whose value is null or "" are dropped, the last usable
// line of a distinct_id wins, a numeric $distinct_id is its decimal text.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './db.ts';
import { applyProfiles, beginRun, finishRun, runCount, stageLines, type ProfilesResult, type Queryable } from '../scripts/sql/sync-api.ts';
import { branch, rolledBack } from './event-runs.ts';
import { propertyParameters, timeoutFor } from './fc-parameters.ts';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Properties = Record<string, Json>;

interface Profile {
  id: string | number;
  properties: Properties;
}

/** A staged line: a usable profile (its object and exact text) or a line that must be rejected. */
type Line = { kind: 'profile'; profile: Profile; line: string } | { kind: 'invalid'; line: string };

/** A finished profiles run: its id, status and the counts of mixpanel_sync.profiles_result. */
type RunCounts = ProfilesResult & { id: number; status: string };

interface StoredRow {
  distinct_id: string;
  row_version: string;
  [column: string]: unknown;
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------------------------------------------

/** Engage date strings and what created_at/last_seen_at must read from them (project timezone unset: UTC). */
const DATES: Array<[string, string | null]> = [
  ['2026-11-02T10:11:12', '2026-11-02T10:11:12.000Z'],
  ['2024-02-29T23:59:59', '2024-02-29T23:59:59.000Z'],
  ['2026-11-02', '2026-11-02T00:00:00.000Z'],
  ['2026-11-02T10:11:12Z', '2026-11-02T10:11:12.000Z'],
  ['2026-11-02T10:11:12+05:30', '2026-11-02T04:41:12.000Z'],
  ['2026-02-30T00:00:00', null],
  ['2023-02-29', null],
  ['2026-11-02T24:00:00', null],
  ['yesterday', null],
];
const expectedDate = new Map(DATES);

const RESERVED: Record<string, string> = {
  $email: 'email',
  $name: 'name',
  $first_name: 'first_name',
  $last_name: 'last_name',
  $phone: 'phone',
  $city: 'city',
  $region: 'region',
  $country_code: 'country_code',
  $timezone: 'timezone',
};
const DATE_KEYS: Record<string, string> = { $created: 'created_at', $last_seen: 'last_seen_at' };

const blankArb = fc.constantFrom<Json>(null, '');
const scalarArb: fc.Arbitrary<Json> = fc.oneof(
  fc.string({ minLength: 1, maxLength: 5 }),
  fc.integer({ min: -1000, max: 1000 }),
  fc.boolean(),
);
const valueArb = (key: string): fc.Arbitrary<Json> => {
  if (key in DATE_KEYS) return fc.oneof(blankArb, fc.constantFrom(...DATES.map(([raw]) => raw)));
  if (key in RESERVED) return fc.oneof(blankArb, scalarArb);
  return fc.oneof(blankArb, scalarArb, fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<Json>);
};
const keyArb = fc.constantFrom(...Object.keys(RESERVED), ...Object.keys(DATE_KEYS), 'plan', 'score', 'a b', 'ü', '');

const propertiesArb: fc.Arbitrary<Properties> = fc
  .uniqueArray(keyArb, { maxLength: 6 })
  .chain((keys) => fc.tuple(...keys.map(valueArb)).map((values) => Object.fromEntries(keys.map((key, i) => [key, values[i]!]))));

/** Few ids, so that profiles meet again; 42 and "42" are the same profile. */
const idArb = fc.constantFrom<string | number>('p1', 'p2', 'p3', 'p4', 'ü-5', '42', 42, 7);

const invalidLineArb = fc.constantFrom(
  'not json at all',
  '{"$distinct_id": "p1", "$properties": {"cut',
  '[1, 2]',
  '42',
  'null',
  '{"$properties": {"plan": "free"}}',
  '{"$distinct_id": "", "$properties": {}}',
  '{"$distinct_id": null, "$properties": {}}',
  '{"$distinct_id": {"a": 1}, "$properties": {}}',
  '{"$distinct_id": "p1"}',
  '{"$distinct_id": "p1", "$properties": [1]}',
  '{"$distinct_id": "p1", "$properties": "free"}',
  `{"$distinct_id": "${'d'.repeat(256)}", "$properties": {}}`,
);

/** The profile as sent (JSON.stringify turns -0 into 0), and its line. */
function profileLine(profile: Profile): Line {
  const line = JSON.stringify({ $distinct_id: profile.id, $properties: profile.properties });
  const sent = JSON.parse(line) as { $distinct_id: string | number; $properties: Properties };
  return { kind: 'profile', profile: { id: sent.$distinct_id, properties: sent.$properties }, line };
}

/** A batch: profiles (ids repeat), a few unusable lines, in any order. */
const batchArb: fc.Arbitrary<Line[]> = fc
  .record({
    profiles: fc.array(fc.record({ id: idArb, properties: propertiesArb }), { maxLength: 12 }),
    invalid: fc.array(invalidLineArb, { maxLength: 3 }),
  })
  .chain(({ profiles, invalid }) => {
    const lines: Line[] = [...profiles.map(profileLine), ...invalid.map((line): Line => ({ kind: 'invalid', line }))];
    return fc.shuffledSubarray(lines, { minLength: lines.length, maxLength: lines.length });
  });

type Edit = 'keep' | 'blanks' | 'change' | 'drop';

/** "" -> null -> absent -> "" for the blank values, and new blank keys: no change of content. */
function shuffleBlanks(properties: Properties, turn: number): Properties {
  const result: Properties = {};
  for (const [key, value] of Object.entries(properties)) {
    if (value !== null && value !== '') result[key] = value;
    else if (turn % 3 === 0) result[key] = value === null ? '' : null;
    else if (turn % 3 === 1) continue;
    else result[key] = value;
  }
  return { ...result, [`blank-${turn % 4}`]: turn % 2 ? null : '' };
}

/**
 * The next sync's batch, made of the current profiles: each kept as is, with only its blanks shuffled,
 * changed (one property set, or one removed), or left out; plus a few more profiles and unusable lines.
 */
function editedBatchArb(current: Map<string, Properties>): fc.Arbitrary<{ lines: Line[]; edits: Edit[] }> {
  const ids = [...current.keys()];
  const editArb = fc.record({
    edit: fc.constantFrom<Edit>('keep', 'blanks', 'blanks', 'change', 'drop'),
    turn: fc.nat(11),
    key: keyArb,
    value: scalarArb,
  });
  return fc
    .record({ edits: fc.array(editArb, { minLength: ids.length, maxLength: ids.length }), more: batchArb })
    .chain(({ edits, more }) => {
      const lines: Line[] = [...more];
      ids.forEach((id, i) => {
        const { edit, turn, key, value } = edits[i]!;
        const properties = current.get(id)!;
        if (edit === 'drop') return;
        let next = properties;
        if (edit === 'blanks') next = shuffleBlanks(properties, turn);
        if (edit === 'change') {
          next = { ...properties };
          if (turn % 2 && key in next) delete next[key];
          else next[key] = key in DATE_KEYS ? DATES[turn % DATES.length]![0] : value;
        }
        lines.push(profileLine({ id, properties: next }));
      });
      return fc
        .shuffledSubarray(lines, { minLength: lines.length, maxLength: lines.length })
        .map((shuffled) => ({ lines: shuffled, edits: edits.map((e) => e.edit) }));
    });
}

// ---------------------------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------------------------

function normalised(properties: Properties): Properties {
  return Object.fromEntries(Object.entries(properties).filter(([, value]) => value !== null && value !== ''));
}

/** jsonb equality: object keys in any order. */
function canonical(value: Json): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonical(value[key]!)}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The last usable line of each distinct_id, normalised. */
function lastProfiles(lines: Line[]): Map<string, Properties> {
  const result = new Map<string, Properties>();
  for (const line of lines) {
    if (line.kind !== 'profile') continue;
    const id = String(line.profile.id);
    result.delete(id); // keeps the map in order of last appearance
    result.set(id, normalised(line.profile.properties));
  }
  return result;
}

interface Expected {
  inserted: string[];
  updated: string[];
  unchanged: string[];
  rejected: number;
  duplicates: number;
  after: Map<string, Properties>;
}

function expectedSync(before: Map<string, Properties>, lines: Line[]): Expected {
  const last = lastProfiles(lines);
  const usable = lines.filter((line) => line.kind === 'profile').length;
  const result: Expected = {
    inserted: [],
    updated: [],
    unchanged: [],
    rejected: lines.length - usable,
    duplicates: usable - last.size,
    after: new Map(before),
  };
  for (const [id, properties] of last) {
    const old = before.get(id);
    if (old === undefined) result.inserted.push(id);
    else if (canonical(old) !== canonical(properties)) result.updated.push(id);
    else result.unchanged.push(id);
    result.after.set(id, properties);
  }
  return result;
}

/** What the typed columns must hold for these normalised properties. */
function typedColumns(properties: Properties): Record<string, unknown> {
  const columns: Record<string, unknown> = {};
  for (const [key, column] of Object.entries(RESERVED)) columns[column] = key in properties ? String(properties[key]) : null;
  for (const [key, column] of Object.entries(DATE_KEYS)) {
    columns[column] = key in properties ? (expectedDate.get(properties[key] as string) ?? null) : null;
  }
  return columns;
}

// ---------------------------------------------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------------------------------------------

async function stageRun(client: Queryable, lines: Line[]): Promise<string> {
  const run = await beginRun(client, { source: 'profiles' });
  await stageLines(
    client,
    'profiles',
    run.id,
    lines.map((line) => line.line),
  );
  return run.id;
}

/** A whole profiles run (begin_run, staging, finish_run) in a savepoint of its own: its writes get their own xmin. */
async function syncProfiles(client: Queryable, lines: Line[]): Promise<RunCounts> {
  await client.query('savepoint sync');
  const run = await finishRun(client, await stageRun(client, lines));
  await client.query('release savepoint sync');
  return {
    id: Number(run.id),
    status: run.status,
    received: runCount(run.received)!,
    rejected: runCount(run.rejected)!,
    duplicates: runCount(run.duplicates)!,
    inserted: runCount(run.inserted)!,
    updated: runCount(run.updated)!,
    unchanged: runCount(run.unchanged)!,
  };
}

/** The apply step alone, on a staged run, with change detection on or off. */
function upsert(client: Queryable, runId: string, changeDetection: boolean): Promise<Omit<RunCounts, 'id' | 'status'>> {
  return applyProfiles(client, runId, changeDetection);
}

/** Every row, with its physical version (ctid, xmin, xmax) apart; the dates as ISO strings. */
async function storedRows(client: Queryable): Promise<Map<string, StoredRow>> {
  const { rows } = await client.query<StoredRow>(
    `select p.*, jsonb_build_array(p.ctid, p.xmin, p.xmax)::text as row_version
     from mixpanel_sync.subscriber_properties p order by p.distinct_id`,
  );
  const iso = (value: unknown) => (value instanceof Date ? value.toISOString() : value);
  return new Map(rows.map((row) => [row.distinct_id, { ...row, created_at: iso(row.created_at), last_seen_at: iso(row.last_seen_at) }]));
}

function withoutVersion(rows: Map<string, StoredRow>): Record<string, unknown> {
  return Object.fromEntries([...rows].map(([id, { row_version: _, ...row }]) => [id, row]));
}

const sorted = (ids: Iterable<string>) => [...ids].sort();

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

/** A prior state (one or two syncs of random batches), then the edited batch of the next sync. */
const scenarioArb = fc.array(batchArb, { minLength: 1, maxLength: 2 }).chain((prior) =>
  editedBatchArb(prior.reduce((state, lines) => expectedSync(state, lines).after, new Map<string, Properties>())).map((next) => ({
    prior,
    next,
  })),
);

async function playPrior(client: Queryable, prior: Line[][]): Promise<Map<string, Properties>> {
  let state = new Map<string, Properties>();
  for (const lines of prior) {
    await syncProfiles(client, lines);
    state = expectedSync(state, lines).after;
  }
  return state;
}

const runs = 20;

describe('profiles change detection', () => {
  it('updated = exactly the profiles whose normalised content changed; only they get a new row version', {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    const seen = { blanksOnly: 0, changed: 0, inserted: 0, repeats: 0, rejected: 0 };
    await fc.assert(
      fc.asyncProperty(scenarioArb, async ({ prior, next }) => {
        await rolledBack(db.pool, async (client) => {
          const state = await playPrior(client, prior);
          const before = await storedRows(client);
          const expected = expectedSync(state, next.lines);
          const run = await syncProfiles(client, next.lines);
          const after = await storedRows(client);

          expect(run).toMatchObject({
            status: 'succeeded',
            received: next.lines.length,
            rejected: expected.rejected,
            duplicates: expected.duplicates,
            inserted: expected.inserted.length,
            updated: expected.updated.length,
            unchanged: expected.unchanged.length,
          });
          const rewritten = [...after.values()].filter((row) => before.get(row.distinct_id)?.row_version !== row.row_version);
          expect(sorted(rewritten.map((row) => row.distinct_id)), 'rows with a new version (ctid, xmin, xmax)').toEqual(
            sorted([...expected.inserted, ...expected.updated]),
          );
          const changedByRun = [...after.values()].filter((row) => row.changed_by_run_id === String(run.id));
          expect(sorted(changedByRun.map((row) => row.distinct_id)), 'rows with changed_by_run_id of this run').toEqual(
            sorted([...expected.inserted, ...expected.updated]),
          );
          for (const [id, properties] of expected.after) {
            const row = after.get(id);
            expect(row?.properties, `properties of ${id}`).toEqual(properties);
            expect(row, `typed columns of ${id}`).toMatchObject(typedColumns(properties));
          }
          expect(after.size).toBe(expected.after.size);

          if (next.edits.includes('blanks')) seen.blanksOnly++;
          if (expected.updated.length > 0) seen.changed++;
          if (expected.inserted.length > 0) seen.inserted++;
          if (expected.duplicates > 0) seen.repeats++;
          if (expected.rejected > 0) seen.rejected++;
        });
      }),
      propertyParameters(runs),
    );
    for (const [what, count] of Object.entries(seen)) expect(count, `scenarios with ${what}`).toBeGreaterThan(0);
  });

  it('is idempotent: the same batch again reports 0 inserted, 0 updated and writes or locks no row', {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    await fc.assert(
      fc.asyncProperty(scenarioArb, async ({ prior, next }) => {
        await rolledBack(db.pool, async (client) => {
          await playPrior(client, prior);
          await syncProfiles(client, next.lines);
          const once = await storedRows(client);
          const again = await syncProfiles(client, next.lines);
          const twice = await storedRows(client);
          expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, unchanged: lastProfiles(next.lines).size });
          expect(twice, 'every row with its ctid, xmin and xmax').toEqual(once);
        });
      }),
      propertyParameters(runs),
    );
  });

  it('change detection on ≡ off: the same rows (every column) and the same counts from the same state', {
    timeout: timeoutFor(runs, 200),
  }, async () => {
    await fc.assert(
      fc.asyncProperty(scenarioArb, async ({ prior, next }) => {
        await rolledBack(db.pool, async (client) => {
          await playPrior(client, prior);
          const runId = await stageRun(client, next.lines);
          const on = await branch(client, async () => ({
            counts: await upsert(client, runId, true),
            rows: withoutVersion(await storedRows(client)),
          }));
          const offCounts = await upsert(client, runId, false);
          expect(withoutVersion(await storedRows(client)), 'rows with change detection off (actual) and on (expected)').toEqual(on.rows);
          expect(offCounts, 'counts with change detection off (actual) and on (expected)').toEqual(on.counts);
        });
      }),
      propertyParameters(runs),
    );
  });
});
