// The proofs a mutant is run against: every verify/*.sql (through pg, like `npm run verify`), every
// property-tests/*.test.ts and scripts/sql/*.test.ts (vitest in a child process, its harness pointed at the mutant's database with
// DATABASE_URL + MIXPANEL_PG_SYNC_TEMPLATE). A proof kills a mutant when it fails on it.
import { spawn } from 'node:child_process';
import { readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../db/paths.ts';
import { listVerifyScripts, runVerifyScript } from '../cli/verify.ts';

export interface Proof {
  /** path relative to the repository, e.g. verify/parse_independent.sql or property-tests/add-algebra.test.ts */
  name: string;
  kind: 'verify' | 'vitest';
}

export interface ProofOutcome {
  passed: boolean;
  /** one line: why it failed */
  detail?: string;
  /** set when it failed for a reason of the harness, not of the functions (harnessFailure): such a failure judges nothing */
  harness?: string;
  ms: number;
}

/**
 * Failures of the harness rather than of the proof: the vitest process could not load a file (ERR_LOAD_URL, a module not
 * found), its working directory was removed under it (`uv_cwd` ENOENT), a worker or child exited unexpectedly, or the
 * database server refused the connection. Such a failure says nothing about the mutant (seen in the full run of
 * d31258a: 4 "kills" were these), so it must not count as killing it. Returns what was recognised, else undefined.
 * Judged from the failure's text: vitest's output, or the error a verify script's connection raised.
 */
export function harnessFailure(output: string): string | undefined {
  const patterns: [RegExp, string][] = [
    [/ERR_LOAD_URL/, 'vitest could not load a file (ERR_LOAD_URL)'],
    [/ERR_MODULE_NOT_FOUND|Cannot find module|Failed to load url/, 'a module could not be loaded'],
    [/uv_cwd/, 'the working directory was removed (uv_cwd ENOENT)'],
    [/Worker exited unexpectedly|emitUnexpectedExit|Worker terminated due to reaching memory limit/, 'a vitest worker exited unexpectedly'],
    [
      /ECONNREFUSED|connection refused|Connection terminated unexpectedly|the database system is (starting up|shutting down)/i,
      'the database connection failed',
    ],
  ];
  for (const [pattern, what] of patterns) if (pattern.test(output)) return what;
  return undefined;
}

/** The proofs of the repository at root (the working tree, or a commit's tree unpacked by mutate --at). */
export async function listProofs(root = repoRoot): Promise<Proof[]> {
  const verify = (await listVerifyScripts(path.join(root, 'verify'))).map(
    (file): Proof => ({ name: path.relative(root, file), kind: 'verify' }),
  );
  // the property tests, then the SQL behaviour tests (scripts/sql): every vitest file that runs the SQL functions
  const vitest: Proof[] = [];
  for (const dir of ['property-tests', 'scripts/sql']) {
    for (const f of (await readdir(path.join(root, dir))).filter((name) => name.endsWith('.test.ts')).sort()) {
      vitest.push({ name: `${dir}/${f}`, kind: 'vitest' });
    }
  }
  return [...verify, ...vitest];
}

export interface ProofContext {
  /** the server, as DATABASE_URL for vitest */
  serverUrl: string;
  /** the database holding the mutant (verify scripts run in it directly: they roll back) */
  databaseUrl: string;
  database: string;
  /** FC_NUM_RUNS for the property tests */
  fcNumRuns: number;
  /** FC_SEED for the property tests: the same examples for the baseline and every mutant (a pass is then not luck) */
  fcSeed?: number;
  /** a proof still running after this is stopped and counts as killing (a mutant that hangs) */
  timeoutMs: number;
  /** the repository the proofs are read from and run in (default: this working tree) */
  root?: string;
}

function lastLines(text: string, n: number): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-n)
    .join(' | ');
}

function runVitest(file: string | string[], context: ProofContext, jsonReport?: string): Promise<ProofOutcome> {
  const started = Date.now();
  const files = Array.isArray(file) ? file : [file];
  // several files: one vitest process (one start-up, one global setup), one file at a time, stopping at the first failure
  const batch = files.length > 1 ? ['--bail=1', '--no-file-parallelism'] : [];
  const report = jsonReport ? ['--reporter=json', `--outputFile=${jsonReport}`] : [];
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        path.join(repoRoot, 'node_modules', 'vitest', 'vitest.mjs'),
        'run',
        ...files,
        '--maxWorkers=1',
        '--reporter=dot',
        ...report,
        ...batch,
      ],
      {
        cwd: context.root ?? repoRoot,
        env: {
          ...process.env,
          DATABASE_URL: context.serverUrl,
          MIXPANEL_PG_SYNC_TEMPLATE: context.database,
          FC_NUM_RUNS: String(context.fcNumRuns),
          ...(context.fcSeed === undefined ? {} : { FC_SEED: String(context.fcSeed) }),
          FORCE_COLOR: '0',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000);
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL'); // its own process group: vitest and its workers
      } catch {}
    }, context.timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      const ms = Date.now() - started;
      if (timedOut) resolve({ passed: false, detail: `timed out after ${context.timeoutMs} ms`, ms });
      else if (code === 0) resolve({ passed: true, ms });
      else {
        const failing = output
          .split('\n')
          .filter((l) => /AssertionError|Error:|FAIL|Property failed|expected/.test(l))
          .slice(0, 3)
          .join(' | ');
        resolve({ passed: false, detail: (failing || lastLines(output, 3)).slice(0, 400), harness: harnessFailure(output), ms });
      }
    });
  });
}

