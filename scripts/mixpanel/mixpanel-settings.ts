// Mixpanel client settings read from the environment, and the URLs they lead to.
import os from 'node:os';
import path from 'node:path';
import { mixpanelError } from './mixpanel-errors.ts';

export type MixpanelRegion = 'us' | 'eu' | 'in';

export interface MixpanelSettings {
  /** Service account username (MIXPANEL_SERVICE_ACCOUNT). */
  serviceAccount: string;
  /** Service account secret (MIXPANEL_SECRET). */
  secret: string;
  /** MIXPANEL_PROJECT_ID; service-account requests must name the project. */
  projectId: number;
  /** MIXPANEL_REGION: data residency, us (default), eu or in. */
  region: MixpanelRegion;
  /** MIXPANEL_API_URL: one base URL for both APIs (tests, proxies); null = the region's hosts. */
  apiUrl: string | null;
  /** MIXPANEL_PROJECT_TIMEZONE: only read and exposed (projects from before 2023 export local days). */
  projectTimezone: string | null;
  /** MIXPANEL_MAX_TRIES: attempts per request, first one included (default 5). */
  maxTries: number;
  /** MIXPANEL_QUERIES_PER_HOUR: queries per API per project per hour; null = no budget (default 60). */
  queriesPerHour: number | null;
  /** Queries per second per API (Mixpanel: 3 for Export); requests are spaced, never failed, for this. */
  queriesPerSecond: number;
  /** MIXPANEL_BUDGET_FILE: the state file shared by every process using this budget. */
  budgetFile: string;
  /** Length of the budget's sliding window (1 hour; shorter only in tests). */
  budgetWindowMs: number;
  /** Wait for the budget instead of failing when it is spent. */
  waitForBudget: boolean;
  /** Back-off: first delay, cap, and the longest Retry-After honoured before giving up. */
  baseDelayMs: number;
  maxDelayMs: number;
  maxRetryAfterMs: number;
  /** A socket idle this long (no byte received) fails the attempt. */
  idleTimeoutMs: number;
}

/** Mixpanel's hosts per data residency region (docs: Raw Data Export API and Query API servers). */
export const MIXPANEL_HOSTS: Record<MixpanelRegion, { export: string; query: string }> = {
  us: { export: 'https://data.mixpanel.com', query: 'https://mixpanel.com' },
  eu: { export: 'https://data-eu.mixpanel.com', query: 'https://eu.mixpanel.com' },
  in: { export: 'https://data-in.mixpanel.com', query: 'https://in.mixpanel.com' },
};

export const EXPORT_PATH = '/api/2.0/export';
export const ENGAGE_PATH = '/api/query/engage';
export const COHORTS_LIST_PATH = '/api/query/cohorts/list';

export const DEFAULT_SETTINGS = {
  region: 'us' as MixpanelRegion,
  maxTries: 5,
  queriesPerHour: 60,
  queriesPerSecond: 3,
  budgetWindowMs: 3_600_000,
  waitForBudget: false,
  baseDelayMs: 1_000,
  maxDelayMs: 60_000,
  maxRetryAfterMs: 300_000,
  idleTimeoutMs: 300_000,
};

type Env = Record<string, string | undefined>;

function configError(variable: string, problem: string, hint: string) {
  return mixpanelError('config', `${variable} ${problem}: ${hint}`);
}

function required(env: Env, variable: string, hint: string): string {
  const value = env[variable]?.trim();
  if (!value) throw configError(variable, 'is not set', hint);
  return value;
}

function positiveInteger(env: Env, variable: string, fallback: number, hint: string): number {
  const raw = env[variable]?.trim();
  if (!raw) return fallback;
  if (!/^[1-9][0-9]*$/.test(raw)) throw configError(variable, `is "${raw}", not a positive integer`, hint);
  return Number(raw);
}

export function defaultBudgetFile(projectId: number): string {
  return path.join(os.tmpdir(), `mixpanel-pg-sync-budget-${projectId}.json`);
}

/**
 * Settings from the environment (MIXPANEL_*), then `overrides` on top (tests, callers).
 * Throws a one-line `config` error naming the variable to set.
 */
export function readMixpanelSettings(env: Env = process.env, overrides: Partial<MixpanelSettings> = {}): MixpanelSettings {
  try {
    return readSettings(env, overrides);
  } catch (error) {
    // A message names the value it refuses; a secret pasted into the wrong variable must not be printed with it.
    throw withoutSecret(error, overrides.secret ?? env.MIXPANEL_SECRET?.trim());
  }
}

function withoutSecret(error: unknown, secret: string | undefined): unknown {
  if (secret && error instanceof Error && error.message.includes(secret)) error.message = error.message.split(secret).join('***');
  return error;
}

/** A value for a message, with URL credentials (`//user:secret@`) masked. */
function shown(raw: string): string {
  return raw.replace(/\/\/[^/@\s]*@/g, '//***@');
}

