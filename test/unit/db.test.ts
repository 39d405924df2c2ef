/**
 * How the database is opened: durable commits (WAL, synchronous FULL, or NORMAL with the caller
 * syncing the WAL: src/store/wal-sync.ts), freed pages zeroed
 * (secure_delete), and the per-message savepoints' undo pages kept in memory (temp_store), not
 * spilled to a temporary file with two write syscalls per page (docs/performance.md).
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { openDatabase } from "../../src/store/db.ts";
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
