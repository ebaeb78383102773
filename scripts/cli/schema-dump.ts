// npm run schema:dump — writes migrations/schema.sql: the schema as it stands after every migration (committed, then the
// current one), read from the catalog of a freshly migrated database. Generated, never edited: a reviewer finds a
// function's current text in one place, and a migration's effect as a diff of this file.
//
// Catalog-based rather than pg_dump, so that PostgreSQL 15 and 18 give the same bytes (pg_dump's output changes between
// majors, and needs a pg_dump as new as the server): schemas in name order, then per schema its types, tables (columns,
// constraints, indexes, triggers, row security, policies), views, sequences and functions (pg_get_functiondef), each with
// its comments and grants; the roles the grants name; last, the rows migrations insert (e.g. sync_settings).
// Owners are left out (they are whoever ran the migrations), and so is PostgreSQL 17's MAINTAIN privilege.
//
// The database: a new one on the server of DATABASE_URL (or a throwaway embedded server without it), migrated, dumped
// and dropped; DATABASE_URL's own database is never touched. `--check` compares instead of writing (exit 1 on drift).
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { resolveDatabaseServer } from '../db/database-url.ts';
import { repoRoot } from '../db/paths.ts';
import { cloneDatabase, createTemplateDatabase, dropDatabase } from '../db/test-databases.ts';

export const schemaFile = path.join(repoRoot, 'migrations', 'schema.sql');
export const schemaDumpCommand = 'npm run schema:dump';

type Query = (sql: string, values?: unknown[]) => Promise<Record<string, unknown>[]>;

// Schemas of the migrations: all but PostgreSQL's own and graphile-migrate's bookkeeping.
const SCHEMAS = `select n.oid, n.nspname as name from pg_catalog.pg_namespace n
  where n.nspname !~ '^pg_' and n.nspname not in ('information_schema', 'graphile_migrate') order by n.nspname`;

// Grant lines for one object's ACL: the owner's own rights and MAINTAIN (PostgreSQL 17+) left out.
const GRANTS = `select grantee, string_agg(privilege, ', ' order by privilege collate "C") as privileges, is_grantable
  from (select case when a.grantee = 0 then 'public' else quote_ident(r.rolname) end as grantee, lower(a.privilege_type) as privilege, a.is_grantable
    from aclexplode(coalesce($1::aclitem[], acldefault($2::"char", $3::oid))) a
    left join pg_catalog.pg_roles r on r.oid = a.grantee
    where a.grantee <> $3::oid and a.privilege_type <> 'MAINTAIN') g
  group by grantee, is_grantable order by grantee collate "C", is_grantable`;

const lit = (text: string): string => `'${text.replace(/'/g, "''")}'`;

interface Out {
  lines: string[];
  roles: Set<string>;
}

async function grants(q: Query, out: Out, acl: unknown, kind: string, owner: unknown, target: string): Promise<void> {
  for (const g of await q(GRANTS, [acl, kind, owner])) {
    if (g.grantee !== 'public') out.roles.add(String(g.grantee));
    out.lines.push(`grant ${g.privileges} on ${target} to ${g.grantee}${g.is_grantable ? ' with grant option' : ''};`);
  }
}

function comment(out: Out, target: string, text: unknown): void {
  if (typeof text === 'string') out.lines.push(`comment on ${target} is ${lit(text)};`);
}

async function columnsOf(q: Query, relid: unknown): Promise<Record<string, unknown>[]> {
  return q(
    `select quote_ident(a.attname) as name, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull as not_null,
        pg_get_expr(d.adbin, d.adrelid) as default_expr, a.attidentity as identity, a.attgenerated as generated,
        case when a.attcollation <> t.typcollation then (select quote_ident(c.collname) from pg_catalog.pg_collation c where c.oid = a.attcollation) end as collation,
        col_description(a.attrelid, a.attnum) as comment, a.attacl as acl
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.oid = a.atttypid
      left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
      where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped order by a.attnum`,
    [relid],
  );
}

function columnLine(c: Record<string, unknown>): string {
  let line = `${c.name} ${c.type}`;
  if (c.collation) line += ` collate ${c.collation}`;
  if (c.identity) line += ` generated ${c.identity === 'a' ? 'always' : 'by default'} as identity`;
  if (c.generated) line += ` generated always as (${c.default_expr})${c.generated === 's' ? ' stored' : ' virtual'}`;
  else if (c.default_expr !== null) line += ` default ${c.default_expr}`;
  if (c.not_null) line += ' not null';
  return line;
}

