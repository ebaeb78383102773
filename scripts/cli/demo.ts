// npm run demo — the whole events life cycle on a throwaway embedded PostgreSQL, no setup needed:
// migrate; a full sync of a generated sample at the original plan's scale (3,000 users, 95,000
// events over 45 days); a day later an incremental sync of a new day plus the overlap the Export
// API re-reads plus late arrivals (raw storage on); then subscribers, a funnel on the raw events and the sync's health;
// the proofs; last, a second project in the same database. Never touches
// DATABASE_URL. The server and the sample files go away on exit and on Ctrl-C.
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import pg from 'pg';
import { syncEvents } from '../loader/events-sync.ts';
import { withThrowawayDatabase } from '../db/throwaway-database.ts';
import { summaryLines, type RunSummary } from '../loader/run-summary.ts';
import { sampleEventLines, writeSampleEvents, type SampleEventOptions } from '../fixtures/sample-events.ts';
import { writeSampleProfiles } from '../fixtures/sample-profiles.ts';
import { createProject, eventSeconds, rereadFromDay, syncHealth, writeSetting } from '../sql/sync-api.ts';
import { projectsTotalLine, readProjectsStatus } from './read-status.ts';
import { profilesSummaryLine, syncProfiles } from '../loader/profiles-sync.ts';
import { proofSteps } from './demo-proofs.ts';

const DAY_MS = 86_400_000;

interface DemoContext {
  pool: pg.Pool;
  /** The throwaway database's URL (the verify step opens its own connection). */
  url: string;
  /** Where the demo writes its files (removed with the server). */
  dir: string;
  /** The first sync's clock: a day before `now`. */
  firstClock: Date;
  now: Date;
  /** The first sample's generator options. */
  sample: SampleEventOptions;
  summaries: RunSummary[];
  say(line?: string): void;
}

interface DemoStep {
  title: string;
  run(context: DemoContext): Promise<void>;
}

