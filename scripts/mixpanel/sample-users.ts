// The simulated users shared by the sample events and profiles: a user's distinct_id, device,
// place and names depend only on (seed, user index), so events and profiles of one seed match.
import { hash32, mix32 } from './prng.ts';

export type UserKind = 'identified' | 'anonymous' | 'email' | 'numeric' | 'unicode';

export interface SampleUser {
  index: number;
  kind: UserKind;
  /** As Mixpanel would send it: a string, or a number for a few legacy integer ids. */
  distinctId: string | number;
  /** The distinct_id as a JSON value (quoted string or number), ready to paste into a line. */
  distinctIdJson: string;
  platform: Platform;
  place: Place;
}

export interface Platform {
  lib: string;
  /** JSON object members (no braces, no leading comma) every event of such a device carries. */
  fragment: string;
  web: boolean;
  endpoint: string;
}

export interface Place {
  city: string;
  region: string;
  countryCode: string;
  timezone: string;
  phonePrefix: string;
}

export const PLACES: readonly Place[] = [
  { city: 'San Francisco', region: 'California', countryCode: 'US', timezone: 'America/Los_Angeles', phonePrefix: '+1 415' },
  { city: 'New York', region: 'New York', countryCode: 'US', timezone: 'America/New_York', phonePrefix: '+1 212' },
  { city: 'Austin', region: 'Texas', countryCode: 'US', timezone: 'America/Chicago', phonePrefix: '+1 512' },
  { city: 'London', region: 'England', countryCode: 'GB', timezone: 'Europe/London', phonePrefix: '+44 20' },
  { city: 'Berlin', region: 'Berlin', countryCode: 'DE', timezone: 'Europe/Berlin', phonePrefix: '+49 30' },
  { city: 'München', region: 'Bavaria', countryCode: 'DE', timezone: 'Europe/Berlin', phonePrefix: '+49 89' },
  { city: 'Zürich', region: 'Zurich', countryCode: 'CH', timezone: 'Europe/Zurich', phonePrefix: '+41 44' },
  { city: 'Paris', region: 'Île-de-France', countryCode: 'FR', timezone: 'Europe/Paris', phonePrefix: '+33 1' },
  { city: 'São Paulo', region: 'São Paulo', countryCode: 'BR', timezone: 'America/Sao_Paulo', phonePrefix: '+55 11' },
  { city: 'Bengaluru', region: 'Karnataka', countryCode: 'IN', timezone: 'Asia/Kolkata', phonePrefix: '+91 80' },
  { city: '東京', region: 'Tokyo', countryCode: 'JP', timezone: 'Asia/Tokyo', phonePrefix: '+81 3' },
  { city: 'Sydney', region: 'New South Wales', countryCode: 'AU', timezone: 'Australia/Sydney', phonePrefix: '+61 2' },
  { city: 'Kraków', region: 'Lesser Poland', countryCode: 'PL', timezone: 'Europe/Warsaw', phonePrefix: '+48 12' },
  { city: 'Toronto', region: 'Ontario', countryCode: 'CA', timezone: 'America/Toronto', phonePrefix: '+1 416' },
];

function platform(lib: string, endpoint: string, web: boolean, members: Record<string, string | number | boolean>): Platform {
  const body = JSON.stringify({ ...members, $lib_version: members.$lib_version ?? '2.55.1', $mp_api_endpoint: endpoint, mp_lib: lib }).slice(1, -1);
  return { lib, web, endpoint, fragment: body };
}

export const PLATFORMS: readonly Platform[] = [
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Chrome', $browser_version: 131, $os: 'Mac OS X', $screen_height: 982, $screen_width: 1512 }),
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Chrome', $browser_version: 130, $os: 'Windows', $screen_height: 1080, $screen_width: 1920 }),
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Safari', $browser_version: 18.1, $os: 'Mac OS X', $screen_height: 900, $screen_width: 1440 }),
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Mobile Safari', $browser_version: 18, $os: 'iOS', $device: 'iPhone', $screen_height: 852, $screen_width: 393 }),
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Firefox', $browser_version: 132, $os: 'Linux', $screen_height: 1200, $screen_width: 1920 }),
  platform('web', 'api-js.mixpanel.com', true, { $browser: 'Microsoft Edge', $browser_version: 131, $os: 'Windows', $screen_height: 864, $screen_width: 1536 }),
  platform('swift', 'api.mixpanel.com', false, { $os: 'iOS', $os_version: '18.1', $model: 'iPhone16,2', $manufacturer: 'Apple', $app_version_string: '5.12.0', $lib_version: '4.3.0', $wifi: true }),
  platform('android', 'api.mixpanel.com', false, { $os: 'Android', $os_version: '14', $model: 'Pixel 8', $brand: 'google', $manufacturer: 'Google', $app_version_string: '5.12.1', $lib_version: '7.5.2', $carrier: 'T-Mobile' }),
  platform('python', 'api.mixpanel.com', false, { $lib_version: '4.10.1' }),
];
// How often each platform is a user's: web dominates.
const PLATFORM_WEIGHTS = [30, 18, 12, 10, 5, 5, 9, 8, 3];
const PLATFORM_TABLE = PLATFORM_WEIGHTS.flatMap((w, i) => Array.from({ length: w }, () => i));

const UNICODE_IDS = ['ユーザー', 'usuário', '用户', 'müller', 'Δοκιμή', 'пользователь'];

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(8, '0').slice(8 - digits);
}

/** A v4-looking UUID from (seed, index, salt), unique per index thanks to mix32 being a bijection. */
export function sampleUuid(seed: number, index: number, salt: number): string {
  const a = mix32((index ^ hash32(seed, salt)) >>> 0);
  const b = hash32(seed, index, salt, 1);
  const c = hash32(seed, index, salt, 2);
  return `${hex(a, 8)}-${hex(b >>> 16, 4)}-4${hex(b, 3)}-${hex(8 + (c >>> 30), 1)}${hex(c >>> 4, 3)}-${hex(c, 4)}${hex(hash32(seed, index, salt, 3), 8)}`;
}

/** Which kind of id user (seed, index) has: ~78% identified, 18% anonymous ($device:…), 2% email, 1% numeric, 1% unicode. */
export function userKind(seed: number, index: number): UserKind {
  const roll = hash32(seed, index, 0xd15) % 1000;
  if (roll < 10) return 'numeric';
  if (roll < 20) return 'unicode';
  if (roll < 40) return 'email';
  if (roll < 220) return 'anonymous';
  return 'identified';
}

/** The user of (seed, index): same inputs, same user. */
export function sampleUser(seed: number, index: number): SampleUser {
  const h = hash32(seed, index, 0xd15);
  const kind = userKind(seed, index);
  const platformIndex = PLATFORM_TABLE[hash32(seed, index, 0x91a) % PLATFORM_TABLE.length]!;
  const place = PLACES[hash32(seed, index, 0x9ace) % PLACES.length]!;
  let distinctId: string | number;
  if (kind === 'numeric') distinctId = 100_000 + index;
  else if (kind === 'unicode') distinctId = `${UNICODE_IDS[(h >>> 12) % UNICODE_IDS.length]}-${index}`;
  else if (kind === 'email') distinctId = `user${index}@example.com`;
  else if (kind === 'anonymous') distinctId = `$device:${sampleUuid(seed, index, 0xde7)}`;
  else distinctId = `u_${mix32((index ^ hash32(seed, 0x1d)) >>> 0).toString(36)}`;
  return {
    index,
    kind,
    distinctId,
    distinctIdJson: JSON.stringify(distinctId),
    platform: PLATFORMS[platformIndex]!,
    place,
  };
}
