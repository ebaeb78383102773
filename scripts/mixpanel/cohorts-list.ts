// Mixpanel cohorts (Query API): POST /api/query/cohorts/list?project_id=… answers a JSON array of the project's
// cohorts ({id, name, description, count, is_visible, created, project_id}). One Query API request, retried and
// budgeted like Engage. Members come from Engage with filter_by_cohort (engage-profiles.ts, cohortId).
import { isMixpanelError, mixpanelError } from './mixpanel-errors.ts';
import { readText, sendChecked } from './http-request.ts';
import { requestHeaders, withRetries, type RequestOptions } from './mixpanel-request.ts';
import { cohortsListUrl, readMixpanelSettings, type MixpanelSettings } from './mixpanel-settings.ts';

/** A cohort as the list gives it; only id is relied on here (SQL checks the rest). */
export interface CohortListEntry {
  id: number;
  name?: string;
  [key: string]: unknown;
}

export interface CohortsListOptions extends RequestOptions {
  settings?: MixpanelSettings;
}

/** The project's cohorts, as Mixpanel sent them (the array is staged as is; entries SQL cannot use become rejects). */
export async function cohortsList(options: CohortsListOptions = {}): Promise<unknown[]> {
  const settings = options.settings ?? readMixpanelSettings();
  const url = cohortsListUrl(settings);
  return withRetries(settings, 'query', options, async () => {
    const answer = await sendChecked(
      {
        method: 'POST',
        url,
        headers: requestHeaders(settings, { 'content-type': 'application/x-www-form-urlencoded' }),
        body: '',
        ...(options.signal ? { signal: options.signal } : {}),
        idleTimeoutMs: settings.idleTimeoutMs,
      },
      'engage',
      settings.projectId,
    );
    let text: string;
    try {
      text = await readText(answer.body);
    } catch (error) {
      if (isMixpanelError(error)) throw error;
      throw mixpanelError('network', `the connection to ${url.origin} broke while reading the cohort list (${(error as Error).message}).`, {
        retryable: true,
        cause: error,
      });
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw mixpanelError('bad_response', `Mixpanel cohorts/list answered something that is not JSON: ${text.slice(0, 120)}`, {
        retryable: true,
      });
    }
    if (!Array.isArray(body)) {
      const said =
        body && typeof body === 'object' && typeof (body as { error?: unknown }).error === 'string'
          ? (body as { error: string }).error
          : text.slice(0, 200);
      throw mixpanelError('bad_request', `Mixpanel cohorts/list did not answer a list of cohorts: ${said}`);
    }
    return body;
  });
}