async function dumpTypes(q: Query, out: Out, ns: unknown): Promise<void> {
  const types = await q(
    `select t.oid, t.typtype, format('%I.%I', n.nspname, t.typname) as name, t.typrelid, t.typowner as owner, t.typacl as acl,
        obj_description(t.oid, 'pg_type') as comment, format_type(t.typbasetype, t.typtypmod) as base, t.typnotnull, t.typdefault
      from pg_catalog.pg_type t join pg_catalog.pg_namespace n on n.oid = t.typnamespace
      where t.typnamespace = $1 and t.typtype in ('c', 'e', 'd')
        and (t.typtype <> 'c' or (select c.relkind from pg_catalog.pg_class c where c.oid = t.typrelid) = 'c')
      order by t.typname`,
    [ns],
  );
  for (const t of types) {
    out.lines.push('');
    if (t.typtype === 'c') {
      const columns = await columnsOf(q, t.typrelid);
      out.lines.push(`create type ${t.name} as (`, columns.map((c) => `  ${columnLine(c)}`).join(',\n'), ');');
      for (const c of columns) comment(out, `column ${t.name}.${c.name}`, c.comment);
    } else if (t.typtype === 'e') {
      const labels = await q('select enumlabel from pg_catalog.pg_enum where enumtypid = $1 order by enumsortorder', [t.oid]);
      out.lines.push(`create type ${t.name} as enum (${labels.map((l) => lit(String(l.enumlabel))).join(', ')});`);
    } else {
      const checks = await q(
        'select quote_ident(conname) as name, pg_get_constraintdef(oid) as def from pg_catalog.pg_constraint where contypid = $1 and contype = $2 order by conname',
        [t.oid, 'c'],
      );
      let line = `create domain ${t.name} as ${t.base}`;
      if (t.typdefault !== null) line += ` default ${t.typdefault}`;
      if (t.typnotnull) line += ' not null';
      out.lines.push(`${line + checks.map((k) => `\n  constraint ${k.name} ${k.def}`).join('')};`);
    }
    comment(out, `type ${t.name}`, t.comment);
    await grants(q, out, t.acl, 'T', t.owner, `type ${t.name}`);
  }
}