function readSettings(env: Env, overrides: Partial<MixpanelSettings>): MixpanelSettings {
  const serviceAccount =
    overrides.serviceAccount ??
    required(env, 'MIXPANEL_SERVICE_ACCOUNT', 'set it to a Mixpanel service account username (Organization settings > Service Accounts)');
  const secret = overrides.secret ?? required(env, 'MIXPANEL_SECRET', "set it to the service account's secret");
  const projectId = overrides.projectId ?? readProjectId(env);
  const region = overrides.region ?? readRegion(env);
  const apiUrl = overrides.apiUrl !== undefined ? (overrides.apiUrl ? normaliseApiUrl(overrides.apiUrl) : null) : readApiUrl(env);
  const projectTimezone = overrides.projectTimezone !== undefined ? overrides.projectTimezone : readTimezone(env);
  const maxTries =
    overrides.maxTries ??
    positiveInteger(env, 'MIXPANEL_MAX_TRIES', DEFAULT_SETTINGS.maxTries, 'set it to how many times a request may be tried, e.g. 5');
  const queriesPerHour = overrides.queriesPerHour !== undefined ? overrides.queriesPerHour : readQueriesPerHour(env);
  const budgetFile = overrides.budgetFile ?? (env.MIXPANEL_BUDGET_FILE?.trim() || defaultBudgetFile(projectId));
  return {
    ...DEFAULT_SETTINGS,
    ...definedOnly(overrides),
    serviceAccount,
    secret,
    projectId,
    region,
    apiUrl,
    projectTimezone,
    maxTries,
    queriesPerHour,
    budgetFile,
  };
}

function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function readProjectId(env: Env): number {
  const raw = required(env, 'MIXPANEL_PROJECT_ID', 'set it to the numeric project id (Project settings > Overview)');
  if (!/^[1-9][0-9]{0,15}$/.test(raw)) {
    throw configError(
      'MIXPANEL_PROJECT_ID',
      `is "${raw}", not a project id`,
      'set it to the numeric project id (Project settings > Overview)',
    );
  }
  return Number(raw);
}

function readRegion(env: Env): MixpanelRegion {
  const raw = env.MIXPANEL_REGION?.trim().toLowerCase();
  if (!raw) return DEFAULT_SETTINGS.region;
  if (raw === 'us' || raw === 'eu' || raw === 'in') return raw;
  throw configError('MIXPANEL_REGION', `is "${env.MIXPANEL_REGION}"`, "set it to the project's data residency: us, eu or in");
}

function normaliseApiUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw configError(
      'MIXPANEL_API_URL',
      `is "${shown(raw)}", not a URL`,
      'set it to a base URL such as http://127.0.0.1:8080, or unset it',
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw configError(
      'MIXPANEL_API_URL',
      `is "${shown(raw)}", not http(s)`,
      'set it to a base URL such as http://127.0.0.1:8080, or unset it',
    );
  }
  if (url.search || url.hash || url.username || url.password) {
    throw configError(
      'MIXPANEL_API_URL',
      'has a query, fragment or credentials',
      'give only scheme, host, port and an optional path prefix',
    );
  }
  return url.toString().replace(/\/+$/, '');
}

function readApiUrl(env: Env): string | null {
  const raw = env.MIXPANEL_API_URL?.trim();
  return raw ? normaliseApiUrl(raw) : null;
}

function readTimezone(env: Env): string | null {
  const raw = env.MIXPANEL_PROJECT_TIMEZONE?.trim();
  if (!raw) return null;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: raw });
  } catch {
    throw configError(
      'MIXPANEL_PROJECT_TIMEZONE',
      `is "${raw}", not a time zone`,
      'set it to an IANA name such as America/Los_Angeles, or unset it (UTC)',
    );
  }
  return raw;
}

function readQueriesPerHour(env: Env): number | null {
  const raw = env.MIXPANEL_QUERIES_PER_HOUR?.trim();
  if (raw === 'unlimited') return null;
  return positiveInteger(
    env,
    'MIXPANEL_QUERIES_PER_HOUR',
    DEFAULT_SETTINGS.queriesPerHour,
    'set it to a positive integer (Mixpanel allows 60), or to unlimited',
  );
}

function base(settings: Pick<MixpanelSettings, 'apiUrl' | 'region'>, api: 'export' | 'query'): string {
  return settings.apiUrl ?? MIXPANEL_HOSTS[settings.region][api];
}

export interface ExportQuery {
  fromDate: string;
  toDate: string;
  where?: string;
  /** Event names to keep (sent as a JSON array). */
  event?: string[];
  /** At most this many events (Mixpanel: <= 100000). */
  limit?: number;
}

/** GET https://data.mixpanel.com/api/2.0/export?project_id=…&from_date=…&to_date=…[&event=…][&where=…][&limit=…] */
export function exportUrl(settings: Pick<MixpanelSettings, 'apiUrl' | 'region' | 'projectId'>, query: ExportQuery): URL {
  const url = new URL(base(settings, 'export') + EXPORT_PATH);
  url.searchParams.set('project_id', String(settings.projectId));
  url.searchParams.set('from_date', query.fromDate);
  url.searchParams.set('to_date', query.toDate);
  if (query.event?.length) url.searchParams.set('event', JSON.stringify(query.event));
  if (query.where) url.searchParams.set('where', query.where);
  if (query.limit !== undefined) url.searchParams.set('limit', String(query.limit));
  return url;
}

/** POST https://mixpanel.com/api/query/engage?project_id=… (the parameters go in a form body). */
export function engageUrl(settings: Pick<MixpanelSettings, 'apiUrl' | 'region' | 'projectId'>): URL {
  const url = new URL(base(settings, 'query') + ENGAGE_PATH);
  url.searchParams.set('project_id', String(settings.projectId));
  return url;
}

/** POST https://mixpanel.com/api/query/cohorts/list?project_id=… (Query API). */
export function cohortsListUrl(settings: Pick<MixpanelSettings, 'apiUrl' | 'region' | 'projectId'>): URL {
  const url = new URL(base(settings, 'query') + COHORTS_LIST_PATH);
  url.searchParams.set('project_id', String(settings.projectId));
  return url;
}

/** Service-account HTTP basic auth. */
export function authorizationHeader(settings: Pick<MixpanelSettings, 'serviceAccount' | 'secret'>): string {
  return `Basic ${Buffer.from(`${settings.serviceAccount}:${settings.secret}`).toString('base64')}`;
}
