// Identity merge (issue 12) for tests: the identity.mode setting, and runs through finish_run (which calls
// mixpanel_sync.apply_identity).
// The rules live in migrations/current/500-identity.sql; this module only calls them.
import type { Queryable, SyncRun } from './sync-api.ts';
import { beginRun, finishRun, stageRecords } from './sync-api.ts';

export type IdentityMode = 'off' | 'simplified' | 'original';

/** A sync_runs row with the identity columns of 500-identity.sql (null when identity.mode was off). */
export type IdentityRun = SyncRun & { links_learned: string | null; reattributed_events: string | null };

/**
 * Sets identity.mode. Interim: until 100-safety-core.sql accepts the setting kind 'identity_mode', the row cannot
 * exist in a migrated database (500-identity.sql inserts it only once the kind is accepted), so the test database's
 * two sync_settings checks are dropped to add it. Remove the fallback when the kind lands.
 */
export async function setIdentityMode(db: Queryable, mode: IdentityMode): Promise<void> {
  const { rowCount } = await db.query(`update mixpanel_sync.sync_settings set value = $1 where key = 'identity.mode'`, [mode]);
  if (rowCount === 1) return;
  const { rows } = await db.query<{ accepted: boolean }>(`select mixpanel_sync.setting_value_is_valid('identity_mode', 'off') as accepted`);
  if (rows[0]!.accepted) throw new Error('identity.mode is missing from mixpanel_sync.sync_settings though its kind is accepted');
  await db.query(`alter table mixpanel_sync.sync_settings drop constraint sync_settings_value_valid, drop constraint sync_settings_kind_check`);
  await db.query(
    `insert into mixpanel_sync.sync_settings (key, value, kind, description) values ('identity.mode', $1, 'identity_mode', 'test')`,
    [mode],
  );
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