async function dumpRelations(q: Query, out: Out, ns: unknown): Promise<void> {
  const relations = await q(
    `select c.oid, c.relkind, format('%I.%I', n.nspname, c.relname) as name, c.relpersistence, c.reloptions, c.relowner as owner,
        c.relacl as acl, c.relrowsecurity, c.relforcerowsecurity, obj_description(c.oid, 'pg_class') as comment
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where c.relnamespace = $1 and c.relkind in ('r', 'p', 'v', 'm', 'S')
        and not exists (select from pg_catalog.pg_depend d
          where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = c.oid and d.deptype = 'i')
      order by case c.relkind when 'S' then 3 when 'r' then 1 when 'p' then 1 else 2 end, c.relname`,
    [ns],
  );
  for (const r of relations) {
    const options = Array.isArray(r.reloptions) && r.reloptions.length > 0 ? ` with (${[...r.reloptions].sort().join(', ')})` : '';
    out.lines.push('');
    if (r.relkind === 'v' || r.relkind === 'm') {
      const [view] = await q('select pg_get_viewdef($1::oid, true) as def', [r.oid]);
      const kind = r.relkind === 'v' ? 'view' : 'materialized view';
      out.lines.push(`create ${kind} ${r.name}${options} as`, `${String(view!.def).replace(/;\s*$/, '')};`);
      comment(out, `${kind} ${r.name}`, r.comment);
      for (const c of await columnsOf(q, r.oid)) comment(out, `column ${r.name}.${c.name}`, c.comment);
      await grants(q, out, r.acl, 'r', r.owner, `table ${r.name}`);
      continue;
    }
    if (r.relkind === 'S') {
      const [s] = await q(
        `select format_type(seqtypid, null) as type, seqstart, seqincrement, seqmin, seqmax, seqcache, seqcycle,
            (select format('%s.%I', d.refobjid::regclass, a.attname) from pg_catalog.pg_depend d
              join pg_catalog.pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
              where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = s.seqrelid and d.deptype = 'a') as owned_by
          from pg_catalog.pg_sequence s where s.seqrelid = $1`,
        [r.oid],
      );
      out.lines.push(
        `create sequence ${r.name} as ${s!.type} start ${s!.seqstart} increment ${s!.seqincrement} minvalue ${s!.seqmin} maxvalue ${s!.seqmax} ` +
          `cache ${s!.seqcache}${s!.seqcycle ? ' cycle' : ''}${s!.owned_by ? ` owned by ${s!.owned_by}` : ''};`,
      );
      comment(out, `sequence ${r.name}`, r.comment);
      await grants(q, out, r.acl, 's', r.owner, `sequence ${r.name}`);
      continue;
    }
    const columns = await columnsOf(q, r.oid);
    const constraints = await q(
      `select quote_ident(conname) as name, pg_get_constraintdef(oid) as def, obj_description(oid, 'pg_constraint') as comment
        from pg_catalog.pg_constraint where conrelid = $1 and contype <> 'n' order by conname`,
      [r.oid],
    );
    const [partition] = r.relkind === 'p' ? await q('select pg_get_partkeydef($1::oid) as def', [r.oid]) : [];
    const body = [...columns.map(columnLine), ...constraints.map((k) => `constraint ${k.name} ${k.def}`)];
    out.lines.push(
      `create ${r.relpersistence === 'u' ? 'unlogged ' : ''}table ${r.name} (`,
      body.map((line) => `  ${line}`).join(',\n'),
      `)${partition ? ` partition by ${partition.def}` : ''}${options};`,
    );
    comment(out, `table ${r.name}`, r.comment);
    for (const c of columns) comment(out, `column ${r.name}.${c.name}`, c.comment);
    for (const k of constraints) comment(out, `constraint ${k.name} on ${r.name}`, k.comment);
    const indexes = await q(
      `select pg_get_indexdef(i.indexrelid) as def, format('%I.%I', n.nspname, c.relname) as name, obj_description(c.oid, 'pg_class') as comment
        from pg_catalog.pg_index i join pg_catalog.pg_class c on c.oid = i.indexrelid join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where i.indrelid = $1 and not exists (select from pg_catalog.pg_constraint k
          where k.conrelid = i.indrelid and k.conindid = i.indexrelid and k.contype in ('p', 'u', 'x'))
        order by c.relname`,
      [r.oid],
    );
    for (const i of indexes) {
      out.lines.push(`${i.def};`);
      comment(out, `index ${i.name}`, i.comment);
    }
    const triggers = await q(
      `select pg_get_triggerdef(oid) as def, quote_ident(tgname) as name, obj_description(oid, 'pg_trigger') as comment
        from pg_catalog.pg_trigger where tgrelid = $1 and not tgisinternal order by tgname`,
      [r.oid],
    );
    for (const t of triggers) {
      out.lines.push(`${t.def};`);
      comment(out, `trigger ${t.name} on ${r.name}`, t.comment);
    }
    if (r.relrowsecurity) out.lines.push(`alter table ${r.name} enable row level security;`);
    if (r.relforcerowsecurity) out.lines.push(`alter table ${r.name} force row level security;`);
    const policies = await q(
      `select quote_ident(p.polname) as name, p.polpermissive, p.polcmd,
          (select string_agg(case when o = 0 then 'public' else quote_ident(pg_catalog.pg_get_userbyid(o)) end, ', '
             order by case when o = 0 then 'public' else pg_catalog.pg_get_userbyid(o)::text end collate "C")
             from unnest(p.polroles) o) as roles,
          pg_get_expr(p.polqual, p.polrelid) as qual, pg_get_expr(p.polwithcheck, p.polrelid) as with_check,
          obj_description(p.oid, 'pg_policy') as comment
        from pg_catalog.pg_policy p where p.polrelid = $1 order by p.polname`,
      [r.oid],
    );
    const commands: Record<string, string> = { r: 'select', a: 'insert', w: 'update', d: 'delete', '*': 'all' };
    for (const p of policies) {
      for (const role of String(p.roles).split(', ')) if (role !== 'public') out.roles.add(role);
      let line = `create policy ${p.name} on ${r.name} as ${p.polpermissive ? 'permissive' : 'restrictive'} for ${commands[String(p.polcmd)]} to ${p.roles}`;
      if (p.qual !== null) line += ` using (${p.qual})`;
      if (p.with_check !== null) line += ` with check (${p.with_check})`;
      out.lines.push(`${line};`);
      comment(out, `policy ${p.name} on ${r.name}`, p.comment);
    }
    await grants(q, out, r.acl, 'r', r.owner, `table ${r.name}`);
    for (const c of columns) if (c.acl !== null) await grants(q, out, c.acl, 'c', r.owner, `column ${c.name} of table ${r.name}`);
  }
}

