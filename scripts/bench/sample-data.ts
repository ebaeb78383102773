// Where the bench's generated files go (.tmp/bench), and the facts it checks results against: the true
// number of distinct events of generated lines (the generator is scripts/fixtures/sample-events.ts).
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { repoRoot } from '../db/paths.ts';

export const BENCH_DIR = path.join(repoRoot, '.tmp', 'bench');

/** The end of every generated window: a fixed moment, so runs are reproducible. */
export const SAMPLE_END = new Date('2026-11-29T12:00:00Z');

/** Same density as the original project: 95,000 events for 3,000 users over 45 days. */
export const EVENTS_PER_USER = 95_000 / 3_000;

export async function benchFile(name: string): Promise<string> {
  await mkdir(BENCH_DIR, { recursive: true });
  return path.join(BENCH_DIR, name);
}

/** Writes lines as JSONL, honouring back-pressure; returns the file. */
export async function writeLines(file: string, lines: Iterable<string>): Promise<string> {
  const out = createWriteStream(file);
  for (const line of lines) {
    if (!out.write(`${line}\n`)) await new Promise<void>((resolve) => out.once('drain', resolve));
  }
  out.end();
  await finished(out);
  return file;
}

export interface ParsedLine {
  name: string;
  distinctId: string;
  /** Unix seconds (a time in milliseconds is brought to seconds, as the core does) */
  second: number;
  /** Mixpanel's dedup identity: (name, distinct_id, second, $insert_id), or the exact line without $insert_id */
  key: string;
}

export function parseLine(line: string): ParsedLine {
  const { event, properties } = JSON.parse(line) as { event: string; properties: Record<string, unknown> };
  const time = Number(properties.time);
  const second = Math.floor(time >= 1e11 ? time / 1000 : time);
  const distinctId = String(properties.distinct_id);
  const insertId = properties.$insert_id;
  const key = typeof insertId === 'string' && insertId !== '' ? `${event}\u001f${distinctId}\u001f${second}\u001f${insertId}` : `#${line}`;
  return { name: event, distinctId, second, key };
}

/** Distinct events (by Mixpanel's dedup identity) whose UTC day is fromDay or later. */
export function distinctEvents(lines: string[], fromDay: string): Set<string> {
  const from = Date.parse(`${fromDay}T00:00:00Z`) / 1000;
  const keys = new Set<string>();
  for (const line of lines) {
    const parsed = parseLine(line);
    if (parsed.second >= from) keys.add(parsed.key);
  }
  return keys;
}
