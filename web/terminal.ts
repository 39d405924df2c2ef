/**
 * The browser terminal: binds the user logged in on it to their phone (a pairing code, also as
 * a QR code of the phone page's address), asks for payments and follows each one live to its
 * result, and keeps the list of past payments (docs/protocol.md §Binding, §Payments).
 *
 * The broker's messages are handled by their type as they arrive, whether they answer a request
 * of this page or are pushed (docs/protocol.md §Delivery); a request's own promise is used only to
 * show its refusal. The same flows in a text terminal: device-sim/cli.ts.
 */
import { CURRENCY_EXPONENTS } from "../src/core/money.ts";
import { load, save } from "../src/device/browser-store.ts";
import { DeviceError, type Received } from "../src/device/client.ts";
import type { DownBody, DownType } from "../src/protocol/messages.ts";
import { clockTime, countdownText, field, formatAmount, h, notConnected, parseAmount, startPage, StoredList, two } from "./common.ts";
import { historyItem, historyRow, PaymentCard, type HistoryItem } from "./terminal-payments.ts";
import { applyAccepted, applyResult, applyState, applyUpdate, fromAccepted, hasGap, isFinal } from "./terminal-steps.ts";
import { qrSvg } from "./terminal-qr.ts";
import { Receipts } from "./receipts.ts";

const session = await startPage({ role: "terminal", title: "Terminal", defaultName: "Browser terminal" });
const { device, key } = session;
// Each payment_result is the payment's receipt: kept from the first message on (the history is drawn later).
let redrawHistory = (): void => {};
const receiptsOpening = Receipts.keep(session, () => redrawHistory());

/** Payments the page follows at once; the broker allows a terminal 20 unfinished (docs/protocol.md §Limits). */
const MAX_CARDS = 50;
/** Messages kept for a payment whose payment_accepted has not come yet (a resend can reorder them). */
const MAX_EARLY = 100;
/** How long a payment is asked again while the broker answers busy, before the page gives up and says so. */
const BUSY_RETRY_FOR_MS = 60_000;

const PRESETS = [
  { what: "Coffee", amount: "12.00", description: "Coffee" },
  { what: "Lunch", amount: "48.00", description: "Lunch set" },
  // Above the phone page's default auto-confirm maximum (50.00), within its per-payment maximum (500.00): a prompt.
  { what: "Groceries", amount: "288.00", description: "Weekly groceries" },
] as const;
const PRESET_CURRENCY = "CNY";

function freshOrderRef(): string {
  const d = new Date();
  return `T${String(d.getFullYear()).slice(2)}${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}-${device.newId().slice(0, 4).toUpperCase()}`;
}

/** A broker message's body by its type: signed by the broker and checked against its key, so its shape is the broker's schema. */
function bodyOf<T extends DownType>(m: Received, _type: T): DownBody<T> {
  return m.body as unknown as DownBody<T>;
}


// ── the customer: login, bind, pairing code, agreements ─────────────────────────────────────

interface Limits {
  readonly currency: string;
  readonly autoConfirmMaxMinor: number;
  readonly autoConfirmDailyMinor: number;
  readonly perPaymentMaxMinor: number;
}

/** An agreement this terminal learned of (`bound`); the broker never tells a terminal its agreements again. */
interface BoundItem {
  readonly id: string;
  readonly phoneId: string;
  readonly terminalName: string;
  /** The login of the bind_request it answered; null if the page was reloaded in between. */
  readonly login: string | null;
  readonly limits: Limits;
  readonly boundAtMs: number;
  readonly ended: { readonly by: string; readonly atMs: number } | null;
}

// Kept per device id: a forgotten device's agreements are not this key's.
const agreements = await StoredList.open<BoundItem>(`agreements:terminal:${key.deviceId}`, 20);

const loginInput = h("input", { testid: "login", attrs: { value: (await load<string>("login:terminal")) ?? "alice", autocomplete: "username", spellcheck: "false", autocapitalize: "none", maxlength: "128", required: "" } });
loginInput.addEventListener("change", () => void save("login:terminal", loginInput.value.trim()));
const bindButton = h("button", { text: "Bind to a phone", testid: "bind", attrs: { type: "submit" } });

