// What two settings cost, as reported figures (no target):
//   identity_mode_cost: a full sync with identity.mode = simplified ÷ the same with off, on a scenario where 20 % of
//     the users start anonymous ($device:<id>) and identify mid-window (events with both $device_id and $user_id);
//   raw_storage_time_ratio / raw_storage_bytes_per_event: events.store_raw on ÷ off (time per event) and the bytes per
//     event it adds (every table of schema mixpanel_sync), when that setting exists (its sync_settings row).
// Each trial is a first full sync into a fresh database; the two settings alternate which goes first.
import type pg from 'pg';
import type { Scale } from './bench-options.ts';
import type { BenchServer } from './bench-server.ts';
import type { FigureKey, SuiteResult } from './figures.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { setIdentityMode, type IdentityMode } from '../sql/identity-support.ts';
import { writeSetting } from '../sql/sync-api.ts';
import { benchFile, SAMPLE_END, writeLines } from './sample-data.ts';
import { log, median, ratio, seconds } from './timing.ts';

const USERS = 3_000;
const WINDOW_DAYS = 45;
const DAY_MS = 86_400_000;
/** every fifth user starts anonymous and identifies at the window's middle */
const IDENTIFIED_EVERY = 5;

interface Trial {
  ms: number;
  events: number;
  schemaBytes: number;
  linksLearned: number;
}

/** The scenario: generated lines, 20 % of users anonymous ($device:…) before the window's middle and identified after. */
function identityLines(events: number): { lines: string[]; identifiedUsers: number } {
  const lines = sampleEventLines({ users: USERS, events, days: WINDOW_DAYS, end: SAMPLE_END, seed: 31 });
  const middle = (SAMPLE_END.getTime() - (WINDOW_DAYS / 2) * DAY_MS) / 1000;
  const users = [
    ...new Set(lines.map((line) => String((JSON.parse(line) as { properties: { distinct_id: unknown } }).properties.distinct_id))),
  ].sort();
  const identified = new Set(users.filter((_, i) => i % IDENTIFIED_EVERY === 0));
  const out = lines.map((line) => {
    const record = JSON.parse(line) as { event: string; properties: Record<string, unknown> };
    const user = String(record.properties.distinct_id);
    if (!identified.has(user)) return line;
    const time = Number(record.properties.time);
    const second = time >= 1e11 ? time / 1000 : time;
    const device = `dev-${user}`;
    const properties =
      second < middle
        ? { ...record.properties, distinct_id: `$device:${device}`, $device_id: device }
        : { ...record.properties, $device_id: device, $user_id: user };
    return JSON.stringify({ event: record.event, properties });
  });
  return { lines: out, identifiedUsers: identified.size };
}

async function identityAvailable(pool: pg.Pool): Promise<boolean> {
  const { rows } = await pool.query<{ present: boolean }>(
    `select pg_catalog.to_regprocedure('mixpanel_sync.identity_mode(smallint)') is not null as present`,
  );
  return rows[0]!.present;
}

/** identity.mode through the identity stream's setter (it adds the row where the setting kind has not landed yet). */
const applySetting = (pool: pg.Pool, key: string, value: string): Promise<void> =>
  key === 'identity.mode' ? setIdentityMode(pool, value as IdentityMode) : writeSetting(pool, key, value);

async function settingExists(pool: pg.Pool, key: string): Promise<boolean> {
  const { rowCount } = await pool.query('select 1 from mixpanel_sync.sync_settings where key = $1', [key]);
  return rowCount === 1;
}

async function schemaBytes(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ bytes: string }>(
    `select coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)::bigint as bytes
     from pg_catalog.pg_class c where c.relnamespace = 'mixpanel_sync'::regnamespace and c.relkind = 'r'`,
  );
  return Number(rows[0]!.bytes);
}

async function trial(server: BenchServer, file: string, key: string, value: string): Promise<Trial> {
  const db = await server.freshDatabase();
  try {
    await applySetting(db.pool, key, value);
    const summary = await syncEvents({ pool: db.pool, input: file, full: true, clock: SAMPLE_END });
    if (summary.status !== 'succeeded') throw new Error(`settings-cost: the full sync with ${key} = ${value} ended ${summary.status}`);
    const { rows } = await db.pool.query<{ links: string | null; events: string | null }>(
      `select (select to_jsonb(r) ->> 'links_learned' from mixpanel_sync.sync_runs r where r.id = $1) as links,
              (select sum(total_events) from mixpanel_sync.subscribers) as events`,
      [summary.run_id],
    );
    return {
      ms: summary.duration_ms,
      events: Number(rows[0]!.events ?? 0),
      schemaBytes: await schemaBytes(db.pool),
      linksLearned: Number(rows[0]!.links ?? 0),
    };
  } finally {
    await db.drop();
  }
}

