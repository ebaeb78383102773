-- 900-privileges: the functions this migration created (new signatures) are executable by PUBLIC by default; as in
-- 000006, PUBLIC executes nothing in mixpanel_sync (nor in mixpanel_sync_verify), and the DBA's functions are not the
-- loader's: create_project, drop_project, forget_event_names (revoked in their files too). Idempotent.
revoke execute on all functions in schema mixpanel_sync from public;
revoke execute on all functions in schema mixpanel_sync_verify from public;
revoke execute on function mixpanel_sync.create_project(name text, mixpanel_project_id bigint, region text, timezone text) from mixpanel_sync_loader;
revoke execute on function mixpanel_sync.drop_project(name text) from mixpanel_sync_loader;
revoke execute on function mixpanel_sync.forget_event_names(names text[], project text) from mixpanel_sync_loader;
