// PostgreSQL refuses to run as root: as root we run it as the `postgres` system user (created when missing).
import { execFileSync } from 'node:child_process';
import os from 'node:os';

export interface RunAs {
  uid: number;
  gid: number;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function lookupUser(name: string): RunAs | undefined {
  try {
    const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
    return { uid, gid };
  } catch {
    return undefined;
  }
}

function createSystemUser(name: string): void {
  try {
    execFileSync('groupadd', ['--system', name], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (error) {
    if ((error as { status?: number }).status !== 9) throw error; // 9: group exists
  }
  execFileSync('useradd', ['--system', '--gid', name, '--no-create-home', '--shell', '/usr/sbin/nologin', name], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
}

/** The ids to run postgres as: undefined for a normal user (run as yourself), the postgres user's ids as root. */
export function postgresRunAs(name = 'postgres'): RunAs | undefined {
  if (!isRoot() || os.platform() === 'win32') return undefined;
  const found = lookupUser(name);
  if (found) return found;
  try {
    createSystemUser(name);
  } catch (error) {
    throw new Error(
      `running as root: PostgreSQL must run as the "${name}" user, and creating it failed (${(error as Error).message.trim()}); create it with \`useradd --system ${name}\` or run as a normal user.`,
    );
  }
  const created = lookupUser(name);
  if (!created) throw new Error(`running as root: user "${name}" was created but \`id ${name}\` still fails.`);
  return created;
}
