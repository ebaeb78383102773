import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { exportEvents, lateArrivalWhere, type ExportEventsOptions } from './export-events.ts';
import { createInputFramer } from '../loader/input-framing.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { isMixpanelError, type MixpanelError } from './mixpanel-errors.ts';
import type { MixpanelSettings } from './mixpanel-settings.ts';

// 60 events over 2026-11-01 .. 2026-11-03 (20 a day), processed 5 s after they happened.
const DAY0 = Date.parse('2026-11-01T00:00:00Z') / 1000;
const lines = Array.from({ length: 60 }, (_, i) => {
  const time = DAY0 + Math.floor(i / 20) * 86_400 + (i % 20) * 600;
  return JSON.stringify({
    event: i % 3 === 0 ? 'Sign Up' : '$mp_web_page_view',
    properties: {
      time,
      distinct_id: `user-${i % 7}`,
      $insert_id: `ins-${i}`,
      mp_processing_time_ms: time * 1000 + 5000,
      $current_url: `https://example.com/p/${i}`,
      note: i === 5 ? 'two\nlines' : 'x',
    },
  });
});
const expected = lines.map((l) => `${l}\n`).join('');

let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel({ events: lines, chunkSize: 512 });
});
afterAll(async () => {
  await fake.close();
});
beforeEach(() => {
  fake.requests.length = 0;
});

async function collect(options: Partial<ExportEventsOptions> & { settings: MixpanelSettings }) {
  const stream = exportEvents({ fromDate: '2026-11-01', toDate: '2026-11-03', ...options });
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return { text: Buffer.concat(chunks).toString('utf8'), chunks, stats: stream.stats };
}

async function failure(options: Partial<ExportEventsOptions> & { settings: MixpanelSettings }): Promise<MixpanelError> {
  try {
    await collect(options);
  } catch (error) {
    if (isMixpanelError(error)) return error;
    throw error;
  }
  throw new Error('expected the export to fail');
}

