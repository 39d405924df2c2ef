/** src/crypto/random.ts: ids devices see, in the forms docs/protocol.md gives them. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { randomBytesPooled, randomId, timeOrderedId } from "../../src/crypto/random.ts";

describe("ids", () => {
  it("makes time-ordered payment ids of the documented form that sort as their times do", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 45 - 1 }), fc.integer({ min: 0, max: 2 ** 45 - 1 }), (a, b) => {
        const x = timeOrderedId("pay", a);
        const y = timeOrderedId("pay", b);
        expect(x).toMatch(/^pay_[a-z2-7]{20}$/);
        if (a < b) expect(x < y).toBe(true);
        if (a > b) expect(x > y).toBe(true);
      }),
    );
  });

  it("keeps ids made in the same millisecond apart by their random part", () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => timeOrderedId("tr", 1_767_225_600_000)));
    expect(ids.size).toBe(10_000);
    expect(randomId("ag")).toMatch(/^ag_[a-z2-7]{20}$/);
  });

  it("serves pooled random bytes once each, of the length asked, across refills and past the pool's size", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const b = randomBytesPooled(13);
      expect(b).toHaveLength(13);
      seen.add(Buffer.from(b).toString("hex"));
    }
    expect(seen.size).toBe(2000);
    expect(randomBytesPooled(10_000)).toHaveLength(10_000);
    // Not all zero: the pool is filled, and what was handed out is not handed out again.
    expect(Buffer.from(randomBytesPooled(32)).equals(Buffer.alloc(32))).toBe(false);
  });
});
