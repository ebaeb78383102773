// malformed_line_finish_ratio: one malformed line among N must not make finish_run parse everything twice.
// The same generated file twice, clean and with its middle line replaced by a line that is not JSON; a full sync
// of each into a fresh database, alternating which goes first; finish_run's time is sync_runs.apply_ms (recorded
// by finish_run itself, from its start to its end).
// malformed_2pct_run_ratio: a file with 2 % of its lines not JSON, so that every chunk takes the careful path, must
// cost about what a clean one does, on a second full sync planned on statistics sampled while an earlier run's lines
// were staged (where joins of the rejected lines to their staged text once read the run's lines once per reject).
import type { Scale } from './bench-options.ts';
import type { BenchServer } from './bench-server.ts';
import type { SuiteResult } from './figures.ts';
import { syncEvents } from '../loader/events-sync.ts';
import { beginRun, failRun, stageLines } from '../sql/sync-api.ts';
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

/** Lines of an earlier run, staged while staged_events is sampled (as autovacuum samples it during a long run). */
const SAMPLED_LINES = 10_000;

/**
 * A full sync of `file` into a fresh database. With `before`: after a full sync of `before` (untimed), and after
 * staged_events was sampled (ANALYZE) while an earlier run's lines were staged: the statistics a second run is
 * planned on once autovacuum has sampled the staging table during a run, which estimate the new run at about one line.
 */