const pairingHeading = h("h3", { text: "Pair the customer's phone", attrs: { tabindex: "-1" } });
const pairingCode = h("p", { class: "big-code", testid: "pairing-code", attrs: { "aria-label": "Pairing code" } });
const pairingQr = h("div", { class: "qr", testid: "pairing-qr" });
const pairingExpires = h("p", { class: "countdown pairing-expires", testid: "pairing-expires" });
const pairingUrl = h("code", { class: "pairing-url", testid: "pairing-url" });
const pairingPanel = h(
  "section",
  { class: "pairing", testid: "pairing", attrs: { "aria-label": "Pairing code" } },
  pairingHeading,
  h("p", { class: "muted", text: "On the phone, open Handoff Pay and type this code, or scan the QR code:" }),
  pairingCode,
  pairingQr,
  pairingExpires,
  h("p", { class: "muted small-print" }, h("span", { text: "The QR code opens " }), pairingUrl),
);
pairingPanel.hidden = true;
const boundInfo = h("div", { class: "bound-info", testid: "bound-info", attrs: { role: "status", "aria-live": "polite" } });

let pairing: { login: string; code: string; expiresLocalMs: number } | null = null;

function stopPairing(): void {
  pairing = null;
  pairingPanel.hidden = true;
}

function tickPairing(nowMs: number): void {
  if (pairing === null) return;
  const left = pairing.expiresLocalMs - nowMs;
  pairingPanel.dataset.expired = String(left <= 0);
  pairingExpires.textContent = left > 0 ? `Expires in ${countdownText(left)}` : "Expired: press Bind for a new code";
}

function showPairing(login: string, code: string, ttlMs: number): void {
  // Counted on this page's clock from ttlMs, not from the broker's expiresAtMs (docs/protocol.md §bind_code).
  pairing = { login, code, expiresLocalMs: Date.now() + ttlMs };
  const url = `${location.origin}/phone#code=${encodeURIComponent(code)}`;
  pairingCode.textContent = code;
  pairingQr.replaceChildren(qrSvg(url, `QR code: the phone page with pairing code ${code}`));
  pairingUrl.textContent = url;
  pairingPanel.hidden = false;
  tickPairing(Date.now());
  pairingHeading.focus();
}

function limitsText(l: Limits): string {
  return `auto-confirm up to ${formatAmount(l.autoConfirmMaxMinor, l.currency)} (${formatAmount(l.autoConfirmDailyMinor, l.currency)} a day), at most ${formatAmount(l.perPaymentMaxMinor, l.currency)} a payment`;
}

function renderAgreements(): void {
  const active = agreements.items.filter((a) => a.ended === null);
  boundInfo.hidden = active.length === 0;
  boundInfo.replaceChildren(
    ...active.map((a) =>
      h(
        "p",
        { class: "bound-line", testid: "bound-agreement", attrs: { "data-agreement-id": a.id } },
        h("strong", { text: `Bound${a.login === null ? "" : ` for ${a.login}`}` }),
        h("span", { text: " to phone " }),
        h("code", { text: a.phoneId }),
        h("span", { text: ` since ${clockTime(a.boundAtMs)} · agreement ` }),
        h("code", { text: a.id }),
        h("br"),
        h("span", { class: "muted", text: limitsText(a.limits) }),
      ),
    ),
  );
}

async function bind(): Promise<void> {
  const login = loginInput.value.trim();
  if (login === "") {
    loginInput.focus();
    return session.showError("Bind", new Error("type the login of the user on this terminal first"));
  }
  if (!device.connected) return session.showError("Bind", notConnected());
  if (bindButton.getAttribute("aria-disabled") === "true") return;
  bindButton.setAttribute("aria-disabled", "true");
  try {
    const reply = await device.call("bind_request", { login, terminal: { model: "Browser", serial: key.deviceId, displayName: key.name } });
    const b = bodyOf(reply, "bind_code");
    session.clearNotice();
    showPairing(login, b.code, b.ttlMs);
  } catch (err) {
    session.showError("Bind", err);
  } finally {
    bindButton.setAttribute("aria-disabled", "false");
  }
}

async function onBound(m: Received): Promise<void> {
  const b = bodyOf(m, "bound");
  const login = pairing?.login ?? null;
  const focusWasInPairing = pairingPanel.contains(document.activeElement);
  // A new phone for the same login replaces the old agreement (docs/protocol.md §bind_request).
  for (const a of agreements.items) if (a.ended === null && a.id !== b.agreementId && login !== null && a.login === login) await agreements.put({ ...a, ended: { by: "replaced", atMs: b.boundAtMs } });
  await agreements.put({ id: b.agreementId, phoneId: b.phoneId, terminalName: b.terminalName, login, limits: b.limits, boundAtMs: b.boundAtMs, ended: null });
  stopPairing();
  renderAgreements();
  if (focusWasInPairing) amountInput.focus();
}

