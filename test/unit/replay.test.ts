/**
 * ReplayRepo: a row counts until its expiry and not a millisecond longer, whether or not a purge
 * has deleted it (docs/protocol.md: a message id is remembered until ts + 120001 ms, a
 * connect-token nonce until tsMs + 120001 ms). A row expires at `expiresMs`: at nowMs ≥ expiresMs
 * it is absent.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Db } from "../../src/store/db.ts";
import { OutboxRepo } from "../../src/store/outbox.ts";
import { ReplayRepo } from "../../src/store/replay.ts";
import { openTempDb } from "../helpers.ts";

const digestA = new Uint8Array(32).fill(1);
const digestB = new Uint8Array(32).fill(2);

describe("ReplayRepo", () => {
  let db: Db;
  let dispose: () => void;
  let replay: ReplayRepo;
  beforeEach(() => {
    ({ db, dispose } = openTempDb("hp-replay-"));
    replay = new ReplayRepo(db);
  });
  afterEach(() => dispose());

  const seenRow = (msgId: string) => db.prepare("SELECT digest, expires_ms AS expiresMs FROM seen_messages WHERE device_id = 'd1' AND msg_id = ?").get(msgId) as { digest: Buffer; expiresMs: number } | undefined;

  describe("remember", () => {
    it.each([
      { what: "the same bytes before the id expires", digest: digestA, nowMs: 1999, expected: "duplicate" },
      { what: "other bytes before the id expires", digest: digestB, nowMs: 1999, expected: "conflict" },
      { what: "the same bytes at the id's expiry", digest: digestA, nowMs: 2000, expected: "new" },
      { what: "other bytes at the id's expiry", digest: digestB, nowMs: 2000, expected: "new" },
      { what: "other bytes long after the id's expiry", digest: digestB, nowMs: 50_000, expected: "new" },
    ] as const)("answers a used id seen again with $what as $expected", ({ digest, nowMs, expected }) => {
      expect(replay.remember("d1", "m1", digestA, 2000, 1000)).toBe("new");
      expect(replay.remember("d1", "m1", digest, nowMs + 1000, nowMs)).toBe(expected);
    });

    it("replaces an expired row with the new message, which then holds the id until its own expiry", () => {
      replay.remember("d1", "m1", digestA, 2000, 1000);
      expect(replay.remember("d1", "m1", digestB, 9000, 5000)).toBe("new");
      expect(seenRow("m1")).toEqual({ digest: Buffer.from(digestB), expiresMs: 9000 });
      expect(replay.remember("d1", "m1", digestB, 9000, 8999)).toBe("duplicate");
      expect(replay.remember("d1", "m1", digestA, 9000, 8999)).toBe("conflict");
    });

    it("gives an expired id the same answer whether a purge deleted its row or not", () => {
      replay.remember("d1", "m1", digestA, 2000, 1000);
      replay.remember("d1", "m2", digestA, 2000, 1000);
      expect(replay.purge(3000, 1)).toBe(1); // one of the two rows goes, the other stays
      expect(replay.remember("d1", "m1", digestB, 9000, 5000)).toBe("new");
      expect(replay.remember("d1", "m2", digestB, 9000, 5000)).toBe("new");
    });

    it("stops counting the earlier message's stored answers as answers to an id a new message took over, and keeps them for delivery", () => {
      const outbox = new OutboxRepo(db);
      replay.remember("d1", "m1", digestA, 2000, 1000);
      outbox.add({ deviceId: "d1", msgId: "answer-1", re: "m1", bytes: new Uint8Array([1]), createdMs: 1000 });
      expect(outbox.repliesTo("d1", "m1").map((r) => r.msgId)).toEqual(["answer-1"]);
      replay.remember("d1", "m1", digestB, 9000, 5000);
      expect(outbox.repliesTo("d1", "m1")).toEqual([]);
      expect(outbox.undelivered("d1", 0).map((r) => r.msgId)).toEqual(["answer-1"]);
      // The new message's own answer is what its duplicate gets, and only that.
      outbox.add({ deviceId: "d1", msgId: "answer-2", re: "m1", bytes: new Uint8Array([2]), createdMs: 5000 });
      expect(replay.remember("d1", "m1", digestB, 9000, 5001)).toBe("duplicate");
      expect(outbox.repliesTo("d1", "m1").map((r) => r.msgId)).toEqual(["answer-2"]);
    });

    it("keeps ids per device", () => {
      replay.remember("d1", "m1", digestA, 2000, 1000);
      expect(replay.remember("d2", "m1", digestB, 2000, 1000)).toBe("new");
    });
  });

  describe("useToken", () => {
    it.each([
      { when: "before the first use expires", nowMs: 1999, fresh: false },
      { when: "at the first use's expiry", nowMs: 2000, fresh: true },
      { when: "long after the first use's expiry", nowMs: 50_000, fresh: true },
    ])("takes a nonce used before, seen again $when, as fresh: $fresh", ({ nowMs, fresh }) => {
      expect(replay.useToken("d1", "n1", 2000, 1000)).toBe(true);
      expect(replay.useToken("d1", "n1", nowMs + 1000, nowMs)).toBe(fresh);
    });

    it("holds a reused expired nonce until the new token's expiry", () => {
      replay.useToken("d1", "n1", 2000, 1000);
      expect(replay.useToken("d1", "n1", 9000, 5000)).toBe(true);
      expect(replay.useToken("d1", "n1", 9500, 8999)).toBe(false);
      expect(replay.useToken("d1", "n1", 12_000, 9000)).toBe(true);
    });

    it("keeps nonces per device", () => {
      replay.useToken("d1", "n1", 2000, 1000);
      expect(replay.useToken("d2", "n1", 2000, 1000)).toBe(true);
    });
  });
});
