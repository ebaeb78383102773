// Deterministic, realistic Mixpanel raw-export JSONL at any scale, streamed with flat memory.
//
// Lines look like Mixpanel's export: {"event":…,"properties":{"time":…,"distinct_id":…,
// "$insert_id":…,"mp_processing_time_ms":…,…}}. Users are Zipf-ish (a few very active ones),
// events are spread over `days` up to `end` in time order, mp_processing_time_ms is a few
// seconds after `time` (1 hour to 5 days for the late fraction, never after `end`), a few
// events lack $insert_id, a few carry `time` in ms, and a fraction of lines are exact re-sends
// of earlier lines (duplicates).
// Speed: lines are written as bytes into 1 MiB buffers from pre-encoded pieces, numbers digit
// by digit: no JSON.stringify and no string building per line.
import { Readable, type Writable } from 'node:stream';
import { createRandom, type Random } from './prng.ts';
import { PLACES, sampleUser, type Place } from './sample-users.ts';

export interface SampleEventOptions {
  users: number;
  /** Lines to write, duplicates included. */
  events: number;
  /** The events span the `days` days before `end`. */
  days: number;
  end: Date;
  seed: number;
  /** Fraction of lines that are exact copies of an earlier line (default 0.02). */
  duplicateRate?: number;
  /** Fraction of events processed 1 hour to 5 days after they happened (default 0.01). */
  lateRate?: number;
  /** Fraction of events without $insert_id (default 0.03). */
  missingInsertIdRate?: number;
  /** Fraction of events whose `time` is in milliseconds (default 0.005). */
  msTimeRate?: number;
  /** Zipf exponent of user activity (default 0.9). */
  zipf?: number;
}

export interface SampleEventStats {
  lines: number;
  duplicates: number;
  late: number;
  missingInsertId: number;
  msTimes: number;
  bytes: number;
}

export const DEFAULT_EVENT_RATES = { duplicateRate: 0.02, lateRate: 0.01, missingInsertIdRate: 0.03, msTimeRate: 0.005, zipf: 0.9 };

const CHUNK_BYTES = 1024 * 1024;
const MAX_LINE_BYTES = 8 * 1024;
const RING_SIZE = 4096;

const enc = (text: string) => Buffer.from(text, 'utf8');
const json = (value: string) => enc(JSON.stringify(value));

/** What an event's own properties are written with. */
interface Out {
  raw(bytes: Buffer): void;
  int(n: number): void;
  /** A money amount from integer cents: 261.74, 347.80. */
  cents(n: number): void;
  bool(b: boolean): void;
}

interface EventKind {
  name: string;
  weight: number;
  web?: boolean; // only from web devices
  app?: boolean; // only from apps / servers
  props: (r: Random, out: Out) => void;
}

