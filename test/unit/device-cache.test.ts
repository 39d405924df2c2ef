/**
 * DeviceCache (src/store/devices.ts): the device rows the inbox reads for every message, kept
 * until an admin event (a revocation) is written; as current as a read of the table at each refresh.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Db } from "../../src/store/db.ts";
import { DeviceCache, DeviceRepo } from "../../src/store/devices.ts";
import { openTempDb } from "../helpers.ts";

const device = (id: string) => ({ id, kind: "terminal" as const, name: id, publicKey: new Uint8Array(32).fill(id.length), userIndex: null, userSealed: null, createdMs: 1 });

describe("DeviceCache", () => {
  let db: Db;
  let dispose: () => void;
  let repo: DeviceRepo;
  beforeEach(() => {
    ({ db, dispose } = openTempDb("hp-devcache-"));
    repo = new DeviceRepo(db);
  });
  afterEach(() => dispose());

  it("sees a revocation at the first refresh after it, not before", () => {
    repo.insert(device("t1"));
    const cache = new DeviceCache(db);
    cache.refresh();
    expect(cache.get("t1")?.status).toBe("active");
    repo.revoke("t1", 5);
    // Kept until the next refresh (the inbox refreshes before each batch it checks)…
    expect(cache.get("t1")?.status).toBe("active");
    cache.refresh();
    // …which sees the admin event the revocation wrote, and reads the row again.
    expect(cache.get("t1")?.status).toBe("revoked");
  });

  it("reads a kept row only once while no admin event is written", () => {
    repo.insert(device("t1"));
    const cache = new DeviceCache(db);
    cache.refresh();
    const first = cache.get("t1");
    // A change that bypasses the admin feed is not seen: the only change a device row gets (revoke) writes one.
    db.prepare("UPDATE devices SET name = 'renamed' WHERE id = 't1'").run();
    cache.refresh();
    expect(cache.get("t1")).toBe(first);
    repo.notify("keys_changed", 6);
    cache.refresh();
    expect(cache.get("t1")?.name).toBe("renamed");
  });

  it("does not keep a device it did not find: one registered later is found without a refresh", () => {
    const cache = new DeviceCache(db);
    cache.refresh();
    expect(cache.get("t2")).toBeNull();
    repo.insert(device("t2"));
    expect(cache.get("t2")?.id).toBe("t2");
  });

  it("keeps nothing before its first refresh", () => {
    repo.insert(device("t1"));
    const cache = new DeviceCache(db);
    expect(cache.get("t1")?.status).toBe("active");
    repo.revoke("t1", 5);
    expect(cache.get("t1")?.status).toBe("revoked");
  });
});