async function onUnbound(m: Received): Promise<void> {
  const b = bodyOf(m, "unbound");
  const a = agreements.items.find((i) => i.id === b.agreementId);
  if (a !== undefined) await agreements.put({ ...a, ended: { by: b.by, atMs: m.ts } });
  renderAgreements();
  session.notify(`The agreement ${b.agreementId}${a?.login ? ` for ${a.login}` : ""} ended (unbound by the ${b.by === "replaced" ? "binding of another phone" : b.by}).`);
}

async function onLimitsUpdated(m: Received): Promise<void> {
  const b = bodyOf(m, "limits_updated");
  const a = agreements.items.find((i) => i.id === b.agreementId);
  if (a !== undefined) await agreements.put({ ...a, limits: b.limits });
  renderAgreements();
}

const bindForm = h(
  "form",
  { class: "bind-form", attrs: { "aria-label": "Customer" } },
  field("Login of the user on this terminal", loginInput, "Payments are asked for this login; Bind pairs it with the user's phone."),
  h("div", { class: "row" }, bindButton),
);
bindForm.addEventListener("submit", (e) => {
  e.preventDefault();
  void bind();
});

// ── a new payment ───────────────────────────────────────────────────────────────────────────

const merchantInput = h("input", { testid: "pay-merchant", attrs: { value: "coffee-corner", autocomplete: "off", spellcheck: "false", autocapitalize: "none", maxlength: "64", required: "" } });
const amountInput = h("input", { testid: "pay-amount", attrs: { inputmode: "decimal", autocomplete: "off", placeholder: "12.50", required: "", "aria-describedby": "pay-error" } });
const currencySelect = h("select", { testid: "pay-currency" }, ...Object.keys(CURRENCY_EXPONENTS).map((c) => h("option", { text: c, attrs: { value: c } })));
currencySelect.value = "CNY";
const orderRefInput = h("input", { testid: "pay-order-ref", attrs: { value: freshOrderRef(), autocomplete: "off", spellcheck: "false", maxlength: "64", required: "" } });
const descriptionInput = h("input", { testid: "pay-description", attrs: { autocomplete: "off", maxlength: "140", placeholder: "Shown on the phone's prompt" } });
const submitButton = h("button", { text: "Ask for payment", testid: "pay-submit", attrs: { type: "submit" } });
const payError = h("p", { class: "field-error", testid: "pay-error", attrs: { id: "pay-error", role: "alert" } });
payError.hidden = true;

function fillAndSubmit(p: (typeof PRESETS)[number]): void {
  if (paying) return;
  amountInput.value = p.amount;
  currencySelect.value = PRESET_CURRENCY;
  descriptionInput.value = p.description;
  payForm.requestSubmit(submitButton);
}

const presetButtons = PRESETS.map((p) =>
  h(
    "button",
    { class: "secondary preset", testid: "preset", attrs: { type: "button" }, on: { click: () => fillAndSubmit(p) } },
    h("span", { text: p.what }),
    " ",
    h("span", { class: "preset-amount", text: formatAmount(parseAmount(p.amount, PRESET_CURRENCY)!, PRESET_CURRENCY) }),
  ),
);

