/**
 * How the database is opened: durable commits (WAL, synchronous FULL, or NORMAL with the caller
 * syncing the WAL: src/store/wal-sync.ts), freed pages zeroed
 * (secure_delete), and the per-message savepoints' undo pages kept in memory (temp_store), not
 * spilled to a temporary file with two write syscalls per page (docs/performance.md).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import { openDatabase } from "../../src/store/db.ts";
import { MIGRATIONS } from "../../src/store/migrations.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";
import { tempDir } from "../helpers.ts";

describe("openDatabase", () => {
  let dir: string | null = null;
  afterEach(() => {
    if (dir !== null) rmSync(dir, { recursive: true, force: true });
    dir = null;
  });

  it("opens in WAL mode with full sync, secure delete and statement journals in memory", () => {
    dir = tempDir("hp-db-");
    const db = openDatabase(join(dir, "handoff.db"));
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
      expect(db.pragma("synchronous", { simple: true })).toBe(2); // FULL
      expect(db.pragma("secure_delete", { simple: true })).toBe(1);
      expect(db.pragma("temp_store", { simple: true })).toBe(2); // MEMORY
    } finally {
      db.close();
    }
  });

  it("leaves the WAL's sync to the caller when asked (the broker syncs it off the event loop)", () => {
    dir = tempDir("hp-db-");
    const db = openDatabase(join(dir, "handoff.db"), { durability: "caller" });
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
      expect(db.pragma("synchronous", { simple: true })).toBe(1); // NORMAL
    } finally {
      db.close();
    }
  });
});

describe("migrations 10 and 11 (keys that grow at their end)", () => {
  let dir: string | null = null;
  afterEach(() => {
    if (dir !== null) rmSync(dir, { recursive: true, force: true });
    dir = null;
  });

  it("keep every outbox, replay-memory and audit-node row of a database made at version 9, keyed by id first and by completing entry", () => {
    dir = tempDir("hp-mig10-");
    const file = join(dir, "handoff.db");
    const old = new Database(file);
    old.exec("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)");
    for (let v = 1; v <= 9; v++) {
      old.exec(MIGRATIONS[v - 1]!);
      old.prepare("INSERT INTO schema_migrations (version, applied_ms) VALUES (?, 0)").run(v);
    }
    old.prepare("INSERT INTO outbox (device_id, msg_id, re, bytes, created_ms, delivered_ms, expires_ms) VALUES ('d1', 'm1', 'r1', x'01', 5, NULL, NULL), ('d1', 'm2', NULL, x'02', 6, 7, 99)").run();
    old.prepare("INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms, since_ms) VALUES ('d1', 'r1', x'aa', 100, 4)").run();
    old.prepare("INSERT INTO audit_nodes (level, pos, hash) VALUES (0, 5, x'05'), (1, 2, x'12'), (2, 1, x'21')").run();
    old.close();

    const db = openDatabase(file);
    try {
      expect(db.prepare("SELECT seq, device_id, msg_id, re, bytes, created_ms, delivered_ms, expires_ms FROM outbox ORDER BY seq").raw().all()).toEqual([
        [1, "d1", "m1", "r1", Buffer.from([1]), 5, null, null],
        [2, "d1", "m2", null, Buffer.from([2]), 6, 7, 99],
      ]);
      expect(db.prepare("SELECT device_id, msg_id, digest, expires_ms, since_ms FROM seen_messages").raw().all()).toEqual([["d1", "r1", Buffer.from([0xaa]), 100, 4]]);
      const firstColumn = (index: string) => (db.prepare("SELECT name FROM pragma_index_info(?) WHERE seqno = 0").pluck().get(index) as string | undefined) ?? null;
      expect(firstColumn("sqlite_autoindex_outbox_1")).toBe("msg_id");
      expect(firstColumn("outbox_by_reply")).toBe("re");
      expect(db.prepare("SELECT name FROM pragma_table_info('seen_messages') WHERE pk = 1").pluck().get()).toBe("msg_id");
      // Each subtree hash under the entry whose append completed it: (pos + 1) · 2^level − 1.
      expect(db.prepare("SELECT leaf, level, pos, hash FROM audit_nodes ORDER BY leaf, level").raw().all()).toEqual([
        [5, 0, 5, Buffer.from([0x05])],
        [5, 1, 2, Buffer.from([0x12])],
        [7, 2, 1, Buffer.from([0x21])],
      ]);
      // The new id is past the old ones, and the outbox's other indexes are back.
      expect(new OutboxRepo(db).add({ deviceId: "d1", msgId: "m3", re: null, bytes: Uint8Array.of(3), createdMs: 8 }).seq).toBe(3);
      expect(db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox' AND name NOT LIKE 'sqlite_%' ORDER BY name").pluck().all()).toEqual([
        "outbox_by_expiry",
        "outbox_by_reply",
        "outbox_delivered",
        "outbox_undelivered",
      ]);
    } finally {
      db.close();
    }
  });
});
