// Secrets never appear in what the sync commands print or record: MIXPANEL_SECRET (and the Basic credentials made of
// it) and the password of DATABASE_URL are looked for in stdout, stderr and every row of sync_runs and sync_rejects,
// after runs that fail in every way we can make them fail, and after a run that succeeds.
// The failures: Mixpanel answering 401 (wrong secret), 500 on every try, an unreachable MIXPANEL_API_URL, a
// MIXPANEL_API_URL that is not a URL and one that carries credentials, the secret swapped into MIXPANEL_PROJECT_ID,
// a database that refuses the password (pgbouncer with md5 authentication in front of the test server: the harness's
// servers trust every password), and a database that is not there.
// Seen failing: before the fix in scripts/mixpanel/mixpanel-settings.ts, the "not a URL" case (MIXPANEL_API_URL echoed
// whole, credentials included) and the MIXPANEL_PROJECT_ID case (the refused value echoed: the secret) printed the secret.
import { Buffer } from 'node:buffer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../db/vitest-database.ts';
import { findFreePort } from '../db/free-port.ts';
import { runCli, type CliResult } from '../fixtures/cli-runner.ts';
import { startFakeMixpanel, type FakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { findPgBouncer, startPgBouncer, type PgBouncer } from '../fixtures/pgbouncer.ts';

const SECRET = 'mp-Secret-7QxZk2Lw9vTn4Rb';
const ACCOUNT = 'sync-bot.abc123.mp-service-account';
const DB_PASSWORD = 'Db-Pa55word-K8dJ3mQ';
const BASIC = Buffer.from(`${ACCOUNT}:${SECRET}`).toString('base64');
const NEEDLES = [SECRET, DB_PASSWORD, BASIC, encodeURIComponent(DB_PASSWORD)];

let db: TestDatabase;
let mixpanel: FakeMixpanel;
let dbUrlWithPassword: string;
let bouncer: PgBouncer | undefined;
const pgbouncerBinary = findPgBouncer();

beforeAll(async () => {
  db = await createTestDatabase();
  const url = new URL(db.url);
  url.password = DB_PASSWORD; // the harness's servers trust it; it must still never be shown
  dbUrlWithPassword = url.toString();
  const now = Math.floor(Date.now() / 1000);
  mixpanel = await startFakeMixpanel({
    serviceAccount: ACCOUNT,
    secret: SECRET,
    projectId: 4242,
    events: Array.from({ length: 20 }, (_, i) =>
      JSON.stringify({ event: 'Open', properties: { distinct_id: `u${i % 3}`, time: now - 3600 + i, $insert_id: `s-${i}` } }),
    ),
    profiles: [{ $distinct_id: 'u1', $properties: { $email: 'u1@example.com' } }],
  });
  if (pgbouncerBinary) bouncer = await startPgBouncer(db.url, { binary: pgbouncerBinary, password: 'the-right-password' });
});

afterAll(async () => {
  await bouncer?.stop();
  await mixpanel?.close();
  await db?.drop();
});

function env(overrides: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    DATABASE_URL: dbUrlWithPassword,
    MIXPANEL_SERVICE_ACCOUNT: ACCOUNT,
    MIXPANEL_SECRET: SECRET,
    MIXPANEL_PROJECT_ID: '4242',
    MIXPANEL_API_URL: mixpanel.url,
    MIXPANEL_MAX_TRIES: '2',
    MIXPANEL_QUERIES_PER_HOUR: 'unlimited',
    MIXPANEL_BUDGET_FILE: mixpanel.settings().budgetFile ?? '',
    ...overrides,
  };
}

/** Every needle found in the run's output and in the database's run records, as "<where>: <needle>". */
async function leaks(result: CliResult): Promise<string[]> {
  const { rows } = await db.pool.query<{ t: string }>(
    `select r::text as t from mixpanel_sync.sync_runs r union all select j::text from mixpanel_sync.sync_rejects j`,
  );
  const places: Record<string, string> = { stdout: result.stdout, stderr: result.stderr, database: rows.map((row) => row.t).join('\n') };
  return Object.entries(places).flatMap(([where, text]) =>
    NEEDLES.filter((needle) => text.includes(needle)).map((needle) => `${where}: ${needle}`),
  );
}

