// Which project a command works on, and its Mixpanel configuration (docs/projects.md §5.8): --project NAME, else
// MIXPANEL_PROJECT, else the only project of the database. The project's row (mixpanel_sync.projects) gives its
// region, timezone and Mixpanel project id; MIXPANEL_REGION, MIXPANEL_PROJECT_TIMEZONE and MIXPANEL_PROJECT_ID only
// fill a column that is null, and a value that differs from the row is a config error, raised before any request.
// Credentials (MIXPANEL_SERVICE_ACCOUNT, MIXPANEL_SECRET) stay in the process's environment, never in the database.
import pg from 'pg';
import { mixpanelError } from '../mixpanel/mixpanel-errors.ts';
import { readMixpanelSettings, type MixpanelSettings } from '../mixpanel/mixpanel-settings.ts';
import { readProject, type ProjectRow } from '../sql/sync-api.ts';

export type { ProjectRow };

/** The --project flag, for parseArgs. */
export const PROJECT_OPTION = { project: { type: 'string' } } as const;

/** The --help lines every command that takes --project prints. */
export const PROJECT_USAGE = `  --project NAME         the project (mixpanel_sync.projects.name; default: MIXPANEL_PROJECT, else the
                         database's only project; README "Several projects")`;

type Env = Record<string, string | undefined>;

/** --project NAME wins, then MIXPANEL_PROJECT; null: the only project (project_id() refuses when there are several). */
export function chosenProject(flag: unknown, env: Env = process.env): string | null {
  if (typeof flag === 'string') {
    if (!flag.trim()) throw new Error('--project wants a project name (select name from mixpanel_sync.projects)');
    return flag.trim();
  }
  return env.MIXPANEL_PROJECT?.trim() || null;
}

/**
 * The project's row, on a short connection of its own. mixpanel_sync.project_id raises MP004, in one line with the
 * names in its hint, for an unknown name, or for none when the database holds several projects.
 */
export async function lookUpProject(connectionString: string, name: string | null): Promise<ProjectRow> {
  const client = new pg.Client({ connectionString, connectionTimeoutMillis: 10_000 });
  client.on('error', () => {}); // a dropped connection surfaces as the query's error
  await client.connect();
  try {
    return await readProject(client, name);
  } finally {
    await client.end().catch(() => {});
  }
}

function configError(variable: string, problem: string, hint: string) {
  return mixpanelError('config', `${variable} ${problem}: ${hint}`);
}

/** The timezone of the project's runs: its row's, else MIXPANEL_PROJECT_TIMEZONE (null: UTC); a different one is refused. */
export function projectTimezone(project: ProjectRow, env: Env = process.env): string | null {
  const fromEnv = env.MIXPANEL_PROJECT_TIMEZONE?.trim() || null;
  if (project.timezone === null) return fromEnv;
  if (fromEnv !== null && fromEnv !== project.timezone)
    throw configError(
      'MIXPANEL_PROJECT_TIMEZONE',
      `is "${fromEnv}", but project ${project.name}'s timezone is ${project.timezone}`,
      `unset it (the project's row gives it), or change the row: update mixpanel_sync.projects set timezone = '${fromEnv}' where name = '${project.name}'`,
    );
  return project.timezone;
}

/**
 * readMixpanelSettings for this project: region, timezone and Mixpanel project id from its row, the environment
 * filling a null column (MIXPANEL_PROJECT_ID is then required); a variable set to another value than the row's is a
 * config error. Every check runs before any request.
 */
export function projectMixpanelSettings(project: ProjectRow, env: Env = process.env): MixpanelSettings {
  const rowId = project.mixpanel_project_id === null ? null : Number(project.mixpanel_project_id);
  const envHasId = Boolean(env.MIXPANEL_PROJECT_ID?.trim());
  // the environment's values are validated first (and a secret pasted into one is masked there)
  const settings = readMixpanelSettings(env, rowId !== null && !envHasId ? { projectId: rowId } : {});
  if (rowId !== null && settings.projectId !== rowId)
    throw configError(
      'MIXPANEL_PROJECT_ID',
      `is ${settings.projectId}, but project ${project.name} holds Mixpanel project ${rowId}`,
      `check --project (MIXPANEL_PROJECT) and the credentials, or unset MIXPANEL_PROJECT_ID (the project's row gives it)`,
    );
  if (env.MIXPANEL_REGION?.trim() && settings.region !== project.region)
    throw configError(
      'MIXPANEL_REGION',
      `is ${settings.region}, but project ${project.name}'s region is ${project.region}`,
      `unset it (the project's row gives it), or change the row: update mixpanel_sync.projects set region = '${settings.region}' where name = '${project.name}'`,
    );
  const timezone = projectTimezone(project, env);
  return {
    ...settings,
    region: project.region,
    projectTimezone: timezone,
    // a budget per Mixpanel project, as before: the default file is named after the project id
  };
}