function payFieldError(input: HTMLInputElement, text: string): void {
  payError.textContent = text;
  payError.hidden = false;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

function clearPayError(): void {
  payError.hidden = true;
  for (const i of [amountInput, merchantInput, orderRefInput, loginInput]) i.removeAttribute("aria-invalid");
}

function amountProblem(text: string, currency: string): string {
  const exp = CURRENCY_EXPONENTS[currency] ?? 2;
  const shape = exp === 0 ? `whole ${currency}, like 500` : `digits with at most ${exp} decimals, like ${exp === 2 ? "12.50" : "1.250"}`;
  return text === "" ? `Type the amount in ${currency} (${shape}).` : `“${text}” is not an amount in ${currency}: use ${shape}.`;
}

/** One request at a time. The buttons are aria-disabled, not disabled: a disabled button would drop the keyboard focus. */
let paying = false;

function setPaying(busy: boolean): void {
  paying = busy;
  submitButton.textContent = busy ? "Asking…" : "Ask for payment";
  for (const b of [submitButton, ...presetButtons]) b.setAttribute("aria-disabled", String(busy));
}

async function pay(): Promise<void> {
  if (paying) return;
  clearPayError();
  const login = loginInput.value.trim();
  const currency = currencySelect.value;
  const amountText = amountInput.value.trim();
  const amountMinor = parseAmount(amountText, currency);
  if (login === "") return payFieldError(loginInput, "Type the login of the user on this terminal (under Customer) first.");
  if (merchantInput.value.trim() === "") return payFieldError(merchantInput, "Type the merchant id, e.g. coffee-corner.");
  if (amountMinor === null) return payFieldError(amountInput, amountProblem(amountText, currency));
  if (amountMinor === 0) return payFieldError(amountInput, "The amount must be more than zero.");
  if (orderRefInput.value.trim() === "") return payFieldError(orderRefInput, "Type an order reference.");
  if (!device.connected) return session.showError("Payment", notConnected());
  const description = descriptionInput.value.trim();
  setPaying(true);
  try {
    const request = {
      login,
      merchantId: merchantInput.value.trim(),
      amountMinor,
      currency,
      orderRef: orderRefInput.value.trim(),
      // A new key per click, kept for the busy retries below: one click is one payment.
      idempotencyKey: `web-${device.newId()}`,
      ...(description === "" ? {} : { description }),
    };
    // A broker past its capacity answers busy: the payment is delayed, not refused. Ask again
    // after the wait it names (docs/protocol.md §Load), the same request with the same key.
    const reply = await device.requestPastBusy("pay_request", request, Date.now() + BUSY_RETRY_FOR_MS, (_, waitMs) =>
      session.notify(`The broker is busy: asking again in ${(waitMs / 1000).toFixed(1)} s (the same payment, it will not be made twice).`),
    );
    if (reply.type === "error") throw new DeviceError(String(reply.body.code), String(reply.body.detail), reply);
    session.clearNotice();
    const card = cards.get(bodyOf(reply, "payment_accepted").paymentId);
    if (card !== undefined) {
      if (description !== "") card.tracked.description = description;
      card.render();
      card.focus();
    }
    orderRefInput.value = freshOrderRef();
    descriptionInput.value = "";
  } catch (err) {
    session.showError("Payment refused", err);
  } finally {
    setPaying(false);
  }
}

const payForm = h(
  "form",
  { class: "pay-form", attrs: { "aria-label": "New payment", novalidate: "" } },
  h("div", { class: "presets row", attrs: { role: "group", "aria-label": "Quick payments" } }, ...presetButtons),
  h("div", { class: "row pay-row" }, field("Amount", amountInput), field("Currency", currencySelect)),
  h("div", { class: "row pay-row" }, field("Merchant id", merchantInput), field("Order reference", orderRefInput)),
  field("Description (optional)", descriptionInput),
  payError,
  h("div", { class: "row" }, submitButton),
);
payForm.addEventListener("submit", (e) => {
  e.preventDefault();
  void pay();
});

// ── the payments of this session and the history ────────────────────────────────────────────

const cards = new Map<string, PaymentCard>();
const early = new Map<string, Received[]>();
/** The seq at which the page last asked payment_status for a payment's missing events. */
const askedAt = new Map<string, number>();
const history = await StoredList.open<HistoryItem>("history:terminal");
const receipts = await receiptsOpening;
const paymentList = h("ol", { class: "payments", testid: "payments", attrs: { "aria-label": "Payments of this session" } });
const noPayments = h("p", { class: "muted", text: "No payments yet in this session." });
const historyList = h("ul", { class: "list history", testid: "history", attrs: { "aria-label": "Past payments" } });
const noHistory = h("p", { class: "muted", text: "No payments yet." });

function renderHistory(): void {
  historyList.replaceChildren(...history.items.map((i) => historyRow(i, receipts.actions(i.id))));
  noHistory.hidden = history.items.length > 0;
}

async function cancel(card: PaymentCard): Promise<void> {
  if (!device.connected) return session.showError("Cancel", notConnected());
  card.cancelling = true;
  try {
    await device.call("payment_cancel", { paymentId: card.paymentId });
  } catch (err) {
    // E.g. payment_not_pending: the phone executed it first; its result is on the way.
    session.showError("Cancel", err);
    card.cancelling = false;
    card.render();
  }
}

function askStatus(paymentId: string): void {
  if (!device.connected) return;
  device.call("payment_status", { paymentId }).catch((err: unknown) => session.showError(`Status of ${paymentId}`, err));
}

function applyTo(card: PaymentCard, m: Received): void {
  const t = card.tracked;
  if (m.type === "payment_update") applyUpdate(t, bodyOf(m, "payment_update"));
  else if (m.type === "payment_result") applyResult(t, bodyOf(m, "payment_result"), m.ts);
  else if (m.type === "payment_state") applyState(t, bodyOf(m, "payment_state").payment, bodyOf(m, "payment_state").events);
}

async function settle(card: PaymentCard): Promise<void> {
  card.render();
  const t = card.tracked;
  if (hasGap(t) && (askedAt.get(card.paymentId) ?? -1) < t.view.seq) {
    askedAt.set(card.paymentId, t.view.seq);
    askStatus(card.paymentId);
  }
  const stored = history.items.find((i) => i.id === card.paymentId);
  if (stored === undefined || stored.status !== t.view.status) {
    await history.put(historyItem(t));
    renderHistory();
  }
}

/** A result or state for a payment with no card (asked before this page was loaded): only its history entry changes. */
async function updateHistoryOnly(paymentId: string, m: Received): Promise<void> {
  const stored = history.items.find((i) => i.id === paymentId);
  if (stored === undefined) return;
  const b = m.type === "payment_state" ? bodyOf(m, "payment_state").payment : bodyOf(m, "payment_result");
  if (b.status === stored.status) return;
  await history.put({ ...stored, status: b.status, reason: b.reason, transferId: b.transferId });
  renderHistory();
}

async function onPayment(m: Received): Promise<void> {
  const paymentId = m.type === "payment_state" ? bodyOf(m, "payment_state").payment.paymentId : bodyOf(m, "payment_update").paymentId;
  let card = cards.get(paymentId);
  if (m.type === "payment_accepted") {
    const view = bodyOf(m, "payment_accepted");
    if (card === undefined) {
      card = new PaymentCard(fromAccepted(view, m.ts), (c) => void cancel(c));
      cards.set(paymentId, card);
      paymentList.prepend(card.el);
      noPayments.hidden = true;
      for (const e of early.get(paymentId) ?? []) applyTo(card, e);
      early.delete(paymentId);
      // The page shows this session's payments; the oldest finished card goes first.
      if (cards.size > MAX_CARDS) {
        const oldest = [...cards.values()].reverse().find((c) => isFinal(c.tracked.view.status));
        if (oldest !== undefined) {
          oldest.el.remove();
          cards.delete(oldest.paymentId);
        }
      }
    } else {
      applyAccepted(card.tracked, view, m.ts);
    }
    return settle(card);
  }
  if (card === undefined) {
    // An update can overtake its payment_accepted after a resend: keep it until the id is known.
    if (early.size < MAX_EARLY || early.has(paymentId)) early.set(paymentId, [...(early.get(paymentId) ?? []), m]);
    if (m.type === "payment_result" || m.type === "payment_state") await updateHistoryOnly(paymentId, m);
    return;
  }
  applyTo(card, m);
  return settle(card);
}

device.on("message", (m) => {
  const handled =
    m.type === "bound" ? onBound(m)
    : m.type === "unbound" ? onUnbound(m)
    : m.type === "limits_updated" ? onLimitsUpdated(m)
    : m.type.startsWith("payment_") ? onPayment(m)
    : null;
  handled?.catch((err: unknown) => session.showError(`Showing a ${m.type} message`, err));
});

// After a reconnect, the open payments catch up: the events missed while offline, with their times.
let firstConnection = true;
session.onConnected(() => {
  for (const card of cards.values()) if (!isFinal(card.tracked.view.status)) askStatus(card.paymentId);
  if (firstConnection) {
    // Payments left open when the page was last closed: their history entries learn the outcome.
    for (const i of history.items) if (!isFinal(i.status) && !cards.has(i.id)) askStatus(i.id);
    firstConnection = false;
  }
});

setInterval(() => {
  const now = Date.now();
  tickPairing(now);
  for (const card of cards.values()) if (!isFinal(card.tracked.view.status)) card.tick(now);
}, 1000);

// ── the page ────────────────────────────────────────────────────────────────────────────────

session.main.append(
  h(
    "div",
    { class: "terminal-grid" },
    h(
      "div",
      { class: "terminal-col" },
      h("section", { class: "card customer", attrs: { "aria-labelledby": "customer-h" } }, h("h2", { text: "Customer", attrs: { id: "customer-h" } }), bindForm, pairingPanel, boundInfo),
      h("section", { class: "card new-payment", attrs: { "aria-labelledby": "pay-h" } }, h("h2", { text: "New payment", attrs: { id: "pay-h" } }), payForm),
    ),
    h(
      "div",
      { class: "terminal-col" },
      h("section", { class: "card session-payments", attrs: { "aria-labelledby": "payments-h" } }, h("h2", { text: "Payments", attrs: { id: "payments-h" } }), noPayments, paymentList),
      h("section", { class: "card past-payments", attrs: { "aria-labelledby": "history-h" } }, h("h2", { text: "History", attrs: { id: "history-h" } }), noHistory, historyList),
    ),
  ),
);
renderAgreements();
renderHistory();
redrawHistory = renderHistory;
