// Deterministic Mixpanel user profiles in Engage's shape, for the users of the sample events:
// {"$distinct_id", "$properties": {"$email", "$name", …, "$created": "2026-11-02T10:11:12", …}}.
// Only identified users have a profile (anonymous $device:… ids have none, as in Mixpanel).
// With editRate > 0 the same profiles come out as they would after a round of edits
// (editSeed names the round): that fraction of profiles changes 1-3 fields; the rest is
// byte-identical to the unedited set.
import type { Writable } from 'node:stream';
import type { EngageProfile } from './engage-profiles.ts';
import { createRandom, hash32, type Random } from './prng.ts';
import { PLACES, sampleUser, userKind } from './sample-users.ts';

export interface SampleProfileOptions {
  /** Same users as the events: profiles exist for the identified ones among [0, users). */
  users: number;
  seed: number;
  /** Profiles were created before, and last seen no later than, this moment. */
  end: Date;
  /** Fraction of profiles edited (default 0: the base set). */
  editRate?: number;
  /** Which round of edits (default 1). */
  editSeed?: number;
}

export interface SampleProfileStats {
  profiles: number;
  edited: number;
  bytes: number;
}

export type ProfileFormat = 'pages' | 'array' | 'jsonl';

const FIRST = [
  ['Ana', 'ana'],
  ['José', 'jose'],
  ['Zoë', 'zoe'],
  ['Łukasz', 'lukasz'],
  ['Mia', 'mia'],
  ['Noah', 'noah'],
  ['Aarav', 'aarav'],
  ['Yuki', 'yuki'],
  ['Chloé', 'chloe'],
  ['Oliver', 'oliver'],
  ['Fatima', 'fatima'],
  ['Liam', 'liam'],
  ['Søren', 'soren'],
  ['Emma', 'emma'],
] as const;
const LAST = [
  ['García', 'garcia'],
  ['Müller', 'muller'],
  ['Smith', 'smith'],
  ['Nowak', 'nowak'],
  ['Tanaka', 'tanaka'],
  ['Patel', 'patel'],
  ["O'Brien", 'obrien'],
  ['Dubois', 'dubois'],
  ['Silva', 'silva'],
  ['Johnson', 'johnson'],
  ['Kowalski', 'kowalski'],
  ['Nguyen', 'nguyen'],
] as const;
const PLANS = ['free', 'pro', 'team', 'enterprise'];
const SOURCES = ['organic', 'google_ads', 'newsletter', 'referral', 'partner'];
const COMPANIES = ['Acme Inc.', 'Globex', 'Initech', 'Umbrella GmbH', 'Société Générale de Café', '株式会社コーヒー', ''];
const TAGS = ['beta', 'vip', 'churn-risk', 'newsletter', 'early-adopter'];
const DRINKS = ['espresso', 'flat white', 'cortado', 'matcha latte', 'café au lait'];

/** Engage's naive date-time: 'YYYY-MM-DDTHH:MM:SS', no zone. */
export function engageDate(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19);
}

function baseProperties(options: SampleProfileOptions, index: number, r: Random): Record<string, unknown> {
  const endMs = options.end.getTime();
  const user = sampleUser(options.seed, index);
  const [first, firstAscii] = r.pick(FIRST);
  const [last, lastAscii] = r.pick(LAST);
  const created = endMs - 86_400_000 - r.int(730 * 86_400) * 1000;
  const lastSeen = created + Math.floor(r.next() * (endMs - created));
  const properties: Record<string, unknown> = {
    $created: engageDate(created),
    $email: r.chance(0.03) ? '' : user.kind === 'email' ? user.distinctId : `${firstAscii}.${lastAscii}${index}@example.com`,
    $first_name: first,
    $last_name: last,
    $name: `${first} ${last}`,
  };
  if (!r.chance(0.08)) properties.$phone = `${user.place.phonePrefix} ${String(1_000_000 + r.int(9_000_000)).replace(/(\d{3})(\d{4})$/, '$1 $2')}`;
  if (!r.chance(0.05)) {
    properties.$city = user.place.city;
    properties.$region = user.place.region;
    properties.$country_code = user.place.countryCode;
  }
  properties.$timezone = user.place.timezone;
  properties.$last_seen = engageDate(lastSeen);
  if (user.platform.web) properties.$os = JSON.parse(`{${user.platform.fragment}}`).$os as string;
  properties.plan = r.pick(PLANS);
  properties.company = r.pick(COMPANIES);
  properties.lifetime_value = Math.round(r.next() * 500_000) / 100;
  properties.signup_source = r.pick(SOURCES);
  properties.tags = TAGS.filter(() => r.chance(0.25));
  properties.is_beta = r.chance(0.15);
  properties['Favorite Drink'] = r.pick(DRINKS);
  properties.nps = r.chance(0.6) ? r.int(11) : null;
  return properties;
}

