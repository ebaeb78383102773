import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { repoRoot } from '../db/paths.ts';
import { nodeCommand } from '../fixtures/cli-runner.ts';
import { createTestDatabase } from '../db/vitest-database.ts';
import { isLoaderFailure } from '../loader/staged-sync.ts';
import type { EngageProfile } from '../mixpanel/engage-profiles.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import type { RetryNotice } from '../mixpanel/mixpanel-request.ts';
import { writeSampleProfiles, type ProfileFormat } from '../fixtures/sample-profiles.ts';
import { profilesSummaryLine, syncProfiles, type ProfilesSummary } from '../loader/profiles-sync.ts';
import { expandEngagePages } from '../loader/copy-line-encoder.ts';
import { createInputFramer } from '../loader/input-framing.ts';

const db = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'sync-profiles-test-'));
let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel();
});
afterAll(async () => {
  await fake?.close();
  rmSync(dir, { recursive: true, force: true });
  await db.drop();
});
beforeEach(async () => {
  await db.pool.query('truncate mixpanel_sync.subscriber_properties, mixpanel_sync.sync_runs, mixpanel_sync.sync_rejects cascade');
  fake.requests.length = 0;
});

const END = new Date('2026-11-29T12:00:00Z');
const sample = { users: 300, seed: 7, end: END };

/** The sample profiles written in a format; returns the file and how many profiles were edited. */
async function sampleFile(
  name: string,
  format: ProfileFormat,
  edit: { editRate?: number; editSeed?: number } = {},
): Promise<{ file: string; edited: number; profiles: number }> {
  const file = path.join(dir, name);
  const out = createWriteStream(file);
  const stats = await writeSampleProfiles({ ...sample, ...edit }, out, format, 40);
  out.end();
  await finished(out);
  return { file, edited: stats.edited, profiles: stats.profiles };
}

function writeFile(name: string, content: string | Buffer): string {
  const file = path.join(dir, name);
  writeFileSync(file, content);
  return file;
}

/** The profiles staged for an input: the one framing rule (input-framing.ts), Engage pages expanded, byte by byte. */
async function lines(content: string): Promise<string[]> {
  const framer = createInputFramer();
  const bytes = Buffer.from(content);
  const records = [];
  for (let i = 0; i < bytes.length; i += 7) records.push(...framer.push(bytes.subarray(i, i + 7)));
  records.push(...framer.end());
  return expandEngagePages(records).map((record) => record.bytes.toString('utf8'));
}

/** Every row with its physical version: a row rewritten, or even locked, gets a new (ctid, xmin, xmax). */
async function versions(): Promise<Map<string, string>> {
  const { rows } = await db.pool.query<{ distinct_id: string; version: string }>(
    'select distinct_id, jsonb_build_array(ctid, xmin, xmax)::text as version from mixpanel_sync.subscriber_properties',
  );
  return new Map(rows.map((row) => [row.distinct_id, row.version]));
}

async function contents(): Promise<unknown[]> {
  const { rows } = await db.pool.query(
    `select to_jsonb(p) - 'changed_by_run_id' - 'first_synced_at' - 'updated_at' as row
     from mixpanel_sync.subscriber_properties p order by p.distinct_id`,
  );
  return rows.map((row) => row.row);
}

const profiles: EngageProfile[] = Array.from({ length: 25 }, (_, i) => ({
  $distinct_id: i === 3 ? 4 : `user-${i}`,
  $properties: {
    $email: `u${i}@example.com`,
    $created: '2026-11-02T10:11:12',
    $name: i % 4 ? `User ${i}` : '',
    plan: i % 2 ? 'pro' : 'free',
  },
}));
const line = (profile: EngageProfile) => JSON.stringify(profile);

