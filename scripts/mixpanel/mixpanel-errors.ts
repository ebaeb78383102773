// Errors of the Mixpanel clients: plain Errors with a code, one line, saying what to do.

export type MixpanelErrorCode =
  | 'config' // a MIXPANEL_* variable is missing or invalid
  | 'auth' // 401 / 403
  | 'bad_request' // 400 and other 4xx: Mixpanel's own message
  | 'rate_limited' // 429
  | 'server' // 5xx
  | 'network' // connection refused / reset / timeout before a response
  | 'budget' // the hourly query budget kept in the state file is spent
  | 'truncated' // the export ended with `terminated early` or mid-line
  | 'interrupted' // the export broke after lines were already handed to the caller
  | 'bad_response' // a 200 whose body is not what the API documents
  | 'aborted'; // the caller's AbortSignal fired

export interface MixpanelError extends Error {
  code: MixpanelErrorCode;
  /** A new attempt of the same request may succeed (429, 5xx, network, truncated). */
  retryable: boolean;
  status?: number;
  /** Server-requested wait (Retry-After), in ms. */
  retryAfterMs?: number;
  /** For `budget`: when the next query is allowed. */
  nextAllowedAt?: Date;
}

export function mixpanelError(
  code: MixpanelErrorCode,
  message: string,
  fields: { retryable?: boolean; status?: number; retryAfterMs?: number; nextAllowedAt?: Date; cause?: unknown } = {},
): MixpanelError {
  const error = new Error(oneLine(message), fields.cause === undefined ? undefined : { cause: fields.cause }) as MixpanelError;
  error.name = 'MixpanelError';
  error.code = code;
  error.retryable = fields.retryable ?? false;
  if (fields.status !== undefined) error.status = fields.status;
  if (fields.retryAfterMs !== undefined) error.retryAfterMs = fields.retryAfterMs;
  if (fields.nextAllowedAt !== undefined) error.nextAllowedAt = fields.nextAllowedAt;
  return error;
}

export function isMixpanelError(error: unknown): error is MixpanelError {
  return error instanceof Error && error.name === 'MixpanelError' && typeof (error as MixpanelError).code === 'string';
}

/** Collapse whitespace and cut, so a message stays on one line of a log. */
export function oneLine(text: string, max = 500): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** Mixpanel's error bodies are `{"error": "...", "request": "..."}` JSON or plain text. */
export function mixpanelMessage(body: string): string {
  const text = body.trim();
  if (text.startsWith('{')) {
    try {
      const parsed = JSON.parse(text) as { error?: unknown; message?: unknown };
      const message = parsed.error ?? parsed.message;
      if (typeof message === 'string' && message) return oneLine(message, 300);
    } catch {
      // not JSON after all: use the text
    }
  }
  return oneLine(text || '(empty body)', 300);
}

/** The error for a non-2xx answer, with the action the user can take. */
export function httpStatusError(
  status: number,
  body: string,
  context: { api: 'export' | 'engage'; url: string; projectId: number; retryAfterMs?: number },
): MixpanelError {
  const said = mixpanelMessage(body);
  const where = `Mixpanel ${context.api === 'export' ? 'Export' : 'Engage'} API`;
  if (status === 401) {
    return mixpanelError(
      'auth',
      `${where} rejected the credentials (HTTP 401: ${said}): check MIXPANEL_SERVICE_ACCOUNT and MIXPANEL_SECRET (a service account username and its secret).`,
      { status },
    );
  }
  if (status === 403) {
    return mixpanelError(
      'auth',
      `${where} refused access to project ${context.projectId} (HTTP 403: ${said}): give the service account a role in that project, or check MIXPANEL_PROJECT_ID.`,
      { status },
    );
  }
  if (status === 404) {
    return mixpanelError(
      'bad_request',
      `${where} answered 404 for ${redactUrl(context.url)} (${said}): check MIXPANEL_REGION (us, eu, in) or MIXPANEL_API_URL.`,
      { status },
    );
  }
  if (status === 429) {
    return mixpanelError('rate_limited', `${where} rate limit hit (HTTP 429: ${said}); Mixpanel allows 60 queries an hour per project.`, {
      status,
      retryable: true,
      ...(context.retryAfterMs === undefined ? {} : { retryAfterMs: context.retryAfterMs }),
    });
  }
  if (status >= 500) {
    return mixpanelError('server', `${where} server error (HTTP ${status}: ${said}).`, {
      status,
      retryable: true,
      ...(context.retryAfterMs === undefined ? {} : { retryAfterMs: context.retryAfterMs }),
    });
  }
  return mixpanelError('bad_request', `${where} rejected the request (HTTP ${status}): ${said}`, { status });
}

/** URLs are logged without credentials. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    return parsed.toString();
  } catch {
    return url;
  }
}
