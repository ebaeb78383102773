-- Limits for this whole migration. graphile-migrate runs a migration as one transaction, so `set local` holds for every
-- statement after it (also those of the later migrations/current/NNN-*.sql files) and ends with the transaction.
-- lock_timeout: a DDL statement that has to wait behind a running sync fails after 5 s (rerun `npm run migrate` later)
-- instead of queueing every reader of that table behind its own waiting lock request.
-- statement_timeout: no single statement runs longer than 10 minutes while it holds the migration's locks; a migration
-- that really needs longer (a large backfill) raises it in its own text, with the reason.
-- (squawk's require-lock-timeout / require-statement-timeout; see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '10min';
