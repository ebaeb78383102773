-- Every step of this migration waits at most 5 s for a lock and runs at most 10 min (squawk: require-timeout).
set local lock_timeout = '5s';
set local statement_timeout = '10min';
