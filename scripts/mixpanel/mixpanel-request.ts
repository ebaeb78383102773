// The request layer both clients share: budget, auth headers, bounded retries with back-off.
import { isMixpanelError, mixpanelError, type MixpanelError } from './mixpanel-errors.ts';
import { authorizationHeader, type MixpanelSettings } from './mixpanel-settings.ts';
import { takeQuery, type QueryBudget } from './query-budget.ts';
import { abortError, retryDelay, sleep } from './retry-policy.ts';

/** Mixpanel keeps separate limits for the raw Export API and the Query API (Engage is a Query API). */
export type MixpanelApi = 'export' | 'query';

export interface RetryNotice {
  attempt: number;
  delayMs: number;
  error: MixpanelError;
}

export interface RequestOptions {
  signal?: AbortSignal;
  /** Called before each wait between attempts (for progress lines). */
  onRetry?: (notice: RetryNotice) => void;
}

export function budgetFor(settings: MixpanelSettings, api: MixpanelApi): QueryBudget {
  return {
    file: settings.budgetFile,
    key: `${settings.projectId}/${api}`,
    perHour: settings.queriesPerHour,
    perSecond: settings.queriesPerSecond,
    windowMs: settings.budgetWindowMs,
    wait: settings.waitForBudget,
    label: api === 'export' ? 'Export' : 'Query (Engage)',
  };
}

export function requestHeaders(settings: MixpanelSettings, extra: Record<string, string> = {}): Record<string, string> {
  return {
    authorization: authorizationHeader(settings),
    accept: 'application/json',
    'accept-encoding': 'gzip',
    'user-agent': 'mixpanel-pg-sync',
    ...extra,
  };
}

function asMixpanelError(error: unknown, signal?: AbortSignal): MixpanelError {
  if (isMixpanelError(error)) return error;
  if (signal?.aborted) return abortError(signal);
  return mixpanelError('bad_response', `unexpected failure talking to Mixpanel: ${(error as Error)?.message ?? String(error)}`, {
    cause: error,
  });
}

/**
 * Run `attempt` until it succeeds, at most settings.maxTries times. Each attempt first takes one
 * query from the API's budget. Retryable failures (429, 5xx, network, truncated export) wait for
 * Retry-After when the server gave one, exponential back-off with jitter otherwise. The last
 * failure is thrown with how many tries were made; non-retryable ones are thrown at once.
 */
export async function withRetries<T>(
  settings: MixpanelSettings,
  api: MixpanelApi,
  options: RequestOptions,
  attempt: (tryNumber: number) => Promise<T>,
): Promise<T> {
  const budget = budgetFor(settings, api);
  for (let tryNumber = 1; ; tryNumber++) {
    if (options.signal?.aborted) throw abortError(options.signal);
    await takeQuery(budget, options.signal);
    try {
      return await attempt(tryNumber);
    } catch (caught) {
      const error = asMixpanelError(caught, options.signal);
      if (!error.retryable) throw error;
      if (tryNumber >= settings.maxTries) {
        throw mixpanelError(error.code, `${error.message} Gave up after ${tryNumber} tries (MIXPANEL_MAX_TRIES=${settings.maxTries}).`, {
          retryable: true,
          ...(error.status === undefined ? {} : { status: error.status }),
          cause: error,
        });
      }
      if (error.retryAfterMs !== undefined && error.retryAfterMs > settings.maxRetryAfterMs) {
        throw mixpanelError(
          error.code,
          `${error.message} Mixpanel asks to wait ${Math.ceil(error.retryAfterMs / 1000)} s (Retry-After), longer than the ${Math.round(settings.maxRetryAfterMs / 1000)} s a run waits: run again later.`,
          {
            retryable: true,
            retryAfterMs: error.retryAfterMs,
            ...(error.status === undefined ? {} : { status: error.status }),
            cause: error,
          },
        );
      }
      const delayMs = retryDelay(error, tryNumber, settings);
      options.onRetry?.({ attempt: tryNumber, delayMs, error });
      await sleep(delayMs, options.signal);
    }
  }
}
