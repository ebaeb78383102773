// malformed_line_finish_ratio: one malformed line among N must not make finish_run parse everything twice.
// The same generated file twice, clean and with its middle line replaced by a line that is not JSON; a full sync
// of each into a fresh database, alternating which goes first; finish_run's time is sync_runs.apply_ms (recorded
// by finish_run itself, from its start to its end).
import type { Scale } from './bench-options.ts';
import type { BenchServer } from './bench-server.ts';
import type { SuiteResult } from './figures.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { sampleEventLines } from '../fixtures/sample-events.ts';
import { medianProfile, profileText, startProfile, type StepProfile } from './run-profile.ts';
import { benchFile, SAMPLE_END, writeLines } from './sample-data.ts';
import { log, median, ratio, seconds } from './timing.ts';

/** Not JSON (a trailing comma), yet framed as one record: it reaches SQL and is rejected there. */
export const MALFORMED_LINE = '{"event":"Malformed","properties":{"time":1764000000,"distinct_id":"bench-malformed",}}';

interface Trial {
  applyMs: number;
  totalMs: number;
  rejected: number;
  profile: StepProfile | null;
}

async function fullSync(server: BenchServer, file: string): Promise<Trial> {
  const db = await server.freshDatabase();
  try {
    const probe = await startProfile(db.pool);
    const summary = await syncEvents({ pool: db.pool, input: file, full: true, clock: SAMPLE_END });
    if (summary.status !== 'succeeded') throw new Error(`malformed: the full sync ended ${summary.status}`);
    const { rows } = await db.pool.query<{ apply_ms: string | null }>('select apply_ms from mixpanel_sync.sync_runs where id = $1', [
      summary.run_id,
    ]);
    return {
      applyMs: Number(rows[0]!.apply_ms),
      totalMs: summary.duration_ms,
      rejected: summary.rejected ?? 0,
      profile: await probe.finish(summary.run_id),
    };
  } finally {
    await db.drop();
  }
}

export async function malformedLine(server: BenchServer, scale: Scale): Promise<SuiteResult> {
  const count = scale.malformedLines;
  const lines = sampleEventLines({ users: Math.max(100, Math.round(count / 30)), events: count, days: 30, end: SAMPLE_END, seed: 23 });
  const clean = await writeLines(await benchFile(`malformed-clean-${count}.jsonl`), lines);
  const broken = [...lines];
  broken[count >> 1] = MALFORMED_LINE;
  const malformed = await writeLines(await benchFile(`malformed-one-${count}.jsonl`), broken);
  const trials = { clean: [] as Trial[], malformed: [] as Trial[] };
  for (let repeat = 0; repeat < scale.repeats; repeat++) {
    const order = repeat % 2 === 0 ? (['clean', 'malformed'] as const) : (['malformed', 'clean'] as const);
    for (const which of order) {
      const trial = await fullSync(server, which === 'clean' ? clean : malformed);
      trials[which].push(trial);
      log(`malformed: ${which}: finish_run ${seconds(trial.applyMs)} (run ${seconds(trial.totalMs)}, ${trial.rejected} rejected)`);
    }
  }
  const extraRejected = median(trials.malformed.map((t) => t.rejected)) - median(trials.clean.map((t) => t.rejected));
  if (extraRejected !== 1)
    throw new Error(`malformed: the malformed file's runs rejected ${extraRejected} more lines than the clean one's; expected 1`);
  const cleanMs = median(trials.clean.map((t) => t.applyMs));
  const malformedMs = median(trials.malformed.map((t) => t.applyMs));
  const ms = (t: Trial[]) => `${t.map((x) => `${Math.round(x.applyMs)}`).join(', ')} ms`;
  const cleanProfile = medianProfile(trials.clean.map((t) => t.profile));
  const malformedProfile = medianProfile(trials.malformed.map((t) => t.profile));
  const why =
    cleanProfile && malformedProfile
      ? `finish_run takes ${seconds(malformedMs)} with the malformed line against ${seconds(cleanMs)} clean: its parse step ${seconds(malformedProfile.parseMs)} against ${seconds(cleanProfile.parseMs)}, the other steps ${seconds(malformedProfile.finishMs - malformedProfile.parseMs)} against ${seconds(cleanProfile.finishMs - cleanProfile.parseMs)}; all parsing, finish_run's and the chunks parsed alongside the COPY: ${seconds(malformedProfile.parseMs + malformedProfile.parseDuringCopyMs)} against ${seconds(cleanProfile.parseMs + cleanProfile.parseDuringCopyMs)} (the bad line sends its statement, or its chunk, through the careful path). Malformed: ${profileText(malformedProfile)}; clean: ${profileText(cleanProfile)}.`
      : undefined;
  return {
    ...(why ? { why: { malformed_line_finish_ratio: why } } : {}),
    figures: { malformed_line_finish_ratio: ratio(malformedMs, cleanMs) },
    section: {
      title: 'One malformed line among many',
      command: 'npm run bench -- --only malformed',
      method: [
        `A generated file of ${count.toLocaleString('en-US')} lines, and the same file with its middle line replaced by \`${MALFORMED_LINE}\` (not JSON: a trailing comma).`,
        "Each trial: a full sync (`syncEvents`, full, fixed clock) into a fresh database; finish_run's time is sync_runs.apply_ms, which finish_run records from its start to its end. The malformed run must reject exactly one line more than the clean one.",
        `Medians of ${scale.repeats} trials each, clean and malformed alternating which goes first.`,
      ],
      table: [
        ['file', 'finish_run (median)', 'trials', 'whole run (median)', 'step profile (medians)'],
        ['clean', seconds(cleanMs), ms(trials.clean), seconds(median(trials.clean.map((t) => t.totalMs))), profileText(cleanProfile)],
        [
          'one malformed line',
          seconds(malformedMs),
          ms(trials.malformed),
          seconds(median(trials.malformed.map((t) => t.totalMs))),
          profileText(malformedProfile),
        ],
      ],
      reading: [],
    },
  };
}
