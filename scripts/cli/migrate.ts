// npm run migrate — applies committed migrations, then the current one when non-empty, to the database in DATABASE_URL.
import { redactUrl } from '../db/database-url.ts';
import { runMigrations } from '../db/migrate.ts';

async function main(): Promise<void> {
  const url = process.env.DATABASE_URL;
  if (!url) {
    console.error(
      'migrate: set DATABASE_URL to the PostgreSQL 15+ database to migrate (e.g. DATABASE_URL=postgres://user@host:5432/db npm run migrate).',
    );
    console.error('For a local throwaway server, run `npm run db:start`: it migrates and prints a DATABASE_URL.');
    process.exit(2);
  }
  const result = await runMigrations(url, { log: (line) => console.log(line) });
  console.log(`Migrated ${redactUrl(url)}${result.currentApplied ? ' (current migration included)' : ''}.`);
}

main().catch((error: Error) => {
  console.error(`migrate: ${error.message}`);
  process.exit(1);
});
