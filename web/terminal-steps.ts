/**
 * What the terminal knows of each payment it asked for, folded from the broker's messages
 * (docs/protocol.md §Payments). Pure: no DOM, no clock; web/terminal-payments.ts shows it.
 *
 * The messages can arrive in any order and twice (a resend after a reconnect), so every fold
 * keeps the highest `seq` and never moves a final payment back. The terminal is not told every
 * step: `confirmed` comes with `executing`, and an auto-confirmed payment has no prompt at all.
 * Times are broker times: an event's `atMs`, or the signed `ts` of the message that stands for
 * the step (`payment_accepted` and `payment_result` carry no `atMs`).
 */
export const STEPS = ["accepted", "prompt_delivered", "confirmed", "executing", "result"] as const;
export type Step = (typeof STEPS)[number];

export const FINAL_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "declined", "expired", "cancelled"]);
/** The statuses in which the terminal may still cancel (docs/protocol.md §Cancel, decline and expiry). */
const CANCELLABLE: ReadonlySet<string> = new Set(["awaiting_confirmation", "executing"]);

/** The payment view of `payment_accepted` and `payment_state` (src/protocol/messages.ts). */
export interface PaymentView {
  readonly paymentId: string;
  readonly status: string;
  readonly mode: "auto" | "prompt";
  readonly amountMinor: number;
  readonly currency: string;
  readonly merchantId: string;
  readonly merchantName: string;
  readonly terminalName: string;
  readonly orderRef: string;
  readonly deadlineMs: number | null;
  readonly reason: string | null;
  readonly transferId: string | null;
  readonly seq: number;
}

export interface PaymentEvent {
  readonly seq: number;
  readonly kind: string;
  readonly atMs: number;
}

export interface Tracked {
  view: PaymentView;
  /** Broker time of each step the terminal knows happened. */
  readonly times: Partial<Record<Step, number>>;
  /** When the broker said the phone was offline (the prompt waits in its outbox). */
  waitingForPhoneAtMs: number | null;
  description: string | null;
}

export function isFinal(status: string): boolean {
  return FINAL_STATUSES.has(status);
}

export function canCancel(t: Tracked): boolean {
  return CANCELLABLE.has(t.view.status);
}

/** The step an event kind stands for (prompt_sent and waiting_for_phone are not steps of the card). */
function stepOf(kind: string): Step | null {
  if (kind === "accepted" || kind === "prompt_delivered" || kind === "confirmed" || kind === "executing") return kind;
  return isFinal(kind) ? "result" : null;
}

function mark(t: Tracked, step: Step, atMs: number, exact: boolean): void {
  if (exact || t.times[step] === undefined) t.times[step] = atMs;
}

/** Takes a newer view; a final payment never goes back, an older view changes nothing. */
function takeView(t: Tracked, view: PaymentView): void {
  if (isFinal(t.view.status) && !isFinal(view.status)) return;
  if (view.seq >= t.view.seq || isFinal(view.status)) t.view = view;
}

/** The steps that `payment_accepted` stands for: its view's status says how far the request's transaction went. */
function markFromStatus(t: Tracked, tsMs: number): void {
  mark(t, "accepted", tsMs, false);
  if (t.view.mode === "auto" && (t.view.status === "executing" || isFinal(t.view.status))) {
    mark(t, "confirmed", tsMs, false);
    mark(t, "executing", tsMs, false);
  }
}

export function fromAccepted(view: PaymentView, tsMs: number): Tracked {
  const t: Tracked = { view, times: {}, waitingForPhoneAtMs: null, description: null };
  markFromStatus(t, tsMs);
  return t;
}

export function applyAccepted(t: Tracked, view: PaymentView, tsMs: number): void {
  takeView(t, view);
  markFromStatus(t, tsMs);
}

export function applyUpdate(t: Tracked, u: { seq: number; step: string; status: string; atMs: number }): void {
  if (u.step === "waiting_for_phone") t.waitingForPhoneAtMs ??= u.atMs;
  const step = stepOf(u.step);
  if (step !== null) mark(t, step, u.atMs, true);
  // Confirmed and executing are one transaction: only the executing step is pushed.
  if (u.step === "executing") mark(t, "confirmed", u.atMs, false);
  if (u.seq > t.view.seq && !isFinal(t.view.status)) t.view = { ...t.view, status: u.status, seq: u.seq };
}

export function applyResult(t: Tracked, r: { seq: number; status: string; reason: string | null; transferId: string | null }, tsMs: number): void {
  mark(t, "result", tsMs, false);
  if (!isFinal(t.view.status) || r.seq >= t.view.seq) t.view = { ...t.view, status: r.status, reason: r.reason, transferId: r.transferId, seq: Math.max(r.seq, t.view.seq), deadlineMs: null };
}

/** `payment_state`: the broker's own view and its events, with their exact times. */
export function applyState(t: Tracked, view: PaymentView, events: readonly PaymentEvent[]): void {
  takeView(t, view);
  for (const e of events) {
    if (e.kind === "waiting_for_phone") t.waitingForPhoneAtMs = e.atMs;
    const step = stepOf(e.kind);
    if (step !== null) mark(t, step, e.atMs, true);
  }
}

/**
 * Whether the card misses a step it should know of: a step not done while a later one is (the
 * terminal was not told, or the message was lost with the page's connection). The page then
 * asks `payment_status` for every event.
 */
export function hasGap(t: Tracked): boolean {
  // The result may follow any step (a decline, a cancel, an expiry), so only the steps before it count.
  let laterDone = false;
  for (const step of STEPS.slice(0, -1).reverse()) {
    const state = stepState(t, step);
    if (state === "done") laterDone = true;
    else if (laterDone && state !== "skipped") return true;
  }
  return false;
}

export type StepState = "done" | "skipped" | "not-reached" | "waiting" | "pending";

export function stepState(t: Tracked, step: Step): StepState {
  if (t.times[step] !== undefined) return "done";
  // An auto-confirmed payment is never shown on the phone: there is no prompt to deliver.
  if (step === "prompt_delivered" && t.view.mode === "auto") return "skipped";
  if (isFinal(t.view.status)) return "not-reached";
  const firstOpen = STEPS.find((s) => t.times[s] === undefined && !(s === "prompt_delivered" && t.view.mode === "auto"));
  return firstOpen === step ? "waiting" : "pending";
}
