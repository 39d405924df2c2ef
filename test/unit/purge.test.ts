/**
 * Purges delete in bounded steps (docs/operations.md §Housekeeping): each call removes at most
 * `limit` expired rows per table, oldest first, and never a row that is still needed.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Db } from "../../src/store/db.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";
import { ReplayRepo } from "../../src/store/replay.ts";
import { openTempDb } from "../helpers.ts";

describe("bounded purges", () => {
  let db: Db;
  let dispose: () => void;
  beforeEach(() => ({ db, dispose } = openTempDb("hp-purge-")));
  afterEach(() => dispose());

  const count = (table: string) => (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;

  it("forgets expired message ids and tokens at most `limit` per table a call, oldest first, and keeps live ones", () => {
    const replay = new ReplayRepo(db);
    for (let i = 0; i < 25; i++) replay.remember("d1", `m${i}`, new Uint8Array(32), 1000 + i, 0); // expire at 1000..1024
    for (let i = 0; i < 5; i++) replay.remember("d1", `live${i}`, new Uint8Array(32), 10_000, 0);
    const calls: number[] = [];
    for (let n = replay.purge(5000, 10); n > 0; n = replay.purge(5000, 10)) calls.push(n);
    expect(calls).toEqual([10, 10, 5]);
    expect(count("seen_messages")).toBe(5);
    // The live ids are still remembered: a duplicate is still recognised.
    expect(replay.remember("d1", "live0", new Uint8Array(32), 10_000, 5000)).toBe("duplicate");
  });

  it("forgets expired connect-token nonces in chunks too, and keeps fresh ones used", () => {
    const replay = new ReplayRepo(db);
    for (let i = 0; i < 7; i++) expect(replay.useToken("d1", `n${i}`, 1000, 0)).toBe(true);
    expect(replay.useToken("d1", "fresh", 10_000, 0)).toBe(true);
    expect(replay.purge(5000, 4)).toBe(4);
    expect(replay.purge(5000, 4)).toBe(3);
    expect(replay.purge(5000, 4)).toBe(0);
    expect(replay.useToken("d1", "fresh", 10_000, 5000)).toBe(false); // still used: no second connect with it
  });

  it("purges the oldest expired ids first", () => {
    const replay = new ReplayRepo(db);
    for (let i = 0; i < 6; i++) replay.remember("d1", `m${i}`, new Uint8Array(32), 1000 - i * 100, 0); // m5 is the oldest
    expect(replay.purge(5000, 3)).toBe(3);
    const left = (db.prepare("SELECT msg_id FROM seen_messages ORDER BY msg_id").all() as { msg_id: string }[]).map((r) => r.msg_id);
    expect(left).toEqual(["m0", "m1", "m2"]);
  });

  it("deletes delivered outbox rows older than the cut-off in chunks, and never an undelivered one", () => {
    const outbox = new OutboxRepo(db);
    for (let i = 0; i < 12; i++) outbox.add({ deviceId: "d1", msgId: `o${i}`, re: null, bytes: new Uint8Array([i]), createdMs: 100 });
    for (let i = 0; i < 9; i++) outbox.markDelivered("d1", `o${i}`, 200 + i); // o9..o11 stay undelivered
    expect(outbox.purgeDelivered(205, 3)).toBe(3); // delivered at 200, 201, 202
    expect(outbox.purgeDelivered(205, 3)).toBe(2); // 203, 204
    expect(outbox.purgeDelivered(205, 3)).toBe(0);
    expect(outbox.purgeDelivered(10_000, 100)).toBe(4);
    expect(outbox.undelivered("d1", 0).map((r) => r.msgId)).toEqual(["o9", "o10", "o11"]);
    expect(count("outbox")).toBe(3);
  });

  it.each([
    ["delivered outbox rows", (d: Db) => new OutboxRepo(d).purgeSql.delivered, "outbox", "outbox_delivered"],
    ["expired outbox rows", (d: Db) => new OutboxRepo(d).purgeSql.expired, "outbox", "outbox_by_expiry"],
    ["expired message ids", (d: Db) => new ReplayRepo(d).purgeSql.seen, "seen_messages", "seen_messages_by_expiry"],
    ["expired connect-token nonces", (d: Db) => new ReplayRepo(d).purgeSql.tokens, "used_tokens", "used_tokens_by_expiry"],
  ] as const)("finds %s by an index, in its order: no scan of the table and no sort of what it found", (_, purgeSql, table, index) => {
    // The statement the repository prepared, not a copy of it: a change that loses the index fails here.
    const plan = (db.prepare(`EXPLAIN QUERY PLAN ${purgeSql(db)}`).all(1, 1) as { detail: string }[]).map((p) => p.detail);
    expect(plan.join("; ")).toMatch(new RegExp(`SEARCH ${table} USING (COVERING )?INDEX ${index} \\(`));
    // A scan reads the whole table, and a sort reads every expired row, whatever the limit.
    expect(plan.filter((d) => /\bSCAN\b|TEMP B-TREE/.test(d))).toEqual([]);
  });
});
