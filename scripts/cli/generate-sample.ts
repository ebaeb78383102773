// npm run generate-sample -- [flags]: deterministic sample Mixpanel data (export JSONL, Engage profiles).
// The generators live in scripts/fixtures/sample-*.ts, for in-process use (demo, benchmarks).
import { createWriteStream } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { finished } from 'node:stream/promises';
import type { Writable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { DEFAULT_EVENT_RATES, writeSampleEvents, type SampleEventOptions, type SampleEventStats } from '../fixtures/sample-events.ts';
import { writeSampleProfiles, type ProfileFormat, type SampleProfileStats } from '../fixtures/sample-profiles.ts';

export const USAGE = `usage: npm run generate-sample -- [flags]

Deterministic Mixpanel sample data: same flags, same bytes.

  --users N               simulated users (default 1000)
  --events N              export lines, duplicates included (default 10000; 0 = none)
  --days N                the events span the N days before --end (default 45)
  --end ISO               end of the window (default 2026-11-29T12:00:00Z)
  --duplicate-rate R      fraction of lines that re-send an earlier line exactly (default 0.02)
  --late-rate R           fraction processed 1 h to 5 days after they happened (default 0.01)
  --missing-insert-id-rate R   fraction without $insert_id (default 0.03)
  --ms-time-rate R        fraction with properties.time in milliseconds (default 0.005)
  --seed N                PRNG seed (default 1)
  --events-out FILE       export JSONL here (default - = stdout); FILE.gz is gzipped
  --profiles-out FILE     Engage profiles here (default: none); - = stdout
  --profiles-format F     pages (one Engage response per line, default), array, or jsonl
  --page-size N           profiles per Engage page (default 1000)
  --edit-rate R           write the profiles after a round of edits: fraction R changed (default 0)
  --edit-seed N           which round of edits (default 1)
  --quiet                 no summary on stderr
`;

export interface SampleCommand {
  events: SampleEventOptions;
  eventsOut: string;
  profilesOut: string | null;
  profilesFormat: ProfileFormat;
  pageSize: number;
  editRate: number;
  editSeed: number;
  quiet: boolean;
}

function number(flag: string, raw: string | undefined, fallback: number, check: (n: number) => boolean, what: string): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || !check(value)) throw new Error(`--${flag} must be ${what}, got "${raw}"`);
  return value;
}

const integer = (n: number) => Number.isInteger(n) && n >= 0;
const positive = (n: number) => Number.isInteger(n) && n > 0;
const rate = (n: number) => n >= 0 && n <= 1;

export function parseSampleArgs(argv: string[]): SampleCommand {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      users: { type: 'string' },
      events: { type: 'string' },
      days: { type: 'string' },
      end: { type: 'string' },
      'duplicate-rate': { type: 'string' },
      'late-rate': { type: 'string' },
      'missing-insert-id-rate': { type: 'string' },
      'ms-time-rate': { type: 'string' },
      seed: { type: 'string' },
      'events-out': { type: 'string' },
      'profiles-out': { type: 'string' },
      'profiles-format': { type: 'string' },
      'page-size': { type: 'string' },
      'edit-rate': { type: 'string' },
      'edit-seed': { type: 'string' },
      quiet: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) throw Object.assign(new Error(USAGE), { help: true });
  const end = new Date(values.end ?? '2026-11-29T12:00:00Z');
  if (Number.isNaN(end.getTime())) throw new Error(`--end must be an ISO date-time such as 2026-11-29T12:00:00Z, got "${values.end}"`);
  const format = (values['profiles-format'] ?? 'pages') as ProfileFormat;
  if (!['pages', 'array', 'jsonl'].includes(format)) throw new Error(`--profiles-format must be pages, array or jsonl, got "${format}"`);
  const eventsOut = values['events-out'] ?? '-';
  const profilesOut = values['profiles-out'] ?? null;
  const events = number('events', values.events, 10_000, integer, 'a non-negative integer');
  if (profilesOut === '-' && eventsOut === '-' && events > 0) {
    throw new Error('events and profiles cannot both go to stdout: give --events-out FILE (or --events 0)');
  }
  return {
    events: {
      users: number('users', values.users, 1000, positive, 'a positive integer'),
      events,
      days: number('days', values.days, 45, (n) => n > 0, 'a positive number'),
      end,
      seed: number('seed', values.seed, 1, Number.isInteger, 'an integer'),
      duplicateRate: number('duplicate-rate', values['duplicate-rate'], DEFAULT_EVENT_RATES.duplicateRate, rate, 'between 0 and 1'),
      lateRate: number('late-rate', values['late-rate'], DEFAULT_EVENT_RATES.lateRate, rate, 'between 0 and 1'),
      missingInsertIdRate: number(
        'missing-insert-id-rate',
        values['missing-insert-id-rate'],
        DEFAULT_EVENT_RATES.missingInsertIdRate,
        rate,
        'between 0 and 1',
      ),
      msTimeRate: number('ms-time-rate', values['ms-time-rate'], DEFAULT_EVENT_RATES.msTimeRate, rate, 'between 0 and 1'),
    },
    eventsOut,
    profilesOut,
    profilesFormat: format,
    pageSize: number('page-size', values['page-size'], 1000, positive, 'a positive integer'),
    editRate: number('edit-rate', values['edit-rate'], 0, rate, 'between 0 and 1'),
    editSeed: number('edit-seed', values['edit-seed'], 1, Number.isInteger, 'an integer'),
    quiet: values.quiet ?? false,
  };
}

