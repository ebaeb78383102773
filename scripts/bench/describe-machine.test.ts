// describeMachine names the server's build in BENCHMARKS.md: its compiler (from version()) and the optimisation level of
// its CFLAGS (pg_config, superusers only). Seen failing with the CFLAGS query removed (no -O flag), with the first -O
// flag taken instead of the last, and with an -O inside another flag matched (-DUSE_O2_PATHS=-O3x).
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { buildDescription, describeMachine } from './bench-server.ts';

const db = await createTestDatabase();
afterAll(() => db.drop());

describe('buildDescription', () => {
  it('names the compiler and the -O flag gcc obeys (the last one)', () => {
    const ubuntu = 'PostgreSQL 18.4 on x86_64-pc-linux-gnu, compiled by gcc (Ubuntu 7.5.0-3ubuntu1~18.04) 7.5.0, 64-bit';
    expect(buildDescription(ubuntu, '-Wall -O2 -fwrapv -Os -DMAP_HUGETLB=0x40000')).toBe('gcc 7.5.0, -Os');
    const debian =
      'PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc (Debian 12.2.0-14+deb12u1) 12.2.0, 64-bit';
    expect(buildDescription(debian, '-g -O2 -fstack-protector-strong -Wformat')).toBe('gcc 12.2.0, -O2');
    expect(buildDescription(debian, '-Wall -DUSE_O2_PATHS=-O3x')).toBe('gcc 12.2.0');
    expect(buildDescription(debian, null)).toBe('gcc 12.2.0');
    expect(buildDescription('PostgreSQL 18.4', null)).toBeNull();
  });
});

describe('describeMachine', () => {
  it("names the server's compiler and its build's -O flag, as pg_config reports them", async () => {
    const machine = await describeMachine(db.pool, 'embedded');
    const { rows } = await db.pool.query<{ cflags: string; version: string }>(
      "select (select setting from pg_catalog.pg_config where name = 'CFLAGS') as cflags, pg_catalog.version() as version",
    );
    const flags = rows[0]!.cflags.split(/\s+/).filter((flag) => /^-O\w*$/.test(flag));
    expect(flags.length).toBeGreaterThan(0);
    expect(machine.build).toMatch(/^\S+ \d+\.\d+(\.\d+)?, -O\w*$/);
    expect(machine.build!.endsWith(`, ${flags.at(-1)}`)).toBe(true);
    expect(rows[0]!.version).toContain(machine.build!.split(',')[0]!.split(' ')[1]!);
    expect(machine.settings.track_io_timing).toBeDefined();
  });

  it('still names the compiler when the role may not read pg_config', async () => {
    const reader = new pg.Pool({ connectionString: db.url, max: 1, options: '-c role=mixpanel_sync_reader' });
    // pool.end() resolves before its client's session has closed, and afterAll's db.drop() force-drops the database: the
    // session may be terminated (57P01) while it closes, which the pool re-emits as 'error' and, with no listener, became
    // an uncaught exception that failed a CI run (2026-12-03, PostgreSQL 15 pass) after every test had passed
    reader.on('error', () => {});
    try {
      const denied = await reader.query("select setting from pg_catalog.pg_config where name = 'CFLAGS'").catch((error: Error) => error);
      expect(denied).toBeInstanceOf(Error);
      const machine = await describeMachine(reader, 'embedded');
      expect(machine.build).toMatch(/^\S+ \d+\.\d+(\.\d+)?$/);
    } finally {
      await reader.end();
    }
  });
});
