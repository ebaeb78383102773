// fast-check arbitraries of realistic Mixpanel export lines: exact re-sends, same-second events, missing $insert_id,
// UTC day boundaries, unicode / 255-character / numeric distinct ids, times in seconds and in milliseconds,
// property values of every JSON type, and a sprinkle of lines the parser must reject.
import fc from 'fast-check';

export const dayMs = 86_400_000;

export interface ExportEvent {
  event: string;
  properties: Record<string, unknown>;
}

/** One staged line: a valid event (as its object and its exact text) or a line the parser must reject. */
export type StagedLine = { kind: 'event'; event: ExportEvent; line: string } | { kind: 'invalid'; line: string };

export interface EventSpan {
  /** first UTC day events fall on, as epoch ms of its midnight */
  firstDayMs: number;
  /** how many consecutive UTC days */
  days: number;
}

/** Single code points, any plane, no NUL and no lone surrogate (neither can be stored in jsonb). */
const codePoint = fc
  .integer({ min: 1, max: 0x10ffff })
  .filter((cp) => cp < 0xd800 || cp > 0xdfff)
  .map((cp) => String.fromCodePoint(cp));

// Mostly a few users, so that batches meet on the same rows; now and then any other kind of id.
const distinctIdArb: fc.Arbitrary<string | number> = fc.oneof(
  { arbitrary: fc.constantFrom('u1', 'ü-2', '123'), weight: 12 },
  { arbitrary: fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 }), weight: 1 },
  { arbitrary: fc.string({ unit: codePoint, minLength: 255, maxLength: 255 }), weight: 1 },
  { arbitrary: fc.constantFrom(123, 4_567_890_123, -7), weight: 2 },
);

const eventNameArb = fc.oneof(
  { arbitrary: fc.constantFrom('login', 'purchase'), weight: 6 },
  { arbitrary: fc.constantFrom('Sign Up', 'page view', 'ログイン', '🎉', 'n'.repeat(255)), weight: 1 },
);

/** Few distinct seconds, so that events often share one; the first and last second of the day; anything. */
const secondOfDayArb = fc.oneof(
  { arbitrary: fc.constantFrom(0, 1, 43_200, 86_399), weight: 3 },
  { arbitrary: fc.integer({ min: 0, max: 86_399 }), weight: 1 },
);

const propertyValuesArb = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2, stringUnit: 'grapheme' }), { maxKeys: 3 });

export function exportEventArb({ firstDayMs, days }: EventSpan): fc.Arbitrary<ExportEvent> {
  return fc
    .record({
      event: eventNameArb,
      distinctId: distinctIdArb,
      day: fc.integer({ min: 0, max: days - 1 }),
      second: secondOfDayArb,
      // present: the time is sent in milliseconds (>= 1e11), with this many ms past the second
      millis: fc.option(fc.integer({ min: 0, max: 999 }), { freq: 3 }),
      insertId: fc.option(fc.oneof(fc.constantFrom('a', 'b', 'c'), fc.uuid(), fc.nat(5)), { freq: 3 }),
      processingLateMs: fc.option(fc.integer({ min: 0, max: 3 * dayMs }), { freq: 4 }),
      extra: propertyValuesArb,
    })
    .map(({ event, distinctId, day, second, millis, insertId, processingLateMs, extra }) => {
      const seconds = (firstDayMs + day * dayMs) / 1000 + second;
      const properties: Record<string, unknown> = {
        ...extra,
        distinct_id: distinctId,
        time: millis === null ? seconds : seconds * 1000 + millis,
      };
      if (insertId !== null) properties.$insert_id = insertId;
      if (processingLateMs !== null) properties.mp_processing_time_ms = seconds * 1000 + processingLateMs;
      return { event, properties };
    });
}

