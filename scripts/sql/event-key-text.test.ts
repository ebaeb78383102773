// mixpanel_sync.event_key (100-parse.sql) writes the JSON array's text directly instead of building a jsonb value;
// every key already stored must stay the same, so it must give, bit for bit, md5 of jsonb_build_array(...)::text, the
// formula it replaced (written out below as the reference). Names and $insert_ids with quotes, backslashes, control
// characters, non-ASCII and astral characters, empty and absent values; content with and without distinct_id.
// Seen failing: with `', '` between elements written as `','` (every key differs), and without the coalesce around
// the content hash (a null content gave a null key; the reference gives md5 of [name, second, null, null]).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
});
afterAll(async () => {
  await db?.drop();
});

const REFERENCE = `md5(case
    when insert_id <> '' then jsonb_build_array(event_name, second, insert_id)::text
    else jsonb_build_array(event_name, second, null, md5((content #- '{properties,distinct_id}')::text))::text
  end)::uuid`;

const text = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 12 }).map((s) => s.replaceAll(String.fromCharCode(0), '')),
  fc.constantFrom('', 'a"b', 'back\\slash', 'tab\tnew\nline\r', '\u0001\u001f\u007f', 'ü€𝄞🙂', '\u2028\u2029', 'null'),
);

describe('event_key', () => {
  it('equals md5 of jsonb_build_array(...)::text for any name, second, $insert_id and content', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            name: fc.option(text, { nil: null }),
            second: fc.option(fc.oneof(fc.integer({ min: 1, max: 2_000_000_000 }), fc.constantFrom(-5, 0, 99_999_999_999)), { nil: null }),
            insertId: fc.option(text, { nil: null }),
            content: fc.option(
              fc.record({
                event: text,
                properties: fc.record({ distinct_id: text, x: fc.oneof(text, fc.integer(), fc.double({ noNaN: true })) }),
              }),
              { nil: null },
            ),
          }),
          { minLength: 1, maxLength: 40 },
        ),
        async (cases) => {
          const { rows } = await db.pool.query<{ name: string | null; ours: string | null; reference: string | null }>(
            `select x ->> 'name' as name, mixpanel_sync.event_key(event_name, second, insert_id, content)::text as ours,
                ${REFERENCE}::text as reference
             from jsonb_array_elements($1::jsonb) x,
               lateral (select x ->> 'name' as event_name, (x ->> 'second')::bigint as second, x ->> 'insertId' as insert_id,
                 x -> 'content' as content) v`,
            [JSON.stringify(cases.map((c) => ({ ...c, content: c.content ?? undefined })))],
          );
          for (const row of rows) expect(row.ours, JSON.stringify(row.name)).toBe(row.reference);
        },
      ),
      { numRuns: 60 },
    );
  });
});
