// npm run mutate [-- --quick] [-- --workers 2] [-- --only fn,…] [-- --at REV] [-- --merge] [-- --all] [-- --exhaustive]
//                 [-- --list] [-- --seed N] [-- --sample N] [-- --out FILE]
//                 [-- --fc-num-runs 5] [-- --timeout-ms 240000] [-- --migrations DIR] [-- --strict] [-- --rewrite]
// --rewrite: MUTATION.md again from the last run (.tmp/mutation/last-run.json) with the current survivor notes.
// A proof that fails on the unmutated functions is left out (and named in the report); --strict stops instead.
// Mutation testing of the SQL functions: each function's definition is read from a migrated template database
// (pg_get_functiondef), mutated one small change at a time (scripts/mutation/mutants.ts), and every mutant is put
// into a clone database of its own with `create or replace`; then the proofs run against that clone (verify/*.sql,
// property-tests/*.test.ts with a low FC_NUM_RUNS, scripts/sql/*.test.ts) until one fails (killed) or none does (survived).
// --quick: a seeded sample (~40) of the core functions' mutants, each against the proofs mapped to its function (CI).
// Mutants listed in scripts/mutation/equivalent-mutants.json are not run (they cannot change behaviour; reasons there).
// Writes MUTATION.md (or --out) and prints one line per mutant and a closing "mutate: …" line; exit 1 when a
// non-equivalent mutant of a core function survived.
import { execFileSync } from 'node:child_process';
import { appendFile, copyFile, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import {
  cloneDatabase,
  createTemplateDatabase,
  databaseName,
  databaseUrl,
  dropDatabase,
  dropDatabasesWithPrefix,
  resolveDatabaseServer,
  type TemplateDatabase,
} from '../db/index.ts';
import { repoRoot } from '../db/paths.ts';
import { isCore, proofMap } from './core-functions.ts';
import { generateMutants, type Mutant } from './mutants.ts';
import { listProofs, runProof, runProofs, withRetry, type Proof } from './proofs.ts';
import { writeReport, type MutantResult, type RunInfo } from './report.ts';

export interface Equivalent {
  key: string;
  reason: string;
}

const equivalentFile = path.join(repoRoot, 'scripts', 'mutation', 'equivalent-mutants.json');
const notesFile = path.join(repoRoot, 'scripts', 'mutation', 'survivor-notes.json');
const lastRunFile = path.join(repoRoot, '.tmp', 'mutation', 'last-run.json');

async function readNotes(): Promise<Map<string, string>> {
  return new Map((JSON.parse(await readFile(notesFile, 'utf8')) as { key: string; analysis: string }[]).map((n) => [n.key, n.analysis]));
}

export async function readEquivalents(): Promise<Equivalent[]> {
  return JSON.parse(await readFile(equivalentFile, 'utf8')) as Equivalent[];
}

interface Definition {
  fn: string;
  name: string;
  definition: string;
}

async function readDefinitions(url: string): Promise<Definition[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    // plain functions of mixpanel_sync written in SQL or PL/pgSQL (not aggregates, not C)
    const { rows } = await client.query<Definition>(`
      select p.oid::regprocedure::text as fn, p.proname as name, pg_catalog.pg_get_functiondef(p.oid) as definition
      from pg_catalog.pg_proc p
      join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      join pg_catalog.pg_language l on l.oid = p.prolang
      where n.nspname = 'mixpanel_sync' and p.prokind = 'f' and l.lanname in ('sql', 'plpgsql')
        and p.proname !~ '^verify_'
      order by p.proname, p.oid::regprocedure::text`);
    return rows;
  } finally {
    await client.end();
  }
}

/** mulberry32: a small seeded PRNG for the --quick sample. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The mutants interleaved over their functions, each function's in their order. */
function roundRobin(mutants: Mutant[]): Mutant[] {
  const byFn = new Map<string, Mutant[]>();
  for (const m of mutants) byFn.set(m.fn, [...(byFn.get(m.fn) ?? []), m]);
  const queues = [...byFn.values()];
  const out: Mutant[] = [];
  while (queues.some((q) => q.length > 0)) for (const q of queues) if (q.length > 0) out.push(q.shift()!);
  return out;
}