async function fullSync(server: BenchServer, file: string, before?: { file: string; lines: string[] }): Promise<Trial> {
  const db = await server.freshDatabase();
  try {
    if (before !== undefined) {
      const first = await syncEvents({ pool: db.pool, input: before.file, full: true, clock: SAMPLE_END });
      if (first.status !== 'succeeded') throw new Error(`malformed: the first full sync ended ${first.status}`);
      const sampled = await beginRun(db.pool, { source: 'events', clock: SAMPLE_END, forceFull: true });
      await stageLines(db.pool, 'events', sampled.id, before.lines.slice(0, SAMPLED_LINES));
      await db.pool.query('analyze mixpanel_sync.staged_events');
      await failRun(db.pool, sampled.id, 'bench: lines staged while staged_events was sampled');
    }
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
  // every 50th line not JSON: the trailing-comma line and a line cut short (as a truncated export would be), alternately
  const many = lines.map((line, i) => (i % 50 !== 25 ? line : i % 100 === 25 ? MALFORMED_LINE : line.slice(0, -1)));
  const manyBad = many.filter((line, i) => line !== lines[i]).length;
  const twoPercent = await writeLines(await benchFile(`malformed-2pct-${count}.jsonl`), many);
  const trials = { clean: [] as Trial[], malformed: [] as Trial[] };
  for (let repeat = 0; repeat < scale.repeats; repeat++) {
    const order = repeat % 2 === 0 ? (['clean', 'malformed'] as const) : (['malformed', 'clean'] as const);
    for (const which of order) {
      const trial = await fullSync(server, which === 'clean' ? clean : malformed);
      trials[which].push(trial);
      log(`malformed: ${which}: finish_run ${seconds(trial.applyMs)} (run ${seconds(trial.totalMs)}, ${trial.rejected} rejected)`);
    }
  }
  // The second full sync of a database: the clean file first (untimed), then the clean file or the 2 % file (timed).
  const steady = { clean: [] as Trial[], twoPercent: [] as Trial[] };
  for (let repeat = 0; repeat < scale.repeats; repeat++) {
    const order = repeat % 2 === 0 ? (['clean', 'twoPercent'] as const) : (['twoPercent', 'clean'] as const);
    for (const which of order) {
      const trial = await fullSync(server, which === 'clean' ? clean : twoPercent, { file: clean, lines });
      steady[which].push(trial);
      log(
        `malformed: second full sync, ${which === 'clean' ? 'clean' : '2 % malformed'}: run ${seconds(trial.totalMs)} (${trial.rejected} rejected)`,
      );
    }
  }
  const extraRejected = median(trials.malformed.map((t) => t.rejected)) - median(trials.clean.map((t) => t.rejected));
  if (extraRejected !== 1)
    throw new Error(`malformed: the malformed file's runs rejected ${extraRejected} more lines than the clean one's; expected 1`);
  const extraTwoPercent = median(steady.twoPercent.map((t) => t.rejected)) - median(steady.clean.map((t) => t.rejected));
  if (extraTwoPercent !== manyBad)
    throw new Error(`malformed: the 2 % file's runs rejected ${extraTwoPercent} more lines than the clean one's; expected ${manyBad}`);
  const steadyCleanMs = median(steady.clean.map((t) => t.totalMs));
  const steadyTwoPercentMs = median(steady.twoPercent.map((t) => t.totalMs));
  const cleanMs = median(trials.clean.map((t) => t.applyMs));
  const malformedMs = median(trials.malformed.map((t) => t.applyMs));
  const ms = (t: Trial[]) => `${t.map((x) => `${Math.round(x.applyMs)}`).join(', ')} ms`;
  const cleanProfile = medianProfile(trials.clean.map((t) => t.profile));
  const malformedProfile = medianProfile(trials.malformed.map((t) => t.profile));
  const why =
    cleanProfile && malformedProfile
      ? `finish_run takes ${seconds(malformedMs)} with the malformed line against ${seconds(cleanMs)} clean: its parse step ${seconds(malformedProfile.parseMs)} against ${seconds(cleanProfile.parseMs)}, the other steps ${seconds(malformedProfile.finishMs - malformedProfile.parseMs)} against ${seconds(cleanProfile.finishMs - cleanProfile.parseMs)}; all parsing, finish_run's and the chunks parsed alongside the COPY: ${seconds(malformedProfile.parseMs + malformedProfile.parseDuringCopyMs)} against ${seconds(cleanProfile.parseMs + cleanProfile.parseDuringCopyMs)} (the bad line sends its statement, or its chunk, through the careful path). Malformed: ${profileText(malformedProfile)}; clean: ${profileText(cleanProfile)}.`
      : undefined;
  const steadyClean = medianProfile(steady.clean.map((t) => t.profile));
  const steadyTwoPercent = medianProfile(steady.twoPercent.map((t) => t.profile));
  const whyTwoPercent =
    steadyClean && steadyTwoPercent
      ? `the second full sync takes ${seconds(steadyTwoPercentMs)} with 2 % malformed lines against ${seconds(steadyCleanMs)} clean: all parsing ${seconds(steadyTwoPercent.parseMs + steadyTwoPercent.parseDuringCopyMs)} against ${seconds(steadyClean.parseMs + steadyClean.parseDuringCopyMs)} (every chunk fails its fast path and is parsed again on the careful path, json_object_or_null per line). 2 %: ${profileText(steadyTwoPercent)}; clean: ${profileText(steadyClean)}.`
      : undefined;
  return {
    why: {
      ...(why ? { malformed_line_finish_ratio: why } : {}),
      ...(whyTwoPercent ? { malformed_2pct_run_ratio: whyTwoPercent } : {}),
    },
    figures: {
      malformed_line_finish_ratio: ratio(malformedMs, cleanMs),
      malformed_2pct_run_ratio: ratio(steadyTwoPercentMs, steadyCleanMs),
    },
    section: {
      title: 'Malformed lines: one among many, and 2 %',
      command: 'npm run bench -- --only malformed',
      method: [
        `A generated file of ${count.toLocaleString('en-US')} lines, and the same file with its middle line replaced by \`${MALFORMED_LINE}\` (not JSON: a trailing comma).`,
        "Each trial: a full sync (`syncEvents`, full, fixed clock) into a fresh database; finish_run's time is sync_runs.apply_ms, which finish_run records from its start to its end. The malformed run must reject exactly one line more than the clean one.",
        `Medians of ${scale.repeats} trials each, clean and malformed alternating which goes first.`,
        `Two per cent: the same clean file with every 50th line not JSON (${manyBad.toLocaleString('en-US')} lines: the line above and lines cut short by one character, alternately), so that every chunk the loader parses alongside the COPY fails its fast path. Each trial: a fresh database, a full sync of the clean file, then ${SAMPLED_LINES.toLocaleString('en-US')} of its lines staged by another run while staged_events is sampled (ANALYZE; the run is then failed), as autovacuum samples the staging table during a long run (all untimed), then the timed full sync of the clean or the 2 % file; the whole run (the summary's duration_ms) is compared. The 2 % runs must reject exactly ${manyBad.toLocaleString('en-US')} lines more than the clean ones. Medians of ${scale.repeats} trials each, alternating which goes first.`,
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
        [
          'second full sync, clean',
          seconds(median(steady.clean.map((t) => t.applyMs))),
          ms(steady.clean),
          seconds(steadyCleanMs),
          profileText(steadyClean),
        ],
        [
          'second full sync, 2 % malformed',
          seconds(median(steady.twoPercent.map((t) => t.applyMs))),
          ms(steady.twoPercent),
          seconds(steadyTwoPercentMs),
          profileText(steadyTwoPercent),
        ],
      ],
      reading: [],
    },
  };
}
