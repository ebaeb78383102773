// What every sync command shares: flags, Ctrl-C, the summary on stdout, one-line errors on
// stderr and the exit code. A command gives its own flags and a function that runs one sync.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { describeError } from './describe-error.ts';
import { resolveDatabaseUrl } from './database-connection.ts';
import { progressLine, type ProgressLine } from './progress-line.ts';
import { summaryJson, summaryLines, type RunSummary } from './run-summary.ts';
import { isLoaderFailure } from './staged-sync.ts';

export const EXIT = {
  /** The run succeeded. */
  ok: 0,
  /** The run failed; sync_runs holds it as failed with the reason, nothing was applied. */
  failed: 1,
  /** Nothing started: bad flags, missing configuration, unreadable input, database unreachable. */
  notStarted: 2,
  /** Stopped by Ctrl-C, SIGTERM or SIGHUP; the run is recorded as failed. */
  interrupted: 130,
} as const;

type Options = NonNullable<ParseArgsConfig['options']>;

const COMMON_OPTIONS = {
  file: { type: 'string', short: 'f' },
  json: { type: 'boolean', default: false },
  'database-url': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies Options;

export interface LoaderContext {
  values: Record<string, string | boolean | undefined>;
  databaseUrl: string;
  signal: AbortSignal;
  progress: ProgressLine;
}

export interface LoaderCommand<S = RunSummary> {
  /** e.g. 'sync:events' */
  name: string;
  /** The --help text. */
  usage: string;
  /** Flags of this command on top of --file, --json, --database-url, --help. */
  options: Options;
  /** Checks and configuration read before a run begins (throw to exit 2 with the message). */
  prepare?: (values: LoaderContext['values']) => void | Promise<void>;
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

function interruptOnSignals(controller: AbortController, name: string): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) process.exit(EXIT.interrupted); // a second Ctrl-C: leave now
    process.stderr.write(`\n${name}: ${signal} received, failing the run (Ctrl-C again to quit at once)\n`);
    controller.abort(new Error(`${signal} received`));
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) process.on(signal, onSignal);
  return () => {
    for (const signal of signals) process.off(signal, onSignal);
  };
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
  try {
    values = parse(command, argv);
    if (values.help) {
      process.stdout.write(`${command.usage.trim()}\n`);
      process.exit(EXIT.ok);
    }
    databaseUrl = resolveDatabaseUrl(values['database-url'] as string | undefined);
    await command.prepare?.(values);
  } catch (error) {
    return fail(EXIT.notStarted, describeError(error));
  }

  const controller = new AbortController();
  const release = interruptOnSignals(controller, command.name);
  const progress = progressLine(process.stderr, command.name);
  const json = values.json === true;
  try {
    const summary = await command.run({ values, databaseUrl, signal: controller.signal, progress });
    show(summary, json);
    process.exit(EXIT.ok);
  } catch (error) {
    progress.done();
    if (!isLoaderFailure<S>(error)) return fail(EXIT.notStarted, `no run started: ${describeError(error, controller.signal)}`);
    if (error.summary) show(error.summary, json);
    return fail(controller.signal.aborted ? EXIT.interrupted : EXIT.failed, error.message);
  } finally {
    release();
  }
}