describe('profiles input framing: one profile per record, whatever the input holds', () => {
  const few = profiles.slice(0, 3);
  const page = (results: EngageProfile[], n: number) => ({ page: n, page_size: 2, session_id: 'S-1', status: 'ok', total: 3, results });
  const expected = few.map(line);

  it.each([
    ['JSONL of profiles', `${few.map(line).join('\n')}\n`],
    ['JSONL with CRLF and blank lines', `${few.map(line).join('\r\n\r\n')}\r\n`],
    ['a JSON array', JSON.stringify(few)],
    ['a pretty-printed JSON array', JSON.stringify(few, null, 2)],
    ['Engage pages, one per line', `${JSON.stringify(page(few.slice(0, 2), 0))}\n${JSON.stringify(page(few.slice(2), 1))}\n`],
    ['a JSON array of Engage pages', JSON.stringify([page(few.slice(0, 2), 0), page(few.slice(2), 1)])],
    ['one pretty-printed Engage page', JSON.stringify(page(few, 0), null, 2)],
  ])('%s', async (_, content) => {
    expect((await lines(content)).map((text) => JSON.stringify(JSON.parse(text)))).toEqual(expected);
  });

  it('passes on what is not a profile, one record per line, for finish_run to reject', async () => {
    // a record cut by a stray newline is rejoined (the newline fell inside a string: \n), as on every path
    expect(await lines(`${line(few[0]!)}\n{"$distinct_id": "cut", "$prop\n[1, 2]\n${line(few[1]!)}\n`)).toEqual([
      line(few[0]!),
      '{"$distinct_id": "cut", "$prop\\n[1, 2]',
      line(few[1]!),
    ]);
    expect(await lines(`[${line(few[0]!)}, 42, "text", {"$distinct_id": "x", "a": "]"}, {"broken": \n ]`)).toEqual([
      line(few[0]!),
      '42',
      '"text"',
      '{"$distinct_id": "x", "a": "]"}',
      '{"broken": \n ]', // unbalanced: up to the bracket that closes it
    ]);
  });

  it('keeps a profile whose properties have a "results" key as a profile', async () => {
    const tricky = { $distinct_id: 'r', $properties: { results: [1, 2] } };
    expect(await lines(`${JSON.stringify(tricky)}\n`)).toEqual([JSON.stringify(tricky)]);
  });
});

describe('syncProfiles from a file', () => {
  it('loads every format (gzip recognised) to the same table', async () => {
    const formats: ProfileFormat[] = ['pages', 'array', 'jsonl'];
    let first: unknown[] | undefined;
    for (const format of formats) {
      const { file, profiles: count } = await sampleFile(`all.${format}`, format);
      await db.pool.query('truncate mixpanel_sync.subscriber_properties');
      const summary = await syncProfiles({
        pool: db.pool,
        input: format === 'jsonl' ? writeFile('all.jsonl.gz', gzipSync(readFileSync(file))) : file,
      });
      expect(summary, format).toMatchObject({
        source: 'profiles',
        mode: 'full',
        status: 'succeeded',
        received: count,
        inserted: count,
        updated: 0,
        unchanged: 0,
        rejected: 0,
      });
      const now = await contents();
      expect(now).toHaveLength(count);
      if (first) expect(now, format).toEqual(first);
      first ??= now;
    }
  });

  it('a second sync of the same file updates nothing and writes no new row version; editing K profiles updates exactly K', async () => {
    const base = await sampleFile('base.pages', 'pages');
    const one = await syncProfiles({ pool: db.pool, input: base.file });
    expect(one).toMatchObject({ inserted: base.profiles, updated: 0, unchanged: 0 });
    const before = await versions();

    const two = await syncProfiles({ pool: db.pool, input: base.file });
    expect(two).toMatchObject({
      status: 'succeeded',
      received: base.profiles,
      inserted: 0,
      updated: 0,
      unchanged: base.profiles,
      rejected: 0,
    });
    expect(await versions(), '(ctid, xmin, xmax) of every row').toEqual(before);
    expect(profilesSummaryLine(two)).toBe(`0 inserted, 0 updated, ${base.profiles} unchanged (skipped), 0 rejected — 100% unchanged`);

    const edited = await sampleFile('edited.array', 'array', { editRate: 0.1, editSeed: 3 });
    expect(edited.edited).toBeGreaterThan(0);
    const three = await syncProfiles({ pool: db.pool, input: edited.file });
    expect(three).toMatchObject({ inserted: 0, updated: edited.edited, unchanged: base.profiles - edited.edited, rejected: 0 });
    const after = await versions();
    const rewritten = [...after].filter(([id, version]) => before.get(id) !== version).map(([id]) => id);
    const { rows } = await db.pool.query<{ distinct_id: string }>(
      'select distinct_id from mixpanel_sync.subscriber_properties where changed_by_run_id = $1 order by 1',
      [three.run_id],
    );
    expect(rewritten.sort()).toEqual(rows.map((row) => row.distinct_id));
    expect(rewritten).toHaveLength(edited.edited);
  });

  it('rejects what is not a profile, with its reason, and applies the rest; the last line of a profile wins', async () => {
    const file = writeFile(
      'mixed.jsonl',
      [
        line(profiles[0]!),
        'not json',
        '{"$distinct_id": "", "$properties": {}}',
        line({ ...profiles[0]!, $properties: { plan: 'team' } }),
        line(profiles[1]!),
      ].join('\n'),
    );
    const summary = await syncProfiles({ pool: db.pool, input: file });
    expect(summary).toMatchObject({ received: 5, inserted: 2, rejected: 2 });
    const { rows } = await db.pool.query('select reason from mixpanel_sync.sync_rejects where run_id = $1 order by line_no', [
      summary.run_id,
    ]);
    expect(rows.map((row) => row.reason)).toEqual([expect.stringMatching(/^not valid JSON/), 'missing $distinct_id']);
    const { rows: stored } = await db.pool.query(`select properties from mixpanel_sync.subscriber_properties where distinct_id = 'user-0'`);
    expect(stored[0].properties).toEqual({ plan: 'team' });
  });

  it('an empty input is a run that changes nothing', async () => {
    await syncProfiles({ pool: db.pool, input: writeFile('few.jsonl', profiles.slice(0, 3).map(line).join('\n')) });
    const before = await versions();
    for (const content of ['', '\n', '[]']) {
      const summary = await syncProfiles({ pool: db.pool, input: writeFile('empty.json', content) });
      expect(summary, JSON.stringify(content)).toMatchObject({
        status: 'succeeded',
        received: 0,
        inserted: 0,
        updated: 0,
        unchanged: 0,
        rejected: 0,
      });
    }
    expect(await versions()).toEqual(before);
  });

  it("reads naive dates in the run's project timezone; another zone is a change", async () => {
    const file = writeFile('dates.jsonl', profiles.slice(0, 4).map(line).join('\n'));
    const createdAt = async () => {
      const { rows } = await db.pool.query(`select created_at from mixpanel_sync.subscriber_properties where distinct_id = 'user-0'`);
      return (rows[0].created_at as Date).toISOString();
    };
    const local = await syncProfiles({ pool: db.pool, input: file, projectTimezone: 'America/New_York' });
    expect(local).toMatchObject({ inserted: 4 });
    expect(await createdAt()).toBe('2026-11-02T15:11:12.000Z'); // 10:11:12 EST
    const utc = await syncProfiles({ pool: db.pool, input: file });
    expect(utc).toMatchObject({ inserted: 0, updated: 4, unchanged: 0 });
    expect(await createdAt()).toBe('2026-11-02T10:11:12.000Z');
    const { rows } = await db.pool.query('select options from mixpanel_sync.sync_runs where id = any($1) order by id', [
      [local.run_id, utc.run_id],
    ]);
    expect(rows.map((row) => row.options.dates_read_in)).toEqual(['America/New_York', 'UTC']);
  });

  it('a file that cannot be read starts no run', async () => {
    await expect(syncProfiles({ pool: db.pool, input: path.join(dir, 'missing.json') })).rejects.toThrow(
      /^cannot read input file .*missing\.json \(ENOENT\): check the --file path$/,
    );
    const { rows } = await db.pool.query('select count(*)::int as n from mixpanel_sync.sync_runs');
    expect(rows[0].n).toBe(0);
  });
});

