/** The purge (broker/housekeeping.ts): bounded steps, by an injected clock. */
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Housekeeping } from "../../broker/housekeeping.ts";
import type { Db } from "../../src/store/db.ts";
import { openTempDb } from "../helpers.ts";

describe("Housekeeping", () => {
  let db: Db;
  let dispose: () => void;
  beforeEach(() => ({ db, dispose } = openTempDb("hp-housekeeping-")));
  afterEach(() => dispose());

  const count = (sql: string) => (db.prepare(sql).get() as { n: number }).n;

  it("deletes at most `chunkRows` rows of each table per step, and only what its clock says has expired", () => {
    const day = 86_400_000;
    const nowMs = 2 * day;
    const hk = new Housekeeping({ db, clock: () => nowMs, log: pino({ level: "silent" }), everyMs: 60_000, chunkRows: 4 });
    const seen = db.prepare("INSERT INTO seen_messages (device_id, msg_id, digest, expires_ms) VALUES ('d1', ?, zeroblob(32), ?)");
    for (let i = 0; i < 6; i++) seen.run(`old-${i}`, 5_000 + i);
    for (let i = 0; i < 3; i++) seen.run(`live-${i}`, nowMs + 60_000);
    const out = db.prepare("INSERT INTO outbox (device_id, msg_id, re, bytes, created_ms, delivered_ms) VALUES ('d1', ?, NULL, x'00', 0, ?)");
    for (let i = 0; i < 5; i++) out.run(`delivered-long-ago-${i}`, 1_000);
    out.run("delivered-just-now", nowMs - 1_000);
    out.run("undelivered", null);

    const steps: number[] = [];
    for (let n = hk.step(); n > 0; n = hk.step()) steps.push(n);
    // Step 1: 4 message ids + 4 outbox rows; step 2: the last 2 ids and the last outbox row.
    expect(steps).toEqual([8, 3]);
    expect(count("SELECT count(*) AS n FROM seen_messages")).toBe(3);
    expect(db.prepare("SELECT msg_id FROM outbox ORDER BY seq").pluck().all()).toEqual(["delivered-just-now", "undelivered"]);
  });
});
