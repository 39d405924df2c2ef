/**
 * Opens the SQLite database and brings its schema up to date.
 *
 * WAL with synchronous=FULL: a commit that moves money survives power loss (docs/operations.md
 * §Durability has the measured cost). Migrations are numbered and each runs in its own
 * transaction, recorded in schema_migrations, so a half-applied schema cannot exist.
 */
import Database from "better-sqlite3";
import { MIGRATIONS } from "./migrations.ts";

export type Db = Database.Database;

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
    migrate(db);
  }
  return db;
}

export function schemaVersion(db: Db): number {
  const row = db.prepare("SELECT max(version) AS v FROM schema_migrations").get() as { v: number | null };
  return row.v ?? 0;
}

function migrate(db: Db): void {
  db.exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)");
  const current = schemaVersion(db);
  const newest = MIGRATIONS.length;
  if (current > newest) {
    throw new Error(`database schema version ${current} is newer than this program knows (${newest}); upgrade the program`);
  }
  for (let version = current + 1; version <= newest; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version - 1]!);
      db.prepare("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)").run(version, Date.now());
    }).immediate();
  }
}
