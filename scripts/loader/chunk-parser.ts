// Parses a run's staged events while the rest of its input is still being COPYed: after each committed COPY chunk,
// mixpanel_sync.parse_staged_lines(run) on a connection of its own (not the run's, which is busy with the next
// chunk), so the two server processes use both cores. One parse at a time; a kick while one runs makes one more run
// after it (it takes every line committed by then). Purely an optimisation: finish_run parses whatever is left, so a
// parse that fails (or is cancelled) is only noted and its lines are parsed by finish_run, in its one transaction,
// where errors are reported. The parse statement is cancelled by its connection's cancel key on abort.
import type pg from 'pg';
import { sendCancelRequest } from './database-connection.ts';
import { parseNewStagedLines } from '../sql/sync-api.ts';

export interface ChunkParser {
  /** A COPY chunk was committed: parse what is new (now, or after the parse in progress). */
  kick(): void;
  /** Resolves when no parse runs and none is pending (after an abort: when the cancelled one has ended). */
  settled(): Promise<void>;
  /** No more parses; the one running is cancelled. */
  stop(): void;
  /** Lines parsed so far, and parses that failed (their lines are left to finish_run). */
  stats(): { parsed: number; failed: number };
}

export function startChunkParser(pool: pg.Pool, runId: string): ChunkParser {
  let stopped = false;
  let pending = false;
  let running: Promise<void> | null = null;
  let client: pg.PoolClient | null = null;
  let parsed = 0;
  let failed = 0;

  const parseOnce = async () => {
    const connection = await pool.connect();
    let broken = false;
    const onError = () => {
      broken = true;
    };
    connection.on('error', onError);
    client = connection;
    try {
      if (!stopped) parsed += await parseNewStagedLines(connection, runId);
    } catch {
      failed += 1;
      broken ||= stopped; // a cancelled statement: a fresh connection for whatever comes next
    } finally {
      client = null;
      connection.off('error', onError);
      connection.release(broken || undefined);
    }
  };

  const loop = async () => {
    while (pending && !stopped) {
      pending = false;
      await parseOnce();
    }
    running = null;
  };

  return {
    kick() {
      if (stopped) return;
      pending = true;
      running ??= loop();
    },
    async settled() {
      while (running !== null) await running;
    },
    stop() {
      stopped = true;
      pending = false;
      if (client !== null) void sendCancelRequest(client).catch(() => undefined);
    },
    stats: () => ({ parsed, failed }),
  };
}
