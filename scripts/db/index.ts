// The Postgres harness's public API.
export { startEmbeddedPostgres, type EmbeddedPostgres, type EmbeddedPostgresOptions } from './embedded-server.ts';
export { resolveDatabaseServer, databaseUrl, databaseName, redactUrl, type DatabaseServer, type DatabaseSource } from './database-url.ts';
export { runMigrations, hasCurrentMigration, type MigrateOptions, type MigrateResult } from './migrate.ts';
export {
  withDatabase,
  createTemplateDatabase,
  cloneDatabase,
  dropDatabase,
  dropDatabasesWithPrefix,
  type TemplateDatabase,
} from './test-databases.ts';
export { assertDockerDaemon } from './docker-database.ts';
