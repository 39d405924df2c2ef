/** src/crypto/random.ts: ids devices see, in the forms docs/protocol.md gives them. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { randomId, timeOrderedId } from "../../src/crypto/random.ts";

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
});
