// Issue 9, "One input framing": the hostile events corpus (scripts/fixtures/hostile-corpus.ts) answered by the
// Export API (the fake server on 127.0.0.1 sending the corpus bytes as the export body) must end exactly as the same
// bytes from --file: same counts, same rejects (line, reason), same ledger and events_daily.
// Seen failing before the Export client handed its body on as received (scripts/mixpanel/export-lines.ts with its own
// framing): (1) the over-64-MiB line failed the whole run on the API path: "the Mixpanel export … broke after 165 lines
// were passed on (the export has a line longer than 33554432 bytes: not Mixpanel JSONL.)" (its own 32 MiB limit);
// (2) without that line, every reject after the first blank line / rejoined record had a smaller line_no than from
// --file (e.g. 51 instead of 56): export-lines.ts dropped blank lines and rejoined split records before
// input-framing.ts numbered lines. Now the body goes to input-framing.ts as bytes: one rule, one place.
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createTestDatabase } from '../db/vitest-database.ts';
import { runCli, summaryOf, type CliResult } from '../fixtures/cli-runner.ts';
import { startFakeMixpanel } from '../fixtures/fake-mixpanel-server.ts';
import { hostileEvents, writeCorpus } from '../fixtures/hostile-corpus.ts';
import { eventsRunOutcome } from '../fixtures/run-outcome.ts';

const viaFile = await createTestDatabase();
const viaApi = await createTestDatabase();
const dir = mkdtempSync(path.join(os.tmpdir(), 'hostile-corpus-api-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await viaFile.drop();
  await viaApi.drop();
});

const explain = (result: CliResult) => `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr.slice(-2000)}`;

describe('one framing rule: the Export API path', () => {
  it('the corpus as an Export API answer ends as the same bytes from --file', async () => {
    const file = path.join(dir, 'events.jsonl');
    await writeCorpus(file, hostileEvents({ seed: 20261201, now: Math.floor(Date.now() / 1000) }));
    const fromFile = await runCli('sync:events', ['--file', file, '--json'], { env: { DATABASE_URL: viaFile.url } });
    expect(fromFile.code, explain(fromFile)).toBe(0);

    const fake = await startFakeMixpanel({ exportSource: () => createReadStream(file, { highWaterMark: 256 * 1024 }) });
    try {
      const fromApi = await runCli('sync:events', ['--json'], {
        env: {
          DATABASE_URL: viaApi.url,
          MIXPANEL_SERVICE_ACCOUNT: fake.options.serviceAccount,
          MIXPANEL_SECRET: fake.options.secret,
          MIXPANEL_PROJECT_ID: String(fake.options.projectId),
          MIXPANEL_API_URL: fake.url,
          MIXPANEL_BUDGET_FILE: path.join(dir, 'budget.json'),
          MIXPANEL_MAX_TRIES: '1',
        },
      });
      expect(fromApi.code, explain(fromApi)).toBe(0);
      expect(await eventsRunOutcome(viaApi.pool, summaryOf(fromApi)!)).toBe(await eventsRunOutcome(viaFile.pool, summaryOf(fromFile)!));
    } finally {
      await fake.close();
    }
  }, 600_000);
});
