// A real HTTP server on 127.0.0.1 that answers like Mixpanel's Export and Engage APIs, for
// tests, the demo and benchmarks. It checks service-account auth and project_id, filters the
// export by UTC day / event / a simple `where`, pages Engage with session_id, gzips when asked,
// and can be told to misbehave: status codes with Retry-After, a connection dropped or stalled
// mid-body, a `terminated early` tail, records split across lines, CRLF, blank lines.
// Every request is recorded (method, path, query, form, auth) for tests to assert on.
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import type { AddressInfo } from 'node:net';
import { ENGAGE_PATH, EXPORT_PATH, readMixpanelSettings, type MixpanelSettings } from './mixpanel-settings.ts';
import type { EngageProfile } from './engage-profiles.ts';

/** How to answer one export request (queued; the default is a plain 200). */
export interface FakeExportResponse {
  /** Answer with this status and `body` (JSON error) instead of data. */
  status?: number;
  body?: string;
  retryAfter?: string;
  /** Wait this long before answering. */
  delayMs?: number;
  /** Send this many body bytes (before gzip), then destroy the connection. */
  dropAfterBytes?: number;
  /** Send this many body bytes, then go silent with the connection open. */
  stallAfterBytes?: number;
  /** Pause this long between body pieces (so the client sees them as separate chunks). */
  chunkDelayMs?: number;
  /** Send this many lines, then Mixpanel's `terminated early` marker line. */
  terminatedEarlyAfterLines?: number;
  /** The marker's text (default "terminated early"). */
  terminatedEarlyText?: string;
  /** Break these lines (0-based, of the lines sent) with a stray newline. */
  splitLines?: number[];
  /** End lines with CRLF. */
  crlf?: boolean;
  /** Put a blank line after every line. */
  blankLines?: boolean;
  /** true: gzip even if not asked; false: never; default: when Accept-Encoding has gzip and the body is > 1400 bytes. */
  gzip?: boolean;
}

export interface FakeEngageResponse {
  status?: number;
  body?: string;
  retryAfter?: string;
  delayMs?: number;
  dropAfterBytes?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  /** Form body fields (POST). */
  form: Record<string, string>;
  headers: http.IncomingHttpHeaders;
  /** Service account user and secret decoded from Authorization (null when absent). */
  user: string | null;
  secret: string | null;
  /** What the fake answered with. */
  status: number;
}

export interface ExportQueryView {
  fromDate: string;
  toDate: string;
  where: string | null;
  event: string[] | null;
}

export interface FakeMixpanelOptions {
  serviceAccount?: string;
  secret?: string;
  projectId?: number;
  /** Export data: JSONL lines (no "\n"). Filtered by the request's days, event and where. */
  events?: string[];
  /** Or a raw body source, sent as is (no filtering): for big generated data sets. */
  exportSource?: ((query: ExportQueryView) => AsyncIterable<Buffer | string> | Iterable<Buffer | string>) | null;
  profiles?: EngageProfile[];
  /** Page size when the request names none (Mixpanel: 1000). */
  engagePageSize?: number;
  /** The export body is written in pieces of this size (default 16 KiB). */
  chunkSize?: number;
}

export interface FakeMixpanel {
  /** Base URL, e.g. http://127.0.0.1:41234: MIXPANEL_API_URL. */
  url: string;
  requests: RecordedRequest[];
  options: Required<Pick<FakeMixpanelOptions, 'serviceAccount' | 'secret' | 'projectId'>> & FakeMixpanelOptions;
  setEvents(lines: string[]): void;
  setProfiles(profiles: EngageProfile[]): void;
  queueExport(...responses: FakeExportResponse[]): void;
  queueEngage(...responses: FakeEngageResponse[]): void;
  /** Client settings aimed at this server: its credentials, fast back-off, a fresh budget file (removed by close). */
  settings(overrides?: Partial<MixpanelSettings>): MixpanelSettings;
  close(): Promise<void>;
}