describe('syncProfiles from the Engage API (fake Mixpanel on 127.0.0.1)', () => {
  it('walks the pages with session_id, honours a 429 Retry-After, and a second identical sync writes nothing', async () => {
    fake.setProfiles(profiles);
    fake.queueEngage({}, { status: 429, retryAfter: '1' });
    const retries: RetryNotice[] = [];
    const settings = fake.settings();
    const one = await syncProfiles({
      pool: db.pool,
      mixpanel: settings,
      engage: { pageSize: 10 },
      onRetry: (notice) => retries.push(notice),
    });
    expect(one).toMatchObject({ status: 'succeeded', received: 25, inserted: 25, updated: 0, unchanged: 0, rejected: 0 });
    expect(retries.map((r) => [r.error.status, r.delayMs])).toEqual([[429, 1000]]);
    expect(fake.requests.map((r) => [r.status, r.form.page ?? '0', r.form.session_id ?? null])).toEqual([
      [200, '0', null],
      [429, '1', expect.any(String)],
      [200, '1', expect.any(String)],
      [200, '2', expect.any(String)],
    ]);
    expect(new Set(fake.requests.slice(1).map((r) => r.form.session_id)).size, 'one session_id for the pages after the first').toBe(1);
    const before = await versions();

    const changed = profiles.map((p, i) => (i % 5 === 0 ? { ...p, $properties: { ...p.$properties, plan: 'enterprise' } } : p));
    // "" -> absent and a new null property change nothing
    changed[1] = { ...changed[1]!, $properties: { ...changed[1]!.$properties, $name: profiles[1]!.$properties.$name, extra: null } };
    changed[4] = {
      ...changed[4]!,
      $properties: Object.fromEntries(Object.entries(changed[4]!.$properties).filter(([key]) => key !== '$name')),
    };
    fake.setProfiles(changed);
    const two = await syncProfiles({ pool: db.pool, mixpanel: settings, engage: { pageSize: 10 } });
    const k = profiles.filter((p, i) => i % 5 === 0 && p.$properties.plan !== 'enterprise').length;
    expect(two).toMatchObject({ received: 25, inserted: 0, updated: k, unchanged: 25 - k });
    const after = await versions();
    expect([...after].filter(([id, version]) => before.get(id) !== version)).toHaveLength(k);
  });

  it('a failure mid-way fails the run with a one-line reason and applies nothing', async () => {
    fake.setProfiles(profiles);
    await syncProfiles({ pool: db.pool, input: writeFile('some.jsonl', profiles.slice(0, 5).map(line).join('\n')) });
    const before = await contents();
    fake.queueEngage({}, { status: 500 }, { status: 500 });
    const error = await syncProfiles({ pool: db.pool, mixpanel: fake.settings({ maxTries: 2 }), engage: { pageSize: 10 } }).then(
      () => new Error('expected the run to fail'),
      (caught: unknown) => caught,
    );
    if (!isLoaderFailure<ProfilesSummary>(error)) throw error;
    const { summary } = error;
    expect(error.message).toMatch(/^profiles run \d+ failed: .*HTTP 500.*Gave up after 2 tries/);
    expect(error.message).not.toContain('\n');
    expect(summary).toMatchObject({ source: 'profiles', status: 'failed', inserted: null, updated: null });
    const { rows } = await db.pool.query('select status, error from mixpanel_sync.sync_runs where id = $1', [summary!.run_id]);
    expect(rows[0]).toEqual({ status: 'failed', error: error.message.replace(/^profiles run \d+ failed: /, '') });
    expect(await contents()).toEqual(before);
  });
});