const pool = (values: string[], key: string) => values.map((v) => enc(`,"${key}":${JSON.stringify(v)}`));
const PAGE_PATHS = ['/', '/pricing', '/features', '/blog/how-we-scaled-postgres', '/docs/getting-started', '/signup', '/login', '/account/billing', '/p/espresso-machine', '/p/grinder', '/search?q=café', '/cart', '/checkout'];
const PAGE_TITLE_TEXT = ['Home', 'Pricing', 'Features', 'Blog – How we scaled Postgres', 'Docs', 'Sign up', 'Log in', 'Billing', 'Espresso machine “Pro”', 'Grinder', 'Search', 'Cart', 'Checkout'];
const PAGE_VIEWS = PAGE_PATHS.map((p, i) =>
  enc(`,"$current_url":${JSON.stringify(`https://shop.example.com${p}`)},"current_page_title":${JSON.stringify(PAGE_TITLE_TEXT[i])},"current_domain":"shop.example.com"`),
);
const CURRENT_URLS = pool(PAGE_PATHS.map((p) => `https://shop.example.com${p}`), '$current_url');
const EL_TEXTS = pool(PAGE_TITLE_TEXT, '$el_text');
const SCREENS = pool(PAGE_TITLE_TEXT, 'screen');
const REFERRERS = pool(['$direct', 'https://www.google.com/', 'https://news.ycombinator.com/', 'https://t.co/', 'https://www.bing.com/'], '$initial_referrer');
const UTM = pool(['google', 'newsletter', 'twitter', 'partner'], 'utm_source');
const SEARCHES = pool(['espresso', 'grinder burr', 'café crème', '"quoted" query', 'back\\slash', 'コーヒー', 'milk frother', 'tamper 58mm', 'descaler', '☕ mug'], 'query');
const ITEMS = pool(['sku-1001', 'sku-1002', 'sku-2040', 'sku-3300', 'sku-4711', 'sku-9000'], 'item_id');
const CATEGORIES = pool(['Machines', 'Grinders', 'Accessories', 'Beans', 'Cleaning'], 'category');
const CURRENCIES = pool(['USD', 'EUR', 'GBP', 'JPY'], 'currency');
const LOGIN_METHODS = pool(['email', 'google', 'github', 'apple'], 'method');
const SIGNUP_METHODS = pool(['email', 'google', 'github', 'apple'], 'signup_method');
const PLANS = pool(['free', 'pro', 'team', 'enterprise'], 'plan');
const CHANNELS = pool(['email', 'link', 'twitter'], 'channel');
const ERROR_MESSAGE = enc(`,"message":${JSON.stringify('Internal error\nplease retry')}`);
const k = (text: string) => enc(`,"${text}":`);
const K = {
  sessionLength: k('$ae_session_length'),
  results: k('results'),
  price: k('price'),
  quantity: k('quantity'),
  amount: k('amount'),
  items: k('items'),
  couponWelcome: enc(',"coupon":"WELCOME10"'),
  couponNone: enc(',"coupon":null'),
  firstPurchase: k('first_purchase'),
  mrr: k('mrr'),
  invitees: k('invitees'),
  code: k('code'),
};
const cents = (r: Random) => 500 + r.int(49_500);

const KINDS: EventKind[] = [
  {
    name: '$mp_web_page_view',
    weight: 34,
    web: true,
    props: (r, o) => {
      o.raw(r.pick(PAGE_VIEWS));
      o.raw(r.pick(REFERRERS));
      if (r.chance(0.2)) o.raw(r.pick(UTM));
    },
  },
  { name: '$mp_click', weight: 8, web: true, props: (r, o) => (o.raw(r.pick(EL_TEXTS)), o.raw(r.pick(CURRENT_URLS))) },
  { name: '$ae_session', weight: 6, app: true, props: (r, o) => (o.raw(K.sessionLength), o.int(1 + r.int(900))) },
  { name: 'Screen View', weight: 8, app: true, props: (r, o) => o.raw(r.pick(SCREENS)) },
  { name: 'Log In', weight: 7, props: (r, o) => o.raw(r.pick(LOGIN_METHODS)) },
  { name: 'Search', weight: 9, props: (r, o) => (o.raw(r.pick(SEARCHES)), o.raw(K.results), o.int(r.int(120))) },
  { name: 'View Item', weight: 12, props: (r, o) => (o.raw(r.pick(ITEMS)), o.raw(r.pick(CATEGORIES)), o.raw(K.price), o.cents(cents(r))) },
  { name: 'Add To Cart', weight: 5, props: (r, o) => (o.raw(r.pick(ITEMS)), o.raw(K.quantity), o.int(1 + r.int(3)), o.raw(K.price), o.cents(cents(r))) },
  {
    name: 'Purchase',
    weight: 2.5,
    props: (r, o) => {
      o.raw(K.amount);
      o.cents(cents(r));
      o.raw(r.pick(CURRENCIES));
      o.raw(K.items);
      o.int(1 + r.int(5));
      o.raw(r.chance(0.2) ? K.couponWelcome : K.couponNone);
      o.raw(K.firstPurchase);
      o.bool(r.chance(0.3));
    },
  },
  { name: 'Sign Up', weight: 1.5, props: (r, o) => (o.raw(r.pick(SIGNUP_METHODS)), o.raw(r.pick(PLANS))) },
  { name: 'Subscription Renewed', weight: 0.7, props: (r, o) => (o.raw(r.pick(PLANS)), o.raw(K.mrr), o.cents(cents(r))) },
  { name: 'Invite Sent', weight: 1, props: (r, o) => (o.raw(K.invitees), o.int(1 + r.int(4))) },
  { name: 'Share', weight: 1.5, props: (r, o) => o.raw(r.pick(CHANNELS)) },
  { name: 'Café Visité ☕', weight: 0.3, props: () => undefined },
  { name: 'Error "500" shown', weight: 0.3, props: (r, o) => (o.raw(ERROR_MESSAGE), o.raw(K.code), o.int(500 + r.int(4))) },
];

interface KindTable {
  kinds: EventKind[];
  /** `{"event":"<name>","properties":{"time":` per kind. */
  prefixes: Buffer[];
  cumulative: Float64Array;
}

function kindTable(kinds: EventKind[]): KindTable {
  const cumulative = new Float64Array(kinds.length);
  let total = 0;
  kinds.forEach((kind, i) => {
    total += kind.weight;
    cumulative[i] = total;
  });
  for (let i = 0; i < kinds.length; i++) cumulative[i]! /= total;
  return { kinds, prefixes: kinds.map((kind) => enc(`{"event":${JSON.stringify(kind.name)},"properties":{"time":`)), cumulative };
}
const WEB_KINDS = kindTable(KINDS.filter((kind) => !kind.app));
const APP_KINDS = kindTable(KINDS.filter((kind) => !kind.web));

function pickIndex(cumulative: Float64Array, u: number): number {
  let lo = 0;
  let hi = cumulative.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cumulative[mid]! > u) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

const PLACE_FRAGMENTS = new Map<Place, string>(
  PLACES.map((p) => [p, `,"$city":${JSON.stringify(p.city)},"$region":${JSON.stringify(p.region)},"mp_country_code":${JSON.stringify(p.countryCode)}`]),
);
const INSERT_ID = enc(',"$insert_id":"');
const API_TIMESTAMP = enc('","$mp_api_timestamp_ms":');
const API_TIMESTAMP_NO_INSERT_ID = enc(',"$mp_api_timestamp_ms":');
const PROCESSING = enc(',"mp_processing_time_ms":');
const LINE_END = enc('}}\n');
const TRUE = enc('true');
const FALSE = enc('false');
// 52 letters, like Mixpanel's generated $insert_id values.
const LETTERS = enc('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ');

interface UserBytes {
  /** `,"distinct_id":…,<device properties>,<place>` */
  identity: Buffer;
  /** `,"$user_id":…` or empty for anonymous users. */
  userId: Buffer;
  web: boolean;
}

function userBytes(seed: number, index: number): UserBytes {
  const user = sampleUser(seed, index);
  return {
    identity: enc(`,"distinct_id":${user.distinctIdJson},${user.platform.fragment}${PLACE_FRAGMENTS.get(user.place)}`),
    userId: user.kind === 'anonymous' ? Buffer.alloc(0) : enc(`,"$user_id":${user.distinctIdJson}`),
    web: user.platform.web,
  };
}

function validate(options: SampleEventOptions): void {
  const { users, events, days } = options;
  if (!(Number.isInteger(users) && users > 0)) throw new Error(`users must be a positive integer, got ${users}`);
  if (!(Number.isInteger(events) && events >= 0)) throw new Error(`events must be a non-negative integer, got ${events}`);
  if (!(days > 0)) throw new Error(`days must be positive, got ${days}`);
  if (!Number.isFinite(options.end.getTime())) throw new Error('end must be a valid date');
}

/**
 * The JSONL as Buffers of whole lines (about 1 MiB each), produced on demand: memory stays flat
 * whatever `events` is. The generator's return value is the counts.
 */
export function* sampleEventChunks(options: SampleEventOptions): Generator<Buffer, SampleEventStats> {
  validate(options);
  const rates = { ...DEFAULT_EVENT_RATES };
  for (const key of Object.keys(DEFAULT_EVENT_RATES) as Array<keyof typeof DEFAULT_EVENT_RATES>) {
    if (options[key] !== undefined) rates[key] = options[key];
  }
  const { users, events, seed } = options;
  const endMs = options.end.getTime();
  const spanMs = options.days * 86_400_000;
  const startMs = endMs - spanMs;
  const slotMs = spanMs / Math.max(1, events);
  const random = createRandom(seed, 0xe7e7);
  const stats: SampleEventStats = { lines: 0, duplicates: 0, late: 0, missingInsertId: 0, msTimes: 0, bytes: 0 };

  // Zipf-ish activity: user index k has weight 1/(k+1)^s.
  const cumulative = new Float64Array(users);
  let total = 0;
  for (let i = 0; i < users; i++) {
    total += 1 / (i + 1) ** rates.zipf;
    cumulative[i] = total;
  }
  for (let i = 0; i < users; i++) cumulative[i]! /= total;
  // Users' bytes are built on first use; the cache is bounded, so memory stays flat.
  const cache = new Map<number, UserBytes>();
  const user = (index: number): UserBytes => {
    let bytes = cache.get(index);
    if (bytes === undefined) {
      bytes = userBytes(seed, index);
      if (cache.size < 100_000) cache.set(index, bytes);
    }
    return bytes;
  };

  let buf = Buffer.allocUnsafe(CHUNK_BYTES);
  let pos = 0;
  const raw = (bytes: Buffer) => {
    const length = bytes.length;
    if (length > 24) {
      buf.set(bytes, pos); // a native call costs more than a short loop
    } else {
      for (let i = 0; i < length; i++) buf[pos + i] = bytes[i]!;
    }
    pos += length;
  };
  // Digits of a non-negative integer below 2^31, with small-integer arithmetic only.
  const small = (value: number, minDigits: number) => {
    let n = value | 0;
    let digits = 1;
    for (let t = n; t >= 10; t = (t / 10) | 0) digits++;
    if (digits < minDigits) digits = minDigits;
    let p = pos + digits;
    pos = p;
    for (let i = 0; i < digits; i++) {
      const q = (n / 10) | 0;
      buf[--p] = 48 + n - q * 10;
      n = q;
    }
  };
  // Timestamps in ms reach 1.8e12: split them so that the arithmetic stays on small integers.
  const int = (value: number) => {
    if (value < 1e9) {
      small(value, 1);
    } else {
      const high = Math.floor(value / 1e9);
      small(high, 1);
      small(value - high * 1e9, 9);
    }
  };
  const out: Out = {
    raw,
    int,
    cents: (value) => {
      int(Math.floor(value / 100));
      buf[pos++] = 46; // .
      buf[pos++] = 48 + Math.floor((value % 100) / 10);
      buf[pos++] = 48 + (value % 10);
    },
    bool: (value) => raw(value ? TRUE : FALSE),
  };

  const ring: Buffer[] = [];

  const writeEvent = (line: number) => {
    // Slot by slot through the window, one slot per line (re-sends included, so the newest
    // events reach the end of the window), jittered inside the slot: lines come in time order.
    const timeMs = Math.min(endMs - 1, Math.floor(startMs + (line + random.next()) * slotMs));
    const timeSec = Math.floor(timeMs / 1000);
    const u = user(pickIndex(cumulative, random.next()));
    const table = u.web ? WEB_KINDS : APP_KINDS;
    const kindIndex = pickIndex(table.cumulative, random.next());
    let lateness: number;
    if (random.chance(rates.lateRate)) {
      lateness = Math.floor(3_600_000 * Math.exp(random.next() * Math.log(120))); // 1 h .. 5 days, log-uniform
      stats.late++;
    } else {
      lateness = Math.min(60_000, 150 + Math.floor(-Math.log(1 - random.next()) * 2500));
    }
    const processing = Math.max(timeSec * 1000, Math.min(endMs, timeSec * 1000 + lateness));
    const apiTimestamp = Math.max(timeSec * 1000, processing - 20 - random.int(400));

    raw(table.prefixes[kindIndex]!);
    if (random.chance(rates.msTimeRate)) {
      int(timeSec * 1000 + random.int(1000));
      stats.msTimes++;
    } else {
      int(timeSec);
    }
    raw(u.identity);
    if (random.chance(rates.missingInsertIdRate)) {
      stats.missingInsertId++;
      raw(API_TIMESTAMP_NO_INSERT_ID);
    } else {
      raw(INSERT_ID);
      // 5 letters from each 30 random bits (52^5 < 2^30), in small-integer arithmetic.
      let v = 0;
      for (let i = 0; i < 36; i++) {
        if (i % 5 === 0) v = random.u32() & 0x3fffffff;
        const q = (v / 52) | 0;
        buf[pos++] = LETTERS[v - q * 52]!;
        v = q;
      }
      raw(API_TIMESTAMP);
    }
    int(apiTimestamp);
    raw(u.userId);
    raw(PROCESSING);
    int(processing);
    table.kinds[kindIndex]!.props(random, out);
    raw(LINE_END);
  };

  for (let line = 0; line < events; line++) {
    if (pos + MAX_LINE_BYTES > buf.length) {
      stats.bytes += pos;
      yield buf.subarray(0, pos);
      buf = Buffer.allocUnsafe(CHUNK_BYTES);
      pos = 0;
    }
    if (ring.length > 0 && random.chance(rates.duplicateRate)) {
      raw(ring[random.int(ring.length)]!);
      stats.duplicates++;
    } else {
      const start = pos;
      writeEvent(line);
      // Keep a sample of recent lines to re-send later (a copy: the chunk is handed out).
      if (random.chance(0.25)) {
        const copy = Buffer.from(buf.subarray(start, pos));
        if (ring.length < RING_SIZE) ring.push(copy);
        else ring[random.int(RING_SIZE)] = copy;
      }
    }
    stats.lines++;
  }
  if (pos > 0) {
    stats.bytes += pos;
    yield buf.subarray(0, pos);
  }
  return stats;
}

/** Run the generator to the end, handing each chunk to `onChunk`; returns the counts. */
export function forEachSampleChunk(options: SampleEventOptions, onChunk: (chunk: Buffer) => void): SampleEventStats {
  const chunks = sampleEventChunks(options);
  for (;;) {
    const next = chunks.next();
    if (next.done) return next.value;
    onChunk(next.value);
  }
}

/** Every line as a string (no "\n"): for small data sets (tests, the fake server's setEvents). */
export function sampleEventLines(options: SampleEventOptions): string[] {
  const parts: Buffer[] = [];
  forEachSampleChunk(options, (chunk) => parts.push(chunk));
  const text = Buffer.concat(parts).toString('utf8');
  return text === '' ? [] : text.slice(0, -1).split('\n');
}

/** The JSONL as a byte Readable (for piping into the loader or the fake server). */
export function sampleEventStream(options: SampleEventOptions): Readable {
  return Readable.from(sampleEventChunks(options), { objectMode: false });
}

/** Write the JSONL to a stream, honouring back-pressure; resolves with the counts. */
export async function writeSampleEvents(options: SampleEventOptions, out: Writable): Promise<SampleEventStats> {
  const chunks = sampleEventChunks(options);
  for (;;) {
    const next = chunks.next();
    if (next.done) return next.value;
    if (!out.write(next.value)) await new Promise<void>((resolve) => out.once('drain', resolve));
  }
}
