import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateSample, parseSampleArgs } from './generate-sample.ts';
import { forEachSampleChunk, sampleEventLines, type SampleEventOptions } from '../fixtures/sample-events.ts';
import { countSampleProfiles, sampleProfiles } from '../fixtures/sample-profiles.ts';
import { sampleUser } from '../fixtures/sample-users.ts';
import { startFakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { exportEvents } from '../mixpanel/export-events.ts';

const END = new Date('2026-11-29T12:00:00Z');
const base: SampleEventOptions = { users: 500, events: 20_000, days: 45, end: END, seed: 7, duplicateRate: 0.02, lateRate: 0.01 };

function digest(options: SampleEventOptions): string {
  const hash = createHash('sha256');
  forEachSampleChunk(options, (chunk) => hash.update(chunk));
  return hash.digest('hex');
}

interface Line {
  event: string;
  properties: Record<string, unknown> & { time: number; distinct_id: string | number; mp_processing_time_ms: number; $insert_id?: string };
}

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'generate-sample-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('sample events', () => {
  const lines = sampleEventLines(base);
  const parsed = lines.map((l) => JSON.parse(l) as Line);

  it('is deterministic: same seed same bytes, another seed other bytes', () => {
    const small = { ...base, events: 5000 };
    expect(digest(small)).toBe(digest({ ...small }));
    expect(digest({ ...small, seed: 8 })).not.toBe(digest(small));
    expect(lines).toHaveLength(20_000);
  });

  it('looks like Mixpanel export lines', () => {
    const endMs = END.getTime();
    const startMs = endMs - 45 * 86_400_000;
    const problems: string[] = [];
    lines.forEach((line, i) => {
      const { event, properties: p } = parsed[i]!;
      const timeMs = p.time > 1e11 ? p.time : p.time * 1000;
      const fail = (what: string) => problems.push(`line ${i}: ${what}: ${line.slice(0, 200)}`);
      if (!line.startsWith('{"event":')) fail('does not start with {"event":');
      if (typeof event !== 'string') fail('event is not a string');
      if (!(timeMs >= startMs - 1000 && timeMs < endMs)) fail('time outside the window');
      if (!(p.mp_processing_time_ms >= Math.floor(timeMs / 1000) * 1000 && p.mp_processing_time_ms <= endMs))
        fail('processing time out of range');
      if (typeof p.distinct_id !== 'string' && typeof p.distinct_id !== 'number') fail('distinct_id');
      if (p.$insert_id !== undefined && !/^[a-zA-Z]{36}$/.test(p.$insert_id)) fail('$insert_id');
      if (!/^api(-js)?\.mixpanel\.com$/.test(String(p.$mp_api_endpoint))) fail('$mp_api_endpoint');
      if (typeof p.mp_lib !== 'string') fail('mp_lib');
    });
    expect(problems.slice(0, 5)).toEqual([]);
    const names = new Set(parsed.map((e) => e.event));
    for (const name of ['$mp_web_page_view', 'Sign Up', 'Purchase', 'Search']) expect(names).toContain(name);
    const ids = parsed.map((e) => e.properties.distinct_id);
    expect(ids.some((id) => typeof id === 'number')).toBe(true);
    expect(ids.some((id) => typeof id === 'string' && /[^\p{ASCII}]/u.test(id))).toBe(true);
    expect(ids.some((id) => typeof id === 'string' && id.startsWith('$device:'))).toBe(true);
    expect(parsed.some((e) => e.properties.time > 1e11)).toBe(true);
    expect(parsed.some((e) => e.properties.$insert_id === undefined)).toBe(true);
    expect(parsed.some((e) => typeof e.properties.$current_url === 'string')).toBe(true);
    // In time order (duplicates aside), as the export returns them.
    const firstSeen = new Set<string>();
    const unique = parsed.filter((_, i) => !firstSeen.has(lines[i]!) && !!firstSeen.add(lines[i]!));
    let inversions = 0;
    for (let i = 1; i < unique.length; i++)
      if (unique[i]!.properties.time < unique[i - 1]!.properties.time && unique[i]!.properties.time < 1e11) inversions++;
    expect(inversions).toBeLessThan(unique.length * 0.02);
  });

  it('duplicates are exact re-sends, at about the asked rate; late events at about theirs', () => {
    const seen = new Set<string>();
    let duplicates = 0;
    for (const line of lines) {
      if (seen.has(line)) duplicates++;
      seen.add(line);
    }
    expect(duplicates / lines.length).toBeGreaterThan(0.015);
    expect(duplicates / lines.length).toBeLessThan(0.025);
    const late = parsed.filter(
      (e) => e.properties.mp_processing_time_ms - (e.properties.time > 1e11 ? e.properties.time : e.properties.time * 1000) > 3_600_000,
    );
    expect(late.length / lines.length).toBeGreaterThan(0.006);
    expect(late.length / lines.length).toBeLessThan(0.014);
    const withoutDuplicates = sampleEventLines({ ...base, events: 5000, duplicateRate: 0 });
    expect(new Set(withoutDuplicates).size).toBe(5000);
  });

  it('users are Zipf-ish: the busiest tenth of users has most events', () => {
    const counts = new Map<string, number>();
    for (const e of parsed) counts.set(String(e.properties.distinct_id), (counts.get(String(e.properties.distinct_id)) ?? 0) + 1);
    const sorted = [...counts.values()].sort((a, b) => b - a);
    const top = sorted.slice(0, Math.ceil(sorted.length / 10)).reduce((a, b) => a + b, 0);
    expect(top / lines.length).toBeGreaterThan(0.4);
  });
});

