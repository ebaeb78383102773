// cpu-time.ts attributes CPU to the side that spent it: a query that burns CPU in the server shows as server time, a
// loop in this process as Node time (in milliseconds, as process.cpuUsage counts the loop). CPU times, not wall time,
// so a loaded machine does not change the verdict. Seen failing with only the postmaster's own time counted (its backends, the children that
// run the query, left out): the server's time stayed 0.
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import os from 'node:os';
import { cpuVerdict, startCpu } from './cpu-time.ts';

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
      const used = process.cpuUsage(own);
      const loopMs = (used.user + used.system) / 1000;
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

describe('cpuVerdict', () => {
  it('says whether the CPU or the overlap is short, against what the target allows on the cores', () => {
    const cores = os.availableParallelism();
    const target = { text: 'the target', wallMs: 1000 };
    // used a quarter more than the cores allow in the target's time: 20 % too much
    const over = cpuVerdict(1250 * cores, 2000, target);
    expect(over).toContain(`both cores busy ${Math.round((100 * 1250) / 2000)} % of the run`);
    expect(over).toContain(`allows at most ${cores.toFixed(2)} s of CPU on ${cores} cores: 20 % less than it used`);
    // used half of what the target allows, over a run twice the target's time: overlap is short
    const under = cpuVerdict(500 * cores, 2000, target);
    expect(under).toContain('it fits, so what is missing is overlap: the cores are idle 75 % of the run');
  });
});
