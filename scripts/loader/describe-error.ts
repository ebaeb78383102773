// Any error as one line a person can act on: PostgreSQL's message with its context, gzip
// damage named as such, an abort as the reason it was asked for.
import { oneLine } from '../mixpanel/mixpanel-errors.ts';

interface ErrorFields {
  message?: string;
  code?: string;
  where?: string;
  hint?: string;
  cause?: unknown;
}

function abortReason(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  return `interrupted: ${reason instanceof Error ? reason.message : String(reason ?? 'aborted')}`;
}

export function describeError(error: unknown, signal?: AbortSignal): string {
  if (signal?.aborted) return abortReason(signal);
  const fields = (error ?? {}) as ErrorFields;
  const message = fields.message || String(error);
  if (fields.code?.startsWith('Z_')) return oneLine(`the gzip input is damaged or cut short (${message})`);
  const parts = [message];
  // PostgreSQL's CONTEXT, e.g. "COPY staged_events, line 3": which staged row was refused.
  const where = fields.where?.split('\n')[0];
  if (where) parts.push(`(${where})`);
  if (fields.hint) parts.push(`hint: ${fields.hint}`);
  return oneLine(parts.join(' '));
}