const TERMINATED_EARLY = 'terminated early';

function errorBody(message: string): string {
  return JSON.stringify({ request: '/api/2.0/export', error: message, status: 'error' });
}

function decodeAuth(header: string | undefined): { user: string | null; secret: string | null } {
  if (!header?.startsWith('Basic ')) return { user: null, secret: null };
  const raw = header.slice(6).trim();
  // Mixpanel accepts base64 and plain text credentials.
  const decoded = raw.includes(':') ? raw : Buffer.from(raw, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return { user: decoded, secret: null };
  return { user: decoded.slice(0, colon), secret: decoded.slice(colon + 1) };
}

async function readBody(request: http.IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const chunk of request) parts.push(chunk as Buffer);
  return Buffer.concat(parts).toString('utf8');
}

/** UTC day of an event time in seconds (or ms, when it is that large). */
function eventDay(time: unknown): string | null {
  if (typeof time !== 'number' || !Number.isFinite(time)) return null;
  const ms = time > 1e11 ? time : time * 1000;
  return new Date(ms).toISOString().slice(0, 10);
}

type Comparison = { property: string; op: string; value: number | string };

/** The part of the segmentation-expression grammar the loader uses: comparisons joined by `and`. */
export function parseSimpleWhere(where: string): Comparison[] | null {
  const parts = where.split(/\)?\s+and\s+\(?/);
  const result: Comparison[] = [];
  for (const raw of parts) {
    const part = raw.replace(/^\(+|\)+$/g, '').trim();
    const match = /^properties\["([^"]+)"\]\s*(==|!=|>=|<=|>|<)\s*(-?\d+(?:\.\d+)?|"[^"]*")$/.exec(part);
    if (!match) return null;
    const literal = match[3]!;
    result.push({ property: match[1]!, op: match[2]!, value: literal.startsWith('"') ? literal.slice(1, -1) : Number(literal) });
  }
  return result;
}

function compare(actual: unknown, op: string, expected: number | string): boolean {
  if (typeof expected === 'number' && typeof actual !== 'number') return false;
  if (typeof expected === 'string' && typeof actual !== 'string') return op === '!=';
  const a = actual as number | string;
  switch (op) {
    case '==':
      return a === expected;
    case '!=':
      return a !== expected;
    case '>':
      return a > expected;
    case '>=':
      return a >= expected;
    case '<':
      return a < expected;
    default:
      return a <= expected;
  }
}

/** Break a line the way a raw newline inside a value would: an escaped \n becomes a real one. */
export function splitLine(line: string): string {
  const escaped = line.indexOf('\\n');
  if (escaped > 0 && line[escaped - 1] !== '\\') return `${line.slice(0, escaped)}\n${line.slice(escaped + 2)}`;
  // Otherwise a stray newline between two tokens, inside the properties object.
  const properties = line.indexOf('"properties":{');
  const comma = line.indexOf(',', properties >= 0 ? properties : 0);
  const at = comma > 0 ? comma + 1 : Math.floor(line.length / 2);
  return `${line.slice(0, at)}\n${line.slice(at)}`;
}