const cases: Array<{
  name: string;
  script: 'sync:events' | 'sync:profiles';
  env: () => NodeJS.ProcessEnv;
  before?: () => void;
  failure: RegExp;
}> = [
  {
    name: 'Mixpanel answers 401 (wrong secret)',
    script: 'sync:events',
    env: () => env({ MIXPANEL_SECRET: `${SECRET}-wrong` }),
    failure: /401/,
  },
  {
    name: 'Mixpanel answers 500 on every try',
    script: 'sync:events',
    env: () => env(),
    before: () => mixpanel.queueExport({ status: 500, body: '{"error":"boom"}' }, { status: 500, body: '{"error":"boom"}' }),
    failure: /500/,
  },
  {
    name: 'Engage answers 401 (wrong secret)',
    script: 'sync:profiles',
    env: () => env({ MIXPANEL_SECRET: `${SECRET}-wrong` }),
    failure: /401/,
  },
  { name: 'MIXPANEL_API_URL unreachable', script: 'sync:events', env: () => env({ MIXPANEL_API_URL: 'http://127.0.0.1:9' }), failure: /./ },
  {
    name: 'MIXPANEL_API_URL is not a URL',
    script: 'sync:events',
    env: () => env({ MIXPANEL_API_URL: `http//${ACCOUNT}:${SECRET}@127.0.0.1:9` }),
    failure: /MIXPANEL_API_URL/,
  },
  {
    name: 'MIXPANEL_API_URL carries credentials',
    script: 'sync:events',
    env: () => env({ MIXPANEL_API_URL: `http://${ACCOUNT}:${SECRET}@127.0.0.1:9` }),
    failure: /MIXPANEL_API_URL/,
  },
  {
    name: 'the secret swapped into MIXPANEL_PROJECT_ID',
    script: 'sync:events',
    env: () => env({ MIXPANEL_PROJECT_ID: SECRET }),
    failure: /MIXPANEL_PROJECT_ID/,
  },
  {
    name: 'the database is not there',
    script: 'sync:events',
    env: () => {
      const url = new URL(dbUrlWithPassword);
      url.port = String(unusedPort);
      return env({ DATABASE_URL: url.toString() });
    },
    failure: /./,
  },
];
let unusedPort = 9;

describe('secrets in output and run records', () => {
  beforeAll(async () => {
    unusedPort = await findFreePort();
  });

  for (const c of cases) {
    it(`${c.name}: fails, and neither the secret nor the password shows`, async () => {
      c.before?.();
      const result = await runCli(c.script, [], { env: c.env(), via: 'npm' });
      expect(result.code, result.stderr).not.toBe(0);
      expect(result.stderr).toMatch(c.failure);
      expect(await leaks(result)).toEqual([]);
    });
  }

  it.skipIf(!pgbouncerBinary)('the database refuses the password (pgbouncer, md5): fails, and the password does not show', async () => {
    const url = new URL(bouncer!.urlFor(dbUrlWithPassword));
    url.password = DB_PASSWORD; // not the-right-password
    const result = await runCli('sync:events', [], { env: env({ DATABASE_URL: url.toString() }), via: 'npm' });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/password/i);
    expect(await leaks(result)).toEqual([]);
  });

  it('a run that succeeds shows neither (events and profiles, with --json)', async () => {
    for (const script of ['sync:events', 'sync:profiles'] as const) {
      const result = await runCli(script, ['--json'], { env: env(), via: 'npm' });
      expect(result.code, result.stderr).toBe(0);
      expect(await leaks(result)).toEqual([]);
    }
    const { rows } = await db.pool.query(`select count(*)::int as n from mixpanel_sync.sync_runs where status = 'succeeded'`);
    expect(rows[0].n).toBe(2);
  });

  it('control: the search finds a needle where there is one', async () => {
    expect(await leaks({ code: 1, signal: null, stdout: `x ${SECRET} y`, stderr: '' })).toEqual([`stdout: ${SECRET}`]);
  });
});
