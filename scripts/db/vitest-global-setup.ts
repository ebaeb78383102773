// vitest globalSetup: one server for the run (DATABASE_URL, or embedded, or Docker), one migrated template database,
// provided to test files as `mixpanelPgSyncTemplate` (see createTestDatabase in vitest-database.ts).
import type { TestProject } from 'vitest/node';
import { redactUrl, resolveDatabaseServer } from './database-url.ts';
import { createTemplateDatabase, dropDatabasesWithPrefix, newRunPrefix, type TemplateDatabase } from './test-databases.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    mixpanelPgSyncTemplate: TemplateDatabase;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  const server = await resolveDatabaseServer();
  let template: TemplateDatabase;
  try {
    // MIXPANEL_PG_SYNC_TEMPLATE (with DATABASE_URL): an already migrated template database on that server is used as
    // it is, e.g. one with a mutated function (npm run mutate); clones get a fresh prefix, the template is never dropped.
    const given = process.env.MIXPANEL_PG_SYNC_TEMPLATE?.trim();
    if (given && server.source !== 'DATABASE_URL')
      throw new Error('MIXPANEL_PG_SYNC_TEMPLATE needs DATABASE_URL (the server that holds that template database).');
    template = given ? { serverUrl: server.url, template: given, prefix: newRunPrefix() } : await createTemplateDatabase(server.url);
  } catch (error) {
    await server.stop();
    throw error;
  }
  project.provide('mixpanelPgSyncTemplate', template);
  console.log(`[db] ${server.source} ${redactUrl(server.url)}: template ${template.template} ready in ${Date.now() - started} ms`);
  return async () => {
    try {
      if (server.source === 'DATABASE_URL') await dropDatabasesWithPrefix(server.url, template.prefix);
    } finally {
      await server.stop(); // a throwaway server takes its databases with it
    }
  };
}
