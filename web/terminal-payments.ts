/**
 * The terminal page's payment cards and history rows: each card shows one payment's fold
 * (web/terminal-steps.ts) live, its steps with their times, and Cancel while it can be cancelled.
 */
import { clockTime, countdownText, dayText, formatAmount, h } from "./common.ts";
import { canCancel, isFinal, STEPS, stepState, type Step, type StepState, type Tracked } from "./terminal-steps.ts";

const STEP_LABEL: Record<Step, string> = {
  accepted: "Accepted by the broker",
  prompt_delivered: "Prompt on the phone",
  confirmed: "Confirmed",
  executing: "Executing on the phone",
  result: "Result",
};

const RESULT_TEXT: Record<string, string> = {
  completed: "Completed",
  failed: "Failed",
  declined: "Declined on the phone",
  expired: "Expired",
  cancelled: "Cancelled",
};

const STATUS_TEXT: Record<string, string> = {
  awaiting_confirmation: "Waiting for the phone",
  executing: "Executing",
  completed: "Completed",
  failed: "Failed",
  declined: "Declined",
  expired: "Expired",
  cancelled: "Cancelled",
};

export function statusText(status: string): string {
  return STATUS_TEXT[status] ?? status;
}

/** Why a payment ended, for people (docs/protocol.md §Result reasons). */
export const REASON_TEXT: Record<string, string> = {
  declined: "the user declined it on the phone",
  prompt_expired: "nobody answered the prompt in time",
  task_expired: "the phone did not execute it in time",
  cancelled: "cancelled at this terminal",
  unbound: "the agreement with the phone ended",
  insufficient_funds: "the wallet held less than the amount; no money moved",
};

function stepLabel(t: Tracked, step: Step): string {
  if (step === "confirmed") return t.view.mode === "auto" ? "Confirmed (auto, within the limits)" : "Approved on the phone";
  if (step === "result" && isFinal(t.view.status)) return `Result: ${RESULT_TEXT[t.view.status] ?? t.view.status}`;
  return STEP_LABEL[step];
}

/** Time since the payment was accepted: the steps of one payment often share a second. */
function elapsed(ms: number): string {
  return ms < 1000 ? `+${ms} ms` : `+${(ms / 1000).toFixed(1)} s`;
}

function stepTime(t: Tracked, step: Step): HTMLElement {
  const at = t.times[step]!;
  const start = t.times.accepted;
  return h("span", { class: "step-time" }, h("time", { text: clockTime(at), attrs: { datetime: new Date(at).toISOString() } }), step === "accepted" || start === undefined ? null : h("span", { class: "elapsed", text: ` ${elapsed(Math.max(0, at - start))}` }));
}

function stepNote(t: Tracked, step: Step, state: StepState): string {
  if (state === "skipped") return "skipped (auto-confirmed)";
  if (state === "not-reached") return "not reached";
  if (state === "waiting") return step === "prompt_delivered" && t.waitingForPhoneAtMs !== null ? "phone offline: the prompt waits" : "waiting…";
  return "—";
}

/** One payment's live card: data-status and the steps follow the payment; Cancel while it can be cancelled. */
export class PaymentCard {
  readonly el: HTMLElement;
  readonly #heading: HTMLElement;
  readonly #status: HTMLElement;
  readonly #steps: HTMLOListElement;
  readonly #deadline: HTMLElement;
  readonly #outcome: HTMLElement;
  readonly #cancel: HTMLButtonElement;
  readonly #actions: HTMLElement;
  #busy = false;

