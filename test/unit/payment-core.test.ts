/** The pure payment core: decisions, usage, and properties over random event sequences. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { EMPTY_USAGE, type Limits } from "../../src/core/agreement.ts";
import { formatAmount, parseAmount } from "../../src/core/money.ts";
import { decideMode, isFinal, recordUsage, startPayment, step, type Payment, type PaymentEvent } from "../../src/core/payment.ts";

const LIMITS: Limits = { currency: "CNY", autoConfirmMaxMinor: 5000, autoConfirmDailyMinor: 20000, perPaymentMaxMinor: 100000 };
const DAY = Date.UTC(2026, 10, 25, 12);
const D = { promptMs: 120_000, taskMs: 60_000 };

describe("decideMode", () => {
  it.each([
    [5000, "CNY", { ok: true, mode: "auto" }],
    [5001, "CNY", { ok: true, mode: "prompt" }],
    [100000, "CNY", { ok: true, mode: "prompt" }],
    [100001, "CNY", { ok: false, code: "over_limit" }],
    [0, "CNY", { ok: false, code: "invalid_amount" }],
    [-1, "CNY", { ok: false, code: "invalid_amount" }],
    [1.5, "CNY", { ok: false, code: "invalid_amount" }],
    [100, "EUR", { ok: false, code: "currency_mismatch" }],
  ])("decides %d %s as %j", (amount, currency, expected) => {
    expect(decideMode(LIMITS, EMPTY_USAGE, amount, currency, DAY, 5)).toMatchObject(expected);
  });

  it("asks the phone once today's auto total would pass the daily limit, and starts afresh the next UTC day", () => {
    let usage = EMPTY_USAGE;
    for (let i = 0; i < 4; i++) usage = recordUsage(usage, 5000, "auto", DAY);
    expect(usage.todayAutoMinor).toBe(20000);
    expect(decideMode(LIMITS, usage, 1, "CNY", DAY, 10)).toMatchObject({ mode: "prompt" });
    expect(decideMode(LIMITS, usage, 1, "CNY", DAY + 86_400_000, 10)).toMatchObject({ mode: "auto" });
  });

  it("asks the phone after maxConsecutiveAuto auto-confirmations in a row", () => {
    let usage = EMPTY_USAGE;
    for (let i = 0; i < 3; i++) usage = recordUsage(usage, 1, "auto", DAY);
    expect(decideMode(LIMITS, usage, 1, "CNY", DAY, 3)).toMatchObject({ mode: "prompt" });
    expect(decideMode(LIMITS, { ...usage, consecutiveAuto: 0 }, 1, "CNY", DAY, 3)).toMatchObject({ mode: "auto" });
  });
});

describe("money", () => {
  it.each([
    ["12.50", "CNY", 1250],
    ["12.5", "CNY", 1250],
    ["12", "CNY", 1200],
    ["0.01", "CNY", 1],
    ["500", "JPY", 500],
    ["1.234", "BHD", 1234],
    ["12.505", "CNY", null],
    ["1.5", "JPY", null],
    ["-1", "CNY", null],
    ["1e3", "CNY", null],
    ["12.50", "XXX", null],
  ])("parses %s %s as %s minor units", (text, currency, minor) => {
    expect(parseAmount(text, currency)).toBe(minor);
  });

  it.each([
    [12800, "CNY", "¥128.00"],
    [123456789, "EUR", "€1,234,567.89"],
    [500, "JPY", "¥500"],
    [1234, "BHD", "1.234 BHD"],
    [-5, "USD", "-$0.05"],
  ])("formats %d %s as %s", (minor, currency, text) => {
    expect(formatAmount(minor, currency)).toBe(text);
  });

  it("round-trips every amount through format and parse", () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 1e12 }), fc.constantFrom("CNY", "JPY", "BHD"), (minor, c) => {
      const text = formatAmount(minor, c).replace(/[^0-9.]/g, "");
      return parseAmount(text, c) === minor;
    }));
  });
});

// ── Properties over random event sequences ────────────────────────────────────────────────────

function newPayment(id: string, mode: "auto" | "prompt", amountMinor: number, nowMs: number): Payment {
  return startPayment(
    { id, terminalId: "t", phoneId: "p", agreementId: "a", merchantId: "m", merchantName: "M", terminalName: "T", amountMinor, currency: "CNY", walletAccountId: "w", createdMs: nowMs },
    mode,
    D,
  ).payment;
}

const eventArb = (amountMinor: number): fc.Arbitrary<PaymentEvent> =>
  fc.oneof(
    fc.constant<PaymentEvent>({ kind: "prompt_received" }),
    fc.record({
      kind: fc.constant("approve" as const),
      values: fc.oneof(
        fc.constant({ amountMinor, currency: "CNY", merchantName: "M", terminalName: "T" }),
        fc.record({ amountMinor: fc.integer({ min: 1, max: 10_000 }), currency: fc.constantFrom("CNY", "EUR"), merchantName: fc.constantFrom("M", "X"), terminalName: fc.constantFrom("T", "Y") }),
      ),
      agreementActive: fc.boolean(),
    }),
    fc.constant<PaymentEvent>({ kind: "decline" }),
    fc.record({
      kind: fc.constant("execute" as const),
      values: fc.oneof(fc.constant({ amountMinor, currency: "CNY", payee: "m" }), fc.record({ amountMinor: fc.integer({ min: 1, max: 10_000 }), currency: fc.constant("CNY"), payee: fc.constantFrom("m", "evil") })),
      walletBalanceMinor: fc.integer({ min: 0, max: 20_000 }),
      transferId: fc.constant("tr"),
    }),
    fc.constant<PaymentEvent>({ kind: "cancel" }),
    fc.record({ kind: fc.constant("deadline" as const), which: fc.constantFrom("prompt" as const, "task" as const) }),
  );

describe("payment state machine properties", () => {
  it("keeps money conserved per currency, debits each payment at most once, never overdraws, and never moves a final payment", () => {
    const scenario = fc
      .array(fc.record({ amountMinor: fc.integer({ min: 1, max: 10_000 }), mode: fc.constantFrom("auto" as const, "prompt" as const) }), { minLength: 1, maxLength: 5 })
      .chain((payments) =>
        fc.record({
          payments: fc.constant(payments),
          funds: fc.integer({ min: 0, max: 30_000 }),
          steps: fc.array(
            fc.record({ which: fc.nat(payments.length - 1), advanceMs: fc.integer({ min: 0, max: 90_000 }), event: fc.oneof(...payments.map((p) => eventArb(p.amountMinor))) }),
            { maxLength: 40 },
          ),
        }),
      );
    fc.assert(
      fc.property(scenario, ({ payments, funds, steps }) => {
        let now = DAY;
        const state = payments.map((p, i) => newPayment(`pay${i}`, p.mode, p.amountMinor, now));
        // The model ledger: the wallet, the merchant, and the funding account that filled the wallet.
        const balances = { wallet: funds, merchant: 0, funding: -funds };
        const debits = new Map<string, number>();
        for (const s of steps) {
          now += s.advanceMs;
          const before = state[s.which]!;
          // The shell fills the balance in from the ledger, as src/service/payments.ts does.
          const ev = s.event.kind === "execute" ? { ...s.event, walletBalanceMinor: balances.wallet } : s.event;
          const d = step(before, ev, now, D);
          if (!d.ok) continue;
          if (isFinal(before.status)) expect(d.payment).toBe(before);
          for (const e of d.effects) {
            if (e.kind === "post_transfer") {
              balances.wallet -= before.amountMinor;
              balances.merchant += before.amountMinor;
              debits.set(before.id, (debits.get(before.id) ?? 0) + 1);
            }
          }
          state[s.which] = d.payment;
        }
        expect(balances.wallet + balances.merchant + balances.funding).toBe(0);
        expect(balances.wallet).toBeGreaterThanOrEqual(0);
        for (const p of state) {
          const n = debits.get(p.id) ?? 0;
          expect(n).toBeLessThanOrEqual(1);
          expect(n === 1).toBe(p.status === "completed");
        }
      }),
      { numRuns: 500 },
    );
  });

  it("answers every event in every status without throwing, and only final statuses follow a final one", () => {
    fc.assert(
      fc.property(fc.constantFrom("auto" as const, "prompt" as const), fc.array(eventArb(100), { maxLength: 20 }), fc.array(fc.integer({ min: 0, max: 200_000 }), { maxLength: 20 }), (mode, events, advances) => {
        let p = newPayment("x", mode, 100, DAY);
        let now = DAY;
        let wasFinal = false;
        events.forEach((ev, i) => {
          now += advances[i] ?? 0;
          const d = step(p, ev, now, D);
          if (d.ok) p = d.payment;
          if (wasFinal) expect(isFinal(p.status)).toBe(true);
          wasFinal ||= isFinal(p.status);
        });
      }),
      { numRuns: 500 },
    );
  });
});
