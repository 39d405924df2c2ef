/** The admin feed (broker/admin-feed.ts): a running broker acts on what the admin tool wrote. */
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AdminFeed } from "../../broker/admin-feed.ts";
import type { Db } from "../../src/store/db.ts";
import { openTempDb } from "../helpers.ts";

describe("AdminFeed", () => {
  let db: Db;
  let dispose: () => void;
  beforeEach(() => ({ db, dispose } = openTempDb("hp-admin-feed-")));
  afterEach(() => dispose());

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