  constructor(
    readonly tracked: Tracked,
    onCancel: (card: PaymentCard) => void,
  ) {
    const v = tracked.view;
    this.#heading = h("h3", { class: "pay-title", attrs: { tabindex: "-1" } }, h("span", { class: "pay-amount", text: formatAmount(v.amountMinor, v.currency) }), h("span", { class: "pay-merchant", text: ` to ${v.merchantName}` }));
    this.#status = h("span", { class: "status", testid: "payment-status" });
    this.#steps = h("ol", { class: "steps", attrs: { "aria-label": "Steps" } });
    this.#deadline = h("p", { class: "pay-deadline muted", testid: "payment-deadline" });
    this.#outcome = h("p", { class: "pay-outcome", testid: "payment-outcome" });
    this.#cancel = h("button", { text: "Cancel payment", class: "danger small", testid: "payment-cancel", attrs: { type: "button" }, on: { click: () => void (this.#busy || onCancel(this)) } });
    this.#actions = h("div", { class: "row" });
    this.el = h(
      "li",
      { class: "card payment", testid: "payment", attrs: { "data-payment-id": v.paymentId } },
      h("div", { class: "pay-head" }, this.#heading, this.#status),
      h("p", { class: "pay-meta muted" }, h("span", { text: `${v.mode === "auto" ? "Auto-confirmed" : "Asks the phone"} · order ` }), h("code", { text: v.orderRef }), h("span", { text: " · " }), h("code", { text: v.paymentId })),
      this.#steps,
      this.#deadline,
      this.#outcome,
      this.#actions,
    );
    this.render();
  }

  get paymentId(): string {
    return this.tracked.view.paymentId;
  }

  focus(): void {
    this.#heading.focus();
  }

  /** Busy while its payment_cancel is on the way: aria-disabled, not disabled, so the keyboard focus stays on it. */
  set cancelling(busy: boolean) {
    this.#busy = busy;
    this.#cancel.setAttribute("aria-disabled", String(busy));
    this.#cancel.textContent = busy ? "Cancelling…" : "Cancel payment";
  }

  render(): void {
    const t = this.tracked;
    const v = t.view;
    this.el.dataset.status = v.status;
    this.el.dataset.mode = v.mode;
    this.#status.dataset.status = v.status;
    this.#status.textContent = statusText(v.status);
    this.#steps.replaceChildren(
      ...STEPS.map((step) => {
        const state = stepState(t, step);
        return h(
          "li",
          { testid: `step-${step}`, attrs: { "data-done": String(state === "done"), "data-state": state } },
          h("span", { class: "step-label", text: stepLabel(t, step) }),
          state === "done" ? stepTime(t, step) : h("span", { class: "step-time", text: stepNote(t, step, state) }),
        );
      }),
    );
    this.tick();
    const parts: string[] = [];
    if (t.description !== null) parts.push(`“${t.description}”`);
    if (v.reason !== null) parts.push(`Why: ${REASON_TEXT[v.reason] ?? v.reason}.`);
    if (v.transferId !== null) parts.push(`Transfer ${v.transferId}.`);
    this.#outcome.textContent = parts.join(" ");
    this.#outcome.hidden = parts.length === 0;
    this.#showCancel(canCancel(t));
  }

  /** Moves the deadline's countdown on (the page calls it every second for open payments). */
  tick(nowMs: number = Date.now()): void {
    const v = this.tracked.view;
    this.#deadline.hidden = v.deadlineMs === null || isFinal(v.status);
    if (v.deadlineMs === null || isFinal(v.status)) {
      this.#deadline.textContent = "";
      return;
    }
    const who = v.status === "awaiting_confirmation" ? "The phone must answer" : "The phone must execute it";
    this.#deadline.textContent = `${who} by ${clockTime(v.deadlineMs)} (${countdownText(v.deadlineMs - nowMs)} left)`;
  }

  #showCancel(show: boolean): void {
    if (show && !this.#cancel.isConnected) {
      this.cancelling = false;
      this.#actions.append(this.#cancel);
    } else if (!show && this.#cancel.isConnected) {
      // The button goes away under the keyboard: keep the focus in the card, not on the page's top.
      const hadFocus = document.activeElement === this.#cancel;
      this.#cancel.remove();
      if (hadFocus) this.focus();
    }
  }
}

/** What the terminal keeps of a payment between visits (StoredList "history:terminal"). */
export interface HistoryItem {
  readonly id: string;
  readonly status: string;
  readonly mode: "auto" | "prompt";
  readonly amountMinor: number;
  readonly currency: string;
  readonly merchantName: string;
  readonly orderRef: string;
  readonly reason: string | null;
  readonly transferId: string | null;
  /** Broker time of the request. */
  readonly atMs: number;
}

export function historyItem(t: Tracked): HistoryItem {
  const v = t.view;
  return { id: v.paymentId, status: v.status, mode: v.mode, amountMinor: v.amountMinor, currency: v.currency, merchantName: v.merchantName, orderRef: v.orderRef, reason: v.reason, transferId: v.transferId, atMs: t.times.accepted ?? Date.now() };
}

/** A history row; `receipt` is the receipt's buttons and proof line (web/receipts.ts), when the page has the receipt. */
export function historyRow(i: HistoryItem, receipt: HTMLElement | null = null): HTMLLIElement {
  return h(
    "li",
    { class: "history-row", testid: "history-item", attrs: { "data-payment-id": i.id, "data-status": i.status } },
    h("span", { class: "status", text: statusText(i.status), attrs: { "data-status": i.status } }),
    h("span", { class: "history-amount", text: formatAmount(i.amountMinor, i.currency) }),
    h("span", { class: "history-merchant", text: i.merchantName }),
    h("span", { class: "history-when muted", text: `${dayText(i.atMs)} ${clockTime(i.atMs)} · ${i.orderRef}${i.reason !== null && i.reason !== i.status ? ` · ${REASON_TEXT[i.reason] ?? i.reason}` : ""}` }),
    receipt,
  );
}
