// The loader's heartbeat (staged-sync.ts: heartbeat_run at once on the run's own connection, then every
// HEARTBEAT_INTERVAL_MS on another pooled connection while the run is in progress) keeps a live run from being
// abandoned when the server session of its begin_run is gone, as happens through pgbouncer in transaction pooling
// (server_idle_timeout closes an idle server session while the loader works on another). Here the owner session is
// closed with pg_terminate_backend while the loader, connected through pgbouncer, is between transactions; a direct
// begin_run must then be refused (MP002) and the loader's run succeed.
// Seen failing without the protection: with the first beat and the timer's beats removed from staged-sync.ts,
// heartbeat_at stayed null ("expected null not to be null"); with that check left out too, the direct begin_run
// abandoned the live run ("expected 'started' to be 'MP002'") and the loader's run ended 'abandoned'.
// Skipped, with a message, only when pgbouncer is not installed and CI is not set (as scripts/loader/pgbouncer.test.ts).
import { Readable } from 'node:stream';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { findPgBouncer, startPgBouncer, type PgBouncer } from '../fixtures/pgbouncer.ts';
import { beginRun, failRun, type SyncRun } from '../sql/sync-api.ts';
import { HEARTBEAT_INTERVAL_MS, runStagedSync } from './staged-sync.ts';

const binary = findPgBouncer();
const inCi = Boolean(process.env.CI);
if (!binary && !inCi) console.warn('[run-heartbeat.test] skipped: pgbouncer is not installed (Debian: apt-get install pgbouncer).');

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const line = (i: number) =>
  JSON.stringify({
    event: 'hb',
    properties: { time: Math.floor(Date.now() / 1000) - 3600 + i, distinct_id: `hb${i}`, $insert_id: `hb-${i}` },
  });

async function heartbeatOf(db: pg.Pool, runId: string): Promise<{ status: string; heartbeat_at: Date | null }> {
  const { rows } = await db.query('select status, heartbeat_at from mixpanel_sync.sync_runs where id = $1', [runId]);
  return rows[0];
}

describe('the heartbeat interval', () => {
  it('is a named constant well under the default runs.heartbeat_timeout (2 minutes)', () => {
    expect(HEARTBEAT_INTERVAL_MS).toBeGreaterThan(0);
    expect(HEARTBEAT_INTERVAL_MS * 3).toBeLessThanOrEqual(120_000);
  });
});

describe('the first heartbeat', () => {
  it("is sent at once on the run's own connection: the run has one before its lines are read, and a short run opens no other", async () => {
    // Seen failing: with the first beat removed from runStagedSync, heartbeat_at was still null when the lines were
    // opened. With the first beat sent on the pool, as before this test (startHeartbeat beating at once), it was null
    // then too (the beat waited for a new connection) and the run opened 2 connections.
    const db = await createTestDatabase();
    const pool = new pg.Pool({ connectionString: db.url, max: 3 });
    pool.on('error', () => {});
    let connections = 0;
    pool.on('connect', () => connections++);
    try {
      let before: Date | null | undefined;
      const summary = await runStagedSync({
        pool,
        begin: { source: 'events' },
        table: 'mixpanel_sync.staged_events',
        heartbeatIntervalMs: 600_000, // no beat of the timer during this run
        openLines: async (run) => {
          before = (await heartbeatOf(db.pool, run.id)).heartbeat_at;
          return Readable.from([Buffer.from(`${[1, 2, 3].map(line).join('\n')}\n`)]);
        },
      });
      expect(summary).toMatchObject({ status: 'succeeded' });
      expect(before).toBeInstanceOf(Date);
      expect(connections).toBe(1);
    } finally {
      await pool.end();
      await db.drop();
    }
  });
});

describe.skipIf(!binary && !inCi)('the run heartbeat through pgbouncer (transaction pooling)', () => {
  let db: TestDatabase;
  let bouncer: PgBouncer;

  beforeAll(async () => {
    if (!binary) throw new Error('pgbouncer is not installed, and CI must run this test (apt-get install pgbouncer)');
    db = await createTestDatabase();
    bouncer = await startPgBouncer(db.url, { binary });
  });
  afterAll(async () => {
    await bouncer?.stop();
    await db?.drop();
  });

  it('a run whose begin_run session was closed stays alive by its heartbeat; the beats stop with the run', async () => {
    const pool = new pg.Pool({ connectionString: bouncer.urlFor(db.url), max: 2 });
    pool.on('error', () => {});
    let acquired = 0;
    pool.on('acquire', () => acquired++);
    let started!: (run: SyncRun) => void;
    const runStarted = new Promise<SyncRun>((resolve) => (started = resolve));
    let go!: () => void;
    const mayGoOn = new Promise<void>((resolve) => (go = resolve));
    try {
      const loader = runStagedSync({
        pool,
        begin: { source: 'events' },
        table: 'mixpanel_sync.staged_events',
        heartbeatIntervalMs: 100,
        // the loader is between transactions here: its begin_run's server session is idle in pgbouncer's pool
        openLines: async (run) => {
          started(run);
          await mayGoOn;
          return Readable.from([Buffer.from(`${[1, 2, 3].map(line).join('\n')}\n`)]);
        },
      });
      loader.catch(() => undefined); // awaited below; a failure is reported there, not as an unhandled rejection
      const run = await runStarted;
      const owner = (run.options.owner as { pid: number }).pid;
      for (let i = 0; i < 100 && (await heartbeatOf(db.pool, run.id)).heartbeat_at === null; i++) await sleep(50);
      expect((await heartbeatOf(db.pool, run.id)).heartbeat_at).not.toBeNull();

      // what server_idle_timeout does: the server session of begin_run is closed
      await db.pool.query('select pg_catalog.pg_terminate_backend($1)', [owner]);
      for (let i = 0; i < 100; i++) {
        const { rowCount } = await db.pool.query('select 1 from pg_catalog.pg_stat_activity where pid = $1', [owner]);
        if (!rowCount) break;
        await sleep(50);
      }
      const other = await beginRun(db.pool, { source: 'events' }).then(
        async (r) => {
          await failRun(db.pool, r.id, 'test: should not have started');
          return 'started';
        },
        (error: { code?: string }) => error.code,
      );
      expect(other).toBe('MP002');
      expect((await heartbeatOf(db.pool, run.id)).status).toBe('running');

      go();
      const summary = await loader;
      expect(summary).toMatchObject({ status: 'succeeded' });
      const after = await heartbeatOf(db.pool, run.id);
      expect(after.status).toBe('succeeded');
      // the beats stopped with the run: nothing takes a connection from the pool any more
      const settled = acquired;
      await sleep(500);
      expect(acquired).toBe(settled);
    } finally {
      go?.();
      await pool.end();
    }
  }, 120_000);
});