/** Lines the parser must put into sync_rejects, one of each kind of trouble. */
const invalidLineArb: fc.Arbitrary<string> = fc.constantFrom(
  'not json at all',
  '{"event": "cut off", "properties": {"distin',
  '[1, 2]',
  '42',
  '"a string"',
  'null',
  '{"event": "no properties"}',
  '{"properties": {"distinct_id": "u1", "time": 1709251200}}',
  '{"event": "", "properties": {"distinct_id": "u1", "time": 1709251200}}',
  '{"event": 5, "properties": {"distinct_id": "u1", "time": 1709251200}}',
  '{"event": "x", "properties": [1]}',
  '{"event": "x", "properties": {"time": 1709251200}}',
  '{"event": "x", "properties": {"distinct_id": "", "time": 1709251200}}',
  '{"event": "x", "properties": {"distinct_id": {"a": 1}, "time": 1709251200}}',
  `{"event": "x", "properties": {"distinct_id": "${'d'.repeat(256)}", "time": 1709251200}}`,
  `{"event": "${'e'.repeat(256)}", "properties": {"distinct_id": "u1", "time": 1709251200}}`,
  '{"event": "x", "properties": {"distinct_id": "u1", "time": "1709251200"}}',
  '{"event": "x", "properties": {"distinct_id": "u1"}}',
  '{"event": "x", "properties": {"distinct_id": "u1", "time": 0}}',
  '{"event": "x", "properties": {"distinct_id": "u1", "time": -5}}',
  '{"event": "after every clock", "properties": {"distinct_id": "u1", "time": 4102444800}}',
  '{"event": "nul\\u0000", "properties": {"distinct_id": "u1", "time": 1709251200}}',
);

/** Numbers beyond any real time. They must not fail the run: such a time is a rejected line, such a processing time is ignored. */
export const outOfRangeLineArb: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(1e30, -1e19, 9.3e18, 1e21).map((time) => `{"event": "x", "properties": {"distinct_id": "u1", "time": ${time}}}`),
  fc
    .constantFrom(1e30, -1e30)
    .map((ms) => `{"event": "x", "properties": {"distinct_id": "u1", "time": 1709251200, "mp_processing_time_ms": ${ms}}}`),
);

/** The event sent again: same name, user, second and $insert_id (so the same event to Mixpanel), other details changed. */
function retried(event: ExportEvent, millis: number): StagedLine {
  const second = eventSecond(event);
  const properties = {
    ...event.properties,
    time: second * 1000 + millis,
    mp_processing_time_ms: second * 1000 + millis + 1,
    retry: millis,
  };
  const again = { event: event.event, properties };
  return { kind: 'event', event: again, line: JSON.stringify(again) };
}

export interface BatchOptions extends EventSpan {
  maxEvents?: number;
}

/** A batch as an export would send it: events, exact re-sends of some of them, a few bad lines, in any order. */
export function batchArb({ maxEvents = 40, ...span }: BatchOptions): fc.Arbitrary<StagedLine[]> {
  return fc
    .record({
      // size 'max': lengths spread up to maxEvents (fast-check's default keeps arrays to about ten)
      events: fc.array(exportEventArb(span), { maxLength: maxEvents, size: 'max' }),
      resends: fc.array(fc.nat(), { maxLength: Math.ceil(maxEvents / 4), size: 'max' }),
      // retries: the same event sent again with other details (ms of the same second, a processing time, a property)
      retries: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 999 })), { maxLength: Math.ceil(maxEvents / 4), size: 'max' }),
      invalid: fc.array(invalidLineArb, { maxLength: 3 }),
    })
    .chain(({ events, resends, retries, invalid: bad }) => {
      const lines: StagedLine[] = events.map((event) => ({ kind: 'event', event, line: JSON.stringify(event) }));
      if (lines.length > 0) for (const index of resends) lines.push(lines[index % events.length]!);
      if (lines.length > 0) for (const [index, millis] of retries) lines.push(retried(events[index % events.length]!, millis));
      for (const line of bad) lines.push({ kind: 'invalid', line });
      return fc.shuffledSubarray(lines, { minLength: lines.length, maxLength: lines.length });
    });
}

/** The lines of a batch that can be used, as staged lines again (for building batches out of others). */
export function validLines(batch: StagedLine[]): StagedLine[] {
  return batch.filter((line) => line.kind === 'event');
}

/** The epoch second of an event, as the parser reads its time: milliseconds from 1e11 on, kept to the second. */
export function eventSecond(event: ExportEvent): number {
  const time = Number(event.properties.time);
  return Math.floor(time >= 1e11 ? time / 1000 : time);
}

/** Epoch ms of the UTC midnight of the day an event falls on. */
export function eventDayMs(event: ExportEvent): number {
  return Math.floor(eventSecond(event) / 86_400) * dayMs;
}

/** An epoch second as Postgres prints a timestamptz in UTC through to_jsonb: 2024-03-01T00:00:00+00:00. */
export function isoInstant(second: number): string {
  return new Date(second * 1000).toISOString().replace('.000Z', '+00:00');
}
