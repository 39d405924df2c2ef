/** src/service/admission.ts: how the broker knows it is behind, and whom it refuses then. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Admission, IDLE_RESET_MS, MAX_TRACKED_DEVICES, OFFSET_WINDOW_MS, RETRY_AFTER_MS } from "../../src/service/admission.ts";

const T0 = 1_767_225_600_000;

describe("Admission", () => {
  it("measures a message's age as its wait beyond the device's quickest trip, whatever the device's clock says", () => {
    fc.assert(
      fc.property(fc.integer({ min: -120_000, max: 120_000 }), fc.integer({ min: 0, max: 50 }), fc.integer({ min: 0, max: 10_000 }), (skew, trip, wait) => {
        const a = new Admission(100);
        // A message sent at broker time T carries the device's clock, T + skew.
        a.observe("d", T0 + skew, T0 + trip);
        expect(a.ageMs("d", T0 + 1000 + skew, T0 + 1000 + trip + wait)).toBe(wait);
      }),
    );
  });

  it("knows nothing of a device it has not heard from: age 0, admitted", () => {
    const a = new Admission(100);
    expect(a.check("new", T0 - 60_000, T0)).toEqual({ ageMs: 0, behindMs: 0, retryAfterMs: null });
  });

  it("refuses a request older than busyAfterMs, suggesting twice its wait within bounds, and admits one just younger", () => {
    const a = new Admission(100);
    a.observe("d", T0, T0);
    expect(a.check("d", T0, T0 + 99).retryAfterMs).toBeNull();
    expect(a.check("d", T0, T0 + 100).retryAfterMs).toBe(RETRY_AFTER_MS[0]);
    expect(a.check("d", T0, T0 + 1000).retryAfterMs).toBe(2000);
    expect(a.check("d", T0, T0 + 60_000).retryAfterMs).toBe(RETRY_AFTER_MS[1]);
    // Checking teaches nothing: a refused request does not move the device's offset.
    expect(a.ageMs("d", T0, T0 + 1000)).toBe(1000);
  });

  it("counts the work queued before a request as wait it will have: refuses when age plus that reaches busyAfterMs", () => {
    const a = new Admission(100);
    a.observe("d", T0, T0);
    expect(a.check("d", T0, T0 + 10, 89).retryAfterMs).toBeNull();
    expect(a.check("d", T0, T0 + 10, 90).retryAfterMs).toBe(RETRY_AFTER_MS[0]);
    expect(a.refusing(T0 + 10, 99)).toBe(false);
    expect(a.refusing(T0 + 10, 100)).toBe(true);
    // Off is off, whatever is queued.
    expect(new Admission(0).refusing(T0, 1e9)).toBe(false);
  });

    it("is behind when its last turns handled old messages, refusing every device, and not once it has been idle", () => {
    const a = new Admission(100);
    a.observe("fresh", T0, T0);
    a.observe("slow", T0, T0);
    a.endTurn(T0);
    for (let i = 1; i <= 5; i++) {
      a.observe("slow", T0 + i * 10, T0 + i * 10 + 2000);
      a.endTurn(T0 + i * 10 + 2000);
    }
    const now = T0 + 2060;
    expect(a.behindMs(now)).toBeGreaterThan(100);
    expect(a.check("fresh", now, now).retryAfterMs).not.toBeNull();
    expect(a.behindMs(now + IDLE_RESET_MS + 1)).toBe(0);
    expect(a.check("fresh", now + IDLE_RESET_MS + 1, now + IDLE_RESET_MS + 1).retryAfterMs).toBeNull();
  });

  it("catches up gradually: turns of fresh messages bring the average back under the threshold", () => {
    const a = new Admission(100);
    a.observe("d", T0, T0);
    a.observe("d", T0, T0 + 1000);
    a.endTurn(T0 + 1000);
    let now = T0 + 1000;
    let turns = 0;
    while (a.behindMs(now) >= 100) {
      now += 10;
      a.observe("d", now, now);
      a.endTurn(now);
      turns++;
    }
    expect(turns).toBeGreaterThan(1);
    expect(turns).toBeLessThan(20);
  });

  it("never refuses with busyAfterMs 0", () => {
    const a = new Admission(0);
    a.observe("d", T0, T0);
    a.observe("d", T0, T0 + 10_000);
    a.endTurn(T0 + 10_000);
    expect(a.check("d", T0, T0 + 10_000).retryAfterMs).toBeNull();
  });

  it("follows a device's clock as it drifts: an offset stands for at most two windows", () => {
    const a = new Admission(100);
    a.observe("d", T0, T0);
    // The device's clock falls 500 ms behind; after two windows the old offset is forgotten.
    let now = T0;
    for (let w = 1; w <= 2; w++) {
      now += OFFSET_WINDOW_MS;
      a.observe("d", now - 500, now);
    }
    expect(a.ageMs("d", now + 10 - 500, now + 10)).toBe(0);
  });

  it("remembers at most MAX_TRACKED_DEVICES devices", () => {
    const a = new Admission(100);
    for (let i = 0; i <= MAX_TRACKED_DEVICES; i++) a.observe(`d${i}`, T0, T0 + 5);
    // The map was cleared whole when full: the first devices are unknown again (age 0).
    expect(a.ageMs("d0", T0, T0 + 1000)).toBe(0);
    expect(a.ageMs(`d${MAX_TRACKED_DEVICES}`, T0, T0 + 1005)).toBe(1000);
  });
});
