/**
 * The payment state machine: the only code that changes a payment's status.
 *
 * Pure: no clock, no randomness, no I/O. The caller (src/service/payments.ts) passes `nowMs`,
 * loads what a transition needs (the agreement's second state, the wallet balance) into the
 * event, and applies the returned effects in the message's SQLite transaction. The transition
 * table is docs/payment-states.md; test/unit/payment-states-doc.test.ts checks every cell of it.
 *
 *   awaiting_confirmation ──approve──▶ executing ──execute──▶ completed
 *        │   │   │                       │   │
 *        │   │   └─decline─▶ declined     │   └─(insufficient funds)─▶ failed
 *        │   └─deadline─▶ expired        ├─deadline─▶ expired
 *        └─cancel─▶ cancelled            └─cancel─▶ cancelled
 *   (approve with the agreement unbound meanwhile, or unbinding while live ─▶ failed)
 */
import type { ErrorCode } from "../protocol/errors.ts";
import type { Limits, Usage } from "./agreement.ts";
import { formatAmount } from "./money.ts";

export type PaymentStatus = "awaiting_confirmation" | "executing" | "completed" | "failed" | "declined" | "expired" | "cancelled";
export const FINAL_STATUSES: readonly PaymentStatus[] = ["completed", "failed", "declined", "expired", "cancelled"];
export const PAYMENT_STATUSES: readonly PaymentStatus[] = ["awaiting_confirmation", "executing", ...FINAL_STATUSES];

export type FailureReason = "declined" | "prompt_expired" | "task_expired" | "cancelled" | "unbound" | "insufficient_funds";

export interface Payment {
  readonly id: string;
  readonly terminalId: string;
  readonly phoneId: string;
  readonly agreementId: string;
  readonly merchantId: string;
  readonly merchantName: string;
  readonly terminalName: string;
  readonly amountMinor: number;
  readonly currency: string;
  /** The ledger account the payment debits (opaque to the core). */
  readonly walletAccountId: string;
  readonly mode: "auto" | "prompt";
  readonly status: PaymentStatus;
  readonly promptDeadlineMs: number | null;
  readonly taskDeadlineMs: number | null;
  readonly promptDelivered: boolean;
  readonly reason: FailureReason | null;
  readonly transferId: string | null;
  readonly createdMs: number;
  readonly updatedMs: number;
}

/** The values the phone showed and signs: PSD2 dynamic linking. */
export interface LinkedValues {
  readonly amountMinor: number;
  readonly currency: string;
  readonly merchantName: string;
  readonly terminalName: string;
}

/** The values an execution authorisation names. */
export interface ExecutionValues {
  readonly amountMinor: number;
  readonly currency: string;
  readonly payee: string;
}

export type PaymentEvent =
  | { readonly kind: "prompt_received" }
  | { readonly kind: "approve"; readonly values: LinkedValues; readonly agreementActive: boolean }
  | { readonly kind: "decline" }
  | { readonly kind: "execute"; readonly values: ExecutionValues; readonly walletBalanceMinor: number; readonly transferId: string }
  | { readonly kind: "cancel" }
  | { readonly kind: "deadline"; readonly which: "prompt" | "task" }
  /** The agreement was unbound (or replaced) while the payment was live: an unbound agreement never pays. */
  | { readonly kind: "unbound" };

/** What the shell must do after a transition, in order. */
export type Effect =
  | { readonly kind: "send_prompt" }
  | { readonly kind: "send_task" }
  | { readonly kind: "arm_deadline"; readonly which: "prompt" | "task"; readonly dueMs: number }
  | { readonly kind: "disarm_deadlines" }
  | { readonly kind: "post_transfer"; readonly transferId: string }
  | { readonly kind: "reset_consecutive_auto" }
  | { readonly kind: "progress"; readonly step: ProgressStep }
  | { readonly kind: "result" };

/** What the terminal is told along the way. */
export type ProgressStep = "accepted" | "prompt_sent" | "prompt_delivered" | "confirmed" | "executing";

export type Decision = { ok: true; payment: Payment; effects: readonly Effect[] } | { ok: false; code: ErrorCode; detail: string };

export interface Deadlines {
  readonly promptMs: number;
  readonly taskMs: number;
}

