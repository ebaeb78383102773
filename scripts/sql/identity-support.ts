// Identity merge (issue 12) for tests: the identity.mode setting, and runs through finish_run (which calls
// mixpanel_sync.apply_identity).
// The rules live in migration 000006, part `--! split: 500-identity.sql`; this module only calls them.
import type { Queryable, SyncRun } from './sync-api.ts';
import { beginRun, finishRun, stageRecords, writeSetting } from './sync-api.ts';

export type IdentityMode = 'off' | 'simplified' | 'original';

/** A sync_runs row with the identity columns of 500-identity.sql (null when identity.mode was off). */
export type IdentityRun = SyncRun & { links_learned: string | null; reattributed_events: string | null };

/** Sets identity.mode of the session's project (mixpanel_sync.project_id(): the setting mixpanel_sync.project, else the only one). */
export function setIdentityMode(db: Queryable, mode: IdentityMode): Promise<void> {
  return writeSetting(db, 'identity.mode', mode);
}

/** begin_run, stage the records, finish_run (whose finish_events_run runs apply_identity after parsing). */
export async function syncEventsWithIdentity(
  db: Queryable,
  records: readonly unknown[],
  options: { clock: Date | string; forceFull?: boolean },
): Promise<IdentityRun> {
  const run = await beginRun(db, { source: 'events', clock: options.clock, forceFull: options.forceFull });
  await stageRecords(db, 'events', run.id, records);
  return (await finishRun(db, run.id)) as IdentityRun;
}
