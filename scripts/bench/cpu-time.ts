// CPU time a step used, in this Node process (process.cpuUsage: the loader runs in process) and in the PostgreSQL
// server (its postmaster and every process it started, read from /proc: a backend that exits during the step hands its
// time to the postmaster's cutime/cstime, so nothing is lost). On a 2-core machine a step cannot take less wall time
// than its CPU time ÷ 2: this is what separates "slow" from "busy" when a ratio misses its target.
// Linux only, and only for a server on this machine that this user may read; null otherwise (a remote DATABASE_URL).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import type { Queryable } from '../sql/sync-api.ts';
import { median } from './timing.ts';

export interface CpuUse {
  /** this Node process, user + system */
  nodeMs: number;
  /** the PostgreSQL server's processes, user + system */
  serverMs: number;
}

export interface CpuProbe {
  /** the CPU used since the probe started; null when the server's processes cannot be read */
  finish(): CpuUse | null;
}

let ticksPerSecond: number | null = null;
function clockTicks(): number {
  ticksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  return ticksPerSecond;
}

/** utime, stime, cutime, cstime and the parent pid of a process from /proc/<pid>/stat (fields after the command). */
function readStat(pid: number): { ppid: number; own: number; children: number } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null; // it exited meanwhile
  }
  // "pid (comm) state ppid …": comm may hold spaces and parentheses, so read after the last ')'
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const at = (field: number) => Number(fields[field - 3]);
  return { ppid: at(4), own: at(14) + at(15), children: at(16) + at(17) };
}

/** Ticks used so far by the postmaster, the children it reaped, and the children alive now. */
function serverTicks(postmaster: number): number | null {
  const root = readStat(postmaster);
  if (root === null) return null;
  let ticks = root.own + root.children;
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === postmaster) continue;
    const stat = readStat(pid);
    if (stat?.ppid === postmaster) ticks += stat.own;
  }
  return ticks;
}

/** The pid of the backend serving `db`'s session; null off Linux (nothing of /proc to read). */
async function backendPid(db: Queryable): Promise<number | null> {
  if (process.platform !== 'linux') return null;
  const { rows } = await db.query<{ pid: number }>('select pg_catalog.pg_backend_pid() as pid');
  return rows[0]!.pid;
}

/** A probe of this process's CPU and of the server-side ticks `ticks` reads (null: unreadable, now or at the start). */
function probe(ticks: () => number | null): CpuProbe {
  const serverBefore = ticks();
  const nodeBefore = process.cpuUsage();
  return {
    finish() {
      const node = process.cpuUsage(nodeBefore);
      const serverAfter = ticks();
      if (serverBefore === null || serverAfter === null) return null;
      return { nodeMs: (node.user + node.system) / 1000, serverMs: ((serverAfter - serverBefore) * 1000) / clockTicks() };
    },
  };
}

/** Starts measuring: call finish() right after the step (before any other work on the server). */
export async function startCpu(db: Queryable): Promise<CpuProbe> {
  const pid = await backendPid(db);
  const postmaster = pid === null ? null : (readStat(pid)?.ppid ?? null);
  return probe(() => (postmaster === null ? null : serverTicks(postmaster)));
}

/**
 * Starts measuring one backend, the session of `db` (a client, not a pool), and this process: for a statement that runs
 * in that backend alone (no parallel workers), its CPU without the server's other processes (autovacuum, other
 * sessions), which startCpu counts too.
 */
export async function startBackendCpu(db: Queryable): Promise<CpuProbe> {
  const pid = await backendPid(db);
  return probe(() => (pid === null ? null : (readStat(pid)?.own ?? null)));
}

/** "4.41 s of CPU (Node 0.62 s, PostgreSQL 3.79 s)" */
export const cpuText = (cpu: CpuUse): string =>
  `${((cpu.nodeMs + cpu.serverMs) / 1000).toFixed(2)} s of CPU (Node ${(cpu.nodeMs / 1000).toFixed(2)} s, PostgreSQL ${(cpu.serverMs / 1000).toFixed(2)} s)`;

