/**
 * Opens the SQLite database and brings its schema up to date.
 *
 * WAL with synchronous=FULL: a commit that moves money survives power loss (docs/operations.md
 * §Durability has the measured cost). Migrations are numbered and each runs in its own
 * transaction, recorded in schema_migrations, so a half-applied schema cannot exist.
 */
import Database from "better-sqlite3";
import { MIGRATIONS } from "./migrations.ts";
import { PG_MIGRATIONS } from "./migrations-pg.ts";
import { PgDatabase, WRITE_LOCK, type PgOpenOptions } from "./pg.ts";

/**
 * The store seam: what the repositories and services use of a database. better-sqlite3's own
 * type, narrowed to the part both stores implement; on PostgreSQL it is a PgDatabase
 * (src/store/pg.ts), whose statements, transactions and savepoints behave the same way.
 */
export type Db = Pick<Database.Database, "prepare" | "exec" | "transaction" | "open" | "name" | "close" | "inTransaction" | "pragma">;

/** Which store a Db is: most code never asks; the few statements that differ do. */
export function isPostgres(db: Db): boolean {
  return (db as unknown) instanceof PgDatabase;
}

export interface OpenOptions {
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
  /**
   * "commit" (the default): every COMMIT syncs the WAL before it returns (synchronous = FULL).
   * "caller": COMMIT only writes the WAL (synchronous = NORMAL) and the caller must sync it
   * (src/store/wal-sync.ts) before anything acts on a commit; the broker does, off the event loop.
   */
  readonly durability?: "commit" | "caller";
}

export function openDatabase(file: string, options: OpenOptions = {}): Db {
  const db = new Database(file, { readonly: options.readonly ?? false });
  openedSqlite(db, options);
  return db;
}

/**
 * A PostgreSQL database by URL, its schema brought up to date (nodes starting together migrate
 * one at a time, under the write lock). Commits are durable when COMMIT returns.
 */
export function openPostgres(url: string, options: PgOpenOptions & { readonly readonly?: boolean } = {}): Db {
  const pg = new PgDatabase(url, options);
  const db = pg as unknown as Db;
  try {
    if (options.readonly === true) {
      pg.exec("SET default_transaction_read_only = on");
      const known = pg.prepare("SELECT to_regclass('schema_migrations') AS t").get() as { t: string | null };
      if (known.t === null) throw new Error(`${pg.name} has no Handoff Pay schema: start a broker with --database ${pg.name} once to create it`);
      checkNotNewer(schemaVersion(db), PG_MIGRATIONS.length);
    } else migrate(db, PG_MIGRATIONS, `; SELECT pg_advisory_xact_lock(${WRITE_LOCK})`);
  } catch (err) {
    pg.close();
    throw err;
  }
  return db;
}

function openedSqlite(db: Database.Database, options: OpenOptions): void {
  db.pragma(`busy_timeout = ${Math.trunc(options.busyTimeoutMs ?? 5000)}`);
  if (!options.readonly) {
    db.pragma("journal_mode = WAL");
    db.pragma(options.durability === "caller" ? "synchronous = NORMAL" : "synchronous = FULL");
    // Each message runs in a savepoint, whose undo pages (the statement journal) SQLite spills to
    // a temporary file past 64 KiB: ~two syscalls per page changed. In memory they cost nothing.
    db.pragma("temp_store = MEMORY");
    db.pragma("foreign_keys = ON");
    // Freed pages are overwritten with zeros, so an unbound agreement leaves no bytes behind.
    db.pragma("secure_delete = ON");
    migrate(db, MIGRATIONS);
  }
}

export function schemaVersion(db: Db): number {
  const row = db.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number | null };
  return row.v ?? 0;
}

function checkNotNewer(current: number, newest: number): void {
  if (current > newest) {
    throw new Error(`database schema version ${current} is newer than this program knows (${newest}); upgrade the program`);
  }
}

function migrate(db: Db, migrations: readonly string[], lock = ""): void {
  // On PostgreSQL the check and the create run under the write lock: a second node starting at
  // the same moment waits, then finds the schema made.
  db.exec(`BEGIN${lock}; CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL); COMMIT`);
  checkNotNewer(schemaVersion(db), migrations.length);
  for (let version = schemaVersion(db) + 1; version <= migrations.length; version++) {
    db.transaction(() => {
      // Read again under the lock: another node may have applied it meanwhile.
      if (schemaVersion(db) >= version) return;
      db.exec(migrations[version - 1]!);
      db.prepare("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)").run(version, Date.now());
    }).immediate();
  }
}
