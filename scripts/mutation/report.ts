// MUTATION.md from one `npm run mutate` run: what ran, kill rates per function and per operator, every survivor.
import { isCore } from './core-functions.ts';
import { operators, type Mutant } from './mutants.ts';

export interface MutantResult {
  mutant: Mutant;
  /** not-run: left when --max-minutes ran out (not counted; --resume runs them); error: a proof failed twice for a
   *  harness reason (proofs.ts harnessFailure), so nothing judged the mutant (not counted either) */
  status: 'killed' | 'survived' | 'invalid' | 'not-run' | 'error';
  killedBy?: string;
  detail?: string;
  ms: number;
  /** proofs run, in order */
  tried: string[];
  /** the commit (and whether migrations/ had uncommitted changes) the function was taken from */
  measuredOn?: string;
}

export interface RunInfo {
  mode: 'quick' | 'full' | 'only' | 'merged';
  /** which proofs a mutant met: mapped (those mapped to its function), exhaustive (then all others) */
  scope?: 'quick' | 'mapped' | 'exhaustive';
  command: string;
  seed: number;
  fcNumRuns: number;
  workers: number;
  totalMs: number;
  generated: number;
  generatedCore: number;
  equivalents: { key: string; reason: string }[];
  baselineMs: Map<string, number>;
  /** proofs that failed on the unmutated functions, left out */
  brokenProofs: string[];
  /** reviewed analyses of survivors that are not equivalent (scripts/mutation/survivor-notes.json) */
  survivorNotes: Map<string, string>;
  date: string;
}

