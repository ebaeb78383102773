// Mixpanel Engage (Query API) client: POST /api/query/engage, paged with session_id + page.
// Profiles are few next to events, so pages are parsed. Each page is one Query API request,
// retried and budgeted like any other (the Query API allows 60 queries an hour).
import { isMixpanelError, mixpanelError } from './mixpanel-errors.ts';
import { readText, sendChecked } from './http-request.ts';
import { requestHeaders, withRetries, type RequestOptions } from './mixpanel-request.ts';
import { engageUrl, readMixpanelSettings, type MixpanelSettings } from './mixpanel-settings.ts';

export interface EngageProfile {
  $distinct_id: string | number;
  $properties: Record<string, unknown>;
}

export interface EngagePage {
  page: number;
  pageSize: number;
  sessionId: string | null;
  /** As Mixpanel reports it (may be absent). */
  total: number | null;
  results: EngageProfile[];
  /** The page as Mixpanel sent it: the loader stages its profiles from these bytes, never re-serialising them. */
  text: string;
}

export interface EngageProfilesOptions extends RequestOptions {
  /** Selector expression, e.g. `defined(user["$email"])`. */
  where?: string;
  /** Profiles of one cohort: `filter_by_cohort={"id":N}`. */
  cohortId?: number;
  /** Only these properties (output_properties). */
  outputProperties?: string[];
  /** Profiles per page (page_size); Mixpanel's default is 1000. */
  pageSize?: number;
  settings?: MixpanelSettings;
}

const DEFAULT_PAGE_SIZE = 1000;

/** The form body of one Engage request. */
export function engageForm(options: EngageProfilesOptions, page: number, sessionId: string | null): URLSearchParams {
  const form = new URLSearchParams();
  if (options.where) form.set('where', options.where);
  if (options.cohortId !== undefined) form.set('filter_by_cohort', JSON.stringify({ id: options.cohortId }));
  if (options.outputProperties?.length) form.set('output_properties', JSON.stringify(options.outputProperties));
  if (options.pageSize !== undefined) form.set('page_size', String(options.pageSize));
  if (sessionId !== null) form.set('session_id', sessionId);
  if (page > 0) form.set('page', String(page));
  return form;
}

function parsePage(text: string, requestedPage: number, requestedSize: number): EngagePage {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw mixpanelError('bad_response', `Mixpanel Engage API answered something that is not JSON: ${text.slice(0, 120)}`, {
      retryable: true,
    });
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw mixpanelError('bad_response', 'Mixpanel Engage API answered JSON that is not an object.', { retryable: true });
  }
  if (body.status !== undefined && body.status !== 'ok') {
    const said = typeof body.error === 'string' ? body.error : JSON.stringify(body).slice(0, 200);
    throw mixpanelError('bad_request', `Mixpanel Engage API returned status ${String(body.status)}: ${said}`);
  }
  if (!Array.isArray(body.results)) {
    throw mixpanelError('bad_response', 'Mixpanel Engage API answered without a results array.', { retryable: true });
  }
  const number = (value: unknown, fallback: number | null) => (typeof value === 'number' && Number.isFinite(value) ? value : fallback);
  return {
    page: number(body.page, requestedPage)!,
    pageSize: number(body.page_size, requestedSize)!,
    sessionId: typeof body.session_id === 'string' && body.session_id !== '' ? body.session_id : null,
    total: number(body.total, null),
    results: body.results as EngageProfile[],
    text,
  };
}

/**
 * Every profile matching the query, page by page: the first request without session_id, then
 * session_id and page + 1 until a page comes back shorter than its page_size.
 */
export async function* engageProfiles(options: EngageProfilesOptions = {}): AsyncGenerator<EngagePage> {
  if (options.pageSize !== undefined && !(Number.isInteger(options.pageSize) && options.pageSize > 0)) {
    throw mixpanelError('bad_request', `pageSize must be a positive integer, got ${options.pageSize}.`);
  }
  const settings = options.settings ?? readMixpanelSettings();
  const url = engageUrl(settings);
  const requestedSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
  let page = 0;
  let sessionId: string | null = null;
  for (;;) {
    const form = engageForm(options, page, sessionId).toString();
    const result = await withRetries(settings, 'query', options, async () => {
      const answer = await sendChecked(
        {
          method: 'POST',
          url,
          headers: requestHeaders(settings, { 'content-type': 'application/x-www-form-urlencoded' }),
          body: form,
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
        throw mixpanelError(
          'network',
          `the connection to ${url.origin} broke while reading an Engage page (${(error as Error).message}).`,
          {
            retryable: true,
            cause: error,
          },
        );
      }
      return parsePage(text, page, requestedSize);
    });
    yield result;
    if (result.results.length === 0 || result.results.length < result.pageSize) return;
    if (result.sessionId === null) {
      throw mixpanelError(
        'bad_response',
        `Mixpanel Engage API returned a full page ${result.page} without a session_id to ask for the next one.`,
      );
    }
    sessionId = result.sessionId;
    page = result.page + 1;
  }
}