export function isFinal(status: PaymentStatus): boolean {
  return FINAL_STATUSES.includes(status);
}

// ── At the pay request ──────────────────────────────────────────────────────────────────────

export type Mode = { ok: true; mode: "auto" | "prompt" } | { ok: false; code: ErrorCode; detail: string };

/** The UTC calendar day of a time, for the daily auto-confirm total. */
export function utcDay(nowMs: number): string {
  return new Date(nowMs).toISOString().slice(0, 10);
}

function usageToday(u: Usage, nowMs: number): Usage {
  return u.day === utcDay(nowMs) ? u : { ...u, day: utcDay(nowMs), todayTotalMinor: 0, todayAutoMinor: 0 };
}

/**
 * Embodiment 1 or 2: auto-confirm when the amount is within the auto-confirm maximum, today's
 * auto-confirmed total stays within the daily limit, and fewer than `maxConsecutiveAuto`
 * payments were auto-confirmed in a row (PSD2 RTS Art. 16 style); otherwise ask the phone.
 */
export function decideMode(limits: Limits, usage: Usage, amountMinor: number, currency: string, nowMs: number, maxConsecutiveAuto: number): Mode {
  if (!Number.isSafeInteger(amountMinor) || amountMinor <= 0) return { ok: false, code: "invalid_amount", detail: "amountMinor must be a positive integer of minor units" };
  if (currency !== limits.currency) return { ok: false, code: "currency_mismatch", detail: `this terminal's agreement pays in ${limits.currency}, not ${currency}` };
  if (amountMinor > limits.perPaymentMaxMinor) {
    return { ok: false, code: "over_limit", detail: `${formatAmount(amountMinor, currency)} is above this terminal's per-payment maximum of ${formatAmount(limits.perPaymentMaxMinor, currency)}` };
  }
  const u = usageToday(usage, nowMs);
  const auto = amountMinor <= limits.autoConfirmMaxMinor && u.todayAutoMinor + amountMinor <= limits.autoConfirmDailyMinor && u.consecutiveAuto < maxConsecutiveAuto;
  return { ok: true, mode: auto ? "auto" : "prompt" };
}

/** The agreement's usage after a payment was accepted in `mode`. */
export function recordUsage(usage: Usage, amountMinor: number, mode: "auto" | "prompt", nowMs: number): Usage {
  const u = usageToday(usage, nowMs);
  return {
    paymentCount: u.paymentCount + 1,
    day: u.day,
    todayTotalMinor: u.todayTotalMinor + amountMinor,
    todayAutoMinor: u.todayAutoMinor + (mode === "auto" ? amountMinor : 0),
    consecutiveAuto: mode === "auto" ? u.consecutiveAuto + 1 : u.consecutiveAuto,
    lastUsedMs: nowMs,
  };
}

/** The usage after the user confirmed on the phone: the run of auto-confirmations starts again. */
export function resetConsecutiveAuto(usage: Usage): Usage {
  return { ...usage, consecutiveAuto: 0 };
}

/** A new payment: confirmed at once (auto) and its task sent, or waiting for the phone's answer. */
export function startPayment(
  p: Omit<Payment, "status" | "promptDeadlineMs" | "taskDeadlineMs" | "promptDelivered" | "reason" | "transferId" | "updatedMs" | "mode">,
  mode: "auto" | "prompt",
  d: Deadlines,
): { payment: Payment; effects: readonly Effect[] } {
  const now = p.createdMs;
  const base = { ...p, mode, promptDelivered: false, reason: null, transferId: null, updatedMs: now };
  if (mode === "auto") {
    return {
      payment: { ...base, status: "executing", promptDeadlineMs: null, taskDeadlineMs: now + d.taskMs },
      effects: [{ kind: "progress", step: "accepted" }, { kind: "progress", step: "confirmed" }, { kind: "send_task" }, { kind: "arm_deadline", which: "task", dueMs: now + d.taskMs }, { kind: "progress", step: "executing" }],
    };
  }
  return {
    payment: { ...base, status: "awaiting_confirmation", promptDeadlineMs: now + d.promptMs, taskDeadlineMs: null },
    effects: [{ kind: "progress", step: "accepted" }, { kind: "send_prompt" }, { kind: "arm_deadline", which: "prompt", dueMs: now + d.promptMs }, { kind: "progress", step: "prompt_sent" }],
  };
}