async function dumpFunctions(q: Query, out: Out, ns: unknown): Promise<void> {
  const functions = await q(
    `select p.oid, p.prokind, format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) as signature,
        p.proowner as owner, p.proacl as acl, obj_description(p.oid, 'pg_proc') as comment
      from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      where p.pronamespace = $1
        and not exists (select from pg_catalog.pg_depend d where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
      order by p.proname, pg_get_function_identity_arguments(p.oid) collate "C"`,
    [ns],
  );
  for (const f of functions) {
    const kind = f.prokind === 'p' ? 'procedure' : f.prokind === 'a' ? 'aggregate' : 'function';
    out.lines.push('');
    if (f.prokind === 'a') out.lines.push(`-- aggregate ${f.signature} (not rendered: pg_get_functiondef has no aggregates)`);
    else {
      const [def] = await q('select pg_get_functiondef($1::oid) as def', [f.oid]);
      out.lines.push(`${String(def!.def).trimEnd()};`);
    }
    comment(out, `${kind} ${f.signature}`, f.comment);
    await grants(q, out, f.acl, 'f', f.owner, `${kind} ${f.signature}`);
  }
}

async function dumpDefaultPrivileges(q: Query, out: Out, ns: unknown, schema: string): Promise<void> {
  const kinds: Record<string, string> = { r: 'tables', S: 'sequences', f: 'functions', T: 'types', n: 'schemas' };
  const defaults = await q(
    `select kind, grantee, string_agg(privilege, ', ' order by privilege collate "C") as privileges
      from (select d.defaclobjtype::text as kind, case when a.grantee = 0 then 'public' else quote_ident(r.rolname) end as grantee,
          lower(a.privilege_type) as privilege
        from pg_catalog.pg_default_acl d cross join aclexplode(d.defaclacl) a left join pg_catalog.pg_roles r on r.oid = a.grantee
        where d.defaclnamespace = $1 and a.grantee <> d.defaclrole and a.privilege_type <> 'MAINTAIN') g
      group by kind, grantee order by kind collate "C", grantee collate "C"`,
    [ns],
  );
  for (const d of defaults) {
    if (d.grantee !== 'public') out.roles.add(String(d.grantee));
    out.lines.push(`alter default privileges in schema ${schema} grant ${d.privileges} on ${kinds[String(d.kind)]} to ${d.grantee};`);
  }
}

async function dumpRows(q: Query, out: Out): Promise<void> {
  // Rows that migrations insert; columns whose default depends on the clock (now(), …) would differ per run and are left out.
  const tables = await q(
    `select c.oid, format('%I.%I', n.nspname, c.relname) as name from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where c.relkind in ('r', 'p') and n.nspname !~ '^pg_' and n.nspname not in ('information_schema', 'graphile_migrate')
      order by n.nspname, c.relname`,
  );
  for (const t of tables) {
    const columns = await q(
      `select quote_ident(a.attname) as name from pg_catalog.pg_attribute a
        left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
          and not (a.atttypid in ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
                   and coalesce(pg_get_expr(d.adbin, d.adrelid), '') ~* '(now|current_|clock_|statement_|transaction_)')
        order by a.attnum`,
      [t.oid],
    );
    const list = columns.map((c) => String(c.name));
    const values = list.map((c) => `quote_nullable(${c}::text)`).join(` || ', ' || `);
    const rows = await q(`select line from (select '(' || ${values} || ')' as line from ${t.name} t) r order by line collate "C"`);
    if (rows.length === 0) continue;
    out.lines.push('', `-- rows of ${t.name} after migrating (${rows.length})`, `insert into ${t.name} (${list.join(', ')}) values`);
    out.lines.push(`${rows.map((row) => `  ${row.line}`).join(',\n')};`);
  }
}