/** The median CPU use of a step's repeats (each part on its own); null when any repeat could not be read. */
export function medianCpu(uses: (CpuUse | null)[]): CpuUse | null {
  if (uses.length === 0 || uses.some((use) => use === null)) return null;
  const read = uses as CpuUse[];
  return { nodeMs: median(read.map((use) => use.nodeMs)), serverMs: median(read.map((use) => use.serverMs)) };
}

/** CPU seconds of a step, Node and PostgreSQL together. */
export const cpuSeconds = (cpu: CpuUse): number => (cpu.nodeMs + cpu.serverMs) / 1000;

/**
 * The floor of any design that parses every line in PostgreSQL: a bare COPY's own work (the bytes in, each line parsed
 * as jsonb) spread over the cores, before any ledger or aggregate is written; in ms of wall time, with its sentence.
 */
export function copyFloor(copyCpu: CpuUse): { ms: number; text: string } {
  const cores = os.availableParallelism();
  return {
    ms: (cpuSeconds(copyCpu) * 1000) / cores,
    text: `The physical floor for any design that parses every line in PostgreSQL is the bare COPY's own work (the bytes in, each line parsed as jsonb: ${cpuSeconds(copyCpu).toFixed(2)} s of CPU) spread over ${cores} cores`,
  };
}

/**
 * Whether a run that missed a time target was short of CPU or of overlap: "both cores busy 82 % of the run; ≤ 1.50× the
 * bare COPY (1.52 s) allows at most 3.04 s of CPU on 2 cores: 14 % less than it used, even with both cores busy all
 * along" (or, when its CPU would fit: "it fits, so what is missing is overlap: the cores are idle 18 % of the run").
 * serialMs: a last step that runs alone on one core (finish_run: one backend, after every line is parsed, while the
 * loader waits). Then the run cannot take less than its other CPU ÷ the cores + that step, a lower bound even when the
 * step waits on I/O (its CPU is then less than its wall time, and the other CPU more than CPU − serialMs); the text
 * says where that bound stands against the target and what would have to shrink.
 */
export function cpuVerdict(cpuMs: number, wallMs: number, target: { text: string; wallMs: number }, serialMs?: number): string {
  const cores = os.availableParallelism();
  const busy = Math.round((100 * cpuMs) / (wallMs * cores));
  const allowedMs = target.wallMs * cores;
  const head = `both cores busy ${busy} % of the run; ${target.text} allows at most ${(allowedMs / 1000).toFixed(2)} s of CPU on ${cores} cores`;
  const cpuPart =
    cpuMs <= allowedMs
      ? `${head}: it fits`
      : `${head}: ${Math.round(100 * (1 - allowedMs / cpuMs))} % less than it used, even with both cores busy all along`;
  if (serialMs === undefined)
    return cpuMs <= allowedMs ? `${cpuPart}, so what is missing is overlap: the cores are idle ${100 - busy} % of the run` : cpuPart;
  const serial = Math.min(serialMs, cpuMs);
  const boundMs = (cpuMs - serial) / cores + serial;
  // (other CPU) ÷ cores + serial ≤ target ⇔ CPU + (cores − 1) × serial ≤ cores × target
  const excessMs = cpuMs + (cores - 1) * serial - allowedMs;
  const bound = `finish_run (${(serial / 1000).toFixed(2)} s) runs alone on one core after the last line is parsed, so the run cannot take less than its other CPU ÷ ${cores} + finish_run = ${(boundMs / 1000).toFixed(2)} s (the run took ${(wallMs / 1000).toFixed(2)} s: the bound is ${Math.round((100 * boundMs) / wallMs)} % of it)`;
  return excessMs <= 0
    ? `${cpuPart}; ${bound}, within the target's ${(target.wallMs / 1000).toFixed(2)} s: what is missing is overlap`
    : `${cpuPart}; ${bound}, over the target's ${(target.wallMs / 1000).toFixed(2)} s: CPU + ${cores - 1 === 1 ? '' : `${cores - 1} × `}finish_run together must shrink by ${(excessMs / 1000).toFixed(2)} s (${Math.round((100 * excessMs) / (cpuMs + (cores - 1) * serial))} %) before any overlap could meet it`;
}
