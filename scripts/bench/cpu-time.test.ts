// cpu-time.ts attributes CPU to the side that spent it: a query that burns CPU in the server shows as server time, a
// loop in this process as Node time (in milliseconds, as process.cpuUsage counts the loop). CPU times, not wall time,
// so a loaded machine does not change the verdict. Seen failing with only the postmaster's own time counted (its backends, the children that
// run the query, left out): the server's time stayed 0.
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { startCpu } from './cpu-time.ts';

const db = await createTestDatabase();
afterAll(() => db.drop());

describe('startCpu', () => {
  it('counts a server-side burn as PostgreSQL time and a loop in this process as Node time', async () => {
    const client = await db.pool.connect();
    try {
      const server = await startCpu(client);
      await client.query('select count(*) from generate_series(1, 4000000) g where g % 7 = 3');
      const serverSide = server.finish();
      expect(serverSide).not.toBeNull();
      expect(serverSide!.serverMs).toBeGreaterThan(50);
      expect(serverSide!.serverMs).toBeGreaterThan(3 * serverSide!.nodeMs);

      // (the server is shared with the other test files, so only this process's side is compared here)
      const node = await startCpu(client);
      const own = process.cpuUsage();
      let x = 0;
      for (let i = 0; i < 60_000_000; i++) x = (x + i * 7) % 1_000_003;
      const loopMs = (process.cpuUsage(own).user + process.cpuUsage(own).system) / 1000;
      const nodeSide = node.finish();
      expect(x).toBeGreaterThanOrEqual(0);
      expect(loopMs).toBeGreaterThan(50);
      expect(nodeSide!.nodeMs).toBeGreaterThanOrEqual(loopMs * 0.9);
      expect(nodeSide!.nodeMs).toBeLessThan(loopMs * 1.5 + 20);
    } finally {
      client.release();
    }
  });
});
