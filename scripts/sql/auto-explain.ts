// Test helper: the plans auto_explain reports for what `work` runs on one connection, nested statements included
// (every statement inside mixpanel_sync's functions), read from its JSON notices. Needs a superuser (LOAD).
import type pg from 'pg';

export interface LoggedPlan<Plan = unknown> {
  'Query Text': string;
  Plan: Plan;
  /** Present when the statement was JIT-compiled. */
  JIT?: { Functions: number };
}

/**
 * Runs `work` on a connection of `pool` with auto_explain logging every statement's plan (after `settings`, e.g.
 * 'jit_above_cost = 0' or 'auto_explain.log_analyze = on'), and returns what it returned with the plans, in order.
 * The connection is discarded afterwards (its settings must not reach other tests).
 */
export async function withPlans<T, Plan = unknown>(
  pool: pg.Pool,
  settings: readonly string[],
  work: (client: pg.PoolClient) => Promise<T>,
): Promise<{ result: T; plans: LoggedPlan<Plan>[] }> {
  const client = await pool.connect();
  const plans: LoggedPlan<Plan>[] = [];
  const onNotice = (notice: { message?: string }) => {
    const at = notice.message?.indexOf('{') ?? -1;
    if (notice.message?.startsWith('duration:') && at >= 0) plans.push(JSON.parse(notice.message.slice(at)));
  };
  try {
    await client.query(`load 'auto_explain'`);
    for (const setting of [
      'auto_explain.log_min_duration = 0',
      'auto_explain.log_nested_statements = on',
      'auto_explain.log_format = json',
      'auto_explain.log_level = notice',
      ...settings,
    ])
      await client.query(`set ${setting}`);
    client.on('notice', onNotice);
    const result = await work(client);
    return { result, plans };
  } finally {
    client.off('notice', onNotice);
    client.release(true);
  }
}
