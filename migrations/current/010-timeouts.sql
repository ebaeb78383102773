-- The first file of the current migration: its limits hold for every later file too (graphile-migrate runs the
-- migration as one transaction). The table changes after it take locks a running sync's statements hold: they give up
-- after 5 s (rerun `npm run migrate`) instead of queueing every reader behind them.
set local lock_timeout = '5s';
set local statement_timeout = '10min';