async function writeLines(file: string, lines: Iterable<string>): Promise<void> {
  const out = createWriteStream(file);
  for (const line of lines) if (!out.write(`${line}\n`)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
  out.end();
  await finished(out);
}

function show(context: DemoContext, summary: RunSummary): void {
  context.summaries.push(summary);
  for (const line of summaryLines(summary)) context.say(line);
}

const fullSync: DemoStep = {
  title: 'full sync of a generated sample',
  async run(context) {
    const file = path.join(context.dir, 'events.jsonl');
    const out = createWriteStream(file);
    const stats = await writeSampleEvents(context.sample, out);
    out.end();
    await finished(out);
    context.say(
      `sample: ${stats.lines.toLocaleString('en-US')} lines, ${context.sample.users.toLocaleString('en-US')} users, ${context.sample.days} days (${stats.duplicates} re-sent lines, ${stats.late} late, ${stats.missingInsertId} without $insert_id)`,
    );
    await writeSetting(context.pool, 'events.store_raw', 'on');
    context.say("events.store_raw = 'on': the ledger also keeps every event whole (view mixpanel_sync.raw_events)");
    const summary = await syncEvents({ pool: context.pool, input: file, clock: context.firstClock });
    show(context, summary);
    if (summary.too_old)
      context.say('  (too old: sample events before the first of the 45 whole UTC days a full run replaces; counted, not applied)');
  },
};

const incrementalSync: DemoStep = {
  title: 'a day later: incremental sync of a new day + the re-read overlap + late arrivals',
  async run(context) {
    const { sample, firstClock, now } = context;
    const since = (await rereadFromDay(context.pool)).getTime() / 1000; // what an incremental Export reads again
    // the second of each line as the parser reads properties.time (a few sample lines carry it in ms)
    const sampleLines = sampleEventLines(sample);
    const lineSeconds = await eventSeconds(
      context.pool,
      sampleLines.map((line) => Number(/"time":(\d+)/.exec(line)?.[1])),
    );
    const reread = sampleLines.filter((_, i) => (lineSeconds[i] ?? Number.NEGATIVE_INFINITY) >= since);
    const newDay = sampleEventLines({ ...sample, events: Math.round(sample.events / sample.days), days: 1, end: now });
    // events of the last 4 days that reached Mixpanel only after the first sync
    const late = sampleEventLines({
      ...sample,
      events: 60,
      days: 4,
      end: new Date(firstClock.getTime() - 3_600_000),
      duplicateRate: 0,
      lateRate: 0,
    }).map((line, i) => line.replace(/"mp_processing_time_ms":\d+/, `"mp_processing_time_ms":${firstClock.getTime() + (i + 1) * 600_000}`));
    const file = path.join(context.dir, 'next-day.jsonl');
    await writeLines(file, [...reread, ...newDay, ...late]);
    context.say(`input: ${reread.length} re-read lines (overlap), ${newDay.length} new-day lines, ${late.length} late arrivals`);
    show(context, await syncEvents({ pool: context.pool, input: file, clock: now }));
    const [first, second] = context.summaries.slice(-2);
    context.say(`watermark: ${first!.watermark_before ?? 'none'} -> ${first!.watermark_after} -> ${second!.watermark_after}`);
  },
};

const subscribers: DemoStep = {
  title: 'mixpanel_sync.subscribers (most active users)',
  async run(context) {
    const { rows } = await context.pool.query<{
      distinct_id: string;
      total_events: string;
      first_event_at: Date;
      last_event_at: Date;
      top: string;
    }>(
      `select s.distinct_id, s.total_events, s.first_event_at, s.last_event_at,
         (select string_agg(e.key || ' ' || e.value, ', ' order by e.value::bigint desc, e.key)
          from (select * from jsonb_each_text(s.event_counts) order by value::bigint desc, key limit 3) e) as top
       from mixpanel_sync.subscribers s order by s.total_events desc, s.distinct_id limit 5`,
    );
    const { rows: count } = await context.pool.query<{ n: string }>('select count(*) as n from mixpanel_sync.subscribers');
    context.say(`${Number(count[0]!.n).toLocaleString('en-US')} subscribers; the top 5:`);
    for (const row of rows) {
      context.say(
        `  ${row.distinct_id.padEnd(44)} ${row.total_events.padStart(5)} events  ${row.first_event_at.toISOString().slice(0, 16)} .. ${row.last_event_at.toISOString().slice(0, 16)}  ${row.top}`,
      );
    }
  },
};

const profileSyncs: DemoStep = {
  title: 'profiles: a sync, then the same profiles with about 10% edited in Mixpanel (change detection)',
  async run(context) {
    const { users, seed } = context.sample;
    const write = async (name: string, editRate: number) => {
      const file = path.join(context.dir, name);
      const out = createWriteStream(file);
      const stats = await writeSampleProfiles({ users, seed, end: context.firstClock, editRate }, out, 'pages');
      out.end();
      await finished(out);
      return { file, ...stats };
    };
    const base = await write('profiles.pages', 0);
    context.say(`sample: ${base.profiles.toLocaleString('en-US')} profiles of the same users, as saved Engage pages`);
    context.say(
      `  first sync:  ${profilesSummaryLine(await syncProfiles({ pool: context.pool, input: base.file, clock: context.firstClock }))}`,
    );
    const edited = await write('profiles-edited.pages', 0.1);
    context.say(`  ${edited.edited.toLocaleString('en-US')} profiles edited since; the rest byte-identical`);
    context.say(
      `  second sync: ${profilesSummaryLine(await syncProfiles({ pool: context.pool, input: edited.file, clock: context.now }))}`,
    );
  },
};

const rawFunnel: DemoStep = {
  title: "raw events: the README's funnel (View Item, then Purchase within 7 days) over the last 30 days",
  async run(context) {
    const to = context.now.toISOString().slice(0, 10);
    const from = new Date(context.now.getTime() - 30 * DAY_MS).toISOString().slice(0, 10);
    const started = performance.now();
    const { rows } = await context.pool.query<{ stored: string; viewed: string; purchased: string }>(
      `with entered as (
         select distinct_id, min(event_time) as first_view from mixpanel_sync.raw_events
         where event_name = 'View Item' and day between $1::date and $2::date group by distinct_id)
       select (select count(*) from mixpanel_sync.raw_events) as stored, count(*) as viewed,
         count(*) filter (where exists (
           select from mixpanel_sync.raw_events p
           where p.distinct_id = e.distinct_id and p.event_name = 'Purchase'
             and p.event_time > e.first_view and p.event_time <= e.first_view + interval '7 days'
             and p.day between $1::date and $2::date + 7)) as purchased
       from entered e`,
      [from, to],
    );
    const row = rows[0]!;
    context.say(`${Number(row.stored).toLocaleString('en-US')} raw events stored (deduplicated, partitioned by day)`);
    context.say(
      `${from} .. ${to}: ${Number(row.viewed).toLocaleString('en-US')} users viewed an item, ${Number(row.purchased).toLocaleString('en-US')} of them purchased within 7 days (${((performance.now() - started) / 1000).toFixed(2)} s)`,
    );
  },
};

const health: DemoStep = {
  title: 'sync health: select * from mixpanel_sync.sync_health()',
  async run(context) {
    for (const row of await syncHealth(context.pool)) context.say(`  ${row.status.padEnd(8)} ${row.check.padEnd(34)} ${row.value ?? ''}`);
  },
};

const secondProject: DemoStep = {
  title: "a second Mixpanel project in the same database: create_project('eu_app'), a sync with --project eu_app",
  async run(context) {
    await createProject(context.pool, 'eu_app', { region: 'eu' });
    const sample: SampleEventOptions = { users: 300, events: 6000, days: 10, end: context.now, seed: 1 };
    const file = path.join(context.dir, 'eu-app-events.jsonl');
    await writeLines(file, sampleEventLines(sample));
    context.say(`sample of eu_app: ${sample.events.toLocaleString('en-US')} events of ${sample.users} users`);
    show(context, await syncEvents({ pool: context.pool, input: file, clock: context.now, project: 'eu_app' }));
    const { rows } = await context.pool.query<{ name: string; users: string; events: string }>(
      `select p.name, count(distinct d.distinct_id) as users, coalesce(sum(d.event_count), 0) as events
       from mixpanel_sync.projects p left join mixpanel_sync.events_daily d on d.project_id = p.id group by p.name order by p.name`,
    );
    for (const row of rows)
      context.say(
        `  ${row.name.padEnd(8)} ${Number(row.users).toLocaleString('en-US').padStart(6)} users  ${Number(row.events).toLocaleString('en-US').padStart(7)} events in events_daily`,
      );
    const { rows: shared } = await context.pool.query<{ n: string }>(
      `select count(*) as n from mixpanel_sync.subscribers a join mixpanel_sync.subscribers b on b.distinct_id = a.distinct_id
       where a.project_id = mixpanel_sync.project_id('default') and b.project_id = mixpanel_sync.project_id('eu_app')`,
    );
    context.say(`  ${shared[0]!.n} distinct_ids are subscribers of both projects, each with its own row and counts`);
    const all = await readProjectsStatus(context.pool, 3);
    context.say(`npm run status (no --project): ${projectsTotalLine(all.total)}`);
  },
};

/** The demo, in order. A step reads and extends the context; add new ones here. The second project comes last: with
 * two projects, every call that names no project is refused (MP004). */
const demoSteps: DemoStep[] = [fullSync, incrementalSync, subscribers, rawFunnel, profileSyncs, health, ...proofSteps, secondProject];

async function main(): Promise<void> {
  const started = performance.now();
  const say = (line = '') => process.stdout.write(`${line}\n`);
  const seconds = (since: number) => `${((performance.now() - since) / 1000).toFixed(1)} s`;

  say('mixpanel-pg-sync demo: a throwaway embedded PostgreSQL, removed at the end (and on Ctrl-C)');
  await withThrowawayDatabase('mixpanel_sync_demo', async ({ url, server }) => {
    say(`PostgreSQL ${server.version} on port ${server.port}, migrated in ${seconds(started)}`);
    const pool = new pg.Pool({ connectionString: url, max: 3 });
    pool.on('error', () => {}); // Ctrl-C stops the server under idle connections
    const dir = path.join(server.instanceDir, 'demo'); // removed with the server
    await mkdir(dir);
    const now = new Date(Math.floor(Date.now() / 60_000) * 60_000);
    const firstClock = new Date(now.getTime() - DAY_MS);
    const context: DemoContext = {
      pool,
      url,
      dir,
      now,
      firstClock,
      sample: { users: 3000, events: 95_000, days: 45, end: firstClock, seed: 1 },
      summaries: [],
      say,
    };
    try {
      for (const [index, step] of demoSteps.entries()) {
        const stepStarted = performance.now();
        say(`\n[${index + 1}/${demoSteps.length}] ${step.title}`);
        await step.run(context);
        say(`(${seconds(stepStarted)})`);
      }
    } finally {
      await pool.end();
    }
  });
  say(`\ndone in ${seconds(started)}`);
}

main().catch((error: unknown) => {
  process.stderr.write(`demo: ${(error as Error).message}\n`);
  process.exit(1);
});
