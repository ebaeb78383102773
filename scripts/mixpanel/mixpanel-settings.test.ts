import { describe, expect, it } from 'vitest';
import { authorizationHeader, engageUrl, exportUrl, readMixpanelSettings } from './mixpanel-settings.ts';
import { backoffDelay, parseRetryAfter } from './retry-policy.ts';
import { lateArrivalWhere, andWhere } from './export-events.ts';
import { engageForm } from './engage-profiles.ts';

const env = { MIXPANEL_SERVICE_ACCOUNT: 'sa.user', MIXPANEL_SECRET: 's3cret', MIXPANEL_PROJECT_ID: '123456' };

function configMessage(variables: Record<string, string | undefined>): string {
  try {
    readMixpanelSettings(variables);
  } catch (error) {
    return (error as Error).message;
  }
  return 'no error';
}

describe('readMixpanelSettings', () => {
  it('reads the environment with defaults', () => {
    const settings = readMixpanelSettings({ ...env, MIXPANEL_PROJECT_TIMEZONE: 'America/Los_Angeles' });
    expect(settings).toMatchObject({
      serviceAccount: 'sa.user',
      secret: 's3cret',
      projectId: 123456,
      region: 'us',
      apiUrl: null,
      projectTimezone: 'America/Los_Angeles',
      maxTries: 5,
      queriesPerHour: 60,
    });
    expect(settings.budgetFile).toMatch(/mixpanel-pg-sync-budget-123456\.json$/);
  });

  it('says which variable to set, on one line', () => {
    expect(configMessage({})).toMatch(/^MIXPANEL_SERVICE_ACCOUNT is not set: set it to/);
    expect(configMessage({ ...env, MIXPANEL_SECRET: ' ' })).toMatch(/^MIXPANEL_SECRET is not set/);
    expect(configMessage({ ...env, MIXPANEL_PROJECT_ID: 'abc' })).toMatch(/^MIXPANEL_PROJECT_ID is "abc", not a project id/);
    expect(configMessage({ ...env, MIXPANEL_REGION: 'asia' })).toMatch(/^MIXPANEL_REGION is "asia": set it to .*us, eu or in/);
    expect(configMessage({ ...env, MIXPANEL_API_URL: 'ftp://x' })).toMatch(/^MIXPANEL_API_URL is "ftp:\/\/x", not http\(s\)/);
    expect(configMessage({ ...env, MIXPANEL_PROJECT_TIMEZONE: 'Mars/Base' })).toMatch(/^MIXPANEL_PROJECT_TIMEZONE is "Mars\/Base"/);
    expect(configMessage({ ...env, MIXPANEL_MAX_TRIES: '0' })).toMatch(/^MIXPANEL_MAX_TRIES is "0", not a positive integer/);
    expect(configMessage({ ...env, MIXPANEL_QUERIES_PER_HOUR: '-1' })).toMatch(/^MIXPANEL_QUERIES_PER_HOUR/);
    for (const message of [configMessage({}), configMessage({ ...env, MIXPANEL_REGION: 'x' })]) expect(message).not.toContain('\n');
  });

  it('builds the region hosts (no network): data*.mixpanel.com for export, *mixpanel.com for engage', () => {
    const query = { fromDate: '2026-11-01', toDate: '2026-11-02' };
    const cases = [
      ['us', 'https://data.mixpanel.com/api/2.0/export', 'https://mixpanel.com/api/query/engage'],
      ['eu', 'https://data-eu.mixpanel.com/api/2.0/export', 'https://eu.mixpanel.com/api/query/engage'],
      ['in', 'https://data-in.mixpanel.com/api/2.0/export', 'https://in.mixpanel.com/api/query/engage'],
    ] as const;
    for (const [region, exportBase, engageBase] of cases) {
      const settings = readMixpanelSettings({ ...env, MIXPANEL_REGION: region.toUpperCase() });
      expect(exportUrl(settings, query).toString()).toBe(`${exportBase}?project_id=123456&from_date=2026-11-01&to_date=2026-11-02`);
      expect(engageUrl(settings).toString()).toBe(`${engageBase}?project_id=123456`);
    }
  });

  it('MIXPANEL_API_URL replaces the host of both APIs, keeping a path prefix', () => {
    const settings = readMixpanelSettings({ ...env, MIXPANEL_REGION: 'eu', MIXPANEL_API_URL: 'http://127.0.0.1:9999/proxy/' });
    const url = exportUrl(settings, {
      fromDate: '2026-11-01',
      toDate: '2026-11-01',
      where: lateArrivalWhere(1764000000000),
      event: ['Sign Up'],
      limit: 10,
    });
    expect(url.origin + url.pathname).toBe('http://127.0.0.1:9999/proxy/api/2.0/export');
    expect(Object.fromEntries(url.searchParams)).toEqual({
      project_id: '123456',
      from_date: '2026-11-01',
      to_date: '2026-11-01',
      event: '["Sign Up"]',
      where: 'properties["mp_processing_time_ms"] > 1764000000000',
      limit: '10',
    });
    expect(engageUrl(settings).toString()).toBe('http://127.0.0.1:9999/proxy/api/query/engage?project_id=123456');
  });

  it('uses service-account basic auth', () => {
    expect(authorizationHeader({ serviceAccount: 'sa.user', secret: 's3cret' })).toBe(
      `Basic ${Buffer.from('sa.user:s3cret').toString('base64')}`,
    );
  });
});

describe('where, form, retry helpers', () => {
  it('builds the late-arrival where and combines expressions', () => {
    expect(lateArrivalWhere(new Date('2026-11-29T00:00:00Z'))).toBe('properties["mp_processing_time_ms"] > 1795910400000');
    expect(andWhere(undefined, 'a == 1', '')).toBe('a == 1');
    expect(andWhere('a == 1', 'b > 2')).toBe('(a == 1) and (b > 2)');
    expect(() => lateArrivalWhere(Number.NaN)).toThrow(/needs a time/);
  });

  it('builds the Engage form: session_id and page only after the first page', () => {
    expect(
      engageForm({ where: 'defined(user["$email"])', pageSize: 500, cohortId: 42, outputProperties: ['$email'] }, 0, null).toString(),
    ).toBe(
      new URLSearchParams({
        where: 'defined(user["$email"])',
        filter_by_cohort: '{"id":42}',
        output_properties: '["$email"]',
        page_size: '500',
      }).toString(),
    );
    expect(Object.fromEntries(engageForm({}, 3, 'S-1'))).toEqual({ session_id: 'S-1', page: '3' });
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-11-29T12:00:00Z');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('0.5', now)).toBe(500);
    expect(parseRetryAfter('Sun, 29 Nov 2026 12:00:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Sun, 29 Nov 2026 11:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeNull();
    expect(parseRetryAfter(undefined, now)).toBeNull();
  });

  it('backs off exponentially with jitter, capped', () => {
    expect(backoffDelay(1, 1000, 60_000, () => 0)).toBe(500);
    expect(backoffDelay(1, 1000, 60_000, () => 1)).toBe(1000);
    expect(backoffDelay(4, 1000, 60_000, () => 1)).toBe(8000);
    expect(backoffDelay(20, 1000, 60_000, () => 0.5)).toBe(45_000);
  });
});
