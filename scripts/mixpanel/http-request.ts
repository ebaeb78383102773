// One HTTP exchange with Mixpanel (node:http/https): auth header, gzip, idle timeout, abort.
// The body comes back as a stream, decoded, never buffered whole.
import http, { type IncomingHttpHeaders } from 'node:http';
import https from 'node:https';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip, createInflate } from 'node:zlib';
import { httpStatusError, mixpanelError, redactUrl } from './mixpanel-errors.ts';
import { parseRetryAfter, abortError } from './retry-policy.ts';

export interface HttpExchange {
  method: 'GET' | 'POST';
  url: URL;
  headers: Record<string, string>;
  /** Form body for POST. */
  body?: string;
  signal?: AbortSignal;
  /** No byte for this long fails the exchange. */
  idleTimeoutMs: number;
}

export interface HttpAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  /** The body, gunzipped when Content-Encoding says so. Errors if the connection drops. */
  body: Readable;
}

function networkError(url: URL, error: unknown) {
  const e = error as NodeJS.ErrnoException;
  const what = e.code ? `${e.code}${e.message && !e.message.includes(e.code) ? `: ${e.message}` : ''}` : e.message;
  return mixpanelError(
    'network',
    `could not reach Mixpanel at ${url.origin} (${what}): check the network, MIXPANEL_REGION or MIXPANEL_API_URL.`,
    {
      retryable: true,
      cause: error,
    },
  );
}

function decode(response: http.IncomingMessage): Readable {
  const encoding = String(response.headers['content-encoding'] ?? '').toLowerCase();
  if (encoding !== 'gzip' && encoding !== 'deflate') return response;
  const decoder = encoding === 'gzip' ? createGunzip() : createInflate();
  // pipeline destroys the decoder with the response's error when the connection drops.
  pipeline(response, decoder, () => undefined);
  return decoder;
}

/** Send one request; resolves at the response headers with the (decoded) body stream. */
export function sendRequest(exchange: HttpExchange): Promise<HttpAnswer> {
  const { url, signal } = exchange;
  if (signal?.aborted) return Promise.reject(abortError(signal));
  const transport = url.protocol === 'https:' ? https : http;
  const headers: Record<string, string> = { ...exchange.headers };
  if (exchange.body !== undefined) headers['content-length'] = String(Buffer.byteLength(exchange.body));
  return new Promise<HttpAnswer>((resolve, reject) => {
    const request = transport.request(url, { method: exchange.method, headers, signal });
    let body: Readable | null = null;
    request.setTimeout(exchange.idleTimeoutMs, () => {
      const error = Object.assign(new Error(`no data for ${exchange.idleTimeoutMs / 1000} s`), { code: 'ETIMEDOUT' });
      body?.destroy(error); // the reader sees the timeout, not the reset it causes
      request.destroy(error);
    });
    request.on('error', (error) => {
      reject(signal?.aborted ? abortError(signal) : networkError(url, error));
    });
    request.on('response', (response) => {
      body = decode(response);
      // A drop after the headers surfaces as an error on `body`; keep the request's own error
      // from going unhandled once the promise has settled.
      request.on('error', () => undefined);
      resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
    });
    request.end(exchange.body);
  });
}

/** Read a small body (an error message, an Engage page) to text, with a size cap. */
export async function readText(body: Readable, maxBytes = 64 * 1024 * 1024): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    const buffer = chunk as Buffer;
    size += buffer.length;
    if (size > maxBytes) {
      body.destroy();
      throw mixpanelError('bad_response', `Mixpanel answered more than ${maxBytes} bytes where a small JSON document was expected.`);
    }
    parts.push(buffer);
  }
  return Buffer.concat(parts).toString('utf8');
}

/**
 * Send and check the status: 2xx resolves with the body stream; anything else throws the
 * matching one-line error (retryable for 429 and 5xx, with the server's Retry-After).
 */
export async function sendChecked(exchange: HttpExchange, api: 'export' | 'engage', projectId: number): Promise<HttpAnswer> {
  const answer = await sendRequest(exchange);
  if (answer.status >= 200 && answer.status < 300) return answer;
  let text = '';
  try {
    text = await readText(answer.body, 16 * 1024);
  } catch {
    // a broken error body: the status says enough
  }
  const retryAfterMs = parseRetryAfter(answer.headers['retry-after']);
  throw httpStatusError(answer.status, text, {
    api,
    url: redactUrl(exchange.url.toString()),
    projectId,
    ...(retryAfterMs === null ? {} : { retryAfterMs }),
  });
}

/** Classify an error thrown while reading a body stream (connection dropped, bad gzip). */
export function bodyError(url: URL, error: unknown, signal?: AbortSignal) {
  if (signal?.aborted) return abortError(signal);
  const e = error as NodeJS.ErrnoException;
  const what = e.code ? `${e.code}: ${e.message}` : e.message;
  return mixpanelError('network', `the connection to ${url.origin} broke while reading the answer (${what}).`, {
    retryable: true,
    cause: error,
  });
}
