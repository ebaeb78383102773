// What every sync command shares: flags, Ctrl-C, the summary on stdout, one-line errors on
// stderr and the exit code. A command gives its own flags and a function that runs one sync.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { describeError } from './describe-error.ts';
import { resolveDatabaseUrl } from './database-connection.ts';
import { progressLine, type ProgressLine } from './progress-line.ts';
import { summaryJson, summaryLines, type RunSummary } from './run-summary.ts';
import { chosenProject, lookUpProject, PROJECT_OPTION, type ProjectRow } from './project-config.ts';
import { isLoaderFailure, SQLSTATE, sqlState } from './staged-sync.ts';

/** --project NAME wins over MIXPANEL_PROJECT; neither: null (the only project). */
export { chosenProject };

export const EXIT = {
  /** The run succeeded. */
  ok: 0,
  /** The run failed; sync_runs holds it as failed with the reason, nothing was applied. */
  failed: 1,
  /** Nothing started: bad flags, missing configuration, unreadable input, database unreachable, begin_run refused (MP002, MP004). */
  notStarted: 2,
  /** Stopped by Ctrl-C, SIGTERM or SIGHUP; the run is recorded as failed. */
  interrupted: 130,
} as const;

/** Signals arriving within this long of the first one are the same delivery (a terminal's or systemd's group signal, a wrapper's re-send), not a second Ctrl-C. */
export const SIGNAL_GROUP_WINDOW_MS = 1000;

type Options = NonNullable<ParseArgsConfig['options']>;

const COMMON_OPTIONS = {
  file: { type: 'string', short: 'f' },
  wait: { type: 'string' },
  json: { type: 'boolean', default: false },
  'database-url': { type: 'string' },
  ...PROJECT_OPTION,
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies Options;

export interface LoaderContext {
  /** Parsed flags; a string[] for a flag declared `multiple` (e.g. --event). */
  values: Record<string, string | boolean | string[] | undefined>;
  databaseUrl: string;
  /** The project of the run (--project, MIXPANEL_PROJECT, else the only one), as its row read before the run. */
  project: ProjectRow;
  /** --wait SECONDS: how long begin_run is retried while another run of the source is running (MP002). */
  waitSeconds: number;
  signal: AbortSignal;
  progress: ProgressLine;
}

export interface LoaderCommand<S = RunSummary> {
  /** e.g. 'sync:events' */
  name: string;
  /** The --help text. */
  usage: string;
  /** Flags of this command on top of --file, --json, --database-url, --project, --help. */
  options: Options;
  /** Checks of the flags, before the database is read (throw to exit 2 with the message). */
  prepare?: (values: LoaderContext['values']) => void | Promise<void>;
  /** Configuration that needs the project's row (region, timezone, Mixpanel project id), read before a run begins (throw to exit 2). */
  configure?: (values: LoaderContext['values'], project: ProjectRow) => void | Promise<void>;
  run: (context: LoaderContext) => Promise<S>;
  /** How a summary is printed (default summaryJson / summaryLines). */
  print?: { json(summary: S): string; lines(summary: S): string[] };
}

function parse<S>(command: LoaderCommand<S>, argv: string[]): LoaderContext['values'] {
  try {
    const { values } = parseArgs({ args: argv, options: { ...COMMON_OPTIONS, ...command.options }, strict: true, allowPositionals: false });
    return values as LoaderContext['values'];
  } catch (error) {
    throw new Error(`${(error as Error).message.split('\n')[0]} (see npm run ${command.name} -- --help)`);
  }
}

/**
 * The documented Ctrl-C: the first SIGINT, SIGTERM or SIGHUP cancels the run (fail_run, exit 130), unless finish_run
 * has already committed (then the success is reported, exit 0). Signals within SIGNAL_GROUP_WINDOW_MS of the first
 * are the same delivery and ignored; a later one quits at once, leaving the run to the next begin_run to abandon.
 */
export function interruptOnSignals(controller: AbortController, name: string): () => void {
  let firstAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      if (Date.now() - firstAt < SIGNAL_GROUP_WINDOW_MS) return;
      process.stderr.write(
        `${name}: ${signal} received again: quitting at once; the run stays running until the next begin_run marks it abandoned\n`,
      );
      process.exit(EXIT.interrupted);
    }
    firstAt = Date.now();
    process.stderr.write(`\n${name}: ${signal} received, cancelling the run (again after a second to quit at once)\n`);
    controller.abort(new Error(`${signal} received`));
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) process.on(signal, onSignal);
  return () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
}