function edit(options: SampleProfileOptions, index: number, properties: Record<string, unknown>, r: Random): void {
  const endMs = options.end.getTime();
  const edits = 1 + r.int(3);
  const done = new Set<number>();
  while (done.size < edits) {
    const which = r.int(8);
    if (done.has(which)) continue;
    done.add(which);
    switch (which) {
      case 0: {
        const plan = PLANS.filter((p) => p !== properties.plan);
        properties.plan = r.pick(plan);
        break;
      }
      case 1:
        properties.$email = `changed.${index}.${options.editSeed ?? 1}@example.org`;
        break;
      case 2:
        properties.$last_seen = engageDate(endMs - r.int(3_600) * 1000);
        break;
      case 3: {
        const place = PLACES[(PLACES.findIndex((p) => p.city === properties.$city) + 1 + r.int(PLACES.length - 1)) % PLACES.length]!;
        properties.$city = place.city;
        properties.$region = place.region;
        properties.$country_code = place.countryCode;
        properties.$timezone = place.timezone;
        break;
      }
      case 4:
        properties.lifetime_value = Math.round(((properties.lifetime_value as number) + 1 + r.next() * 200) * 100) / 100;
        break;
      case 5:
        properties.$phone = properties.$phone ? '' : `+1 555 ${String(1000 + r.int(9000))}`;
        break;
      case 6:
        properties.tags = [...(properties.tags as string[]), `round-${options.editSeed ?? 1}`];
        break;
      default:
        properties.last_campaign = `winter-${options.editSeed ?? 1}`;
        break;
    }
  }
}

/** Whether profile `index` is edited in this round. */
export function isEdited(options: SampleProfileOptions, index: number): boolean {
  const rate = options.editRate ?? 0;
  return rate > 0 && hash32(options.seed, options.editSeed ?? 1, index, 0xed17) / 4294967296 < rate;
}

/** The profile of user `index`, or null when that user is anonymous. */
export function sampleProfile(options: SampleProfileOptions, index: number): EngageProfile | null {
  if (userKind(options.seed, index) === 'anonymous') return null;
  const properties = baseProperties(options, index, createRandom(options.seed, index, 0x9f));
  if (isEdited(options, index)) edit(options, index, properties, createRandom(options.seed, options.editSeed ?? 1, index, 0xed));
  return { $distinct_id: sampleUser(options.seed, index).distinctId, $properties: properties };
}

/** Profiles in user order. */
export function* sampleProfiles(options: SampleProfileOptions): Generator<EngageProfile> {
  for (let index = 0; index < options.users; index++) {
    const profile = sampleProfile(options, index);
    if (profile) yield profile;
  }
}

export function countSampleProfiles(options: Pick<SampleProfileOptions, 'users' | 'seed'>): number {
  let count = 0;
  for (let index = 0; index < options.users; index++) if (userKind(options.seed, index) !== 'anonymous') count++;
  return count;
}

/**
 * Write the profiles: `pages` = one Engage response per line ({"page","page_size","session_id",
 * "status","total","results"}), `array` = one JSON array, `jsonl` = one profile per line.
 */
export async function writeSampleProfiles(
  options: SampleProfileOptions,
  out: Writable,
  format: ProfileFormat = 'pages',
  pageSize = 1000,
): Promise<SampleProfileStats> {
  const stats: SampleProfileStats = { profiles: 0, edited: 0, bytes: 0 };
  const total = countSampleProfiles(options);
  const sessionId = `1764400000-SAMPLE${options.seed}R${options.editSeed ?? 1}`;
  let buffer = '';
  const write = async (text: string, force = false) => {
    buffer += text;
    if (buffer.length >= 256 * 1024 || (force && buffer)) {
      stats.bytes += Buffer.byteLength(buffer);
      const ok = out.write(buffer);
      buffer = '';
      if (!ok) await new Promise<void>((resolve) => out.once('drain', resolve));
    }
  };
  let page = 0;
  let onPage = 0;
  const openPage = () => `{"page":${page},"page_size":${pageSize},"session_id":${JSON.stringify(sessionId)},"status":"ok","total":${total},"results":[`;
  if (format === 'array') await write('[');
  for (let index = 0; index < options.users; index++) {
    const profile = sampleProfile(options, index);
    if (!profile) continue;
    if (isEdited(options, index)) stats.edited++;
    const json = JSON.stringify(profile);
    if (format === 'jsonl') await write(`${json}\n`);
    else if (format === 'array') await write(`${stats.profiles > 0 ? ',\n' : '\n'}${json}`);
    else {
      await write(`${onPage === 0 ? openPage() : ','}${json}`);
      onPage++;
      if (onPage === pageSize) {
        await write(']}\n');
        page++;
        onPage = 0;
      }
    }
    stats.profiles++;
  }
  if (format === 'array') await write('\n]\n');
  // Engage ends with a short page: an empty one when the last page was full.
  if (format === 'pages') await write(onPage > 0 ? ']}\n' : `${openPage()}]}\n`);
  await write('', true);
  return stats;
}
