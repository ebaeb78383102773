// The machine's limit for loading a file: COPY it, as it is, into an UNLOGGED one-column jsonb table.
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';

const TABLE = 'public.bench_copy_limit';

export async function createCopyTable(pool: pg.Pool): Promise<void> {
  await pool.query(`drop table if exists ${TABLE}; create unlogged table ${TABLE} (doc jsonb not null)`);
}

/** Drops the table (and its rows' buffers), so the next step of a trial meets the database as it was. */
export async function dropCopyTable(pool: pg.Pool): Promise<void> {
  await pool.query(`drop table ${TABLE}`);
}

/**
 * Streams the JSONL file into the table with COPY … (format csv) using quote and delimiter bytes that
 * valid JSON never contains raw, so every line arrives verbatim and is parsed once, as jsonb.
 */
export async function copyFileAsJsonb(pool: pg.Pool, file: string): Promise<number> {
  const client = await pool.connect();
  try {
    await client.query(`truncate ${TABLE}`);
    const copy = client.query(copyFrom(`copy ${TABLE} (doc) from stdin with (format csv, quote e'\\x01', delimiter e'\\x02')`));
    await pipeline(createReadStream(file), copy);
    return copy.rowCount;
  } finally {
    client.release();
  }
}