const shortName = (fn: string): string => fn.replace(/^mixpanel_sync\./, '').replace(/\(.*$/, '');

function rate(killed: number, survived: number): string {
  const n = killed + survived;
  return n === 0 ? '–' : `${((100 * killed) / n).toFixed(1)} %`;
}

function table(
  groups: Map<string, MutantResult[]>,
  label: string,
  equivalentCount: (group: string) => number,
  withMeasuredOn = false,
): string[] {
  const lines = [
    `| ${label} | run | killed | survived | invalid (does not compile) | listed equivalent | kill rate |${withMeasuredOn ? ' measured on |' : ''}`,
    `|---|---:|---:|---:|---:|---:|---:|${withMeasuredOn ? '---|' : ''}`,
  ];
  for (const [group, list] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
    const killed = list.filter((r) => r.status === 'killed').length;
    const survived = list.filter((r) => r.status === 'survived').length;
    const invalid = list.filter((r) => r.status === 'invalid').length;
    lines.push(
      `| ${group} | ${list.length} | ${killed} | ${survived} | ${invalid} | ${equivalentCount(group)} | ${rate(killed, survived)} |` +
        (withMeasuredOn ? ` ${[...new Set(list.map((r) => r.measuredOn ?? '?'))].join(', ')} |` : ''),
    );
  }
  return lines;
}

/** One line per commit measured on: its functions and their core kill rate (a merged report covers several). */
function measuredSection(results: MutantResult[]): string[] {
  const groups = new Map<string, MutantResult[]>();
  for (const r of results) groups.set(r.measuredOn ?? '?', [...(groups.get(r.measuredOn ?? '?') ?? []), r]);
  if (groups.size === 0) return [];
  const lines = ['## Measured on', ''];
  for (const [on, list] of groups) {
    const valid = list.filter((r) => r.status !== 'invalid');
    const killed = valid.filter((r) => r.status === 'killed').length;
    const fns = [...new Set(list.map((r) => shortName(r.mutant.fn)))].sort();
    lines.push(
      `- **${on}**: ${killed} of ${valid.length} valid mutants killed (${rate(killed, valid.length - killed)}) in ${fns.length} functions: ${fns.join(', ')}.`,
    );
  }
  lines.push('');
  return lines;
}

export function writeReport(all: MutantResult[], info: RunInfo): string {
  const notRun = all.filter((r) => r.status === 'not-run');
  const errors = all.filter((r) => r.status === 'error');
  const results = all.filter((r) => r.status !== 'not-run' && r.status !== 'error');
  const valid = results.filter((r) => r.status !== 'invalid');
  const core = valid.filter((r) => isCore(shortName(r.mutant.fn)));
  const killedCore = core.filter((r) => r.status === 'killed').length;
  const byFn = new Map<string, MutantResult[]>();
  const byOp = new Map<string, MutantResult[]>();
  for (const r of results) {
    const fn = `${shortName(r.mutant.fn)}${isCore(shortName(r.mutant.fn)) ? ' (core)' : ''}`;
    byFn.set(fn, [...(byFn.get(fn) ?? []), r]);
    byOp.set(r.mutant.operator, [...(byOp.get(r.mutant.operator) ?? []), r]);
  }
  const equivalentOf = (match: (key: string) => boolean) => info.equivalents.filter((e) => match(e.key)).length;
  const killers = new Map<string, number>();
  for (const r of results) if (r.killedBy) killers.set(r.killedBy, (killers.get(r.killedBy) ?? 0) + 1);

  const out = [
    '# Mutation testing of the SQL functions',
    '',
    info.mode === 'full' || info.mode === 'merged'
      ? `**Full run** of the core functions (scripts/mutation/core-functions.ts): every generated mutant not listed equivalent, ` +
        `each against ${info.scope === 'exhaustive' ? 'every proof' : 'every proof mapped to its function'}.` +
        (info.mode === 'merged'
          ? ' Measured in more than one run (`--merge`): the column "measured on" names the commit each function was taken from.'
          : '')
      : info.mode === 'quick'
        ? `**Sample, not a full run**: \`--quick\` ran ${results.length} of the ${info.generatedCore} mutants of the core functions ` +
          `(seed ${info.seed}), each against only the proofs mapped to its function (scripts/mutation/core-functions.ts). ` +
          "Kill rates below are of this sample; a full run (`npm run mutate`) is what the issue's target is measured on."
        : `**Full run of the functions named** (\`--only\`): every generated mutant of them not listed equivalent (${results.length}), ` +
          `each against ${info.scope === 'exhaustive' ? 'every proof' : 'every proof mapped to its function'}.`,
    '',
    `Produced by \`${info.command}\` on ${info.date}: ${Math.round(info.totalMs / 1000)} s wall clock, ${info.workers} mutants at a time, ` +
      `property tests with FC_NUM_RUNS=${info.fcNumRuns} and FC_SEED=${info.seed}. Generated: ${info.generated} mutants (${info.generatedCore} of core functions); ` +
      `${info.equivalents.length} of them listed as equivalent in scripts/mutation/equivalent-mutants.json and not run.`,
    '',
    "How it works: each function's definition is read from a migrated template database (`pg_get_functiondef`); the operators " +
      `(${operators.join(', ')}) are applied one at a time to code only (comments, string literals and quoted identifiers are masked); ` +
      'each mutant goes into a clone database of its own with `create or replace`, and the proofs run against that clone ' +
      '(verify/*.sql directly; property-tests/*.test.ts and scripts/sql/*.test.ts through vitest with `DATABASE_URL` + `MIXPANEL_PG_SYNC_TEMPLATE` = the clone) ' +
      'until one fails. A mutant that does not compile is "invalid" and not counted.',
    '',
    ...(info.brokenProofs.length > 0
      ? [`**Left out** (they fail on the unmutated functions, so they judged no mutant): ${info.brokenProofs.join(', ')}.`, '']
      : []),
    ...(notRun.length > 0
      ? [
          `**Incomplete**: ${notRun.length} mutants were not run (--max-minutes ran out) and are not counted below: ` +
            [...new Set(notRun.map((r) => shortName(r.mutant.fn)))]
              .map((fn) => `${fn} (${notRun.filter((r) => shortName(r.mutant.fn) === fn).length})`)
              .join(', ') +
            '. `--resume` with the same command runs them.',
          '',
        ]
      : []),
    ...(errors.length > 0
      ? [
          `**Errors**: ${errors.length} mutants met a proof that failed twice for a reason of the harness (a file vitest could not load, ` +
            'a removed working directory, a worker that exited, a refused connection) and are not counted below: ' +
            errors.map((r) => `\`${r.mutant.key}\` (${(r.detail ?? '').slice(0, 160)})`).join('; ') +
            '. Run them again (`--match`).',
          '',
        ]
      : []),
    `Core functions: ${killedCore} of ${core.length} valid mutants killed (${rate(killedCore, core.length - killedCore)}).`,
    '',
    ...measuredSection(results),
    '## Per function',
    '',
    ...table(byFn, 'function', (group) => equivalentOf((key) => key.startsWith(`mixpanel_sync.${group.replace(' (core)', '')}(`)), true),
    '',
    '## Per operator',
    '',
    ...table(byOp, 'operator', (group) => equivalentOf((key) => key.split('|')[1] === group)),
    '',
    '## Which proof killed',
    '',
    '| proof | mutants killed first | baseline run (ms) |',
    '|---|---:|---:|',
    ...[...info.baselineMs]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([proof, ms]) => `| ${proof} | ${killers.get(proof) ?? 0} | ${ms} |`),
    '',
    '## Survivors',
    '',
  ];
  const survivors = results.filter((r) => r.status === 'survived');
  if (survivors.length === 0) out.push('None.');
  for (const r of survivors) {
    out.push(
      `- \`${r.mutant.fn}\` [${r.mutant.operator}] line ${r.mutant.line}: \`${r.mutant.original}\` → \`${r.mutant.replacement}\`` +
        ` (tried: ${r.tried.join(', ')})`,
      `  - key: \`${r.mutant.key}\``,
      `  - analysis: ${info.survivorNotes.get(r.mutant.key) ?? 'not analysed yet (add it to scripts/mutation/survivor-notes.json, or the mutant to equivalent-mutants.json with its reason)'}`,
    );
  }
  out.push(
    '',
    '## Running it',
    '',
    '```',
    'npm run mutate -- --quick                       # CI: ~40 sampled mutants of the core functions (seed 15), against the proofs mapped to each',
    'npm run mutate -- --only fail_run,heartbeat_run --at HEAD   # every mutant of some functions (all overloads), every mapped proof',
    'npm run mutate -- --only identity_edges --match "anon_id|line 4[34]" --at e44aa41 --overlay verify/mutation_pins.sql   # some mutants, a new proof',
    'npm run mutate -- --list --only begin_run --at HEAD          # print the mutants (keys for equivalent-mutants.json), run nothing',
    'npm run mutate -- --only prune_history --at HEAD --overlay scripts/sql/new-pins.test.ts --proofs scripts/sql/new-pins.test.ts --saved /tmp/chk.json --out /tmp/chk.md   # a new pin alone against every mutant',
    'npm run mutate -- --rewrite                     # this file again from the last run (.tmp/mutation/last-run.json), current notes and equivalents',
    '# this file: the functions not rewritten this session, then the rewritten ones merged in, time-boxed:',
    'npm run mutate -- --only fail_run,finish_run,finish_or_fail_run,upsert_subscriber_properties,apply_identity,learn_identity_links,identity_edges,identity_cluster,identity_canonical,identity_mode,heartbeat_run,abandon_stale_runs,finish_profiles_run,drop_staged_rows,horizon_day,event_second,event_key,legacy_event_key,is_terminated_early_marker,reattribute_all --at e44aa41 --overlay verify/mutation_pins.sql,scripts/sql/mutation-pins.test.ts --resume --out /tmp/m15/nonrw.md --saved /tmp/m15/nonrw.json',
    'npm run mutate -- --only parse_new_staged_events,parse_staged_events,parse_staged_lines,begin_run,replace_guard,finish_events_run,upsert_subscribers_incremental,upsert_subscribers_incremental_loop,insert_new_events_loop,upsert_subscribers_incremental_add,upsert_subscribers_incremental_add_loop,merge_daily_row_loop,prune_history,reattribute_identities,reattribute_identities_loop,refresh_subscribers,refresh_subscriber_loop,run_selection --at HEAD --overlay verify/mutation_pins.sql,scripts/sql/mutation-pins.test.ts --merge --max-minutes 26 --out /tmp/m15/all.md --saved /tmp/m15/all.json',
    'npm run mutate -- --rewrite --saved /tmp/m15/all.json --out MUTATION.md',
    '```',
    '',
    '`--at REV` unpacks the repository as committed at REV into .tmp/mutation/tree-<commit>-<pid> (one per run, removed after it) and takes both the functions (its ' +
      'migrations, committed and current/) and the proofs (its verify/, property-tests/, scripts/sql/) from it, so uncommitted work in ' +
      'the working tree cannot disturb a measurement and each result names its commit ("measured on"); without it the working tree is ' +
      'used. `--overlay a,b` copies working-tree files over that tree (a new proof not committed yet). `--merge` keeps the results of ' +
      'the functions not run now from the saved run (`--saved FILE`, default .tmp/mutation/last-run.json), so one report covers runs ' +
      'of different commits. `--max-minutes N` starts no mutant after N minutes (round robin over the functions; the rest are reported ' +
      "as not run) and `--resume` takes the killed and invalid mutants of the same commit from the stopped run's progress file " +
      '(`<saved>.partial.jsonl`) and runs the rest. `--exhaustive` also runs every proof not mapped to the function on a survivor; ' +
      '`--all` mutates every function of mixpanel_sync, not only the core ones.',
    '',
    'It starts its own embedded PostgreSQL (or uses `DATABASE_URL`, whose user needs CREATEDB; it creates and drops `mps_…` databases). ' +
      'Exit 1 when a mutant of a core function survived that is neither listed equivalent nor explained in ' +
      "scripts/mutation/survivor-notes.json. `--workers N` (default 2) mutants run at a time; a mutant's verify scripts run one by " +
      'one in its own clone database, then its vitest files in ONE vitest process (`--bail=1`, one file at a time); property tests ' +
      'run with `--fc-num-runs` (default 5) and a fixed `--fc-seed` (default 15: the baseline and every mutant see the same examples); ' +
      '`--timeout-ms` (default 240000 per proof: a mutant that hangs is killed by the timeout). A proof that fails on the unmutated ' +
      'functions is left out and named above (`--strict` stops instead).',
    '',
    'Weekly job: `npm run mutate -- --at HEAD` (every core function: about 1,200 mutants before the listed equivalents, over an hour here) and commit the MUTATION.md it writes (on this 2-core machine, shared, about 6 mutants a ' +
      'minute: a killed mutant costs 1-5 s, a survivor every mapped proof, 10-90 s). A new survivor is either a missing test (write ' +
      'it: verify/mutation_pins.sql and scripts/sql/mutation-pins*.test.ts hold the pins so far, each naming the mutants it kills; map a new proof to its ' +
      'functions in scripts/mutation/core-functions.ts, since a full run meets only mapped proofs) or an equivalent mutant (add its ' +
      'key and the reason to scripts/mutation/equivalent-mutants.json, reviewed like code). Keys hold the mutated line, so an edit of ' +
      'that line retires its entries.',
  );
  out.push('', '## Listed equivalent (not run)', '');
  if (info.equivalents.length === 0) out.push('None.');
  for (const e of info.equivalents) out.push(`- \`${e.key}\`: ${e.reason}`);
  out.push(
    '',
    '## All mutants run',
    '',
    '| status | function | operator | line | change | killed by | ms |',
    '|---|---|---|---:|---|---|---:|',
  );
  for (const r of results) {
    const change = `\`${r.mutant.original.slice(0, 60)}\` → \`${r.mutant.replacement.slice(0, 60)}\``.replace(/\|/g, '\\|');
    out.push(
      `| ${r.status} | ${shortName(r.mutant.fn)} | ${r.mutant.operator} | ${r.mutant.line} | ${change} | ${r.killedBy ?? ''} | ${r.ms} |`,
    );
  }
  return `${out.join('\n')}\n`;
}
