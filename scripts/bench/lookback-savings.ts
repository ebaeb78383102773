// How many events per incremental run the narrowed late-arrival lookback saves, against a plain
// overlap that re-reads the whole lookback days (days [lookback_from, fetch_to], unfiltered).
//
// A fake Mixpanel on 127.0.0.1 holds a generated sample (--late-rate is the generator's knob);
// before each run it shows only the events Mixpanel had processed by the run's clock. A full
// sync, then --runs incremental syncs every --every-hours through the Export API path; for each
// run the events the loader received are set against the events a plain overlap would have read
// (the same fake, one unfiltered request). Finally a forced full run at the last clock checks
// that the incremental runs missed no late event (same totals). On a throwaway embedded server:
//   npx tsx scripts/bench/lookback-savings.ts [--late-rate 0.01] [--runs 8] [--every-hours 6]
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { exportEvents } from '../mixpanel/export-events.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { syncEvents } from '../loader/events-sync.ts';
import type { ExportRequest } from '../loader/export-plan.ts';
import { withThrowawayDatabase } from '../db/throwaway-database.ts';

export interface LookbackRun {
  clock: string;
  /** Events the incremental run received: window days whole + lookback days narrowed. */
  received: number;
  /** Events a plain overlap (lookback and window days, unfiltered) would have received. */
  plainOverlap: number;
  applied: number;
}

export interface LookbackSavings {
  lateRate: number;
  events: number;
  runs: LookbackRun[];
  /** Mean over the runs of plainOverlap - received. */
  savedPerRun: number;
  /** Events in events_daily after the incremental runs, and after a forced full run at the same clock. */
  incrementalTotal: number;
  fullTotal: number;
}

const HOUR_MS = 3_600_000;

function processingMs(line: string): number {
  return Number(/"mp_processing_time_ms":(\d+)/.exec(line)?.[1] ?? 0);
}

async function countExport(fake: FakeMixpanel, request: Pick<ExportRequest, 'fromDate' | 'toDate'>): Promise<number> {
  const stream = exportEvents({ ...request, settings: fake.settings({ queriesPerHour: null }) });
  for await (const chunk of stream) void chunk;
  return stream.stats.records;
}

async function totalEvents(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: string }>('select coalesce(sum(event_count), 0) as n from mixpanel_sync.events_daily');
  return Number(rows[0]!.n);
}

/** Runs the scenario on `pool` (a migrated database whose events tables it overwrites). */
export async function measureLookbackSavings(
  pool: pg.Pool,
  options: { lateRate: number; runs: number; everyHours: number },
): Promise<LookbackSavings> {
  const end = new Date(Math.floor(Date.now() / HOUR_MS) * HOUR_MS);
  const spanHours = options.runs * options.everyHours;
  // the original plan's rate: 95,000 events over 45 days
  const days = 45 + spanHours / 24;
  const events = Math.round((95_000 * days) / 45);
  const lines = sampleEventLines({ users: 3000, events, days, end, seed: 11, lateRate: options.lateRate });
  const processed = lines.map(processingMs);
  const fake = await startFakeMixpanel();
  const settings = fake.settings({ queriesPerHour: null });
  const visibleAt = (clock: Date) => fake.setEvents(lines.filter((_, i) => processed[i]! <= clock.getTime()));
  try {
    let clock = new Date(end.getTime() - spanHours * HOUR_MS);
    visibleAt(clock);
    await syncEvents({ pool, mixpanel: settings, clock, full: true });
    const runs: LookbackRun[] = [];
    for (let i = 0; i < options.runs; i++) {
      clock = new Date(clock.getTime() + options.everyHours * HOUR_MS);
      visibleAt(clock);
      const plan: ExportRequest[] = [];
      const summary = await syncEvents({ pool, mixpanel: settings, clock, onExport: (request) => plan.push(request) });
      const plainOverlap = await countExport(fake, { fromDate: plan[0]!.fromDate, toDate: plan.at(-1)!.toDate });
      runs.push({ clock: clock.toISOString(), received: summary.received ?? 0, plainOverlap, applied: summary.applied ?? 0 });
    }
    const incrementalTotal = await totalEvents(pool);
    await syncEvents({ pool, mixpanel: settings, clock, full: true });
    const fullTotal = await totalEvents(pool);
    const savedPerRun = runs.reduce((sum, run) => sum + run.plainOverlap - run.received, 0) / runs.length;
    return { lateRate: options.lateRate, events, runs, savedPerRun, incrementalTotal, fullTotal };
  } finally {
    await fake.close();
  }
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'late-rate': { type: 'string', default: '0.01' },
      runs: { type: 'string', default: '8' },
      'every-hours': { type: 'string', default: '6' },
    },
  });
  const options = { lateRate: Number(values['late-rate']), runs: Number(values.runs), everyHours: Number(values['every-hours']) };
  await withThrowawayDatabase('lookback_savings', async ({ url }) => {
    const pool = new pg.Pool({ connectionString: url, max: 3 });
    try {
      const result = await measureLookbackSavings(pool, options);
      const say = (line: string) => process.stdout.write(`${line}\n`);
      say(
        `late rate ${result.lateRate}: ${result.events.toLocaleString('en-US')} sample events, ${result.runs.length} incremental runs every ${options.everyHours} h`,
      );
      say('clock                     received  plain overlap  applied');
      for (const run of result.runs)
        say(
          `${run.clock}  ${String(run.received).padStart(8)}  ${String(run.plainOverlap).padStart(13)}  ${String(run.applied).padStart(7)}`,
        );
      const received = result.runs.reduce((sum, run) => sum + run.received, 0) / result.runs.length;
      say(
        `saved per run: ${Math.round(result.savedPerRun).toLocaleString('en-US')} events (${Math.round((100 * result.savedPerRun) / (received + result.savedPerRun))}% of what a plain overlap reads)`,
      );
      say(
        `missed late events: ${result.fullTotal - result.incrementalTotal} (events after the incremental runs ${result.incrementalTotal}, after a full run at the same clock ${result.fullTotal})`,
      );
    } finally {
      await pool.end();
    }
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`lookback-savings: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
