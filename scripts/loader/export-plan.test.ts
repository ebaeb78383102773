import { describe, expect, it } from 'vitest';
import { dayIn, exportPlan } from './export-plan.ts';

const at = (iso: string) => new Date(iso);
const incremental = {
  mode: 'incremental' as const,
  fetch_from: at('2026-11-10T09:59:00Z'),
  fetch_to: at('2026-11-10T15:00:00Z'),
  lookback_from: at('2026-11-05T09:59:00Z'),
  processed_after: at('2026-11-10T09:59:02Z'),
  project_timezone: null,
};

describe('exportPlan', () => {
  it('full: one request over the UTC days of the window', () => {
    const plan = exportPlan({
      ...incremental,
      mode: 'full',
      fetch_from: at('2026-09-27T00:00:00Z'),
      lookback_from: null,
      processed_after: null,
    });
    expect(plan).toEqual([{ fromDate: '2026-09-27', toDate: '2026-11-10', part: 'window' }]);
  });

  it('incremental: the lookback days before fetch_from narrowed by processing time, then the window days whole', () => {
    expect(exportPlan(incremental)).toEqual([
      {
        fromDate: '2026-11-05',
        toDate: '2026-11-09',
        part: 'lookback',
        where: `properties["mp_processing_time_ms"] > ${Date.parse('2026-11-10T09:59:02Z')}`,
      },
      { fromDate: '2026-11-10', toDate: '2026-11-10', part: 'window' },
    ]);
  });

  it('reads the lookback days whole while the processing watermark is unknown, and skips an empty lookback', () => {
    expect(exportPlan({ ...incremental, processed_after: null })[0]).toEqual({
      fromDate: '2026-11-05',
      toDate: '2026-11-09',
      part: 'lookback',
    });
    expect(exportPlan({ ...incremental, lookback_from: at('2026-11-10T01:00:00Z') })).toEqual([
      { fromDate: '2026-11-10', toDate: '2026-11-10', part: 'window' },
    ]);
  });

  it("uses the project's local days when it has a time zone", () => {
    expect(dayIn(at('2026-11-10T03:00:00Z'), 'America/Los_Angeles')).toBe('2026-11-09');
    expect(dayIn(at('2026-11-10T23:30:00Z'), 'Asia/Tokyo')).toBe('2026-11-11');
    const plan = exportPlan({ ...incremental, project_timezone: 'America/Los_Angeles', fetch_from: at('2026-11-10T03:00:00Z') });
    expect(plan.map((r) => [r.fromDate, r.toDate])).toEqual([
      ['2026-11-05', '2026-11-08'],
      ['2026-11-09', '2026-11-10'],
    ]);
  });

  it('a run with a selection (run_selection as SQL reads it): every request carries it; null: no event', () => {
    const plan = exportPlan(incremental, ['Sign Up', 'buy']);
    expect(plan.map((r) => [r.part, r.event])).toEqual([
      ['lookback', ['Sign Up', 'buy']],
      ['window', ['Sign Up', 'buy']],
    ]);
    expect(exportPlan(incremental, null).every((r) => !('event' in r))).toBe(true);
  });
});
