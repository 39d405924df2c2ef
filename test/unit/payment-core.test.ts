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
  it("moves each completed payment's own amount once, as the phone authorised it, from the wallet to its merchant, never overdrawing and never moving a final payment", () => {
    const scenario = fc
      .array(fc.record({ amountMinor: fc.integer({ min: 1, max: 10_000 }), mode: fc.constantFrom("auto" as const, "prompt" as const) }), { minLength: 1, maxLength: 5 })
      .chain((payments) =>
        fc.record({
          payments: fc.constant(payments),
          funds: fc.integer({ min: 0, max: 30_000 }),
          // Each event is drawn for the payment it goes to, so that its right values come up often.
          steps: fc.array(
            fc.nat(payments.length - 1).chain((which) => fc.record({ which: fc.constant(which), advanceMs: fc.integer({ min: 0, max: 90_000 }), event: eventArb(payments[which]!.amountMinor) })),
            { maxLength: 40 },
          ),
        }),
      );
    fc.assert(
      fc.property(scenario, ({ payments, funds, steps }) => {
        let now = DAY;
        const state = payments.map((p, i) => newPayment(`pay${i}`, p.mode, p.amountMinor, now));
        // The ledger, moved only by the core's post_transfer effects, applied as
        // src/service/payments.ts applies them: from the payment the core returned.
        const wallet = "wallet:w:CNY";
        const ledger = new Map<string, number>([["funding:CNY", -funds], [wallet, funds], ["merchant:m:CNY", 0]]);
        const transfers: { paymentId: string; amountMinor: number; authorised: unknown }[] = [];
        for (const s of steps) {
          now += s.advanceMs;
          const before = state[s.which]!;
          // The shell fills the balance in from the ledger, as src/service/payments.ts does.
          const ev = s.event.kind === "execute" ? { ...s.event, walletBalanceMinor: ledger.get(wallet)! } : s.event;
          const d = step(before, ev, now, D);
          if (!d.ok) continue;
          if (isFinal(before.status)) expect(d.payment).toBe(before);
          for (const e of d.effects) {
            if (e.kind !== "post_transfer") continue;
            const p = d.payment;
            const from = `wallet:${p.walletAccountId}:${p.currency}`;
            const to = `merchant:${p.merchantId}:${p.currency}`;
            ledger.set(from, (ledger.get(from) ?? 0) - p.amountMinor);
            ledger.set(to, (ledger.get(to) ?? 0) + p.amountMinor);
            expect(ledger.get(from), "overdrawn").toBeGreaterThanOrEqual(0);
            transfers.push({ paymentId: p.id, amountMinor: p.amountMinor, authorised: ev.kind === "execute" ? ev.values : null });
          }
          state[s.which] = d.payment;
        }
        // What the core says was paid: the requested amounts of the payments it completed.
        const paid = payments.reduce((sum, p, i) => sum + (state[i]!.status === "completed" ? p.amountMinor : 0), 0);
        // Exactly that left the wallet for the merchant, and no other account or currency moved.
        expect(Object.fromEntries(ledger)).toEqual({ "funding:CNY": -funds, [wallet]: funds - paid, "merchant:m:CNY": paid });
        payments.forEach((req, i) => {
          const own = transfers.filter((t) => t.paymentId === `pay${i}`);
          expect(own).toHaveLength(state[i]!.status === "completed" ? 1 : 0);
          // Each transfer is the payment's own amount, posted by an execution that named it.
          for (const t of own) expect(t).toEqual({ paymentId: `pay${i}`, amountMinor: req.amountMinor, authorised: { amountMinor: req.amountMinor, currency: "CNY", payee: "m" } });
        });
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
