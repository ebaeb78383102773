// Parses a run's staged events while the rest of its input is still being COPYed: each committed COPY chunk, known by
// its line_id range (after, upTo], is parsed by mixpanel_sync.parse_staged_lines(run, after, upTo) on a pooled
// connection of its own (not the run's, which is busy with the next chunk), up to `parallel` chunks at a time, so the
// server processes use both cores. Purely an optimisation: finish_run parses whatever is left (parse_staged_events:
// the lines after the last parsed one, then any other unparsed line), so a chunk parse that fails (or is cancelled)
// is only counted, and its lines are parsed by finish_run in its one transaction, where errors are reported.
// On stop() the parses in flight are cancelled by their connection's cancel key. Once the input has ended, drain() cuts
// the chunks still queued into smaller line ranges, so that both connections end their last parses at about the same
// time instead of one parsing the last chunk alone while the other idles.
import type pg from 'pg';
import { sendCancelRequest } from './database-connection.ts';
import { parseStagedChunk } from '../sql/sync-api.ts';

export interface ChunkParser {
  /** A COPY chunk holding the lines (after, upTo] was committed: parse it (now, or when a worker is free). */
  add(after: string, upTo: string): void;
  /**
   * The input has ended and every chunk was added: each queued chunk is cut into `pieces` line ranges (lineRanges), so
   * that the connections end their last parses together.
   */
  drain(pieces: number): void;
  /** Resolves when no parse runs and none is queued (after stop(): when the cancelled ones have ended). */
  settled(): Promise<void>;
  /** No more parses; those running are cancelled. */
  stop(): void;
  /** Lines parsed so far, and chunk parses that failed (their lines are left to finish_run). */
  stats(): { parsed: number; failed: number };
}

export function startChunkParser(pool: pg.Pool, runId: string, parallel: number): ChunkParser {
  let stopped = false;
  const queue: Array<[string, string]> = [];
  const running = new Set<Promise<void>>();
  const clients = new Set<pg.PoolClient>();
  let parsed = 0;
  let failed = 0;

  const parseOne = async (after: string, upTo: string) => {
    const client = await pool.connect();
    let broken = false;
    const onError = () => {
      broken = true;
    };
    client.on('error', onError);
    clients.add(client);
    try {
      if (!stopped) parsed += await parseStagedChunk(client, runId, after, upTo);
    } catch {
      failed += 1;
      broken ||= stopped; // a cancelled statement: a fresh connection for whatever comes next
    } finally {
      clients.delete(client);
      client.off('error', onError);
      client.release(broken || undefined);
    }
  };

  const worker = async () => {
    for (let next = queue.shift(); next !== undefined && !stopped; next = queue.shift()) await parseOne(...next);
  };

  const startWorkers = () => {
    while (!stopped && queue.length > 0 && running.size < parallel) {
      const done: Promise<void> = worker().finally(() => {
        running.delete(done);
        startWorkers();
      });
      running.add(done);
    }
  };

  return {
    add(after, upTo) {
      if (stopped || BigInt(upTo) <= BigInt(after)) return;
      queue.push([after, upTo]);
      startWorkers();
    },
    drain(pieces) {
      queue.push(...queue.splice(0).flatMap(([after, upTo]) => lineRanges(after, upTo, pieces)));
    },
    async settled() {
      while (running.size > 0) await Promise.all(running);
    },
    stop() {
      stopped = true;
      queue.length = 0;
      for (const client of clients) void sendCancelRequest(client).catch(() => undefined);
    },
    stats: () => ({ parsed, failed }),
  };
}

/**
 * (after, upTo] cut into `pieces` consecutive, disjoint line_id ranges that together are exactly it (fewer when it holds
 * fewer ids); line ids are bigints, passed as text.
 */
export function lineRanges(after: string, upTo: string, pieces: number): Array<[string, string]> {
  const from = BigInt(after);
  const span = BigInt(upTo) - from;
  const count = span < BigInt(pieces) ? span : BigInt(pieces);
  if (count <= 1n) return [[after, upTo]];
  const ranges: Array<[string, string]> = [];
  for (let i = 0n; i < count; i++) ranges.push([String(from + (span * i) / count), String(from + (span * (i + 1n)) / count)]);
  return ranges;
}
