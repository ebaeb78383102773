// set_vs_loop_replace / set_vs_loop_add: the core's `_loop` path ÷ its set-based path, on the same staged
// batch from the same prior state (each trial: parse_staged_events, then the path, in a transaction rolled back).
import type { BenchServer, BenchDatabase } from './bench-server.ts';
import type { Scale } from './bench-options.ts';
import {
  applyAdd,
  applyReplace,
  finishRun,
  parseStagedEvents,
  setFinishRunWorkMem,
  stageLines,
  type PathImplementation,
  type Queryable,
} from '../sql/sync-api.ts';
import { beginFullRun, stageLinesBefore, vacuumEventTables, type BenchRun } from './core-steps.ts';
import type { SuiteResult } from './figures.ts';
import { EVENTS_PER_USER, SAMPLE_END } from './sample-data.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { log, median, ratio, seconds, timed } from './timing.ts';

/**
 * The prior state: the batch's events older than this (a sync 15 days ago). The batch then holds one
 * third new events and two thirds already applied: the mix of an hourly incremental run whose 2 h
 * overlap re-reads twice what is new.
 */
const PRIOR_AGE_MS = 15 * 86_400_000;

type PathKind = 'replace' | 'add';

/** A REPLACE (over the run's window) or ADD (above its horizon) path, set-based or its `_loop` twin: events applied. */
async function applyPath(db: Queryable, kind: PathKind, implementation: PathImplementation, run: BenchRun): Promise<number> {
  const result =
    kind === 'replace'
      ? await applyReplace(db, run.id, run.fromDay, run.toDay, implementation)
      : await applyAdd(db, run.id, run.horizonDay, implementation);
  return result.applied;
}

interface Trial {
  kind: PathKind;
  implementation: PathImplementation;
  parseMs: number;
  applyMs: number;
  applied: number;
}

async function trial(db: BenchDatabase, run: BenchRun, kind: PathKind, implementation: PathImplementation): Promise<Trial> {
  const client = await db.pool.connect();
  try {
    await client.query('begin');
    await setFinishRunWorkMem(client);
    const parse = await timed(() => parseStagedEvents(client, run.id));
    const apply = await timed(() => applyPath(client, kind, implementation, run));
    await client.query('rollback');
    return { kind, implementation, parseMs: parse.ms, applyMs: apply.ms, applied: apply.value };
  } finally {
    client.release();
  }
}

interface BatchFigures {
  users: number;
  events: number;
  medians: Record<`${PathKind}_${PathImplementation}`, number>;
  parseMs: number;
  applied: Record<PathKind, number>;
}

async function measureBatch(server: BenchServer, users: number, repeats: number): Promise<BatchFigures> {
  const db = await server.freshDatabase();
  try {
    const lines = sampleEventLines({ users, events: Math.round(users * EVENTS_PER_USER), days: 45, end: SAMPLE_END, seed: 7 });
    // the prior state first (one events run at a time), then the batch run the trials parse and apply, never finished
    const prior = await beginFullRun(db.pool, SAMPLE_END);
    await stageLinesBefore(db.pool, prior.id, lines, new Date(SAMPLE_END.getTime() - PRIOR_AGE_MS));
    await finishRun(db.pool, prior.id);
    const batch = await beginFullRun(db.pool, SAMPLE_END);
    await stageLines(db.pool, 'events', batch.id, lines);
    await vacuumEventTables(db.pool);

    const trials: Trial[] = [];
    for (let repeat = 0; repeat < repeats; repeat++) {
      // alternate which implementation goes first, so neither always meets the warmer cache
      const order: PathImplementation[] = repeat % 2 === 0 ? ['loop', 'set'] : ['set', 'loop'];
      for (const kind of ['replace', 'add'] as const) {
        for (const implementation of order) {
          const result = await trial(db, batch, kind, implementation);
          trials.push(result);
          log(`set-vs-loop: ${users} users, ${kind} ${implementation}: ${seconds(result.applyMs)} (parse ${seconds(result.parseMs)})`);
          await vacuumEventTables(db.pool);
        }
      }
    }
    const medianOf = (kind: PathKind, implementation: PathImplementation) =>
      median(trials.filter((t) => t.kind === kind && t.implementation === implementation).map((t) => t.applyMs));
    const appliedBy = (kind: PathKind) => {
      const counts = new Set(trials.filter((t) => t.kind === kind).map((t) => t.applied));
      if (counts.size !== 1)
        throw new Error(`set-vs-loop: the ${kind} paths applied different event counts (${[...counts].join(', ')}): set and loop disagree`);
      return [...counts][0]!;
    };
    return {
      users,
      events: lines.length,
      medians: {
        replace_set: medianOf('replace', 'set'),
        replace_loop: medianOf('replace', 'loop'),
        add_set: medianOf('add', 'set'),
        add_loop: medianOf('add', 'loop'),
      },
      parseMs: median(trials.map((t) => t.parseMs)),
      applied: { replace: appliedBy('replace'), add: appliedBy('add') },
    };
  } finally {
    await db.drop();
  }
}