function sleep(ms: number) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function startFakeMixpanel(options: FakeMixpanelOptions = {}): Promise<FakeMixpanel> {
  const state = {
    serviceAccount: options.serviceAccount ?? 'fake-service-account',
    secret: options.secret ?? 'fake-secret',
    projectId: options.projectId ?? 1234,
    ...options,
  };
  let events: string[] = options.events ?? [];
  let profiles: EngageProfile[] = options.profiles ?? [];
  const exportQueue: FakeExportResponse[] = [];
  const engageQueue: FakeEngageResponse[] = [];
  const requests: RecordedRequest[] = [];
  const sessions = new Map<string, EngageProfile[]>();
  const chunkSize = options.chunkSize ?? 16 * 1024;
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'fake-mixpanel-'));
  let budgetFiles = 0;

  function json(response: http.ServerResponse, status: number, body: string, extra: Record<string, string> = {}) {
    response.writeHead(status, { 'content-type': 'application/json', ...extra });
    response.end(body);
  }

  function checkAuth(record: RecordedRequest, response: http.ServerResponse): boolean {
    if (record.user !== state.serviceAccount || record.secret !== state.secret) {
      record.status = 401;
      json(response, 401, JSON.stringify({ error: 'Invalid username or secret', status: 'error' }));
      return false;
    }
    const project = record.query.project_id;
    if (!project) {
      record.status = 400;
      json(response, 400, errorBody('project_id is required when authenticating with a service account'));
      return false;
    }
    if (project !== String(state.projectId)) {
      record.status = 403;
      json(response, 403, errorBody(`service account has no access to project ${project}`));
      return false;
    }
    return true;
  }

  function selectEvents(query: ExportQueryView, limit: number | null): string[] | { error: string } {
    let comparisons: Comparison[] | null = [];
    if (query.where) {
      comparisons = parseSimpleWhere(query.where);
      if (comparisons === null) return { error: `Unable to parse where expression: ${query.where}` };
    }
    const names = query.event ? new Set(query.event) : null;
    const selected: string[] = [];
    for (const line of events) {
      type Parsed = { event?: unknown; properties?: Record<string, unknown> } | null;
      let parsed: Parsed;
      try {
        parsed = JSON.parse(line) as Parsed;
      } catch {
        selected.push(line); // not JSON: sent as is, the client must cope
        continue;
      }
      const properties = parsed?.properties ?? {};
      const day = eventDay(properties.time);
      if (day === null || day < query.fromDate || day > query.toDate) continue;
      if (names && !names.has(String(parsed?.event))) continue;
      if (!comparisons.every((c) => compare(properties[c.property], c.op, c.value))) continue;
      selected.push(line);
      if (limit !== null && selected.length >= limit) break;
    }
    return selected;
  }

  async function writeBody(
    request: http.IncomingMessage,
    response: http.ServerResponse,
    source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
    plan: { gzip: boolean; dropAfterBytes?: number; stallAfterBytes?: number; contentType: string },
  ) {
    const headers: Record<string, string> = { 'content-type': plan.contentType };
    if (plan.gzip) headers['content-encoding'] = 'gzip';
    response.writeHead(200, headers);
    const cut = plan.dropAfterBytes ?? plan.stallAfterBytes;
    const limited = cut === undefined ? source : takeBytes(source, cut);
    const body = Readable.from(limited, { objectMode: false });
    if (plan.gzip) {
      const gzip = createGzip();
      if (cut === undefined) {
        await pipeline(body, gzip, response).catch(() => undefined);
        return;
      }
      // Push the partial body through gzip, flush what it has, then cut.
      body.pipe(gzip).pipe(response, { end: false });
      await new Promise<void>((resolve) => body.on('end', resolve));
      await new Promise<void>((resolve) => gzip.flush(() => resolve()));
      await sleep(30);
    } else {
      if (cut === undefined) {
        await pipeline(body, response).catch(() => undefined);
        return;
      }
      for await (const chunk of body) {
        if (!response.write(chunk)) await new Promise((resolve) => response.once('drain', resolve));
      }
      await new Promise<void>((resolve) => response.write('', () => resolve()));
      await sleep(10);
    }
    if (plan.dropAfterBytes !== undefined) request.socket.destroy();
    // stall: leave the connection open; close() ends it.
  }

  async function handleExport(record: RecordedRequest, request: http.IncomingMessage, response: http.ServerResponse) {
    const plan = exportQueue.shift() ?? {};
    if (plan.delayMs) await sleep(plan.delayMs);
    if (!checkAuth(record, response)) return;
    if (plan.status && plan.status !== 200) {
      record.status = plan.status;
      json(response, plan.status, plan.body ?? errorBody(`fake error ${plan.status}`), plan.retryAfter ? { 'retry-after': plan.retryAfter } : {});
      return;
    }
    const { from_date: fromDate, to_date: toDate } = record.query;
    if (!fromDate || !toDate || !/^\d{4}-\d{2}-\d{2}$/.test(fromDate) || !/^\d{4}-\d{2}-\d{2}$/.test(toDate)) {
      record.status = 400;
      json(response, 400, errorBody('from_date and to_date are required, format yyyy-mm-dd'));
      return;
    }
    let eventNames: string[] | null = null;
    if (record.query.event) {
      try {
        eventNames = JSON.parse(record.query.event) as string[];
      } catch {
        record.status = 400;
        json(response, 400, errorBody('event must be a JSON array of event names'));
        return;
      }
    }
    const view: ExportQueryView = { fromDate, toDate, where: record.query.where ?? null, event: eventNames };
    const acceptsGzip = /\bgzip\b/.test(String(request.headers['accept-encoding'] ?? ''));
    record.status = 200;
    if (state.exportSource) {
      await writeBody(request, response, state.exportSource(view), {
        gzip: plan.gzip ?? acceptsGzip,
        ...(plan.dropAfterBytes === undefined ? {} : { dropAfterBytes: plan.dropAfterBytes }),
        ...(plan.stallAfterBytes === undefined ? {} : { stallAfterBytes: plan.stallAfterBytes }),
        contentType: 'text/plain; charset=utf-8',
      });
      return;
    }
    const limit = record.query.limit ? Number(record.query.limit) : null;
    const selected = selectEvents(view, limit);
    if (!Array.isArray(selected)) {
      record.status = 400;
      json(response, 400, errorBody(selected.error));
      return;
    }
    let lines = selected;
    if (plan.terminatedEarlyAfterLines !== undefined) {
      lines = [...lines.slice(0, plan.terminatedEarlyAfterLines), plan.terminatedEarlyText ?? TERMINATED_EARLY];
    }
    if (plan.splitLines) {
      const split = new Set(plan.splitLines);
      lines = lines.map((line, i) => (split.has(i) ? splitLine(line) : line));
    }
    const end = plan.crlf ? '\r\n' : '\n';
    const text = lines.map((line) => `${plan.crlf ? line.replace(/\n/g, '\r\n') : line}${end}${plan.blankLines ? end : ''}`).join('');
    const bytes = Buffer.from(text);
    const pause = plan.chunkDelayMs;
    const pieces = async function* () {
      for (let i = 0; i < bytes.length; i += chunkSize) {
        if (pause && i > 0) await sleep(pause);
        yield bytes.subarray(i, i + chunkSize);
      }
    };
    await writeBody(request, response, pieces(), {
      gzip: plan.gzip ?? (acceptsGzip && bytes.length > 1400),
      ...(plan.dropAfterBytes === undefined ? {} : { dropAfterBytes: plan.dropAfterBytes }),
      ...(plan.stallAfterBytes === undefined ? {} : { stallAfterBytes: plan.stallAfterBytes }),
      contentType: 'text/plain; charset=utf-8',
    });
  }

  async function handleEngage(record: RecordedRequest, request: http.IncomingMessage, response: http.ServerResponse) {
    const plan = engageQueue.shift() ?? {};
    if (plan.delayMs) await sleep(plan.delayMs);
    if (!checkAuth(record, response)) return;
    if (plan.status && plan.status !== 200) {
      record.status = plan.status;
      json(response, plan.status, plan.body ?? JSON.stringify({ error: `fake error ${plan.status}`, status: 'error' }), plan.retryAfter ? { 'retry-after': plan.retryAfter } : {});
      return;
    }
    const params = { ...record.query, ...record.form };
    const pageSize = params.page_size ? Number(params.page_size) : (options.engagePageSize ?? 1000);
    const page = params.page ? Number(params.page) : 0;
    if (!Number.isInteger(pageSize) || pageSize <= 0 || !Number.isInteger(page) || page < 0) {
      record.status = 400;
      json(response, 400, JSON.stringify({ error: 'page and page_size must be non-negative integers', status: 'error' }));
      return;
    }
    let sessionId = params.session_id ?? null;
    let snapshot: EngageProfile[];
    if (page > 0 || sessionId) {
      const known = sessionId ? sessions.get(sessionId) : undefined;
      if (!known) {
        record.status = 400;
        json(response, 400, JSON.stringify({ error: 'session_id is required (and must be valid) when page > 0', status: 'error' }));
        return;
      }
      snapshot = known;
    } else {
      sessionId = `${Date.now()}-${randomUUID().slice(0, 8).toUpperCase()}`;
      snapshot = profiles;
      sessions.set(sessionId, snapshot);
    }
    const results = snapshot.slice(page * pageSize, (page + 1) * pageSize);
    const text = JSON.stringify({ page, page_size: pageSize, session_id: sessionId, status: 'ok', total: snapshot.length, results });
    const bytes = Buffer.from(text);
    const acceptsGzip = /\bgzip\b/.test(String(request.headers['accept-encoding'] ?? ''));
    record.status = 200;
    await writeBody(request, response, [bytes], {
      gzip: acceptsGzip && bytes.length > 1400,
      ...(plan.dropAfterBytes === undefined ? {} : { dropAfterBytes: plan.dropAfterBytes }),
      contentType: 'application/json',
    });
  }

  const server = http.createServer((request, response) => {
    void (async () => {
      const url = new URL(request.url ?? '/', 'http://127.0.0.1');
      const body = request.method === 'POST' ? await readBody(request) : '';
      const contentType = String(request.headers['content-type'] ?? '');
      const form = contentType.includes('application/x-www-form-urlencoded') ? Object.fromEntries(new URLSearchParams(body)) : {};
      const record: RecordedRequest = {
        method: request.method ?? 'GET',
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        form,
        headers: request.headers,
        ...decodeAuth(request.headers.authorization),
        status: 0,
      };
      requests.push(record);
      if (url.pathname === EXPORT_PATH && request.method === 'GET') return handleExport(record, request, response);
      if (url.pathname === ENGAGE_PATH && (request.method === 'POST' || request.method === 'GET')) return handleEngage(record, request, response);
      record.status = 404;
      json(response, 404, JSON.stringify({ error: `no fake for ${request.method} ${url.pathname}`, status: 'error' }));
    })().catch((error: unknown) => {
      if (!response.headersSent) json(response, 500, JSON.stringify({ error: String(error), status: 'error' }));
      else response.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    requests,
    options: state,
    setEvents(lines) {
      events = lines;
    },
    setProfiles(next) {
      profiles = next;
    },
    queueExport(...responses) {
      exportQueue.push(...responses);
    },
    queueEngage(...responses) {
      engageQueue.push(...responses);
    },
    settings(overrides = {}) {
      return readMixpanelSettings(
        {},
        {
          serviceAccount: state.serviceAccount,
          secret: state.secret,
          projectId: state.projectId,
          apiUrl: url,
          projectTimezone: null,
          budgetFile: path.join(scratch, `budget-${++budgetFiles}.json`),
          baseDelayMs: 5,
          maxDelayMs: 40,
          idleTimeoutMs: 5_000,
          ...overrides,
        },
      );
    },
    close() {
      return new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          rmSync(scratch, { recursive: true, force: true });
          resolve();
        });
      });
    },
  };
}

/** The first `limit` bytes of a source. */
async function* takeBytes(source: AsyncIterable<Buffer | string> | Iterable<Buffer | string>, limit: number): AsyncGenerator<Buffer> {
  let left = limit;
  for await (const piece of source) {
    if (left <= 0) return;
    const bytes = typeof piece === 'string' ? Buffer.from(piece) : piece;
    if (bytes.length <= left) {
      left -= bytes.length;
      yield bytes;
    } else {
      yield bytes.subarray(0, left);
      left = 0;
    }
  }
}
