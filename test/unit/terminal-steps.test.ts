import { describe, expect, it } from "vitest";
import { applyAccepted, applyResult, applyState, applyUpdate, canCancel, fromAccepted, hasGap, STEPS, stepState, type PaymentView, type Tracked } from "../../web/terminal-steps.ts";

const T0 = 1_767_225_600_000;

function view(over: Partial<PaymentView> = {}): PaymentView {
  return {
    paymentId: "pay_aaaaaaaaaaaaaaaaaaaa",
    status: "awaiting_confirmation",
    mode: "prompt",
    amountMinor: 12800,
    currency: "CNY",
    merchantId: "coffee-corner",
    merchantName: "Coffee Corner",
    terminalName: "Browser terminal",
    orderRef: "order-1",
    deadlineMs: T0 + 120_000,
    reason: null,
    transferId: null,
    seq: 2,
    ...over,
  };
}

const states = (t: Tracked) => Object.fromEntries(STEPS.map((s) => [s, stepState(t, s)]));

describe("the terminal's payment steps", () => {
  it("marks an auto-confirmed payment's prompt step skipped, not pending, and its confirmation done at acceptance", () => {
    const t = fromAccepted(view({ mode: "auto", status: "executing", seq: 3 }), T0);
    expect(states(t)).toEqual({ accepted: "done", prompt_delivered: "skipped", confirmed: "done", executing: "done", result: "waiting" });
    expect(t.times.confirmed).toBe(T0);
    expect(hasGap(t)).toBe(false);
  });

  it("follows a prompted payment: delivered, then executing (which confirms it), then the result", () => {
    const t = fromAccepted(view(), T0);
    expect(states(t)).toEqual({ accepted: "done", prompt_delivered: "waiting", confirmed: "pending", executing: "pending", result: "pending" });
    applyUpdate(t, { seq: 3, step: "prompt_delivered", status: "awaiting_confirmation", atMs: T0 + 10 });
    applyUpdate(t, { seq: 5, step: "executing", status: "executing", atMs: T0 + 900 });
    expect(t.times.confirmed).toBe(T0 + 900);
    expect(t.view.status).toBe("executing");
    expect(canCancel(t)).toBe(true);
    applyResult(t, { seq: 6, status: "completed", reason: null, transferId: "tr_bbbbbbbbbbbbbbbbbbbb" }, T0 + 950);
    expect(states(t)).toEqual({ accepted: "done", prompt_delivered: "done", confirmed: "done", executing: "done", result: "done" });
    expect(t.view).toMatchObject({ status: "completed", transferId: "tr_bbbbbbbbbbbbbbbbbbbb", deadlineMs: null, seq: 6 });
    expect(canCancel(t)).toBe(false);
  });

  it("keeps a final payment final when an older update or acceptance arrives after its result", () => {
    const t = fromAccepted(view(), T0);
    applyResult(t, { seq: 4, status: "declined", reason: "declined", transferId: null }, T0 + 500);
    applyUpdate(t, { seq: 3, step: "prompt_delivered", status: "awaiting_confirmation", atMs: T0 + 10 });
    applyAccepted(t, view(), T0);
    expect(t.view.status).toBe("declined");
    expect(t.times.prompt_delivered).toBe(T0 + 10);
    expect(states(t)).toEqual({ accepted: "done", prompt_delivered: "done", confirmed: "not-reached", executing: "not-reached", result: "done" });
  });

  it("says the phone is offline while the prompt waits, and a cancel before delivery leaves no gap", () => {
    const t = fromAccepted(view({ seq: 3 }), T0);
    applyUpdate(t, { seq: 2, step: "waiting_for_phone", status: "awaiting_confirmation", atMs: T0 });
    expect(t.waitingForPhoneAtMs).toBe(T0);
    expect(t.view.seq).toBe(3);
    applyResult(t, { seq: 4, status: "cancelled", reason: "cancelled", transferId: null }, T0 + 200);
    expect(stepState(t, "prompt_delivered")).toBe("not-reached");
    expect(hasGap(t)).toBe(false);
  });

  it("reports a gap when a later step is known but an earlier one is not, and payment_state fills it with the broker's times", () => {
    const t = fromAccepted(view(), T0);
    applyUpdate(t, { seq: 5, step: "executing", status: "executing", atMs: T0 + 900 });
    expect(hasGap(t)).toBe(true);
    applyState(t, view({ status: "executing", seq: 5, deadlineMs: T0 + 60_900 }), [
      { seq: 1, kind: "accepted", atMs: T0 - 3 },
      { seq: 2, kind: "prompt_sent", atMs: T0 - 3 },
      { seq: 3, kind: "prompt_delivered", atMs: T0 + 40 },
      { seq: 4, kind: "confirmed", atMs: T0 + 899 },
      { seq: 5, kind: "executing", atMs: T0 + 899 },
    ]);
    expect(hasGap(t)).toBe(false);
    expect(t.times).toEqual({ accepted: T0 - 3, prompt_delivered: T0 + 40, confirmed: T0 + 899, executing: T0 + 899 });
    expect(t.view.deadlineMs).toBe(T0 + 60_900);
  });

  it("takes a final state from payment_state after a reconnect, with the result's time", () => {
    const t = fromAccepted(view(), T0);
    applyState(t, view({ status: "expired", reason: "prompt_expired", deadlineMs: null, seq: 4 }), [
      { seq: 3, kind: "prompt_delivered", atMs: T0 + 20 },
      { seq: 4, kind: "expired", atMs: T0 + 120_000 },
    ]);
    expect(t.view).toMatchObject({ status: "expired", reason: "prompt_expired" });
    expect(t.times.result).toBe(T0 + 120_000);
    expect(canCancel(t)).toBe(false);
  });
});