/** What the proofs said of a mutant: killedBy (the first proof that failed), or error (a proof failed twice for a harness reason). */
export interface ProofsVerdict {
  killedBy?: string;
  detail?: string;
  /** a harness failure (harnessFailure) that a retry did not clear: the mutant is neither killed nor survived */
  error?: string;
  tried: string[];
}

/**
 * Runs a proof (or a batch) and, when it fails for a harness reason, once more: a failure that is the harness's again is
 * returned as it is (the caller reports an error), a failure of the proof itself, or a pass, is the verdict.
 */
export async function withRetry(run: () => Promise<ProofOutcome>): Promise<ProofOutcome & { attempts: number }> {
  const first = await run();
  if (first.passed || !first.harness) return { ...first, attempts: 1 };
  const second = await run();
  return { ...second, ms: first.ms + second.ms, attempts: 2 };
}

/**
 * Runs proofs in order against the context's database until one fails: the verify scripts one by one, then all the
 * vitest files in one vitest process (--bail=1), which saves a start-up per file. killedBy: the first proof that failed.
 * A proof that fails for a harness reason (harnessFailure) is run once more; failing so again, it is an error, not a kill.
 */
export async function runProofs(proofs: Proof[], context: ProofContext): Promise<ProofsVerdict> {
  const tried: string[] = [];
  for (const proof of proofs.filter((p) => p.kind === 'verify')) {
    tried.push(proof.name);
    const outcome = await withRetry(() => runProof(proof, context));
    if (!outcome.passed && outcome.harness)
      return { error: `${proof.name}: ${outcome.harness} (twice): ${outcome.detail ?? ''}`.slice(0, 500), tried };
    if (!outcome.passed) return { killedBy: proof.name, detail: outcome.detail, tried };
  }
  const vitest = proofs.filter((p) => p.kind === 'vitest').map((p) => p.name);
  if (vitest.length === 0) return { tried };
  tried.push(...vitest);
  let failed: string | undefined;
  const outcome = await withRetry(async () => {
    const jsonReport = path.join(os.tmpdir(), `mutate-${context.database}-${Date.now()}.json`);
    const result = await runVitest(vitest, context, jsonReport);
    // which file failed: the JSON report's first failed file (a timeout or a crash leaves none: the first file is named)
    failed = undefined;
    if (!result.passed) {
      try {
        const report = JSON.parse(await readFile(jsonReport, 'utf8')) as { testResults?: { name: string; status: string }[] };
        const bad = report.testResults?.find((r) => r.status === 'failed');
        if (bad) failed = vitest.find((name) => bad.name.endsWith(name));
      } catch {}
    }
    await rm(jsonReport, { force: true });
    return result;
  });
  if (outcome.passed) return { tried };
  if (outcome.harness)
    return { error: `${failed ?? vitest.join(' + ')}: ${outcome.harness} (twice): ${outcome.detail ?? ''}`.slice(0, 500), tried };
  return { killedBy: failed ?? vitest.join(' + '), detail: outcome.detail, tried };
}

/** Runs one proof against the context's database. */
export async function runProof(proof: Proof, context: ProofContext): Promise<ProofOutcome> {
  if (proof.kind === 'vitest') return runVitest(proof.name, context);
  const started = Date.now();
  // statement_timeout on the script's own connection: a mutant that loops forever is stopped
  const url = new URL(context.databaseUrl);
  url.searchParams.set('options', `-c statement_timeout=${context.timeoutMs}`);
  try {
    const outcome = await runVerifyScript(url.toString(), path.join(context.root ?? repoRoot, proof.name));
    const detail = outcome.failure?.slice(0, 400);
    return {
      passed: !outcome.failure,
      detail,
      harness: outcome.failure ? harnessFailure(outcome.failure) : undefined,
      ms: Date.now() - started,
    };
  } catch (error) {
    // the script never ran (its connection failed): the harness's doing, not the functions'
    const detail = error instanceof Error ? error.message : String(error);
    return {
      passed: false,
      detail: detail.slice(0, 400),
      harness: harnessFailure(detail) ?? `the script could not run: ${detail.slice(0, 200)}`,
      ms: Date.now() - started,
    };
  }
}
