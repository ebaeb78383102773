// syncEvents without a file: the Export API of a fake Mixpanel on 127.0.0.1, end to end into Postgres.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import type { MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { syncEvents } from './events-sync.ts';
import type { LoaderFailure } from './staged-sync.ts';
import {
  appliedState,
  CLOCK,
  failure,
  resetEvents,
  eventLine,
  eventLines,
  stagedRows,
  totalEvents,
  watermark,
} from '../fixtures/test-support.ts';

const HOUR = 3600;
const db = await createTestDatabase();
let fake: FakeMixpanel;
// 60 events, one every 30 min over the 30 hours before CLOCK, each processed 2 s after it happened
const base = eventLines(60, { stepSeconds: HOUR / 2 });

beforeAll(async () => {
  fake = await startFakeMixpanel({ chunkSize: 1024 });
});
afterAll(async () => {
  await fake.close();
  await db.drop();
});
beforeEach(async () => {
  await resetEvents(db.pool);
  fake.setEvents(base);
  fake.requests.length = 0;
});

const sync = (settings: MixpanelSettings, clock = CLOCK, full = false) => syncEvents({ pool: db.pool, mixpanel: settings, clock, full });

/** A failed run left nothing behind: same applied state, no staged rows. */
async function expectNothingApplied(error: LoaderFailure, before: string) {
  expect(error.summary).toMatchObject({ status: 'failed' });
  expect(await stagedRows(db.pool, error.summary!.run_id)).toBe(0);
  expect(await appliedState(db.pool)).toBe(before);
}

describe('syncEvents from the Mixpanel Export API', () => {
  it('full run: one request over the full window, every event applied', async () => {
    const summary = await sync(fake.settings());
    expect(summary).toMatchObject({ mode: 'full', status: 'succeeded', received: 60, applied: 60, rejected: 0 });
    expect(fake.requests).toHaveLength(1);
    expect(fake.requests[0]!.query).toMatchObject({ from_date: '2026-09-27', to_date: '2026-11-10' });
    expect(fake.requests[0]!.query.where).toBeUndefined();
  });

  it('incremental run: lookback days narrowed by processing time, window days whole; late events applied, re-reads are duplicates', async () => {
    await sync(fake.settings());
    const late = [
      // happened 2 and 3 days before CLOCK, reached Mixpanel 30 min after the full run
      eventLine({ user: 'late-1', ago: 2 * 24 * HOUR, insertId: 'late-1', lateMs: (2 * 24 * HOUR + 1800) * 1000 }),
      eventLine({ user: 'late-2', ago: 3 * 24 * HOUR, insertId: 'late-2', lateMs: (3 * 24 * HOUR + 1800) * 1000 }),
    ];
    const fresh = eventLines(10, { prefix: 'fresh', newestAgo: -2 * HOUR, stepSeconds: 300 });
    fake.setEvents([...base, ...late, ...fresh]);
    fake.requests.length = 0;
    const clock = new Date(CLOCK.getTime() + 3 * HOUR * 1000);
    const summary = await sync(fake.settings(), clock);

    const [lookback, window] = fake.requests.map((r) => r.query);
    expect(fake.requests).toHaveLength(2);
    // watermark CLOCK-60 s, overlap 2 h: fetch_from 2026-11-10T09:59Z; lookback 5 days before it
    expect(lookback).toMatchObject({ from_date: '2026-11-05', to_date: '2026-11-09' });
    const processedAfter = CLOCK.getTime() - 60_000 + 2000 - 2 * HOUR * 1000;
    expect(lookback!.where).toBe(`properties["mp_processing_time_ms"] > ${processedAfter}`);
    expect(window).toMatchObject({ from_date: '2026-11-10', to_date: '2026-11-10' });
    expect(window!.where).toBeUndefined();

    const reread = base.filter((line) => JSON.parse(line).properties.time * 1000 >= Date.parse('2026-11-10T00:00:00Z')).length;
    expect(summary).toMatchObject({ mode: 'incremental', status: 'succeeded', received: 2 + 10 + reread, applied: 12, duplicates: reread });
    expect(await totalEvents(db.pool)).toBe(72);
  });

  it('waits out 429 + Retry-After and backs off on 500, then succeeds', async () => {
    fake.queueExport({ status: 429, retryAfter: '1' }, { status: 500 });
    const summary = await sync(fake.settings());
    expect(fake.requests.map((r) => r.status)).toEqual([429, 500, 200]);
    expect(summary).toMatchObject({ status: 'succeeded', applied: 60 });
  });

  it('fails cleanly when the server keeps failing', async () => {
    await sync(fake.settings());
    const before = await appliedState(db.pool);
    fake.queueExport({ status: 500 }, { status: 500 });
    const error = await failure(sync(fake.settings({ maxTries: 2 }), new Date(CLOCK.getTime() + 60_000), true));
    expect(error.message).toMatch(/failed: Mixpanel Export API server error \(HTTP 500.*Gave up after 2 tries/);
    await expectNothingApplied(error, before);
  });

  it('a connection dropped before any line is retried; one dropped after lines fails the run, applying nothing', async () => {
    fake.queueExport({ dropAfterBytes: 50, gzip: false });
    expect(await sync(fake.settings())).toMatchObject({ status: 'succeeded', applied: 60 });
    const before = await appliedState(db.pool);
    fake.queueExport({ dropAfterBytes: 5000, gzip: false, chunkDelayMs: 5 });
    const error = await failure(sync(fake.settings(), CLOCK, true));
    expect(error.message).toMatch(/failed: the Mixpanel export .* broke after \d+ lines were passed on/);
    await expectNothingApplied(error, before);
  });

  it('terminated early: retried when nothing was passed on, else the run fails', async () => {
    fake.queueExport({ terminatedEarlyAfterLines: 0 });
    expect(await sync(fake.settings())).toMatchObject({ status: 'succeeded', applied: 60 });
    const before = await appliedState(db.pool);
    fake.queueExport({ terminatedEarlyAfterLines: 40, gzip: false, chunkDelayMs: 5 });
    const error = await failure(sync(fake.settings(), CLOCK, true));
    expect(error.message).toMatch(/terminated early/);
    await expectNothingApplied(error, before);
  });

  it('split records are rejoined and applied whole', async () => {
    fake.queueExport({ splitLines: [3, 17, 59], crlf: true });
    const summary = await sync(fake.settings());
    expect(summary).toMatchObject({ status: 'succeeded', received: 60, applied: 60, rejected: 0 });
  });

  it('an incremental run whose second request fails applies nothing of the first', async () => {
    await sync(fake.settings());
    const before = await appliedState(db.pool);
    fake.queueExport({}, { status: 400, body: '{"error":"bad window"}' });
    const error = await failure(sync(fake.settings(), new Date(CLOCK.getTime() + HOUR * 1000)));
    expect(fake.requests.map((r) => r.status).slice(-2)).toEqual([200, 400]);
    expect(error.message).toMatch(/HTTP 400\): bad window/);
    await expectNothingApplied(error, before);
    expect((await watermark(db.pool))!.watermark.toISOString()).toBe(new Date(CLOCK.getTime() - 60_000).toISOString());
  });
});
