import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { budgetUsage, takeQuery, type QueryBudget } from './query-budget.ts';
import { isMixpanelError } from './mixpanel-errors.ts';

let dir = '';
let files = 0;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'budget-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function budget(overrides: Partial<QueryBudget> = {}): QueryBudget {
  return {
    file: path.join(dir, `b${++files}`, 'budget.json'),
    key: '1/export',
    perHour: 3,
    perSecond: 100,
    windowMs: 3_600_000,
    wait: false,
    label: 'Export',
    ...overrides,
  };
}

describe('takeQuery', () => {
  it('allows perHour queries, then fails saying when the next one is allowed', async () => {
    const b = budget();
    const before = Date.now();
    for (let i = 0; i < 3; i++) await takeQuery(b);
    const error = await takeQuery(b).catch((e: unknown) => e);
    expect(isMixpanelError(error) && error.code === 'budget').toBe(true);
    const next = (error as { nextAllowedAt: Date }).nextAllowedAt.getTime();
    expect(next).toBeGreaterThanOrEqual(before + 3_600_000);
    expect(next).toBeLessThanOrEqual(Date.now() + 3_600_000);
    expect((error as Error).message).toMatch(
      /query budget spent: 3 queries in the last 60 min .*next query is allowed at \d{4}-\d\d-\d\dT.*Z \(in 60 min\)/,
    );
    expect(await budgetUsage(b)).toMatchObject({ used: 3, remaining: 0 });
  });

  it('keeps separate budgets per key in one shared file', async () => {
    const b = budget({ perHour: 1 });
    await takeQuery(b);
    await takeQuery({ ...b, key: '1/query' });
    await takeQuery({ ...b, key: '2/export' });
    await expect(takeQuery(b)).rejects.toThrow(/budget spent/);
    const state = JSON.parse(await readFile(b.file, 'utf8')) as { queries: Record<string, number[]> };
    expect(Object.keys(state.queries).sort()).toEqual(['1/export', '1/query', '2/export']);
  });

  it('is safe under concurrent takers (the file is locked): exactly perHour succeed', async () => {
    const b = budget({ perHour: 5 });
    const results = await Promise.allSettled(Array.from({ length: 12 }, () => takeQuery(b)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(5);
    expect(await budgetUsage(b)).toMatchObject({ used: 5, remaining: 0 });
  });

  it('waits for the window to free a slot when asked to', async () => {
    const b = budget({ perHour: 2, windowMs: 300, wait: true });
    const start = Date.now();
    for (let i = 0; i < 3; i++) await takeQuery(b);
    expect(Date.now() - start).toBeGreaterThanOrEqual(250);
  });

  it('spaces queries to the per-second limit instead of failing', async () => {
    const b = budget({ perHour: null, perSecond: 3 });
    const start = Date.now();
    for (let i = 0; i < 4; i++) await takeQuery(b);
    expect(Date.now() - start).toBeGreaterThanOrEqual(900);
  });

  it('starts afresh from a damaged state file', async () => {
    const b = budget({ perHour: 1 });
    await takeQuery({ ...b, key: 'x' }); // creates the directory
    await writeFile(b.file, '{not json');
    await takeQuery(b);
    await expect(takeQuery(b)).rejects.toThrow(/budget spent/);
  });
});