// ── Afterwards ──────────────────────────────────────────────────────────────────────────────

function end(p: Payment, status: PaymentStatus, reason: FailureReason | null, nowMs: number, extra: readonly Effect[] = []): Decision {
  return { ok: true, payment: { ...p, status, reason, updatedMs: nowMs }, effects: [...extra, { kind: "disarm_deadlines" }, { kind: "result" }] };
}

const notPending = (p: Payment, action: string): Decision => ({ ok: false, code: "payment_not_pending", detail: `cannot ${action}: the payment is ${p.status}` });

export function sameLinkedValues(p: Payment, v: LinkedValues): boolean {
  return v.amountMinor === p.amountMinor && v.currency === p.currency && v.merchantName === p.merchantName && v.terminalName === p.terminalName;
}

export function step(p: Payment, ev: PaymentEvent, nowMs: number, d: Deadlines): Decision {
  switch (ev.kind) {
    case "prompt_received":
      if (p.status !== "awaiting_confirmation") return notPending(p, "acknowledge the prompt");
      if (p.promptDelivered) return { ok: true, payment: p, effects: [] };
      return { ok: true, payment: { ...p, promptDelivered: true, updatedMs: nowMs }, effects: [{ kind: "progress", step: "prompt_delivered" }] };

    case "approve":
      if (p.status !== "awaiting_confirmation") return notPending(p, "approve");
      if (nowMs >= p.promptDeadlineMs!) return { ok: false, code: "prompt_expired", detail: "the prompt's deadline has passed" };
      if (!sameLinkedValues(p, ev.values)) return { ok: false, code: "dynamic_link_mismatch", detail: "the approval does not name the amount, currency, merchant and terminal of this payment" };
      // The second agreement state: unbound while the prompt was open means no payment.
      if (!ev.agreementActive) return end(p, "failed", "unbound", nowMs);
      return {
        ok: true,
        payment: { ...p, status: "executing", taskDeadlineMs: nowMs + d.taskMs, updatedMs: nowMs },
        effects: [
          { kind: "disarm_deadlines" },
          { kind: "reset_consecutive_auto" },
          { kind: "progress", step: "confirmed" },
          { kind: "send_task" },
          { kind: "arm_deadline", which: "task", dueMs: nowMs + d.taskMs },
          { kind: "progress", step: "executing" },
        ],
      };

    case "decline":
      if (p.status !== "awaiting_confirmation") return notPending(p, "decline");
      return end(p, "declined", "declined", nowMs);

    case "execute":
      if (p.status !== "executing") return notPending(p, "execute");
      if (nowMs >= p.taskDeadlineMs!) return { ok: false, code: "task_expired", detail: "the execution task's deadline has passed" };
      if (ev.values.amountMinor !== p.amountMinor || ev.values.currency !== p.currency || ev.values.payee !== p.merchantId) {
        return { ok: false, code: "dynamic_link_mismatch", detail: "the execution authorisation does not name this payment's amount, currency and payee" };
      }
      if (ev.walletBalanceMinor < p.amountMinor) return end(p, "failed", "insufficient_funds", nowMs);
      return end({ ...p, transferId: ev.transferId }, "completed", null, nowMs, [{ kind: "post_transfer", transferId: ev.transferId }]);

    case "cancel":
      if (p.status !== "awaiting_confirmation" && p.status !== "executing") return notPending(p, "cancel");
      return end(p, "cancelled", "cancelled", nowMs);

    case "unbound":
      // Sent by the broker to every live payment of the agreement; a final one stays as it is.
      if (p.status !== "awaiting_confirmation" && p.status !== "executing") return { ok: true, payment: p, effects: [] };
      return end(p, "failed", "unbound", nowMs);

    case "deadline": {
      // A deadline that fires after the payment moved on is a no-op, not an error.
      const live = ev.which === "prompt" ? p.status === "awaiting_confirmation" : p.status === "executing";
      const due = ev.which === "prompt" ? p.promptDeadlineMs : p.taskDeadlineMs;
      if (!live || due === null || nowMs < due) return { ok: true, payment: p, effects: [] };
      return end(p, "expired", ev.which === "prompt" ? "prompt_expired" : "task_expired", nowMs);
    }
  }
}
