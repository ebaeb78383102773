// Which functions are mutated, and which proofs run first against a mutant of each (--quick runs only those).
// A full run meets only the mapped proofs (--exhaustive: then every other proof too), so every proof of a function must be
// mapped here: a new test or verify script is added to the functions it exercises.

/** The core functions of issue 15, by name (all overloads); new guard and identity functions are matched by coreNamePattern. */
export const coreFunctions = [
  'begin_run',
  'finish_run',
  'finish_events_run',
  'parse_new_staged_events',
  'parse_staged_events',
  'fail_run',
  'upsert_subscribers_incremental',
  'upsert_subscribers_incremental_loop',
  'insert_new_events_loop',
  'upsert_subscribers_incremental_add',
  'upsert_subscribers_incremental_add_loop',
  'refresh_subscribers',
  'refresh_subscriber_loop',
  'upsert_subscriber_properties',
  'finish_profiles_run',
  'horizon_day',
  'drop_staged_rows',
  'event_second',
  'is_terminated_early_marker',
  // the safety core and the ledger (000006), counted as core since the full run of issue 15
  'finish_or_fail_run',
  'heartbeat_run',
  'abandon_stale_runs',
  'prune_history',
  'merge_daily_row_loop',
  'reattribute_identities',
  'reattribute_identities_loop',
  'reattribute_all',
  // this session's rewrite (migrations/current/): parsing while staging and the run's event selection
  'parse_staged_lines',
  'run_selection',
  // the REPLACE guard's per-day sums (migration 000018), weighed before and after the apply
  'replace_window_days',
];

/** Guard and identity functions as they land (SQL-safety stream): counted as core too. */
export const coreNamePattern = /guard|identity|event_key/;

export function isCore(name: string): boolean {
  return coreFunctions.includes(name) || coreNamePattern.test(name);
}

/** The proofs of what the REPLACE guard weighs after the apply (migration 000018). */
const guardWeighing = [
  'verify/mutation_pins.sql',
  'scripts/sql/mutation-pins-runs.test.ts',
  'scripts/sql/safety-guard.test.ts',
  'scripts/sql/event-selection-runs.test.ts',
  'scripts/sql/edge-pins.test.ts',
  'scripts/sql/projects-isolation-runs.test.ts',
];
const endToEnd = ['verify/run_lifecycle_pinned.sql', 'verify/parse_independent.sql', 'verify/finish_run_end_to_end.sql'];
const replace = [
  'verify/replace_loop_equals_set.sql',
  'verify/selection_replace_keeps_other_names.sql',
  'verify/raw_events_match_daily.sql',
  'verify/replace_then_adds_equal_replace.sql',
  'verify/finish_run_end_to_end.sql',
  'property-tests/loop-equals-set.test.ts',
];
const add = [
  'verify/add_idempotent_order_independent.sql',
  'verify/raw_events_match_daily.sql',
  'verify/add_loop_equals_set.sql',
  'verify/replace_then_adds_equal_replace.sql',
  'verify/run_lifecycle_pinned.sql',
  'property-tests/add-algebra.test.ts',
];
const profiles = [
  'verify/run_lifecycle_pinned.sql',
  'verify/profiles_change_detection.sql',
  'property-tests/profiles-change-detection.test.ts',
  'property-tests/profiles-verify.test.ts',
];