describe('exportEvents against the fake Mixpanel', () => {
  it('sends service-account auth, project_id and the days; streams whole lines', async () => {
    const { text, chunks, stats } = await collect({ settings: fake.settings() });
    expect(text).toBe(expected);
    for (const chunk of chunks) expect(chunk.at(-1)).toBe(0x0a);
    expect(fake.requests).toHaveLength(1);
    const [request] = fake.requests;
    expect(request).toMatchObject({
      method: 'GET',
      path: '/api/2.0/export',
      user: 'fake-service-account',
      secret: 'fake-secret',
      status: 200,
    });
    expect(request!.query).toEqual({ project_id: '1234', from_date: '2026-11-01', to_date: '2026-11-03' });
    expect(stats).toMatchObject({ attempts: 1, records: 60, rejoined: 0 });
  });

  it('asks for gzip and decodes it', async () => {
    const { text, stats } = await collect({ settings: fake.settings() });
    expect(fake.requests[0]!.headers['accept-encoding']).toBe('gzip');
    expect(text).toBe(expected);
    expect(stats.bytes).toBe(Buffer.byteLength(expected));
    fake.queueExport({ gzip: false });
    expect((await collect({ settings: fake.settings() })).text).toBe(expected);
  });

  it('passes where/event through: the late-arrival lookback', async () => {
    const after = (DAY0 + 86_400 + 5 * 600) * 1000 + 5000;
    const { text } = await collect({ settings: fake.settings(), where: lateArrivalWhere(after), event: ['Sign Up'] });
    expect(fake.requests[0]!.query.where).toBe(`properties["mp_processing_time_ms"] > ${after}`);
    expect(fake.requests[0]!.query.event).toBe('["Sign Up"]');
    const got = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { event: string; properties: { mp_processing_time_ms: number } });
    expect(got.length).toBeGreaterThan(0);
    expect(got.every((e) => e.event === 'Sign Up' && e.properties.mp_processing_time_ms > after)).toBe(true);
  });

  it('waits for Retry-After on 429, then succeeds', async () => {
    fake.queueExport({ status: 429, retryAfter: '1', body: '{"error":"rate limit exceeded"}' });
    const start = Date.now();
    const { text, stats } = await collect({ settings: fake.settings() });
    expect(Date.now() - start).toBeGreaterThanOrEqual(950);
    expect(text).toBe(expected);
    expect(stats.attempts).toBe(2);
    expect(fake.requests.map((r) => r.status)).toEqual([429, 200]);
  });

  it('backs off on 500 then succeeds, reporting each retry', async () => {
    fake.queueExport({ status: 500 }, { status: 503 });
    const notices: number[] = [];
    const { text } = await collect({ settings: fake.settings(), onRetry: (n) => notices.push(n.error.status ?? 0) });
    expect(text).toBe(expected);
    expect(notices).toEqual([500, 503]);
  });

  it('gives up after MIXPANEL_MAX_TRIES with a one-line error', async () => {
    fake.queueExport({ status: 502 }, { status: 502 }, { status: 502 });
    const error = await failure({ settings: fake.settings({ maxTries: 3 }) });
    expect(error.code).toBe('server');
    expect(error.message).toMatch(
      /^Mixpanel Export API server error \(HTTP 502: fake error 502\)\. Gave up after 3 tries \(MIXPANEL_MAX_TRIES=3\)\.$/,
    );
    expect(fake.requests).toHaveLength(3);
  });

  it('does not sit out a Retry-After longer than the run may wait', async () => {
    fake.queueExport({ status: 429, retryAfter: '3600' });
    const start = Date.now();
    const error = await failure({ settings: fake.settings() });
    expect(Date.now() - start).toBeLessThan(1000);
    expect(error.message).toMatch(/asks to wait 3600 s \(Retry-After\).*run again later/);
  });

  it('401: says to check MIXPANEL_SERVICE_ACCOUNT / MIXPANEL_SECRET, without retrying', async () => {
    const error = await failure({ settings: fake.settings({ secret: 'wrong' }) });
    expect(error.code).toBe('auth');
    expect(error.message).toMatch(/HTTP 401: Invalid username or secret\): check MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SECRET/);
    expect(fake.requests).toHaveLength(1);
  });

  it("400: passes on Mixpanel's message", async () => {
    const error = await failure({ settings: fake.settings(), where: 'user["$email"] == "x"' });
    expect(error.code).toBe('bad_request');
    expect(error.message).toBe(
      'Mixpanel Export API rejected the request (HTTP 400): Unable to parse where expression: user["$email"] == "x"',
    );
  });

  it('connection refused: retried, then a network error naming the host', async () => {
    const error = await failure({ settings: fake.settings({ apiUrl: 'http://127.0.0.1:1', maxTries: 2 }) });
    expect(error.code).toBe('network');
    expect(error.message).toMatch(/could not reach Mixpanel at http:\/\/127\.0\.0\.1:1 \(ECONNREFUSED.*Gave up after 2 tries/);
  });

  it('a connection dropped before any line was handed out is retried transparently', async () => {
    fake.queueExport({ dropAfterBytes: 100, gzip: false });
    const { text, stats } = await collect({ settings: fake.settings() });
    expect(text).toBe(expected);
    expect(stats.attempts).toBe(2);
  });

  it('a connection dropped after lines were handed out fails the export: interrupted', async () => {
    fake.queueExport({ dropAfterBytes: 5000, chunkDelayMs: 5 });
    const error = await failure({ settings: fake.settings() });
    expect(error.code).toBe('interrupted');
    expect(error.message).toMatch(
      /^the Mixpanel export 2026-11-01\.\.2026-11-03 broke after \d+ lines were passed on \(the connection .* broke while reading the answer .*\) It cannot resume mid-stream: fail this run and run it again\.$/,
    );
    expect(fake.requests).toHaveLength(1);
  });

  it('terminated early with nothing handed out yet is retried', async () => {
    fake.queueExport({ terminatedEarlyAfterLines: 0 });
    const { text, stats } = await collect({ settings: fake.settings() });
    expect(text).toBe(expected);
    expect(stats.attempts).toBe(2);
  });

  it('terminated early after lines were handed out fails the export', async () => {
    fake.queueExport({ terminatedEarlyAfterLines: 40, terminatedEarlyText: 'export terminated early', gzip: false, chunkDelayMs: 5 });
    const error = await failure({ settings: fake.settings() });
    expect(error.code).toBe('interrupted');
    expect(error.message).toMatch(/Mixpanel ended the export with "export terminated early"/);
  });

  it('a stalled body fails on the idle timeout', async () => {
    fake.queueExport({ stallAfterBytes: 3000, gzip: false });
    const error = await failure({ settings: fake.settings({ idleTimeoutMs: 200 }) });
    expect(error.code).toBe('interrupted');
    expect(error.message).toMatch(/ETIMEDOUT/);
  });

  it("hands split records, CR and blank lines on as sent; the loader's framing (input-framing.ts) rebuilds the records", async () => {
    fake.queueExport({ splitLines: [5, 6, 59], crlf: true, blankLines: true });
    const { text, stats } = await collect({ settings: fake.settings() });
    expect(text).not.toBe(expected);
    expect(stats).toMatchObject({ records: 60, rejoined: 3, blankLines: 60 });
    const framer = createInputFramer();
    const records = [...framer.push(Buffer.from(text)), ...framer.end()].map((r) => r.bytes.toString('utf8'));
    expect(records).toEqual(lines);
    expect(JSON.parse(records[5]!).properties.note).toBe('two\nlines');
    expect(framer.counts).toMatchObject({ rejoined_records: 3, blank_lines: 60 });
  });

  it('an empty export is no lines', async () => {
    const { text } = await collect({ settings: fake.settings(), fromDate: '2020-01-01', toDate: '2020-01-02' });
    expect(text).toBe('');
  });

  it('checks its arguments before sending anything', () => {
    expect(() => exportEvents({ fromDate: '2026-11-31', toDate: '2026-12-01', settings: fake.settings() })).toThrow(
      /fromDate must be a UTC day/,
    );
    expect(() => exportEvents({ fromDate: '2026-11-03', toDate: '2026-11-01', settings: fake.settings() })).toThrow(/is after toDate/);
    expect(fake.requests).toHaveLength(0);
  });

  it('spends the hourly budget, then fails saying when the next query is allowed, without sending', async () => {
    const settings = fake.settings({ queriesPerHour: 2 });
    await collect({ settings });
    fake.queueExport({ status: 500 });
    await collect({ settings }).catch(() => undefined); // the 500 took the 2nd query; the retry finds the budget spent
    const count = fake.requests.length;
    const error = await failure({ settings });
    expect(error.code).toBe('budget');
    expect(error.message).toMatch(
      /Mixpanel Export query budget spent: 2 queries in the last 60 min .* next query is allowed at .*Z \(in 60 min\)/,
    );
    expect(fake.requests).toHaveLength(count);
  });

  it('stops when the caller aborts', async () => {
    fake.queueExport({ stallAfterBytes: 2000, gzip: false });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('stop')), 100);
    const error = await failure({ settings: fake.settings(), signal: controller.signal });
    expect(error.code).toBe('aborted');
  });

  it('streams a big export with flat memory', async () => {
    const line = `${lines[0]}\n`;
    const count = 300_000; // ~80 MB of JSONL
    const big = await startFakeMixpanel({
      exportSource: function* () {
        const block = line.repeat(1000);
        for (let i = 0; i < count / 1000; i++) yield block;
      },
    });
    try {
      const stream = exportEvents({ fromDate: '2026-11-01', toDate: '2026-11-03', settings: big.settings() });
      // What the stream keeps alive, not what the collector has yet to free: a full collection before each reading.
      // (Without it the reading counted garbage: 55.7 MB once, in a clean-clone CI run whose vitest worker shared both
      // cores with a typecheck, where the same code read under 40 MB in every earlier run.)
      v8.setFlagsFromString('--expose-gc');
      const collect = vm.runInNewContext('gc') as () => void;
      const used = () => {
        collect();
        const m = process.memoryUsage();
        return m.heapUsed + m.arrayBuffers;
      };
      const before = used();
      let bytes = 0;
      let peak = 0;
      let chunks = 0;
      for await (const chunk of stream) {
        bytes += (chunk as Buffer).length;
        if (++chunks % 100 === 0) peak = Math.max(peak, used() - before);
      }
      expect(bytes).toBe(line.length * count);
      expect(stream.stats.records).toBe(count);
      expect(peak).toBeLessThan(40 * 1024 * 1024);
    } finally {
      await big.close();
    }
  });
});
