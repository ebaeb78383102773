// Whole-table snapshots of the event tables and the first difference between two of them, for property tests.
import type pg from 'pg';

export type Queryable = Pick<pg.PoolClient, 'query'>;

/** table name -> (primary key as JSON.stringify([…]) -> row as JSON, ignored columns left out) */
export type Snapshot = Record<string, Map<string, Record<string, unknown>>>;

const primaryKeys: Record<string, string[]> = {
  events_daily: ['distinct_id', 'day', 'event_name'],
  event_ledger: ['distinct_id', 'event_key'],
  subscribers: ['distinct_id'],
  sync_watermarks: ['source'],
  sync_runs: ['id'],
  sync_rejects: ['id'],
  sync_settings: ['key'],
  staged_events: ['run_id', 'line_id'],
};

const eventTables = ['events_daily', 'event_ledger', 'subscribers'];

/** Every table a run can write, except run_events (no key; its rows are checked by run). */
export const allTables = [...eventTables, 'sync_watermarks', 'sync_runs', 'sync_rejects', 'sync_settings', 'staged_events'];

/** Every row of the tables, read in one statement; `ignore` lists columns as table.column. */
export async function snapshot(client: Queryable, tables = eventTables, ignore: string[] = []): Promise<Snapshot> {
  const parts = tables.map((table) => {
    const key = primaryKeys[table]!.map((column) => `t.${column}`).join(', ');
    const dropped = ignore.filter((c) => c.startsWith(`${table}.`)).map((c) => c.slice(table.length + 1));
    return `'${table}', (select coalesce(jsonb_agg(jsonb_build_array(jsonb_build_array(${key})::text, to_jsonb(t) - '{${dropped.join(',')}}'::text[]) order by ${key}), '[]')
      from mixpanel_sync.${table} t)`;
  });
  const { rows } = await client.query(`select jsonb_build_object(${parts.join(', ')}) as tables`);
  const read = rows[0].tables as Record<string, [string, Record<string, unknown>][]>;
  const result: Snapshot = {};
  for (const table of tables) { // in the order asked for: the first difference is looked for in that order
    result[table] = new Map(read[table]!.map(([key, row]) => [JSON.stringify(JSON.parse(key)), row]));
  }
  return result;
}

/** The first difference, table by table in the given order and key by key in key order: table, key, column, values. */
export function firstDifference(expected: Snapshot, actual: Snapshot): string | undefined {
  for (const table of Object.keys(expected)) {
    const e = expected[table]!;
    const a = actual[table] ?? new Map();
    const keys = [...new Set([...e.keys(), ...a.keys()])].sort();
    for (const key of keys) {
      const expectedRow = e.get(key);
      const actualRow = a.get(key);
      if (!expectedRow) return `${table} key ${key}: unexpected row ${JSON.stringify(actualRow)}`;
      if (!actualRow) return `${table} key ${key}: missing row ${JSON.stringify(expectedRow)}`;
      const columns = [...new Set([...Object.keys(expectedRow), ...Object.keys(actualRow)])].sort();
      for (const column of columns) {
        const x = JSON.stringify(expectedRow[column] ?? null);
        const y = JSON.stringify(actualRow[column] ?? null);
        if (x !== y) return `${table} key ${key}: column ${column} expected ${x}, actual ${y}`;
      }
    }
  }
  return undefined;
}

/** Throws an Error naming the first difference; `what` says what expected and actual are. */
export function assertSameTables(what: string, expected: Snapshot, actual: Snapshot): void {
  const difference = firstDifference(expected, actual);
  if (difference) throw new Error(`${what}: ${difference}`);
}
