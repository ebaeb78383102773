// profiles_unchanged_tuples_written and profiles_cd_speedup: re-syncing profiles that did not change,
// with change detection on (writes nothing) and off (writes every row, the original behaviour).
import { createWriteStream } from 'node:fs';
import { finished } from 'node:stream/promises';
import type pg from 'pg';
import { countSampleProfiles, writeSampleProfiles } from '../fixtures/sample-profiles.ts';
import { syncProfiles, type ProfilesSummary } from '../loader/profiles-sync.ts';
import type { Scale } from './bench-options.ts';
import type { BenchDatabase, BenchServer } from './bench-server.ts';
import type { SuiteResult } from './figures.ts';
import { benchFile, SAMPLE_END } from './sample-data.ts';
import { log, median, ratio, seconds, timed } from './timing.ts';

const SEED = 5;
/** a run past this is cut (statement_timeout) and reported, so one pathological plan cannot hang the bench */
const RUN_TIMEOUT_MS = 600_000;
const TABLES = ['mixpanel_sync.subscriber_properties', 'mixpanel_sync.staged_profiles'];

/** Users whose identified share holds about `profiles` profiles (anonymous users have none). */
function usersFor(profiles: number): number {
  const share = countSampleProfiles({ users: 10_000, seed: SEED }) / 10_000;
  return Math.round(profiles / share);
}

async function writeProfilesFile(users: number): Promise<string> {
  const file = await benchFile(`profiles-${users}.json`);
  const out = createWriteStream(file);
  await writeSampleProfiles({ users, seed: SEED, end: SAMPLE_END }, out, 'pages', 1000);
  out.end();
  await finished(out);
  return file;
}

type Written = Record<string, number>;

/** Rows inserted + updated + deleted so far, per table, from the statistics system (flushed first). */
async function tuplesWritten(pool: pg.Pool): Promise<Written> {
  const client = await pool.connect();
  try {
    await client.query('select pg_catalog.pg_stat_clear_snapshot()');
    const { rows } = await client.query<{ table: string; written: string }>(
      `select format('%I.%I', schemaname, relname) as table, n_tup_ins + n_tup_upd + n_tup_del as written
       from pg_catalog.pg_stat_user_tables where format('%I.%I', schemaname, relname) = any($1)`,
      [TABLES],
    );
    return Object.fromEntries(rows.map((row) => [row.table, Number(row.written)]));
  } finally {
    client.release();
  }
}

/**
 * One profiles sync on its own connections: when they close, their backends flush their statistics;
 * we wait for that (the counters stop moving) before reading them.
 */
async function syncAndCount(db: BenchDatabase, file: string): Promise<{ ms: number; summary: ProfilesSummary; written: Written }> {
  const before = await tuplesWritten(db.pool);
  const url = new URL(db.url);
  url.searchParams.set('options', `-c statement_timeout=${RUN_TIMEOUT_MS}`);
  const { ms, value: summary } = await timed(() => syncProfiles({ connectionString: url.toString(), input: file, clock: SAMPLE_END }));
  let after = await tuplesWritten(db.pool);
  for (let tries = 0; tries < 50; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const again = await tuplesWritten(db.pool);
    if (TABLES.every((t) => again[t] === after[t]) && tries >= 2) break;
    after = again;
  }
  const written = Object.fromEntries(TABLES.map((t) => [t, (after[t] ?? 0) - (before[t] ?? 0)]));
  return { ms, summary, written };
}

async function setChangeDetection(pool: pg.Pool, value: 'on' | 'off'): Promise<void> {
  await pool.query("update mixpanel_sync.sync_settings set value = $1 where key = 'profiles.change_detection'", [value]);
}