/** A file (gzipped when it ends in .gz) or stdout; `done` resolves once everything is flushed. */
function output(target: string): { stream: Writable; done: () => Promise<void> } {
  if (target === '-') return { stream: process.stdout, done: async () => undefined };
  const file = createWriteStream(target);
  if (!target.endsWith('.gz')) {
    return {
      stream: file,
      done: async () => {
        file.end();
        await finished(file);
      },
    };
  }
  const gzip = createGzip();
  gzip.pipe(file);
  return {
    stream: gzip,
    done: async () => {
      gzip.end();
      await finished(file);
    },
  };
}

export interface SampleResult {
  events: SampleEventStats | null;
  profiles: SampleProfileStats | null;
  /** Time spent on the events alone, and on everything. */
  eventsMs: number;
  ms: number;
}

export async function generateSample(command: SampleCommand): Promise<SampleResult> {
  const started = performance.now();
  let events: SampleEventStats | null = null;
  let profiles: SampleProfileStats | null = null;
  if (command.events.events > 0) {
    const out = output(command.eventsOut);
    events = await writeSampleEvents(command.events, out.stream);
    await out.done();
  }
  const eventsMs = performance.now() - started;
  if (command.profilesOut !== null) {
    const out = output(command.profilesOut);
    profiles = await writeSampleProfiles(
      {
        users: command.events.users,
        seed: command.events.seed,
        end: command.events.end,
        editRate: command.editRate,
        editSeed: command.editSeed,
      },
      out.stream,
      command.profilesFormat,
      command.pageSize,
    );
    await out.done();
  }
  return { events, profiles, eventsMs, ms: performance.now() - started };
}

function summary(command: SampleCommand, result: SampleResult): string {
  const parts: string[] = [];
  if (result.events) {
    const e = result.events;
    const perSecond = Math.round(e.lines / (Math.max(1, result.eventsMs) / 1000));
    parts.push(
      `${e.lines} event lines (${e.duplicates} duplicates, ${e.late} late, ${e.missingInsertId} without $insert_id, ${e.msTimes} ms times) -> ${command.eventsOut === '-' ? 'stdout' : command.eventsOut}, ${perSecond} lines/s`,
    );
  }
  if (result.profiles) {
    parts.push(
      `${result.profiles.profiles} profiles (${result.profiles.edited} edited) -> ${command.profilesOut === '-' ? 'stdout' : command.profilesOut}`,
    );
  }
  return `generate-sample: ${parts.join('; ') || 'nothing to write'} in ${(result.ms / 1000).toFixed(2)} s`;
}

async function main() {
  let command: SampleCommand;
  try {
    command = parseSampleArgs(process.argv.slice(2));
  } catch (error) {
    const e = error as Error & { help?: boolean };
    if (e.help) {
      process.stdout.write(e.message);
      return;
    }
    process.stderr.write(`generate-sample: ${e.message}\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0); // `| head` closed the pipe
    throw error;
  });
  const result = await generateSample(command);
  if (!command.quiet) process.stderr.write(`${summary(command, result)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((error: unknown) => {
    process.stderr.write(`generate-sample: ${(error as Error).message}\n`);
    process.exitCode = 1;
  });
}
