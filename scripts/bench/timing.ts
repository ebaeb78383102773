// Measuring: wall-clock time of one step, and the median of repeated ones.

/** Milliseconds one call takes, and what it returned. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const started = performance.now();
  const value = await fn();
  return { ms: performance.now() - started, value };
}

/** The median (the mean of the middle two for an even count); NaN for none. */
export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** a ÷ b, or null when either is missing or b is not positive. */
export function ratio(a: number | null, b: number | null): number | null {
  if (a === null || b === null || !Number.isFinite(a) || !Number.isFinite(b) || b <= 0) return null;
  return a / b;
}

/** A progress line on stderr (stdout is kept for --json). */
export function log(message: string): void {
  process.stderr.write(`[bench] ${message}\n`);
}

export const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