describe('sample profiles', () => {
  const options = { users: 400, seed: 7, end: END };
  const profiles = [...sampleProfiles(options)];

  it('are the identified users of the events, in the Engage shape with naive dates', () => {
    expect(profiles.length).toBe(countSampleProfiles(options));
    expect(profiles.length).toBeGreaterThan(280);
    expect(profiles.length).toBeLessThan(400);
    const eventIds = new Set(Array.from({ length: 400 }, (_, i) => sampleUser(7, i).distinctId));
    for (const profile of profiles) {
      expect(eventIds.has(profile.$distinct_id)).toBe(true);
      const p = profile.$properties;
      expect(p.$created).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/);
      expect(p.$last_seen).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/);
      expect((p.$last_seen as string) >= (p.$created as string)).toBe(true);
      for (const key of ['$email', '$name', '$first_name', '$last_name', '$timezone', 'plan']) expect(p).toHaveProperty(key);
    }
    expect(profiles.some((p) => typeof p.$distinct_id === 'number')).toBe(true);
    expect(profiles.some((p) => p.$properties.$email === '')).toBe(true);
  });

  it('an edit round changes about the asked fraction, deterministically, and nothing else', () => {
    const edited = [...sampleProfiles({ ...options, editRate: 0.2 })];
    expect(edited.map((p) => p.$distinct_id)).toEqual(profiles.map((p) => p.$distinct_id));
    const changed = edited.filter((p, i) => JSON.stringify(p) !== JSON.stringify(profiles[i]));
    expect(changed.length / profiles.length).toBeGreaterThan(0.12);
    expect(changed.length / profiles.length).toBeLessThan(0.28);
    expect(JSON.stringify([...sampleProfiles({ ...options, editRate: 0.2 })])).toBe(JSON.stringify(edited));
    const otherRound = [...sampleProfiles({ ...options, editRate: 0.2, editSeed: 2 })];
    expect(JSON.stringify(otherRound)).not.toBe(JSON.stringify(edited));
  });
});

describe('generate-sample CLI', () => {
  it('parses the flags and writes events (gzip) and Engage pages', async () => {
    const eventsFile = path.join(dir, 'events.jsonl.gz');
    const profilesFile = path.join(dir, 'profiles.jsonl');
    const command = parseSampleArgs([
      '--users',
      '300',
      '--events',
      '3000',
      '--days',
      '10',
      '--end',
      '2026-11-29T12:00:00Z',
      '--duplicate-rate',
      '0.05',
      '--late-rate',
      '0.02',
      '--seed',
      '3',
      '--events-out',
      eventsFile,
      '--profiles-out',
      profilesFile,
      '--page-size',
      '100',
    ]);
    const result = await generateSample(command);
    const events = gunzipSync(await readFile(eventsFile)).toString('utf8');
    expect(events).toBe(`${sampleEventLines(command.events).join('\n')}\n`);
    expect(result.events?.lines).toBe(3000);
    const pages = (await readFile(profilesFile, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { page: number; page_size: number; status: string; total: number; results: unknown[] });
    const total = countSampleProfiles({ users: 300, seed: 3 });
    expect(pages.map((p) => p.page)).toEqual(pages.map((_, i) => i));
    expect(pages.every((p) => p.status === 'ok' && p.page_size === 100 && p.total === total)).toBe(true);
    expect(pages.flatMap((p) => p.results)).toHaveLength(total);
    expect(pages.at(-1)!.results.length).toBeLessThan(100);
  });

  it('rejects bad flags with a message naming the flag', () => {
    expect(() => parseSampleArgs(['--late-rate', '2'])).toThrow('--late-rate must be between 0 and 1, got "2"');
    expect(() => parseSampleArgs(['--users', '0'])).toThrow(/--users must be a positive integer/);
    expect(() => parseSampleArgs(['--end', 'yesterday'])).toThrow(/--end must be an ISO date-time/);
    expect(() => parseSampleArgs(['--profiles-out', '-'])).toThrow(/cannot both go to stdout/);
    expect(() => parseSampleArgs(['--bogus'])).toThrow(/bogus/);
  });

  it('generated data goes through the fake Mixpanel and the export client unchanged', async () => {
    const lines = sampleEventLines({ ...base, events: 2000, days: 3 });
    const fake = await startFakeMixpanel({ events: lines });
    try {
      const stream = exportEvents({ fromDate: '2026-11-26', toDate: '2026-11-29', settings: fake.settings() });
      const parts: Buffer[] = [];
      for await (const chunk of stream) parts.push(chunk as Buffer);
      expect(Buffer.concat(parts).toString('utf8')).toBe(`${lines.join('\n')}\n`);
    } finally {
      await fake.close();
    }
  });
});