/** A sample of n mutants spread over the functions: round robin over functions, each function's mutants shuffled. */
export function sampleMutants(mutants: Mutant[], n: number, seed: number): Mutant[] {
  const random = prng(seed);
  const byFn = new Map<string, Mutant[]>();
  for (const m of mutants) byFn.set(m.fn, [...(byFn.get(m.fn) ?? []), m]);
  const queues = [...byFn.values()].map((list) => {
    const copy = [...list];
    for (let i = copy.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [copy[i], copy[j]] = [copy[j]!, copy[i]!];
    }
    return copy;
  });
  const picked: Mutant[] = [];
  while (picked.length < n && queues.some((q) => q.length > 0)) {
    for (const q of queues) if (q.length > 0 && picked.length < n) picked.push(q.shift()!);
  }
  return picked;
}

export type ProofScope = 'mapped' | 'exhaustive';

/**
 * The proofs a mutant meets, in order: verify scripts first (under a second each in the mutant's own database), then
 * vitest files (seconds each). mapped (the default, --quick too): every proof mapped to the function in
 * core-functions.ts, until one fails; exhaustive: those, then every other proof. (--quick once met only the first mapped
 * vitest file: a mutant a later mapped file kills survived the sample, and CI would have failed on a killed mutant.)
 * A function with no mapping meets every verify script.
 */
export function proofsFor(mutant: Mutant, all: Proof[], scope: ProofScope): Proof[] {
  const name = mutant.fn.replace(/^mixpanel_sync\./, '').replace(/\(.*$/, '');
  const mapped = (proofMap[name] ?? []).map((p) => all.find((proof) => proof.name === p)).filter((p): p is Proof => !!p);
  const unique = [...new Set(mapped)];
  const verify = unique.filter((p) => p.kind === 'verify');
  const vitest = unique.filter((p) => p.kind === 'vitest');
  const ordered = verify.length + vitest.length > 0 ? [...verify, ...vitest] : all.filter((p) => p.kind === 'verify');
  if (scope === 'mapped') return ordered;
  return [...ordered, ...all.filter((p) => !ordered.includes(p))];
}

const git = (...args: string[]) => execFileSync('git', args, { cwd: repoRoot, encoding: 'utf8' }).trim();

/**
 * The repository as committed at rev, unpacked into .tmp/mutation/tree-<commit> (node_modules linked): its migrations
 * give the functions and its verify scripts and tests are the proofs, so functions and proofs are of one commit, and
 * uncommitted work of others in the working tree (migrations/current/, tests) cannot disturb the measurement.
 */
async function treeAt(rev: string): Promise<{ root: string; commit: string }> {
  const commit = git('rev-parse', '--short', `${rev}^{commit}`);
  // one tree per run (its pid): two runs at the same commit once shared tree-<commit>, and the second one's unpacking
  // removed the first one's files under its running proofs (`uv_cwd` ENOENT, ERR_LOAD_URL: false kills)
  const root = path.join(repoRoot, '.tmp', 'mutation', `tree-${commit}-${process.pid}`);
  await rm(root, { recursive: true, force: true });
  await mkdir(root, { recursive: true });
  execFileSync('sh', ['-c', `git archive ${commit} | tar -x -C '${root}'`], { cwd: repoRoot });
  await symlink(path.join(repoRoot, 'node_modules'), path.join(root, 'node_modules'));
  return { root, commit };
}

/** What the functions were measured on: HEAD and the working tree's migrations/current/ files (the template applies them). */
function measuredOn(): string {
  try {
    const head = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'migrations') !== '';
    return `${head}${dirty ? ' + uncommitted migrations' : ''}`;
  } catch {
    return 'unknown commit';
  }
}

async function applyMutant(url: string, sql: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    await client.query(sql);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  } finally {
    await client.end();
  }
}