async function compare(
  server: BenchServer,
  file: string,
  key: string,
  values: [string, string],
  repeats: number,
): Promise<Record<string, Trial[]>> {
  const out: Record<string, Trial[]> = { [values[0]]: [], [values[1]]: [] };
  for (let repeat = 0; repeat < repeats; repeat++) {
    for (const value of repeat % 2 === 0 ? values : [...values].reverse()) {
      const t = await trial(server, file, key, value);
      out[value]!.push(t);
      log(`settings-cost: ${key} = ${value}: ${seconds(t.ms)}, ${t.events} events, ${t.linksLearned} links learned`);
    }
  }
  return out;
}

export async function settingsCost(server: BenchServer, scale: Scale): Promise<SuiteResult> {
  const { lines, identifiedUsers } = identityLines(scale.settingsEvents);
  const file = await writeLines(await benchFile(`identity-${scale.settingsEvents}.jsonl`), lines);
  const probe = await server.freshDatabase();
  const available = { identity: await identityAvailable(probe.pool), raw: await settingExists(probe.pool, 'events.store_raw') };
  await probe.drop();

  const figures: SuiteResult['figures'] = {};
  const missing: Partial<Record<FigureKey, string>> = {};
  const table: string[][] = [
    ['setting', 'value', 'full sync (median)', 'trials', 'events counted', 'tables + indexes of mixpanel_sync', 'links learned'],
  ];
  const rows = (key: string, runs: Record<string, Trial[]>) => {
    for (const [value, trials] of Object.entries(runs)) {
      table.push([
        key,
        value,
        seconds(median(trials.map((t) => t.ms))),
        `${trials.map((t) => `${Math.round(t.ms)}`).join(', ')} ms`,
        `${trials[0]!.events}`,
        `${(median(trials.map((t) => t.schemaBytes)) / 2 ** 20).toFixed(1)} MiB`,
        `${trials[0]!.linksLearned}`,
      ]);
    }
  };

  if (available.identity) {
    const runs = await compare(server, file, 'identity.mode', ['off', 'simplified'], scale.repeats);
    figures.identity_mode_cost = ratio(median(runs.simplified!.map((t) => t.ms)), median(runs.off!.map((t) => t.ms)));
    rows('identity.mode', runs);
  } else {
    missing.identity_mode_cost = 'identity.mode not available (no mixpanel_sync.identity_mode(smallint))';
  }
  if (available.raw) {
    const runs = await compare(server, file, 'events.store_raw', ['off', 'on'], scale.repeats);
    const perEvent = (trials: Trial[]) => median(trials.map((t) => t.ms / Math.max(1, t.events)));
    figures.raw_storage_time_ratio = ratio(perEvent(runs.on!), perEvent(runs.off!));
    const bytes = (trials: Trial[]) => median(trials.map((t) => t.schemaBytes));
    figures.raw_storage_bytes_per_event = (bytes(runs.on!) - bytes(runs.off!)) / Math.max(1, runs.on![0]!.events);
    rows('events.store_raw', runs);
  } else {
    missing.raw_storage_time_ratio = 'events.store_raw not available (no sync_settings row)';
    missing.raw_storage_bytes_per_event = 'events.store_raw not available (no sync_settings row)';
  }
  return {
    figures,
    missing,
    section: {
      title: 'What settings cost: identity merge and raw event storage',
      command: 'npm run bench -- --only settings-cost',
      method: [
        `Data: ${scale.settingsEvents.toLocaleString('en-US')} generated events of ${USERS.toLocaleString('en-US')} users over ${WINDOW_DAYS} days; ${identifiedUsers} users (every ${IDENTIFIED_EVERY}th, 20 %) are anonymous before the window's middle (distinct_id \`$device:dev-<user>\`, \`$device_id\`) and identified after it (their id, with \`$device_id\` and \`$user_id\`: Simplified ID Merge joins the two).`,
        "Each trial: set the setting in a fresh database, then a first full sync of the file (`syncEvents`, full, fixed clock), timed by the run's duration (sync_runs.total_ms). The two values alternate which goes first.",
        'identity_mode_cost: median time with identity.mode = simplified ÷ with off. raw_storage_time_ratio: time per event counted with events.store_raw on ÷ off; raw_storage_bytes_per_event: (tables + indexes of every mixpanel_sync table with it on − off) ÷ events counted.',
        `Medians of ${scale.repeats} trials per value. identity.mode is set with setIdentityMode (scripts/sql/identity-support.ts); events.store_raw is measured only where its sync_settings row exists, else reported as not measured.`,
      ],
      table,
      reading: [],
    },
  };
}
