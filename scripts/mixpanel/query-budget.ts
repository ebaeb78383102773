// The hourly query budget, kept in a small JSON state file so that every process (cron runs,
// a manual run next to them) spends the same 60 queries an hour Mixpanel allows per project.
// Each key ("<project>/export", "<project>/query") holds the times of the queries sent in the
// last window. The file is read and rewritten under an O_EXCL lock file.
import { mkdir, open, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { mixpanelError } from './mixpanel-errors.ts';
import { sleep } from './retry-policy.ts';

export interface QueryBudget {
  /** State file shared by the processes. */
  file: string;
  /** Which budget: "<project_id>/export" or "<project_id>/query". */
  key: string;
  /** Queries allowed per window; null = no hourly budget (only the per-second spacing). */
  perHour: number | null;
  /** Queries allowed per second; extra ones wait (a second at most), never fail. */
  perSecond: number;
  /** The sliding window, 1 hour. */
  windowMs: number;
  /** Wait for a free slot instead of failing when the budget is spent. */
  wait: boolean;
  /** Name in messages, e.g. "Export". */
  label: string;
}

interface BudgetState {
  version: 1;
  queries: Record<string, number[]>;
}

const LOCK_STALE_MS = 10_000;
const LOCK_GIVE_UP_MS = 15_000;

async function readState(file: string): Promise<BudgetState> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as Partial<BudgetState>;
    if (parsed && typeof parsed.queries === 'object' && parsed.queries) return { version: 1, queries: parsed.queries };
  } catch {
    // missing or damaged: start afresh (the worst case is a few extra queries, which Mixpanel answers with 429)
  }
  return { version: 1, queries: {} };
}

async function writeState(file: string, state: BudgetState): Promise<void> {
  const temporary = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await writeFile(temporary, JSON.stringify(state));
  await rename(temporary, file);
}

async function withLock<T>(file: string, signal: AbortSignal | undefined, body: () => Promise<T>): Promise<T> {
  const lock = `${file}.lock`;
  const giveUpAt = Date.now() + LOCK_GIVE_UP_MS;
  for (;;) {
    try {
      const handle = await open(lock, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      break;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        await mkdir(path.dirname(lock), { recursive: true });
        continue;
      }
      if (code !== 'EEXIST') {
        throw mixpanelError(
          'budget',
          `cannot use the query budget file ${file} (${(error as Error).message}): set MIXPANEL_BUDGET_FILE to a writable path`,
          { cause: error },
        );
      }
      const age = await stat(lock).then(
        (s) => Date.now() - s.mtimeMs,
        () => 0,
      );
      if (age > LOCK_STALE_MS) {
        await unlink(lock).catch(() => undefined);
        continue;
      }
      if (Date.now() > giveUpAt) {
        throw mixpanelError('budget', `the query budget file is locked (${lock}); delete that file if no sync is running`);
      }
      await sleep(2 + Math.random() * 10, signal);
    }
  }
  try {
    return await body();
  } finally {
    await unlink(lock).catch(() => undefined);
  }
}

type Decision = { ok: true } | { ok: false; waitMs: number; hourly: boolean; used: number; nextAllowedAt: Date };

function decide(times: number[], budget: QueryBudget, now: number): Decision {
  const inWindow = times.filter((t) => t > now - budget.windowMs);
  const inSecond = times.filter((t) => t > now - 1000);
  if (budget.perHour !== null && inWindow.length >= budget.perHour) {
    const nextAt = inWindow[inWindow.length - budget.perHour]! + budget.windowMs;
    return { ok: false, waitMs: Math.max(1, nextAt - now), hourly: true, used: inWindow.length, nextAllowedAt: new Date(nextAt) };
  }
  if (inSecond.length >= budget.perSecond) {
    const nextAt = inSecond[inSecond.length - budget.perSecond]! + 1000;
    return { ok: false, waitMs: Math.max(1, nextAt - now), hourly: false, used: inWindow.length, nextAllowedAt: new Date(nextAt) };
  }
  return { ok: true };
}

function formatWait(ms: number): string {
  if (ms < 90_000) return `${Math.ceil(ms / 1000)} s`;
  return `${Math.ceil(ms / 60_000)} min`;
}

/**
 * Take one query from the budget: resolves when the query may be sent (recording it),
 * waits for the per-second spacing, and for the hourly budget either waits (budget.wait)
 * or throws a `budget` error saying when the next query is allowed.
 */
export async function takeQuery(budget: QueryBudget, signal?: AbortSignal): Promise<void> {
  const keep = Math.max(budget.perHour === null ? 1000 : budget.windowMs, 1000);
  for (;;) {
    const decision = await withLock(budget.file, signal, async () => {
      const state = await readState(budget.file);
      const now = Date.now();
      const times = (state.queries[budget.key] ?? []).filter((t) => typeof t === 'number' && t > now - keep).sort((a, b) => a - b);
      const verdict = decide(times, budget, now);
      if (verdict.ok) times.push(now);
      state.queries[budget.key] = times;
      await writeState(budget.file, state);
      return verdict;
    });
    if (decision.ok) return;
    if (decision.hourly && !budget.wait) {
      throw mixpanelError(
        'budget',
        `Mixpanel ${budget.label} query budget spent: ${decision.used} queries in the last ${formatWait(budget.windowMs)} ` +
          `(MIXPANEL_QUERIES_PER_HOUR=${budget.perHour}, shared through ${budget.file}); ` +
          `the next query is allowed at ${decision.nextAllowedAt.toISOString()} (in ${formatWait(decision.waitMs)}): run again then, or ask to wait for the budget.`,
        { nextAllowedAt: decision.nextAllowedAt },
      );
    }
    await sleep(decision.waitMs, signal);
  }
}

/** How much of the budget is left now (for status output and tests). */
export async function budgetUsage(budget: QueryBudget): Promise<{ used: number; remaining: number | null; nextAllowedAt: Date | null }> {
  const state = await readState(budget.file);
  const now = Date.now();
  const times = (state.queries[budget.key] ?? []).filter((t) => t > now - budget.windowMs).sort((a, b) => a - b);
  if (budget.perHour === null) return { used: times.length, remaining: null, nextAllowedAt: null };
  const remaining = Math.max(0, budget.perHour - times.length);
  const nextAllowedAt = remaining > 0 ? null : new Date(times[times.length - budget.perHour]! + budget.windowMs);
  return { used: times.length, remaining, nextAllowedAt };
}
