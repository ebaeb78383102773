// When to try a Mixpanel request again, and how long to wait first.
import { mixpanelError, type MixpanelError } from './mixpanel-errors.ts';

/**
 * Retry-After as ms from `now`: either delta-seconds ("120", decimals tolerated) or an HTTP date.
 * null when absent or unreadable. Never negative.
 */
export function parseRetryAfter(value: string | string[] | undefined | null, now = Date.now()): number | null {
  const raw = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!raw) return null;
  if (/^\d+(\.\d+)?$/.test(raw)) return Math.round(Number(raw) * 1000);
  const at = Date.parse(raw);
  if (Number.isNaN(at)) return null;
  return Math.max(0, at - now);
}

/**
 * Exponential back-off with jitter for attempt n (1 = the wait after the first failure):
 * a value in [d/2, d] with d = min(maxDelayMs, baseDelayMs * 2^(n-1)).
 */
export function backoffDelay(attempt: number, baseDelayMs: number, maxDelayMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxDelayMs, baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

/** The wait before the next attempt: the server's Retry-After when it gave one, back-off otherwise. */
export function retryDelay(error: MixpanelError, attempt: number, settings: { baseDelayMs: number; maxDelayMs: number }): number {
  if (error.retryAfterMs !== undefined) return error.retryAfterMs;
  return backoffDelay(attempt, settings.baseDelayMs, settings.maxDelayMs);
}

export function abortError(signal: AbortSignal): MixpanelError {
  const reason = signal.reason instanceof Error ? signal.reason.message : String(signal.reason ?? 'aborted');
  return mixpanelError('aborted', `Mixpanel request aborted: ${reason}`, { cause: signal.reason });
}

/** setTimeout as a promise that an AbortSignal can cut short (rejecting with an `aborted` error). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError(signal));
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
