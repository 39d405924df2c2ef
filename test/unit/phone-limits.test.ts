import { describe, expect, it } from "vitest";
import { limitsProblem } from "../../src/core/agreement.ts";
import { plainAmount } from "../../src/core/money.ts";
import { readLimits } from "../../web/phone-limits.ts";

describe("readLimits", () => {
  it("reads the pair form's defaults as exact minor units", () => {
    expect(readLimits("CNY", { autoMax: "50.00", autoDaily: "200.00", max: "500.00" })).toEqual({
      ok: true,
      limits: { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 50000 },
    });
  });

  it("reads amounts that floats would round (0.29 is 29 fen, not 28)", () => {
    const r = readLimits("CNY", { autoMax: "0.29", autoDaily: "1.1", max: "9007199254740.99" });
    expect(r.ok && r.limits).toEqual({ currency: "CNY", autoConfirmMaxMinor: 29, autoConfirmDailyMinor: 110, perPaymentMaxMinor: 900719925474099 });
  });

  it.each([
    ["autoMax", { autoMax: "12,50", autoDaily: "200", max: "500" }, "CNY"],
    ["autoDaily", { autoMax: "1", autoDaily: "", max: "500" }, "CNY"],
    ["max", { autoMax: "1", autoDaily: "2", max: "-5" }, "CNY"],
    ["autoMax", { autoMax: "50.00", autoDaily: "200", max: "500" }, "JPY"],
    ["max", { autoMax: "0", autoDaily: "0", max: "0" }, "CNY"],
    ["autoMax", { autoMax: "600", autoDaily: "1000", max: "500" }, "CNY"],
    ["autoMax", { autoMax: "300", autoDaily: "200", max: "500" }, "CNY"],
  ] as const)("names the field %s for %j in %s", (field, text, currency) => {
    const r = readLimits(currency, text);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.field).toBe(field);
  });

  it("says how the currency writes amounts when one does not parse", () => {
    const r = readLimits("JPY", { autoMax: "50.00", autoDaily: "200", max: "500" });
    expect(!r.ok && r.message).toContain("JPY has no decimals");
  });

  it("accepts exactly what the broker's own check accepts", () => {
    const cases = [
      ["0", "0", "1"],
      ["5", "5", "5"],
      ["5", "4", "9"],
      ["5", "9", "4"],
      ["0", "0", "0"],
    ];
    for (const [autoMax, autoDaily, max] of cases) {
      const r = readLimits("CNY", { autoMax: autoMax!, autoDaily: autoDaily!, max: max! });
      const broker = limitsProblem({ currency: "CNY", autoConfirmMaxMinor: Number(autoMax) * 100, autoConfirmDailyMinor: Number(autoDaily) * 100, perPaymentMaxMinor: Number(max) * 100 });
      expect(r.ok).toBe(broker === null);
    }
  });
});

describe("plainAmount (src/core/money.ts), the inverse of parseAmount", () => {
  it.each([
    [5000, "CNY", "50.00"],
    [5, "CNY", "0.05"],
    [0, "CNY", "0.00"],
    [1234567, "USD", "12345.67"],
    [500, "JPY", "500"],
    [1001, "KWD", "1.001"],
  ])("writes %i %s as %s, which readLimits reads back", (minor, currency, text) => {
    expect(plainAmount(minor, currency)).toBe(text);
    const r = readLimits(currency, { autoMax: text, autoDaily: text, max: plainAmount(Math.max(minor, 1), currency) });
    expect(r.ok && r.limits.autoConfirmMaxMinor).toBe(minor);
  });
});
