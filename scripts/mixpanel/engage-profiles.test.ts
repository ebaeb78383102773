import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { engageProfiles, type EngagePage, type EngageProfile, type EngageProfilesOptions } from './engage-profiles.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { isMixpanelError, type MixpanelError } from './mixpanel-errors.ts';
import type { MixpanelSettings } from './mixpanel-settings.ts';

const profiles: EngageProfile[] = Array.from({ length: 25 }, (_, i) => ({
  $distinct_id: i === 3 ? 4 : `user-${i}`,
  $properties: {
    $email: `u${i}@example.com`,
    $created: '2026-11-02T10:11:12',
    $last_seen: '2026-11-20T08:00:00',
    plan: i % 2 ? 'pro' : 'free',
  },
}));

let fake: FakeMixpanel;
beforeAll(async () => {
  fake = await startFakeMixpanel({ profiles });
});
afterAll(async () => {
  await fake.close();
});
beforeEach(() => {
  fake.requests.length = 0;
  fake.setProfiles(profiles);
});

async function pages(options: EngageProfilesOptions & { settings: MixpanelSettings }): Promise<EngagePage[]> {
  const result: EngagePage[] = [];
  for await (const page of engageProfiles(options)) result.push(page);
  return result;
}

async function failure(options: EngageProfilesOptions & { settings: MixpanelSettings }): Promise<MixpanelError> {
  try {
    await pages(options);
  } catch (error) {
    if (isMixpanelError(error)) return error;
    throw error;
  }
  throw new Error('expected Engage to fail');
}

describe('engageProfiles against the fake Mixpanel', () => {
  it('walks session_id and page until a short page', async () => {
    const got = await pages({ settings: fake.settings(), pageSize: 10, where: 'defined(user["$email"])' });
    expect(got.map((p) => [p.page, p.results.length])).toEqual([
      [0, 10],
      [1, 10],
      [2, 5],
    ]);
    expect(got.flatMap((p) => p.results)).toEqual(profiles);
    const sessionId = got[0]!.sessionId;
    expect(sessionId).toBeTruthy();
    expect(fake.requests.map((r) => r.form)).toEqual([
      { where: 'defined(user["$email"])', page_size: '10' },
      { where: 'defined(user["$email"])', page_size: '10', session_id: sessionId, page: '1' },
      { where: 'defined(user["$email"])', page_size: '10', session_id: sessionId, page: '2' },
    ]);
    for (const request of fake.requests) {
      expect(request).toMatchObject({
        method: 'POST',
        path: '/api/query/engage',
        query: { project_id: '1234' },
        user: 'fake-service-account',
        secret: 'fake-secret',
      });
      expect(request.headers['content-type']).toBe('application/x-www-form-urlencoded');
      expect(request.headers['accept-encoding']).toBe('gzip');
    }
  });

  it('asks once more after an exactly full last page, and stops at the empty one', async () => {
    fake.setProfiles(profiles.slice(0, 20));
    const got = await pages({ settings: fake.settings(), pageSize: 10 });
    expect(got.map((p) => p.results.length)).toEqual([10, 10, 0]);
  });

  it("uses Mixpanel's page_size when none is asked (one short page, gzipped)", async () => {
    const got = await pages({ settings: fake.settings() });
    expect(got).toHaveLength(1);
    expect(got[0]).toMatchObject({ page: 0, pageSize: 1000, total: 25 });
    expect(fake.requests[0]!.form).toEqual({});
  });

  it('retries a 429 page with Retry-After and a 500 with back-off, keeping its place', async () => {
    fake.queueEngage({}, { status: 429, retryAfter: '0' }, { status: 500 });
    const got = await pages({ settings: fake.settings(), pageSize: 10 });
    expect(got.flatMap((p) => p.results)).toEqual(profiles);
    expect(fake.requests.map((r) => [r.status, r.form.page ?? '0'])).toEqual([
      [200, '0'],
      [429, '1'],
      [500, '1'],
      [200, '1'],
      [200, '2'],
    ]);
  });

  it('each page takes a query from the Query API budget', async () => {
    const error = await failure({ settings: fake.settings({ queriesPerHour: 2 }), pageSize: 10 });
    expect(error.code).toBe('budget');
    expect(error.message).toMatch(/Mixpanel Query \(Engage\) query budget spent: 2 queries/);
    expect(fake.requests).toHaveLength(2);
  });

  it('401 and 400 are one-line, actionable, not retried', async () => {
    const auth = await failure({ settings: fake.settings({ serviceAccount: 'nobody' }) });
    expect(auth.message).toMatch(
      /^Mixpanel Engage API rejected the credentials \(HTTP 401.*check MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SECRET/,
    );
    fake.queueEngage({ status: 400, body: '{"error":"invalid where clause","status":"error"}' });
    const bad = await failure({ settings: fake.settings(), where: 'nonsense(' });
    expect(bad.message).toBe('Mixpanel Engage API rejected the request (HTTP 400): invalid where clause');
    expect(fake.requests).toHaveLength(2);
  });

  it('a page cut mid-body is retried', async () => {
    fake.setProfiles(Array.from({ length: 300 }, (_, i) => ({ $distinct_id: `u${i}`, $properties: { $email: `u${i}@example.com` } })));
    fake.queueEngage({ dropAfterBytes: 200 });
    const got = await pages({ settings: fake.settings() });
    expect(got[0]!.results).toHaveLength(300);
    expect(fake.requests).toHaveLength(2);
  });
});
