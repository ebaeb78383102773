// Which project a command works on and where its Mixpanel configuration comes from (docs/projects.md §5.8): the
// project's row wins, the environment fills a null column, and a variable that differs from the row is a config error.
// Pure functions, no database (the CLI cases are in scripts/cli/sync.test.ts and status.test.ts).
// Seen failing, each protection removed once in project-config.ts: without the MIXPANEL_REGION comparison, "a region
// that differs" returned settings with the row's region; without the MIXPANEL_PROJECT_ID comparison, "a Mixpanel
// project id that differs" returned the environment's id; without the timezone comparison, "a timezone that differs"
// returned the row's zone; with `env.MIXPANEL_PROJECT ?? flag` (the environment winning), "the flag wins" got 'from_env'.
import { describe, expect, it } from 'vitest';
import { exportUrl } from '../mixpanel/mixpanel-settings.ts';
import { chosenProject, projectMixpanelSettings, projectTimezone, type ProjectRow } from './project-config.ts';

const row = (fields: Partial<ProjectRow> = {}): ProjectRow => ({
  id: 2,
  name: 'eu_app',
  mixpanel_project_id: null,
  region: 'eu',
  timezone: null,
  created_at: new Date(0),
  ...fields,
});
const credentials = { MIXPANEL_SERVICE_ACCOUNT: 'sa.user', MIXPANEL_SECRET: 's3cret' };
const configMessage = (project: ProjectRow, env: Record<string, string>): string => {
  try {
    projectMixpanelSettings(project, env);
  } catch (error) {
    expect((error as { code?: string }).code).toBe('config');
    return (error as Error).message;
  }
  throw new Error('expected a config error');
};

describe('chosenProject', () => {
  it('the flag wins over MIXPANEL_PROJECT; neither is null (the only project); an empty flag is refused', () => {
    expect(chosenProject('from_flag', { MIXPANEL_PROJECT: 'from_env' })).toBe('from_flag');
    expect(chosenProject(undefined, { MIXPANEL_PROJECT: ' from_env ' })).toBe('from_env');
    expect(chosenProject(undefined, { MIXPANEL_PROJECT: '' })).toBeNull();
    expect(chosenProject(undefined, {})).toBeNull();
    expect(() => chosenProject(' ', {})).toThrow(/--project wants a project name/);
  });
});

describe('projectMixpanelSettings', () => {
  it("the row's region, Mixpanel project id and timezone, with no MIXPANEL_PROJECT_ID/REGION/TIMEZONE set", () => {
    const settings = projectMixpanelSettings(row({ mixpanel_project_id: '5678', timezone: 'Europe/Berlin' }), credentials);
    expect(settings).toMatchObject({ projectId: 5678, region: 'eu', projectTimezone: 'Europe/Berlin' });
    expect(exportUrl(settings, { fromDate: '2026-01-01', toDate: '2026-01-01' }).host).toBe('data-eu.mixpanel.com');
  });

  it('the environment fills a null column (and MIXPANEL_PROJECT_ID is then required); the same value as the row is fine', () => {
    const env = { ...credentials, MIXPANEL_PROJECT_ID: '5678', MIXPANEL_PROJECT_TIMEZONE: 'America/New_York' };
    expect(projectMixpanelSettings(row(), env)).toMatchObject({ projectId: 5678, region: 'eu', projectTimezone: 'America/New_York' });
    expect(configMessage(row(), credentials)).toMatch(/^MIXPANEL_PROJECT_ID is not set/);
    const same = { ...env, MIXPANEL_REGION: 'EU' };
    expect(projectMixpanelSettings(row({ mixpanel_project_id: '5678', timezone: 'America/New_York' }), same)).toMatchObject({
      projectId: 5678,
      region: 'eu',
      projectTimezone: 'America/New_York',
    });
  });

  it('a region that differs from the row is a config error naming both and the fix', () => {
    expect(configMessage(row(), { ...credentials, MIXPANEL_PROJECT_ID: '5678', MIXPANEL_REGION: 'us' })).toBe(
      "MIXPANEL_REGION is us, but project eu_app's region is eu: unset it (the project's row gives it), or change the row: update mixpanel_sync.projects set region = 'us' where name = 'eu_app'",
    );
  });

  it('a Mixpanel project id that differs from the row is a config error', () => {
    expect(configMessage(row({ mixpanel_project_id: '5678' }), { ...credentials, MIXPANEL_PROJECT_ID: '1234' })).toMatch(
      /^MIXPANEL_PROJECT_ID is 1234, but project eu_app holds Mixpanel project 5678: /,
    );
  });

  it('a timezone that differs from the row is a config error (file runs too: projectTimezone)', () => {
    const env = { ...credentials, MIXPANEL_PROJECT_ID: '5678', MIXPANEL_PROJECT_TIMEZONE: 'UTC' };
    expect(configMessage(row({ timezone: 'Europe/Berlin' }), env)).toMatch(
      /^MIXPANEL_PROJECT_TIMEZONE is "UTC", but project eu_app's timezone is Europe\/Berlin: /,
    );
    expect(() => projectTimezone(row({ timezone: 'Europe/Berlin' }), { MIXPANEL_PROJECT_TIMEZONE: 'UTC' })).toThrow(/Europe\/Berlin/);
    expect(projectTimezone(row({ timezone: 'Europe/Berlin' }), {})).toBe('Europe/Berlin');
    expect(projectTimezone(row(), { MIXPANEL_PROJECT_TIMEZONE: 'Asia/Tokyo' })).toBe('Asia/Tokyo');
  });
});