/** Proofs to try first per function name, cheapest likely killer first (proofMap puts the project isolation proofs before them). */
const mappedProofs: Record<string, string[]> = {
  begin_run: [
    ...endToEnd,
    'verify/mutation_pins.sql',
    'scripts/sql/mutation-pins-runs.test.ts',
    'scripts/sql/event-selection.test.ts',
    'scripts/sql/safety-one-run.test.ts',
    'scripts/sql/safety-followups.test.ts',
    'property-tests/run-accounting.test.ts',
  ],
  run_selection: [
    'verify/selection_replace_keeps_other_names.sql',
    'scripts/sql/mutation-pins-runs.test.ts',
    'scripts/sql/edge-pins.test.ts',
    'scripts/sql/event-selection.test.ts',
    'scripts/sql/event-selection-runs.test.ts',
    'property-tests/event-selection.test.ts',
  ],
  parse_staged_lines: [
    'scripts/sql/mutation-pins-parse.test.ts',
    'scripts/sql/edge-pins.test.ts',
    'verify/parse_independent.sql',
    'verify/finish_run_end_to_end.sql',
    'scripts/sql/parse-skip-raw.test.ts',
    'scripts/sql/event-key-text.test.ts',
    'property-tests/run-accounting.test.ts',
  ],
  finish_run: [
    ...endToEnd,
    'property-tests/failed-run.test.ts',
    'property-tests/run-accounting.test.ts',
    'scripts/sql/safety-one-run.test.ts',
  ],
  finish_events_run: [
    ...endToEnd,
    'verify/mutation_pins.sql',
    'scripts/sql/mutation-pins-runs.test.ts',
    'verify/replace_then_adds_equal_replace.sql',
    'verify/raw_events_match_daily.sql',
    'scripts/sql/parse-skip-raw.test.ts',
    'scripts/sql/raw-events.test.ts',
    'scripts/sql/stale-statistics.test.ts',
    'property-tests/run-accounting.test.ts',
  ],
  parse_new_staged_events: [
    'verify/parse_independent.sql',
    'verify/finish_run_end_to_end.sql',
    'scripts/sql/mutation-pins-parse.test.ts',
    'scripts/sql/mutation-pins-runs.test.ts',
    'scripts/sql/edge-pins.test.ts',
    'scripts/sql/parse-skip-raw.test.ts',
    'scripts/sql/event-key-text.test.ts',
    'scripts/sql/stale-statistics.test.ts',
    'property-tests/run-accounting.test.ts',
  ],
  parse_staged_events: [
    'verify/parse_independent.sql',
    'verify/finish_run_end_to_end.sql',
    'scripts/sql/mutation-pins-parse.test.ts',
    'property-tests/run-accounting.test.ts',
  ],
  fail_run: [
    'verify/mutation_pins.sql',
    'verify/run_lifecycle_pinned.sql',
    'property-tests/failed-run.test.ts',
    'scripts/sql/safety-guard.test.ts',
  ],
  finish_or_fail_run: ['scripts/sql/guard-refusal-psql.test.ts'],
  replace_guard: [
    'verify/mutation_pins.sql',
    'verify/selection_replace_keeps_other_names.sql',
    'scripts/sql/mutation-pins-runs.test.ts',
    'scripts/sql/safety-guard.test.ts',
    'scripts/sql/event-selection-runs.test.ts',
    'scripts/sql/edge-pins.test.ts',
  ],
  // the guard's second half and the per-day sums both halves weigh (migration 000018)
  replace_guard_outcome: guardWeighing,
  replace_window_days: guardWeighing,
  heartbeat_run: ['verify/mutation_pins.sql', 'scripts/sql/safety-followups.test.ts'],
  abandon_stale_runs: ['verify/mutation_pins.sql', 'scripts/sql/safety-one-run.test.ts', 'scripts/sql/safety-followups.test.ts'],
  prune_history: ['verify/run_lifecycle_pinned.sql', 'scripts/sql/mutation-pins-runs.test.ts', 'scripts/sql/health-housekeeping.test.ts'],
  merge_daily_row_loop: [
    'verify/replace_loop_equals_set.sql',
    'scripts/sql/mutation-pins-apply.test.ts',
    'scripts/sql/ledger-merge.test.ts',
  ],
  apply_identity: [
    'verify/identity_merge.sql',
    'verify/mutation_pins.sql',
    'scripts/sql/identity.test.ts',
    'scripts/sql/mutation-pins-runs.test.ts',
    'property-tests/identity-merge.test.ts',
  ],
  learn_identity_links: [
    'verify/identity_merge.sql',
    'verify/mutation_pins.sql',
    'scripts/sql/identity.test.ts',
    'property-tests/identity-merge.test.ts',
  ],
  identity_edges: [
    'verify/identity_merge.sql',
    'verify/mutation_pins.sql',
    'scripts/sql/identity.test.ts',
    'scripts/sql/mutation-pins-runs.test.ts',
    'property-tests/identity-merge.test.ts',
  ],
  identity_cluster: ['verify/identity_merge.sql', 'scripts/sql/identity.test.ts', 'property-tests/identity-merge.test.ts'],
  identity_canonical: ['verify/identity_merge.sql', 'scripts/sql/identity.test.ts', 'property-tests/identity-merge.test.ts'],
  identity_mode: ['verify/identity_merge.sql', 'scripts/sql/identity.test.ts'],
  reattribute_identities: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'verify/identity_merge.sql',
    'scripts/sql/mutation-pins-identity.test.ts',
    'scripts/sql/mutation-pins.test.ts',
    'scripts/sql/identity.test.ts',
    'property-tests/identity-merge.test.ts',
  ],
  reattribute_identities_loop: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'verify/identity_merge.sql',
    'scripts/sql/mutation-pins-identity.test.ts',
    'scripts/sql/mutation-pins.test.ts',
    'scripts/sql/identity.test.ts',
    'property-tests/identity-merge.test.ts',
  ],
  reattribute_all: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'verify/identity_merge.sql',
    'scripts/sql/mutation-pins.test.ts',
    'scripts/sql/identity.test.ts',
  ],
  is_terminated_early_marker: ['verify/mutation_pins.sql', 'verify/finish_run_end_to_end.sql', 'verify/parse_independent.sql'],
  drop_staged_rows: [
    'verify/mutation_pins.sql',
    'verify/run_lifecycle_pinned.sql',
    'property-tests/failed-run.test.ts',
    'scripts/sql/safety-records.test.ts',
  ],
  horizon_day: [...endToEnd, ...add],
  upsert_subscribers_incremental: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'scripts/sql/mutation-pins-apply.test.ts',
    ...replace,
    'scripts/sql/edge-pins.test.ts',
  ],
  upsert_subscribers_incremental_loop: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'scripts/sql/mutation-pins-apply.test.ts',
    ...replace,
  ],
  insert_new_events_loop: ['scripts/sql/mutation-pins-apply.test.ts', ...replace, ...add, 'scripts/sql/edge-pins.test.ts'],
  upsert_subscribers_incremental_add: [
    'scripts/sql/projects-isolation-pins.test.ts',
    'scripts/sql/mutation-pins-apply.test.ts',
    'scripts/sql/mutation-pins-add-history.test.ts',
    ...add,
    'scripts/sql/edge-pins.test.ts',
  ],
  upsert_subscribers_incremental_add_loop: ['scripts/sql/mutation-pins-apply.test.ts', ...add, 'scripts/sql/edge-pins.test.ts'],
  refresh_subscribers: [
    'verify/finish_run_end_to_end.sql',
    'verify/parse_independent.sql',
    'scripts/sql/mutation-pins-runs.test.ts',
    ...replace,
    'scripts/sql/subscriber-count.test.ts',
    'property-tests/subscribers-definition.test.ts',
  ],
  refresh_subscriber_loop: ['verify/finish_run_end_to_end.sql', ...replace, 'property-tests/subscribers-definition.test.ts'],
  event_second: ['verify/parse_independent.sql', 'verify/finish_run_end_to_end.sql'],
  event_key: ['verify/parse_independent.sql', 'verify/finish_run_end_to_end.sql', 'property-tests/add-algebra.test.ts'],
  legacy_event_key: ['verify/mutation_pins.sql', 'verify/parse_independent.sql', 'verify/finish_run_end_to_end.sql'],
  upsert_subscriber_properties: ['verify/mutation_pins.sql', ...profiles, 'scripts/sql/mutation-pins-runs.test.ts'],
  finish_profiles_run: ['verify/mutation_pins.sql', ...profiles, 'scripts/sql/safety-records.test.ts'],
};

/**
 * Every core function reads or writes rows of one project (000013): a `project_id` predicate taken out or turned
 * is killed only by a proof with two projects in one database, so those proofs lead every function's list (among the
 * vitest proofs: proofsFor runs the verify scripts first), the cheapest first.
 */
const projectIsolation = [
  'verify/projects_isolated.sql',
  'scripts/sql/projects-isolation-runs.test.ts',
  'property-tests/project-isolation.test.ts',
  'scripts/sql/projects-isolation.test.ts',
];

export const proofMap: Record<string, string[]> = Object.fromEntries(
  Object.entries(mappedProofs).map(([name, proofs]) => [
    name,
    [...projectIsolation, ...proofs.filter((p) => !projectIsolation.includes(p))],
  ]),
);