async function dumpRoles(q: Query, out: Out): Promise<void> {
  if (out.roles.size === 0) return;
  const roles = await q(
    `select quote_ident(r.rolname) as name, r.rolcanlogin, r.rolinherit, r.rolbypassrls, shobj_description(r.oid, 'pg_authid') as comment,
        (select string_agg(quote_ident(g.rolname), ', ' order by g.rolname) from pg_catalog.pg_auth_members m
          join pg_catalog.pg_roles g on g.oid = m.roleid where m.member = r.oid) as member_of
      from pg_catalog.pg_roles r where quote_ident(r.rolname) = any($1::text[]) order by r.rolname`,
    [[...out.roles]],
  );
  const lines = ['', '-- Roles the grants and policies name (cluster-wide: created by the migrations when missing).'];
  for (const r of roles) {
    const attributes = [r.rolcanlogin ? 'login' : 'nologin', r.rolinherit ? null : 'noinherit', r.rolbypassrls ? 'bypassrls' : null].filter(
      Boolean,
    );
    lines.push(`create role ${r.name} ${attributes.join(' ')};`);
    if (r.member_of) lines.push(`grant ${r.member_of} to ${r.name};`);
    comment({ lines, roles: out.roles }, `role ${r.name}`, r.comment);
  }
  out.lines.push(...lines);
}

/** The schema text of the database client is connected to (see the top of this file for what it holds, and in what order). */
export async function dumpSchema(client: pg.ClientBase): Promise<string> {
  const q: Query = async (sql, values) => (await client.query(sql, values)).rows;
  const out: Out = {
    lines: [
      '-- migrations/schema.sql: GENERATED by `npm run schema:dump` from a database migrated with migrations/committed/* and the',
      '-- current migration. Do not edit; `npm test` fails when it differs from what the migrations build.',
    ],
    roles: new Set(),
  };
  for (const s of await q(SCHEMAS)) {
    const schema = String(s.name);
    const [info] = await q(
      "select nspowner as owner, nspacl as acl, obj_description(oid, 'pg_namespace') as comment from pg_catalog.pg_namespace where oid = $1",
      [s.oid],
    );
    out.lines.push('', `-- ${'='.repeat(100)}`, `-- schema ${schema}`, `-- ${'='.repeat(100)}`, '');
    out.lines.push(`create schema ${schema === 'public' ? 'if not exists ' : ''}${schema};`);
    comment(out, `schema ${schema}`, info!.comment);
    await grants(q, out, info!.acl, 'n', info!.owner, `schema ${schema}`);
    await dumpDefaultPrivileges(q, out, s.oid, schema);
    await dumpTypes(q, out, s.oid);
    await dumpRelations(q, out, s.oid);
    await dumpFunctions(q, out, s.oid);
  }
  await dumpRows(q, out);
  await dumpRoles(q, out);
  return `${out.lines.join('\n')}\n`;
}

/** Dumps the database at url. */
export async function dumpSchemaAt(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await dumpSchema(client);
  } finally {
    await client.end();
  }
}

/** Where two texts first differ, as a short report naming the line; undefined when equal. */
export function firstDifference(expected: string, actual: string): string | undefined {
  if (expected === actual) return undefined;
  const a = expected.split('\n');
  const b = actual.split('\n');
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  const show = (line: string | undefined): string => (line === undefined ? '(end of file)' : JSON.stringify(line));
  return `line ${i + 1}:\n  migrations/schema.sql:   ${show(a[i])}\n  the migrations build:    ${show(b[i])}`;
}

/** Migrates a new database (on DATABASE_URL's server, or a throwaway embedded one), dumps it, drops it. */
export async function dumpMigratedSchema(): Promise<string> {
  const server = await resolveDatabaseServer();
  try {
    const template = await createTemplateDatabase(server.url);
    try {
      const url = await cloneDatabase(template);
      try {
        return await dumpSchemaAt(url);
      } finally {
        await dropDatabase(template.serverUrl, new URL(url).pathname.slice(1));
      }
    } finally {
      await dropDatabase(template.serverUrl, template.template);
    }
  } finally {
    await server.stop();
  }
}

async function main(args: string[]): Promise<number> {
  const check = args.includes('--check');
  const started = Date.now();
  const text = await dumpMigratedSchema();
  if (check) {
    const committed = await readFile(schemaFile, 'utf8').catch(() => '');
    const difference = firstDifference(committed, text);
    if (difference) {
      console.error(`schema:dump --check: migrations/schema.sql is not what the migrations build; first difference at ${difference}`);
      console.error(`Run \`${schemaDumpCommand}\` and commit migrations/schema.sql.`);
      return 1;
    }
    console.log(`migrations/schema.sql is up to date (${Date.now() - started} ms)`);
    return 0;
  }
  await writeFile(schemaFile, text);
  console.log(`wrote migrations/schema.sql: ${text.split('\n').length - 1} lines (${Date.now() - started} ms)`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: Error) => {
      console.error(`schema:dump: ${error.message}`);
      process.exit(1);
    },
  );
}