describe('npm run sync:profiles', () => {
  // not spawnSync: the fake Mixpanel server answers from this process
  async function cli(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
    // what `npm run sync:profiles` execs (package.json), without npm's own start (~0.35 s of CPU) or npx's (~0.75 s)
    const child = spawn(process.execPath, [...nodeCommand('sync:profiles'), ...args], {
      cwd: repoRoot,
      env: { ...process.env, DATABASE_URL: db.url, MIXPANEL_SERVICE_ACCOUNT: '', MIXPANEL_SECRET: '', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [status] = (await once(child, 'close')) as [number | null];
    return { status, stdout, stderr };
  }

  it('prints the summary line, or exactly the --json keys', async () => {
    const file = writeFile('cli.json', JSON.stringify([...profiles.slice(0, 8), { $properties: {} }]));
    const human = await cli(['--file', file]);
    expect(human.status, human.stderr).toBe(0);
    expect(human.stdout).toBe('8 inserted, 0 updated, 0 unchanged (skipped), 1 rejected — 0% unchanged\n');

    writeFile(
      'cli.json',
      JSON.stringify([...profiles.slice(0, 6), { ...profiles[6]!, $properties: { plan: 'x' } }, ...profiles.slice(7, 8)]),
    );
    const json = await cli(['--file', file, '--json']);
    expect(json.status, json.stderr).toBe(0);
    const summary = JSON.parse(json.stdout) as ProfilesSummary;
    expect(Object.keys(summary)).toEqual([
      'run_id',
      'source',
      'mode',
      'status',
      'received',
      'inserted',
      'updated',
      'unchanged',
      'rejected',
      'duration_ms',
    ]);
    expect(summary).toMatchObject({
      source: 'profiles',
      mode: 'full',
      status: 'succeeded',
      received: 8,
      inserted: 0,
      updated: 1,
      unchanged: 7,
      rejected: 0,
    });
    expect(profilesSummaryLine(summary)).toBe('0 inserted, 1 updated, 7 unchanged (skipped), 0 rejected — 87.5% unchanged');
  });

  it('exits 1 with one line when the run fails (Engage refuses the credentials), 2 when nothing can start', async () => {
    const failed = await cli(['--json'], {
      MIXPANEL_API_URL: fake.url,
      MIXPANEL_SERVICE_ACCOUNT: 'nobody',
      MIXPANEL_SECRET: 'wrong',
      MIXPANEL_PROJECT_ID: '1234',
      MIXPANEL_BUDGET_FILE: path.join(dir, 'budget.json'),
    });
    expect(failed.status).toBe(1);
    expect(failed.stderr).toMatch(
      /^sync:profiles: profiles run \d+ failed: Mixpanel Engage API rejected the credentials \(HTTP 401[^\n]*\n$/,
    );
    expect(JSON.parse(failed.stdout)).toMatchObject({ source: 'profiles', status: 'failed' });

    const missing = await cli(['--file', path.join(dir, 'nope.json')]);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(
      /^sync:profiles: no run started: cannot read input file .*nope\.json \(ENOENT\): check the --file path\n$/,
    );
    const unconfigured = await cli([]);
    expect(unconfigured.status).toBe(2);
    expect(unconfigured.stderr).toMatch(/^sync:profiles: MIXPANEL_SERVICE_ACCOUNT is not set: [^\n]*\n$/);
  });
});
