/**
 * The phone page's payment prompts: one card per pending `payment_prompt`, with the amount, the
 * merchant, the terminal and a live countdown to the prompt's deadline, and Approve / Decline
 * (docs/protocol.md §payment_prompt, §payment_approve, §payment_decline).
 *
 * An approval echoes exactly the values the card shows (dynamic linking): the card keeps the
 * prompt's body and sends its amount, currency, merchant and terminal names as they came, so
 * what the person read is what they sign. Several prompts can wait at once; each card answers
 * for its own payment.
 */
import { DeviceError } from "../src/device/client.ts";
import { countdownText, formatAmount, h, type Session } from "./common.ts";
import type { DownBody } from "../src/protocol/messages.ts";

/** A payment_prompt as the broker sends it (docs/protocol.md §payment_prompt). */
export type PromptView = DownBody<"payment_prompt">;

/** A payment_result as the broker sends it. */
export type ResultView = DownBody<"payment_result">;

/** How a payment ended, in a few words: "Declined", "Failed (not enough money in the wallet)". */
export function outcomeText(r: ResultView): string {
  switch (r.status) {
    case "completed":
      return "Paid";
    case "declined":
      return "Declined";
    case "expired":
      return r.reason === "task_expired" ? "Expired before it was paid" : "Expired before an answer";
    case "cancelled":
      return `Cancelled by ${r.terminalName}`;
    case "failed":
      return `Failed${r.reason === null ? "" : ` (${REASON_TEXT[r.reason] ?? r.reason})`}`;
  }
}

/** What a payment's end means, in words, for the person who holds the phone. */
export function resultText(r: ResultView): string {
  const money = formatAmount(r.amountMinor, r.currency);
  return r.status === "completed" ? `Paid ${money} to ${r.merchantName}` : `${outcomeText(r)}: ${money} to ${r.merchantName}`;
}

const REASON_TEXT: Readonly<Record<string, string>> = {
  insufficient_funds: "not enough money in the wallet",
  unbound: "the terminal is no longer paired with this phone",
};

/** Answers after which approving again cannot help: the payment or its prompt is over. */
const FINAL_REFUSALS = new Set(["prompt_expired", "payment_not_pending", "payment_not_found", "dynamic_link_mismatch", "wrong_device_kind"]);

/** Finished cards kept on screen (newest first); older ones are only in the history. */
const SETTLED_SHOWN = 3;

/** Milliseconds between countdown refreshes: often enough that a second never shows twice as long. */
const TICK_MS = 250;

interface Card {
  readonly prompt: PromptView;
  readonly el: HTMLElement;
  readonly heading: HTMLElement;
  readonly countdown: HTMLElement;
  readonly status: HTMLElement;
  readonly actions: HTMLElement;
  readonly approve: HTMLButtonElement;
  readonly decline: HTMLButtonElement;
  /** pending: may be answered; answering: waiting for the broker; then approved, declined, expired or a result. */
  state: string;
  /** Order in which cards finished (0 while open). */
  settledAt: number;
}

export class PromptCards {
  readonly #session: Session;
  readonly #brokerNow: () => number;
  readonly #cards = new Map<string, Card>();
  readonly el: HTMLElement;
  #timer: ReturnType<typeof setInterval> | null = null;
  #settledCount = 0;

  /** brokerNow: the broker's clock as the page estimates it (the deadline is broker time). */
  constructor(session: Session, brokerNow: () => number) {
    this.#session = session;
    this.#brokerNow = brokerNow;
    this.el = h("section", { class: "prompts", testid: "prompts", attrs: { "aria-label": "Payments waiting for your answer" } });
    this.el.hidden = true;
  }