async function pool<T, R>(items: T[], workers: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(workers, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        results[index] = await work(items[index]!, index);
      }
    }),
  );
  return results;
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      // every function of mixpanel_sync, not only the core ones
      all: { type: 'boolean', default: false },
      // survivors also meet every proof not mapped to their function (slow: ~40 proofs of seconds each)
      exhaustive: { type: 'boolean', default: false },
      // keep the last run's results of the functions not run now (MUTATION.md then covers both, each measured on its own commit)
      merge: { type: 'boolean', default: false },
      // take the killed and invalid mutants of a stopped run (its .partial.jsonl) instead of running them again
      resume: { type: 'boolean', default: false },
      // stop starting mutants after this many minutes (the rest are reported as not run; --resume continues later)
      'max-minutes': { type: 'string' },
      list: { type: 'boolean', default: false },
      only: { type: 'string' },
      // only the mutants whose key matches this regular expression (e.g. one operator or one line)
      match: { type: 'string' },
      workers: { type: 'string', default: String(Math.max(1, Math.min(2, os.availableParallelism()))) },
      seed: { type: 'string', default: '15' },
      sample: { type: 'string', default: '40' },
      'fc-num-runs': { type: 'string', default: '5' },
      // FC_SEED of the property tests (a fixed seed: at 5 runs a random one can miss a coverage check and fail the baseline)
      'fc-seed': { type: 'string', default: '15' },
      'timeout-ms': { type: 'string', default: '240000' },
      out: { type: 'string', default: path.join(repoRoot, 'MUTATION.md') },
      // another migrations folder (e.g. a `git archive` of a commit) to take the functions from
      migrations: { type: 'string' },
      // functions and proofs as committed at this revision (git archive into .tmp/mutation/tree-<commit>): a measurement
      // that uncommitted work in the working tree cannot disturb; MUTATION.md names the commit
      at: { type: 'string' },
      // with --at: working-tree files copied over that tree (comma-separated), e.g. a new proof not committed with it
      overlay: { type: 'string' },
      // only these proofs (comma-separated paths, in this order) instead of the mapped ones: to see a new pin kill its mutants
      proofs: { type: 'string' },
      strict: { type: 'boolean', default: false },
      rewrite: { type: 'boolean', default: false },
      // where the run's results are kept for --rewrite and --merge
      saved: { type: 'string', default: lastRunFile },
    },
  });
  const started = Date.now();
  if (values.rewrite) {
    // MUTATION.md again from the last run's results, with the current survivor notes (no database needed)
    const saved = JSON.parse(await readFile(values.saved, 'utf8')) as {
      results: MutantResult[];
      generatedKeys?: string[];
      info: RunInfo & { baselineMs: [string, number][] };
    };
    // mutants listed equivalent since the run are reported as listed, not as run
    const equivalents = await readEquivalents();
    const listed = new Set(equivalents.map((e) => e.key));
    const generatedKeys = new Set(saved.generatedKeys ?? saved.results.map((r) => r.mutant.key));
    const info: RunInfo = {
      ...saved.info,
      equivalents: equivalents.filter((e) => generatedKeys.has(e.key)),
      baselineMs: new Map(saved.info.baselineMs),
      survivorNotes: await readNotes(),
    };
    await writeFile(
      values.out,
      writeReport(
        saved.results.filter((r) => !listed.has(r.mutant.key)),
        info,
      ),
    );
    console.log(`mutate: ${path.relative(repoRoot, values.out)} rewritten from ${path.relative(repoRoot, values.saved)}`);
    return 0;
  }
  const only = values.only
    ?.split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const server = await resolveDatabaseServer();
  let template: TemplateDatabase | undefined;
  let at: { root: string; commit: string } | undefined;
  try {
    at = values.at ? await treeAt(values.at) : undefined;
    const folder = at ? path.join(at.root, 'migrations') : values.migrations ? path.resolve(values.migrations) : undefined;
    const proofRoot = at?.root ?? repoRoot;
    const overlay = (values.overlay ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (overlay.length > 0 && !at) throw new Error('--overlay needs --at (it copies working-tree files over that tree)');
    for (const file of overlay) {
      await mkdir(path.dirname(path.join(proofRoot, file)), { recursive: true });
      await copyFile(path.join(repoRoot, file), path.join(proofRoot, file));
    }
    template = await createTemplateDatabase(server.url, folder ? { migrationsFolder: folder } : {});
    console.log(`mutate: template ${template.template} migrated in ${Date.now() - started} ms`);
    const reader = await cloneDatabase(template, `${template.prefix}_definitions`);
    const definitions = await readDefinitions(reader);
    await dropDatabase(template.serverUrl, databaseName(reader));

    const unknown = (only ?? []).filter((name) => !definitions.some((d) => d.name === name));
    if (unknown.length > 0) throw new Error(`--only: no function mixpanel_sync.${unknown.join(', ')} in the migrated template`);
    const wanted = definitions.filter((d) => (only ? only.includes(d.name) : values.all ? true : isCore(d.name)));
    const scope: ProofScope = values.exhaustive ? 'exhaustive' : 'mapped';
    const measured = at
      ? `${at.commit}${overlay.length ? ` + ${overlay.join(', ')}` : ''}`
      : values.migrations
        ? `--migrations ${values.migrations}`
        : measuredOn();
    const generated = wanted.flatMap((d) => generateMutants(d.fn, d.definition));
    const equivalents = await readEquivalents();
    const equivalentKeys = new Map(equivalents.map((e) => [e.key, e.reason]));
    const matching = values.match ? new RegExp(values.match) : undefined;
    const candidates = generated.filter((m) => !equivalentKeys.has(m.key) && (!matching || matching.test(m.key)));
    // with --max-minutes the mutants go round robin over the functions (each function's in order): a run cut short
    // has measured some of every function rather than all of the first few
    const chosen = values.quick
      ? sampleMutants(candidates, Number(values.sample), Number(values.seed))
      : values['max-minutes']
        ? roundRobin(candidates)
        : candidates;

    if (values.list) {
      for (const m of chosen) console.log(`${m.key}\n    line ${m.line}: ${m.original} -> ${m.replacement}`);
      console.log(
        `mutate: ${generated.length} mutants of ${wanted.length} functions (${generated.length - candidates.length} listed equivalent), ${chosen.length} chosen`,
      );
      return 0;
    }

    const allProofs = await listProofs(proofRoot);
    const onlyProofs = values.proofs
      ?.split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const missingProofs = (onlyProofs ?? []).filter((name) => !allProofs.some((p) => p.name === name));
    if (missingProofs.length > 0) throw new Error(`--proofs: no proof ${missingProofs.join(', ')} (overlay it?)`);
    const proofs = onlyProofs ? onlyProofs.map((name) => allProofs.find((p) => p.name === name)!) : allProofs;
    const context = (database: string) => ({
      serverUrl: template!.serverUrl,
      databaseUrl: databaseUrl(template!.serverUrl, database),
      database,
      fcNumRuns: Number(values['fc-num-runs']),
      fcSeed: Number(values['fc-seed']),
      timeoutMs: Number(values['timeout-ms']),
      root: proofRoot,
    });

    // Baseline: every proof a mutant may meet must pass on the unmutated functions, else it would "kill" everything.
    // Each in a clone of its own: two proofs in one database would meet (one events run at a time, shared settings).
    const proofsOf = (m: Mutant) => (onlyProofs ? proofs : proofsFor(m, proofs, scope));
    const needed = [...new Set(chosen.flatMap(proofsOf))];
    const baselineMs = new Map<string, number>();
    const broken: string[] = [];
    await pool(needed, Number(values.workers), async (proof, index) => {
      const baseDb = databaseName(await cloneDatabase(template!, `${template!.prefix}_baseline${index}`));
      const outcome = await withRetry(() => runProof(proof, context(baseDb)));
      await dropDatabase(template!.serverUrl, baseDb);
      baselineMs.set(proof.name, outcome.ms);
      console.log(`mutate: baseline ${proof.name} ${outcome.passed ? 'passed' : `FAILED (${outcome.detail})`} in ${outcome.ms} ms`);
      if (!outcome.passed) broken.push(proof.name);
    });
    // A proof that fails on the unmutated functions cannot judge a mutant: --strict stops, else it is left out and reported.
    if (broken.length > 0 && values.strict)
      throw new Error(`the unmutated functions fail ${broken.join(', ')}: fix that first (mutation results would mean nothing)`);
    if (broken.length > 0) console.log(`mutate: left out, failing without any mutant: ${broken.join(', ')}`);
    const usable = proofs.filter((p) => !broken.includes(p.name));

    await mkdir(path.dirname(values.saved), { recursive: true });
    // --resume: a stopped run's killed and invalid mutants (same key, same commit) are taken as they were; survivors run
    // again (proofs may have been added since)
    const partial = `${values.saved}.partial.jsonl`;
    const earlier = new Map<string, MutantResult>();
    if (values.resume) {
      const text = await readFile(partial, 'utf8').catch(() => '');
      for (const row of text.split('\n').filter(Boolean)) {
        const r = JSON.parse(row) as MutantResult;
        // same commit (overlays only add proofs: a killed mutant stays killed)
        if (r.status !== 'survived' && r.status !== 'error' && r.measuredOn?.split(' ')[0] === measured.split(' ')[0])
          earlier.set(r.mutant.key, { ...r, measuredOn: measured });
      }
      console.log(`mutate: --resume: ${earlier.size} killed or invalid mutants taken from ${path.relative(repoRoot, partial)}`);
    }
    await writeFile(partial, [...earlier.values()].map((r) => `${JSON.stringify(r)}\n`).join(''));
    const line = (r: MutantResult) =>
      `${r.status.padEnd(8)} ${r.mutant.fn} [${r.mutant.operator}] line ${r.mutant.line}: ${r.mutant.original} -> ${r.mutant.replacement}` +
      `${r.killedBy ? ` (by ${r.killedBy})` : ''} ${r.ms} ms`;
    let done = 0;
    const deadline = values['max-minutes'] ? started + Number(values['max-minutes']) * 60_000 : undefined;
    const fresh = await pool(chosen, Number(values.workers), async (mutant, index): Promise<MutantResult> => {
      const taken = earlier.get(mutant.key);
      if (taken) return { ...taken, mutant };
      if (deadline && Date.now() > deadline) return { mutant, status: 'not-run', ms: 0, tried: [], measuredOn: measured };
      const result = await runMutant(mutant, index);
      console.log(`[${++done}/${chosen.length}] ${line(result)}`);
      // progress on disk as it comes (one JSON line per mutant): a run stopped half-way still shows what it measured
      await appendFile(partial, `${JSON.stringify({ ...result, mutant: { ...result.mutant, sql: '' } })}\n`);
      return result;
    });
    async function runMutant(mutant: Mutant, index: number): Promise<MutantResult> {
      const t0 = Date.now();
      const database = `${template!.prefix}_m${index}`;
      await cloneDatabase(template!, database);
      try {
        const ctx = context(database);
        const invalid = await applyMutant(ctx.databaseUrl, mutant.sql);
        if (invalid) return { mutant, status: 'invalid', detail: invalid, ms: Date.now() - t0, tried: [], measuredOn: measured };
        const { killedBy, detail, tried, error } = await runProofs(
          proofsOf(mutant).filter((p) => usable.includes(p)),
          ctx,
        );
        // a proof that failed twice for a harness reason (proofs.ts harnessFailure) judged nothing: neither killed nor survived
        if (error) return { mutant, status: 'error', detail: error, ms: Date.now() - t0, tried, measuredOn: measured };
        if (killedBy) return { mutant, status: 'killed', killedBy, detail, ms: Date.now() - t0, tried, measuredOn: measured };
        return { mutant, status: 'survived', ms: Date.now() - t0, tried, measuredOn: measured };
      } finally {
        await dropDatabase(template!.serverUrl, database).catch(() => {});
      }
    }
    // --merge: the last run's results of the functions not run now are kept (each result says what it was measured on);
    // with --match (or --proofs, or --quick) also those of the functions run now whose mutants were not chosen this time,
    // as long as the mutant is still generated (a key holds its line: an edited line's old results go)
    let results = fresh;
    let generatedKeys = generated.map((m) => m.key);
    const runFns = new Set(wanted.map((d) => d.fn));
    if (values.merge) {
      const saved = JSON.parse(await readFile(values.saved, 'utf8')) as { results: MutantResult[]; generatedKeys?: string[] };
      const keep = (fn: string) => !runFns.has(fn);
      const chosenKeys = new Set(chosen.map((m) => m.key));
      const stillGenerated = new Set(generatedKeys);
      const keepResult = (r: MutantResult) =>
        !equivalentKeys.has(r.mutant.key) && (keep(r.mutant.fn) || (stillGenerated.has(r.mutant.key) && !chosenKeys.has(r.mutant.key)));
      results = [...saved.results.filter(keepResult), ...fresh];
      generatedKeys = [...(saved.generatedKeys ?? []).filter((k) => keep(k.split('|')[0]!)), ...generatedKeys];
    }
    const coreKey = (key: string) =>
      isCore(
        key
          .split('|')[0]!
          .replace(/^mixpanel_sync\./, '')
          .replace(/\(.*$/, ''),
      );
    const info: RunInfo = {
      mode: values.quick ? 'quick' : values.merge ? 'merged' : only ? 'only' : 'full',
      command: `npm run mutate${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
      seed: Number(values.seed),
      fcNumRuns: Number(values['fc-num-runs']),
      workers: Number(values.workers),
      totalMs: Date.now() - started,
      generated: generatedKeys.length,
      generatedCore: generatedKeys.filter(coreKey).length,
      equivalents: equivalents.filter((e) => generatedKeys.includes(e.key)),
      scope,
      baselineMs,
      brokenProofs: broken,
      survivorNotes: await readNotes(),
      date: new Date().toISOString(),
    };
    await writeFile(values.out, writeReport(results, info));
    await mkdir(path.dirname(values.saved), { recursive: true });
    await writeFile(
      values.saved,
      JSON.stringify({
        results: results.map((r) => ({ ...r, mutant: { ...r.mutant, sql: '' } })),
        generatedKeys,
        info: { ...info, baselineMs: [...info.baselineMs], survivorNotes: undefined },
      }),
    );
    const notRun = fresh.filter((r) => r.status === 'not-run').length;
    if (notRun > 0) console.log(`mutate: ${notRun} mutants not run (--max-minutes); --resume runs them`);
    const errors = fresh.filter((r) => r.status === 'error');
    for (const r of errors) console.log(`mutate: error (harness, twice; not counted) ${r.mutant.key}: ${r.detail}`);
    const killed = fresh.filter((r) => r.status === 'killed').length;
    const survived = fresh.filter((r) => r.status === 'survived');
    const invalid = fresh.filter((r) => r.status === 'invalid').length;
    console.log(
      `mutate: ${info.mode}: ${fresh.length} mutants run, ${killed} killed, ${survived.length} survived, ${invalid} invalid, ${errors.length} error; ` +
        `${info.equivalents.length} listed equivalent; ${Math.round(info.totalMs / 1000)} s; report ${path.relative(repoRoot, values.out)}`,
    );
    // exit 1 on a surviving core mutant that is neither listed equivalent (those are not run) nor explained in survivor-notes.json
    const unexplained = survived.filter((r) => coreKey(r.mutant.key) && !info.survivorNotes.has(r.mutant.key));
    for (const r of unexplained) console.log(`mutate: unreviewed survivor ${r.mutant.key}`);
    return unexplained.length > 0 ? 1 : 0;
  } finally {
    if (at) await rm(at.root, { recursive: true, force: true }).catch(() => {});
    if (template && server.source === 'DATABASE_URL') await dropDatabasesWithPrefix(server.url, template.prefix).catch(() => {});
    await server.stop();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(`mutate: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    },
  );
}
