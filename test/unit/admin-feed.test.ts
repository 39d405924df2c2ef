/** The admin feed (broker/admin-feed.ts): a running broker acts on what the admin tool wrote. */
import { rmSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AdminFeed } from "../../broker/admin-feed.ts";
import { openDatabase, type Db } from "../../src/store/db.ts";
import { tempDir } from "../helpers.ts";

describe("AdminFeed", () => {
  let dir: string;
  let db: Db;
  beforeEach(() => {
    dir = tempDir("hp-admin-feed-");
    db = openDatabase(join(dir, "handoff.db"));
  });
  afterEach(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const event = (kind: string, deviceId: string | null) =>
    db.prepare("INSERT INTO admin_events (kind, device_id, at_ms) VALUES (?, ?, ?)").run(kind, deviceId, Date.now());

  it("acts on each revocation and key change written after it started, once each, in order", () => {
    event("device_revoked", "d-before");
    const seen: string[] = [];
    const feed = new AdminFeed({ db, log: pino({ level: "silent" }), onKeysChanged: () => seen.push("keys"), onDeviceRevoked: (id) => seen.push(`revoked ${id}`) });
    feed.poll();
    expect(seen).toEqual([]);
    event("device_revoked", "d-1");
    event("keys_changed", null);
    feed.poll();
    feed.poll();
    expect(seen).toEqual(["revoked d-1", "keys"]);
  });
});
