-- 050-setting-kinds: the kinds of sync_settings values, checked on write (owner: selection stream).
-- Applied before 100-parse.sql and 200-ledger.sql, so that their settings rows may use the kinds added here:
--   interval_or_forever  'forever' or any interval (events.raw_retention, 200-ledger.sql)
--   event_names          a JSON array of distinct event names, each a non-empty string of at most 255 characters;
--                        '[]' means every event (events.only, 300-selection.sql)

-- The first file of the current migration: its limits hold for every later file too (graphile-migrate runs the
-- migration as one transaction). The ALTER TABLE below takes sync_settings' ACCESS EXCLUSIVE lock, which a running
-- sync's reads would make it wait for: it gives up after 5 s (rerun `npm run migrate`) instead of queueing every reader
-- behind it. Same limits as 000006's 010-timeouts.
set local lock_timeout = '5s';
set local statement_timeout = '10min';

CREATE OR REPLACE FUNCTION mixpanel_sync.setting_value_is_valid(kind text, value text)
 RETURNS boolean
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO ''
AS $function$
declare
  names jsonb;
begin
  case kind
    when 'interval' then perform value::interval;
    when 'interval_or_forever' then
      if value <> 'forever' then
        perform value::interval;
      end if;
    when 'integer' then perform value::bigint;
    when 'numeric' then perform value::numeric;
    when 'ratio' then return value::numeric between 0 and 1;
    when 'on_off' then return value in ('on', 'off');
    when 'set_loop' then return value in ('set', 'loop');
    when 'identity_mode' then return value in ('off', 'simplified', 'original');
    when 'event_names' then
      names := value::jsonb;
      return jsonb_typeof(names) = 'array'
        and not exists (
          select from jsonb_array_elements(names) e (name)
          where jsonb_typeof(e.name) <> 'string' or e.name #>> '{}' = '' or length(e.name #>> '{}') > 255)
        and (select count(distinct e.name) = count(*) from jsonb_array_elements(names) e (name));
    else return false;
  end case;
  return true;
exception
  when invalid_datetime_format or invalid_text_representation or datetime_field_overflow
    or interval_field_overflow or numeric_value_out_of_range then
    return false;
end;
$function$;
comment on function mixpanel_sync.setting_value_is_valid(kind text, value text) is 'True when value parses as a setting of this kind (a ratio is a number from 0 to 1; an identity_mode is off, simplified or original; an interval_or_forever is an interval or ''forever''; event_names is a JSON array of distinct non-empty strings of at most 255 characters, [] meaning every event); backs the check on sync_settings.';
revoke execute on function mixpanel_sync.setting_value_is_valid(kind text, value text) from public;
grant execute on function mixpanel_sync.setting_value_is_valid(kind text, value text) to mixpanel_sync_loader;

alter table mixpanel_sync.sync_settings drop constraint sync_settings_kind_check;
-- squawk-ignore constraint-missing-not-valid -- sync_settings holds ~40 rows: the check scans them at once
alter table mixpanel_sync.sync_settings add constraint sync_settings_kind_check check (kind = any (array[
  'interval', 'interval_or_forever', 'integer', 'numeric', 'ratio', 'on_off', 'set_loop', 'identity_mode', 'event_names']));
comment on constraint sync_settings_kind_check on mixpanel_sync.sync_settings is 'The kinds mixpanel_sync.setting_value_is_valid knows.';
