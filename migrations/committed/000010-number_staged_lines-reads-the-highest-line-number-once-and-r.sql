--! Previous: sha1:0b5d6302ca128d39b6685c1e6fb9d4855a052c7e
--! Hash: sha1:3b55662f4adb1d9ccee72e2ff3d36ee8f8d51bc7
--! Message: number_staged_lines reads the highest line number once and runs without nested loops (a psql-staged run of 8,000 lines took 11.3 s to number)

-- Same limits as the migrations before: a CREATE OR REPLACE FUNCTION waits for no run for long.
set local lock_timeout = '5s';
set local statement_timeout = '10min';

-- number_staged_lines numbers the lines a psql user staged without line_no (insert into staged_events (run_id, line)).
-- Its UPDATE cross-joined the run's unnumbered lines with the run's highest line_no (an aggregate). Planned on
-- statistics sampled during an earlier run (run ids only grow, so the running run is estimated at about one row), the
-- aggregate became the inner side of a nested loop and was computed again for every line: 11.3 s for 8,000 lines on
-- PostgreSQL 15 and 18, growing with the square of the lines. The highest number is now read once into a variable,
-- and the function runs without nested loops, so the join of the lines with their numbers is a hash or merge join
-- whatever the estimate.
create or replace function mixpanel_sync.number_staged_lines(source text, run_id bigint)
returns void
language plpgsql
set search_path = ''
set enable_nestloop = off
as $$
declare
  base bigint;
begin
  -- Lines staged without a number (COPY of (run_id, line) only) are numbered on from the run's last number, in
  -- line_id order. Nothing to do (one scan of the run's lines) when the stager numbered them, as the loader does.
  if source = 'events' then
    if exists (select from mixpanel_sync.staged_events s where s.run_id = number_staged_lines.run_id and s.line_no is null) then
      base := coalesce((select max(m.line_no) from mixpanel_sync.staged_events m where m.run_id = number_staged_lines.run_id), 0);
      update mixpanel_sync.staged_events s set line_no = n.line_no
      from (
        select u.line_id, base + row_number() over (order by u.line_id) as line_no
        from mixpanel_sync.staged_events u
        where u.run_id = number_staged_lines.run_id and u.line_no is null
      ) n
      where s.run_id = number_staged_lines.run_id and s.line_id = n.line_id;
    end if;
  else
    if exists (select from mixpanel_sync.staged_profiles s where s.run_id = number_staged_lines.run_id and s.line_no is null) then
      base := coalesce((select max(m.line_no) from mixpanel_sync.staged_profiles m where m.run_id = number_staged_lines.run_id), 0);
      update mixpanel_sync.staged_profiles s set line_no = n.line_no
      from (
        select u.line_id, base + row_number() over (order by u.line_id) as line_no
        from mixpanel_sync.staged_profiles u
        where u.run_id = number_staged_lines.run_id and u.line_no is null
      ) n
      where s.run_id = number_staged_lines.run_id and s.line_id = n.line_id;
    end if;
  end if;
end;
$$;
comment on function mixpanel_sync.number_staged_lines(source text, run_id bigint) is 'Gives the run''s staged lines that have no line_no one (after the run''s highest, in line_id order), so that every reject has its line number. Called before parsing. The highest number is read once, and the function runs with enable_nestloop = off: statistics sampled during an earlier run estimate the running run at about one row, and a nested loop then repeated work once per line (11.3 s for 8,000 lines before).';
