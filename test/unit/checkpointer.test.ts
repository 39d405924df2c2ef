/**
 * WAL checkpoints run in a worker thread (src/store/checkpointer.ts), so the broker's thread
 * never copies WAL frames into the database file or waits for that file's fsync, except past
 * the fallback size, should the worker ever fall behind.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { Checkpointer } from "../../src/store/checkpointer.ts";
import { openDatabase, type Db } from "../../src/store/db.ts";
import { tempDir } from "../helpers.ts";

describe("Checkpointer", () => {
  let dir: string | null = null;
  let db: Db | null = null;
  afterEach(() => {
    db?.close();
    if (dir !== null) rmSync(dir, { recursive: true, force: true });
    db = null;
    dir = null;
  });

  it("copies every committed frame into the database file from its worker, and leaves the broker's connection only a fallback", async () => {
    dir = tempDir("hp-ckpt-");
    db = openDatabase(join(dir, "handoff.db"), { durability: "caller" });
    const checkpointer = new Checkpointer(db, pino({ level: "silent" }), { everyMs: 5, fallbackPages: 5000 });
    try {
      expect(db.pragma("wal_autocheckpoint", { simple: true })).toBe(5000);
      db.exec("CREATE TABLE t (x BLOB)");
      const insert = db.prepare("INSERT INTO t (x) VALUES (?)");
      db.transaction(() => {
        for (let i = 0; i < 200; i++) insert.run(Buffer.alloc(2000, i));
      })();
      const end = Date.now() + 5000;
      while (!(checkpointer.last !== null && checkpointer.last.log > 50 && checkpointer.last.checkpointed === checkpointer.last.log)) {
        if (Date.now() > end) throw new Error(`no complete checkpoint: ${JSON.stringify(checkpointer.last)}`);
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(checkpointer.runs).toBeGreaterThan(0);
    } finally {
      await checkpointer.close();
    }
    // Closed: no worker holds the database any more, and it still reads back whole.
    expect(db.prepare("SELECT count(*) AS n FROM t").get()).toEqual({ n: 200 });
  });
});