  /** Shows a prompt (once per payment: a redelivered copy changes nothing). */
  show(p: PromptView): void {
    if (this.#cards.has(p.paymentId)) return;
    const money = formatAmount(p.amountMinor, p.currency);
    const countdown = h("span", { class: "countdown", testid: "prompt-countdown", attrs: { "aria-label": "time left to answer" } });
    const status = h("p", { class: "prompt-status", testid: "prompt-status", attrs: { "aria-live": "polite" } });
    const approve = h("button", { text: `Approve ${money}`, class: "approve", testid: "prompt-approve", attrs: { type: "button" } });
    const decline = h("button", { text: "Decline", class: "decline", testid: "prompt-decline", attrs: { type: "button" } });
    const actions = h("div", { class: "prompt-actions" }, decline, approve);
    const headingId = `prompt-${p.paymentId}`;
    const heading = h("h2", { text: "Approve this payment?", attrs: { id: headingId } });
    const el = h(
      "article",
      { class: "card prompt", testid: "prompt", attrs: { "data-payment-id": p.paymentId, "aria-labelledby": headingId, tabindex: "-1" } },
      h("div", { class: "prompt-head" }, heading, countdown),
      h("p", { class: "amount prompt-amount", text: money, testid: "prompt-amount" }),
      h(
        "dl",
        { class: "prompt-facts" },
        h("dt", { text: "To" }),
        h("dd", { text: p.merchantName, testid: "prompt-merchant" }),
        h("dt", { text: "From" }),
        h("dd", { text: p.terminalName, testid: "prompt-terminal" }),
        p.description === null ? null : h("dt", { text: "For" }),
        p.description === null ? null : h("dd", { text: p.description, testid: "prompt-description" }),
      ),
      status,
      actions,
    );
    const card: Card = { prompt: p, el, heading, countdown, status, actions, approve, decline, state: "pending", settledAt: 0 };
    approve.addEventListener("click", () => void this.#approve(card));
    decline.addEventListener("click", () => void this.#decline(card));
    this.#cards.set(p.paymentId, card);
    this.el.prepend(el);
    this.el.hidden = false;
    this.#setState(card, "pending");
    this.#tick();
    if (card.state === "pending") {
      approve.focus();
      el.scrollIntoView({ block: "nearest" });
    }
    this.#timer ??= setInterval(() => this.#tick(), TICK_MS);
  }

  /** Whether a card for this payment is on the page (the phone was asked about it). */
  has(paymentId: string): boolean {
    return this.#cards.has(paymentId);
  }

  /** The phone received the task for this payment (approved here, or a redelivery): it pays now. */
  paying(paymentId: string): void {
    const card = this.#cards.get(paymentId);
    if (card === undefined || !["pending", "answering", "expired"].includes(card.state)) return;
    this.#setState(card, "approved", "Approved: paying…");
  }

  /** The payment ended (payment_result): the card says how, and can be dismissed. */
  settle(r: ResultView): void {
    const card = this.#cards.get(r.paymentId);
    if (card === undefined) return;
    this.#setState(card, r.status, resultText(r));
    // Over: the card shrinks to its outcome, under the prompts still waiting (history keeps it too).
    card.el.classList.add("settled");
    card.settledAt = ++this.#settledCount;
    const settled = [...this.#cards.values()].filter((c) => c.settledAt > 0).sort((a, b) => b.settledAt - a.settledAt);
    for (const old of settled.slice(SETTLED_SHOWN)) this.#remove(old);
    const hadFocus = card.el.contains(document.activeElement);
    const dismiss = h("button", { text: "Dismiss", class: "secondary small", testid: "prompt-dismiss", attrs: { type: "button" } });
    dismiss.addEventListener("click", () => this.#remove(card));
    // Approve and Decline stay, disabled (and out of sight): nothing can answer this payment any more.
    card.actions.append(dismiss);
    if (hadFocus && this.#focusNext(card) === null) dismiss.focus();
  }

  #setState(card: Card, state: string, text?: string): void {
    card.state = state;
    card.el.dataset.state = state;
    const open = state === "pending";
    card.heading.textContent = open || state === "answering" ? "Approve this payment?" : `Payment request from ${card.prompt.terminalName}`;
    card.approve.disabled = !open;
    card.decline.disabled = !open;
    if (text !== undefined) card.status.textContent = text;
    if (state !== "pending" && state !== "answering") card.countdown.textContent = state === "expired" ? "Expired" : "";
  }

  /** Refreshes every countdown; a prompt whose deadline passed cannot be answered any more. */
  #tick(): void {
    const now = this.#brokerNow();
    let live = 0;
    for (const card of this.#cards.values()) {
      if (card.state !== "pending" && card.state !== "answering") continue;
      const left = card.prompt.deadlineMs - now;
      if (left <= 0) {
        // The broker ends it too and sends a payment_result (expired), which settles the card.
        const hadFocus = card.el.contains(document.activeElement);
        this.#setState(card, "expired", "This prompt expired: it can no longer be approved.");
        if (hadFocus && this.#focusNext(card) === null) card.el.focus();
        continue;
      }
      live++;
      card.countdown.textContent = countdownText(left);
      card.countdown.dataset.urgent = String(left < 10_000);
    }
    if (live === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  async #approve(card: Card): Promise<void> {
    if (card.state !== "pending") return;
    const p = card.prompt;
    this.#holdFocus(card);
    this.#setState(card, "answering", "Approving…");
    this.#session.clearNotice();
    try {
      // Exactly the values on the card, as the broker sent them (docs/protocol.md §payment_approve).
      const reply = await this.#session.device.call("payment_approve", { paymentId: p.paymentId, amountMinor: p.amountMinor, currency: p.currency, merchantName: p.merchantName, terminalName: p.terminalName });
      // A payment_task (the phone pays now) or a payment_result (it could not go on): the page's
      // message handler shows both; this only moves the card on if that has not happened yet.
      if (reply.type === "payment_task") this.paying(p.paymentId);
    } catch (err) {
      this.#refused(card, "Approve", err);
    }
  }

  async #decline(card: Card): Promise<void> {
    if (card.state !== "pending") return;
    this.#holdFocus(card);
    this.#setState(card, "answering", "Declining…");
    this.#session.clearNotice();
    try {
      // Answered with the payment_result, which the page's message handler has shown already.
      await this.#session.device.call("payment_decline", { paymentId: card.prompt.paymentId });
    } catch (err) {
      this.#refused(card, "Decline", err);
    }
  }

  #refused(card: Card, what: string, err: unknown): void {
    this.#session.showError(`${what} ${formatAmount(card.prompt.amountMinor, card.prompt.currency)} to ${card.prompt.merchantName}`, err);
    if (card.state !== "answering") return; // a result arrived meanwhile and says more
    if (err instanceof DeviceError && FINAL_REFUSALS.has(err.code)) {
      this.#setState(card, err.code === "prompt_expired" ? "expired" : "refused", err.sentence);
      return;
    }
    // Not an answer about this payment (offline, busy, no reply in time): the person may try again.
    this.#setState(card, "pending", "Not answered yet: try again.");
    this.#tick();
    card.approve.focus();
  }

  /** A disabled button drops the focus to the page's top: keep it on the card, so it can move on from there. */
  #holdFocus(card: Card): void {
    if (card.el.contains(document.activeElement)) card.el.focus();
  }

  /** Focuses the next prompt still waiting for an answer; null when there is none. */
  #focusNext(from: Card): true | null {
    for (const card of this.#cards.values()) {
      if (card !== from && card.state === "pending") {
        card.approve.focus();
        return true;
      }
    }
    return null;
  }

  #remove(card: Card): void {
    const hadFocus = card.el.contains(document.activeElement);
    this.#cards.delete(card.prompt.paymentId);
    card.el.remove();
    this.el.hidden = this.#cards.size === 0;
    if (hadFocus) this.#focusNext(card);
  }
}