/** How each implementation's time grows from the smallest batch to the largest, against the events' growth. */
function scalingReading(batches: BatchFigures[]): string[] {
  const small = batches[0];
  const large = batches.at(-1);
  if (!small || !large || small === large) return [];
  const factor = (key: keyof BatchFigures['medians']) => large.medians[key] / small.medians[key];
  const growth = (key: keyof BatchFigures['medians']) => `×${factor(key).toFixed(1)}`;
  const events = large.events / small.events;
  const superlinear =
    factor('replace_loop') > 1.5 * events
      ? ' The REPLACE loop grows much faster than its input (the set path does not), which is why its ratio depends so much on the batch size.'
      : '';
  return [
    `From ${small.users.toLocaleString('en-US')} to ${large.users.toLocaleString('en-US')} users the events grow ×${events.toFixed(1)}; REPLACE set ${growth('replace_set')}, REPLACE loop ${growth('replace_loop')}, ADD set ${growth('add_set')}, ADD loop ${growth('add_loop')}.${superlinear}`,
  ];
}

const fixed = (value: number | null, digits = 1): string => (value === null ? 'n/a' : value.toFixed(digits));

export async function setVsLoop(server: BenchServer, scale: Scale): Promise<SuiteResult> {
  const batches: BatchFigures[] = [];
  for (const users of scale.batchUsers) batches.push(await measureBatch(server, users, scale.repeats));
  const keyBatch = batches.find((b) => b.users === 1000);
  const replace = keyBatch ? ratio(keyBatch.medians.replace_loop, keyBatch.medians.replace_set) : null;
  const add = keyBatch ? ratio(keyBatch.medians.add_loop, keyBatch.medians.add_set) : null;
  const ms = (value: number) => Math.round(value).toLocaleString('en-US');
  return {
    figures: { set_vs_loop_replace: replace, set_vs_loop_add: add },
    section: {
      title: 'Set-based paths vs their `_loop` references',
      command: 'npm run bench -- --only set-vs-loop',
      method: [
        `A batch of N generated users (${EVENTS_PER_USER.toFixed(1)} events per user over 45 days, the original project's density: Zipf-skewed activity, 2 % re-sent lines, 3 % without $insert_id) is staged once.`,
        "Prior state: the same users' events older than 15 days, applied by a full run, then VACUUM ANALYZE: two thirds of the batch is already there, one third is new (the mix of an hourly incremental run whose 2 h overlap re-reads twice what is new).",
        "Each trial, in a transaction that is rolled back: parse_staged_events(run), then one path with finish_run's work_mem; VACUUM between trials.",
        "REPLACE = upsert_subscribers_incremental[_loop] over the run's 45-day window; ADD = upsert_subscribers_incremental_add[_loop] with the same staged batch, up to the ledger horizon.",
        `Medians of ${scale.repeats} trials per path; loop and set alternate which goes first.`,
      ],
      table: [
        ['users', 'events', 'parse', 'REPLACE set', 'REPLACE loop', 'loop ÷ set', 'ADD set', 'ADD loop', 'loop ÷ set'],
        ...batches.map((b) => [
          b.users.toLocaleString('en-US'),
          b.events.toLocaleString('en-US'),
          `${ms(b.parseMs)} ms`,
          `${ms(b.medians.replace_set)} ms`,
          `${ms(b.medians.replace_loop)} ms`,
          `${fixed(ratio(b.medians.replace_loop, b.medians.replace_set))}×`,
          `${ms(b.medians.add_set)} ms`,
          `${ms(b.medians.add_loop)} ms`,
          `${fixed(ratio(b.medians.add_loop, b.medians.add_set))}×`,
        ]),
      ],
      reading: scalingReading(batches),
    },
    missing: keyBatch
      ? {}
      : { set_vs_loop_replace: 'no 1,000-user batch in this scale', set_vs_loop_add: 'no 1,000-user batch in this scale' },
  };
}