export async function profilesSuite(server: BenchServer, scale: Scale): Promise<SuiteResult> {
  const users = usersFor(scale.profiles);
  const profiles = countSampleProfiles({ users, seed: SEED });
  const file = await writeProfilesFile(users);
  const db = await server.freshDatabase();
  try {
    const first = await syncAndCount(db, file);
    log(`profiles: first sync of ${profiles} profiles: ${seconds(first.ms)}, inserted ${first.summary.inserted}`);
    const on: Array<Awaited<ReturnType<typeof syncAndCount>>> = [];
    const off: Array<Awaited<ReturnType<typeof syncAndCount>>> = [];
    for (let repeat = 0; repeat < scale.repeats; repeat++) {
      for (const mode of repeat % 2 === 0 ? (['on', 'off'] as const) : (['off', 'on'] as const)) {
        await setChangeDetection(db.pool, mode);
        await db.pool.query('vacuum (analyze) mixpanel_sync.subscriber_properties');
        const result = await syncAndCount(db, file);
        (mode === 'on' ? on : off).push(result);
        log(
          `profiles: re-sync, change detection ${mode}: ${seconds(result.ms)}, ${result.written['mixpanel_sync.subscriber_properties']} tuples written`,
        );
      }
    }
    await setChangeDetection(db.pool, 'on');
    const onMs = median(on.map((r) => r.ms));
    const offMs = median(off.map((r) => r.ms));
    const table = (r: (typeof on)[number]) => r.written['mixpanel_sync.subscriber_properties'] ?? 0;
    const onWritten = Math.max(...on.map(table));
    const staged = (r: (typeof on)[number]) => r.written['mixpanel_sync.staged_profiles'] ?? 0;
    const cdWhy = `re-syncing ${profiles.toLocaleString('en-US')} unchanged profiles takes ${seconds(onMs)} with change detection on (subscriber_properties tuples written: ${on.map(table).join(', ')}) and ${seconds(offMs)} with it off (${off.map(table).join(', ')}): on saves the writes only; both still COPY and parse every staged profile (staged_profiles tuples written: ${on.map(staged).join(', ')}).`;
    return {
      why: { profiles_cd_speedup: cdWhy, profiles_unchanged_tuples_written: cdWhy },
      figures: { profiles_unchanged_tuples_written: onWritten, profiles_cd_speedup: ratio(offMs, onMs) },
      section: {
        title: 'Profiles: re-syncing unchanged profiles',
        command: 'npm run bench -- --only profiles',
        method: [
          `${profiles.toLocaleString('en-US')} generated Engage profiles (pages of 1,000, as the Engage API returns them) synced once, then re-synced unchanged through \`syncProfiles\` in process, with profiles.change_detection on and off alternately (${scale.repeats} each; VACUUM ANALYZE before each).`,
          "Tuples written: n_tup_ins + n_tup_upd + n_tup_del of pg_stat_user_tables, before and after the run, read once the loader's connections have closed (a closing backend flushes its counters) and the counters stopped moving. The key figure is the largest over the change-detection-on runs.",
        ],
        table: [
          [
            'run',
            'time (median)',
            'subscriber_properties tuples written',
            'staged_profiles tuples written',
            'inserted / updated / unchanged',
          ],
          [
            'first sync',
            seconds(first.ms),
            `${table(first)}`,
            `${staged(first)}`,
            `${first.summary.inserted} / ${first.summary.updated} / ${first.summary.unchanged}`,
          ],
          [
            're-sync, change detection on',
            seconds(onMs),
            on.map(table).join(', '),
            on.map(staged).join(', '),
            `${on[0]!.summary.inserted} / ${on[0]!.summary.updated} / ${on[0]!.summary.unchanged}`,
          ],
          [
            're-sync, change detection off',
            seconds(offMs),
            off.map(table).join(', '),
            off.map(staged).join(', '),
            `${off[0]!.summary.inserted} / ${off[0]!.summary.updated} / ${off[0]!.summary.unchanged}`,
          ],
        ],
        reading: [
          'staged_profiles rows are the raw lines COPYed in and deleted by finish_run (an UNLOGGED table): the price of parsing in SQL, paid with change detection on or off.',
        ],
      },
    };
  } finally {
    await db.drop();
  }
}