function parseWait(value: unknown): number {
  if (value === undefined) return 0;
  const seconds = Number(value);
  if (!/^\d+(\.\d+)?$/.test(String(value)) || !Number.isFinite(seconds))
    throw new Error(`--wait wants a number of seconds, got ${String(value)}`);
  return seconds;
}

/** What a sync that threw means for its caller: exit code, one-line message, and the failed run's summary if any. */
export function failureOutcome<S = RunSummary>(
  error: unknown,
  signal: AbortSignal,
): { exitCode: number; message: string; summary: S | null } {
  if (!isLoaderFailure<S>(error)) {
    // begin_run refused (MP002 another run is running, MP004 invalid arguments) or the run never began: nothing started.
    const code = sqlState(error);
    const what = code === SQLSTATE.runInProgress || code === SQLSTATE.invalidArguments ? 'begin_run refused' : 'no run started';
    return {
      exitCode: signal.aborted ? EXIT.interrupted : EXIT.notStarted,
      message: `${what}: ${describeError(error, signal)}`,
      summary: null,
    };
  }
  return { exitCode: signal.aborted ? EXIT.interrupted : EXIT.failed, message: error.message, summary: error.summary };
}

/** Runs the command with process.argv and exits with its code. */
export async function runLoaderCli<S = RunSummary>(command: LoaderCommand<S>, argv = process.argv.slice(2)): Promise<never> {
  const print = command.print ?? ({ json: summaryJson, lines: summaryLines } as unknown as NonNullable<LoaderCommand<S>['print']>);
  const show = (summary: S, json: boolean) => process.stdout.write(`${json ? print.json(summary) : print.lines(summary).join('\n')}\n`);
  const fail = (code: number, message: string): never => {
    process.stderr.write(`${command.name}: ${message}\n`);
    process.exit(code);
  };
  let values: LoaderContext['values'];
  let databaseUrl: string;
  let waitSeconds: number;
  let project: ProjectRow;
  try {
    values = parse(command, argv);
    if (values.help) {
      process.stdout.write(`${command.usage.trim()}\n`);
      process.exit(EXIT.ok);
    }
    databaseUrl = resolveDatabaseUrl(values['database-url'] as string | undefined);
    waitSeconds = parseWait(values.wait);
    await command.prepare?.(values);
    const name = chosenProject(values.project);
    try {
      project = await lookUpProject(databaseUrl, name);
    } catch (error) {
      // MP004: an unknown name, or none while the database holds several projects (the names are in the hint)
      throw new Error(`no run started: ${describeError(error)}`);
    }
    await command.configure?.(values, project);
  } catch (error) {
    return fail(EXIT.notStarted, describeError(error));
  }

  const controller = new AbortController();
  const release = interruptOnSignals(controller, command.name);
  // Node ends a process whose event loop empties while the run is still awaited with exit 13 and no message (seen
  // once in the crash trials: the postmaster stopped at once during COPY). Say what is known instead, as a failure.
  const stalled = () =>
    fail(
      EXIT.failed,
      'the run stopped: it was waiting for the database, and nothing is left that could answer (the connection is gone); ' +
        'a run left running is marked abandoned by the next begin_run',
    );
  process.once('beforeExit', stalled);
  const progress = progressLine(process.stderr, command.name);
  const json = values.json === true;
  try {
    const summary = await command.run({ values, databaseUrl, project, waitSeconds, signal: controller.signal, progress });
    show(summary, json);
    if (controller.signal.aborted)
      process.stderr.write(`${command.name}: the run had already committed when the signal came: it succeeded\n`);
    process.exit(EXIT.ok);
  } catch (error) {
    progress.done();
    const outcome = failureOutcome<S>(error, controller.signal);
    if (outcome.summary) show(outcome.summary, json);
    return fail(outcome.exitCode, outcome.message);
  } finally {
    process.off('beforeExit', stalled);
    release();
  }
}
