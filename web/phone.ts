/**
 * The browser phone: pairs with terminals, shows and changes its agreements, answers payment
 * prompts, executes confirmed payments and keeps the history of their results. The same flows
 * as the simulator's phone (device-sim/cli.ts, device-sim/agents.ts PhoneAgent), on a page.
 *
 * Every broker message reaches one handler (below); the answers to this page's own requests are
 * also awaited where they were asked, but only to show a refusal or move a form on: what a
 * message means (a task to execute, a result to record) is decided once, in the handler, so a
 * task that answers an approval and one pushed for an auto-confirmed payment take the same path.
 */
import { EMPTY_USAGE, type Limits } from "../src/core/agreement.ts";
import { CODE_ALPHABET, displayCode, normalizeCode } from "../src/core/pairing.ts";
import type { Received } from "../src/device/client.ts";
import { StoredList, clockTime, formatAmount, fragmentParams, h, startPage } from "./common.ts";
import { AgreementList, limitInputs, limitLabel, readLimitsForm, whenText, type AgreementItem, type ReadableAgreement } from "./phone-agreements.ts";
import { CURRENCIES, DEFAULT_LIMIT_TEXT, limitsLine } from "./phone-limits.ts";
import { PromptCards, outcomeText, resultText, type PromptView, type ResultView } from "./phone-prompts.ts";
import { Receipts } from "./receipts.ts";

const session = await startPage({ role: "phone", title: "Phone", defaultName: "Browser phone", askUser: true });
const { device } = session;
// Each payment_result is the payment's receipt: kept from the first message on (the history is drawn later).
let redrawHistory = (): void => {};
const receiptsOpening = Receipts.keep(session, () => redrawHistory());

// startPage is already connecting, and the page still opens its stores below: what arrives
// meanwhile waits here (a prompt's PUBACK goes out when the listener returns, so nothing may be
// dropped), and is handled in order once the page is ready.
let handleMessage: ((m: Received) => void) | null = null;
const early: Received[] = [];
device.on("message", (m) => (handleMessage === null ? early.push(m) : handleMessage(m)));
let connectedEarly = false;
let handleConnected: (() => void) | null = null;
session.onConnected(() => (handleConnected === null ? (connectedEarly = true) : handleConnected()));

// ── The broker's clock ───────────────────────────────────────────────────────────────────────
// A prompt's deadline is broker time. The page estimates the offset of its own clock from a
// ping's round trip on every connection (pong.brokerTs is read mid-way), so a phone whose clock
// is off by a minute still counts the right time down.
let skewMs = 0;
const brokerNow = () => Date.now() + skewMs;
async function measureSkew(): Promise<void> {
  const sentMs = Date.now();
  const pong = await device.call("ping", {});
  const backMs = Date.now();
  const brokerTs = pong.body.brokerTs;
  if (typeof brokerTs === "number") skewMs = Math.round(brokerTs - (sentMs + backMs) / 2);
}

// ── Sections ─────────────────────────────────────────────────────────────────────────────────
const prompts = new PromptCards(session, brokerNow);
const agreements = new AgreementList(session, () => refreshAgreements());
const history = await StoredList.open<HistoryEntry>("history:phone");
const receipts = await receiptsOpening;

/**
 * Prompts this page has shown and not seen end. The PUBACK of a prompt is its receipt, so the
 * broker does not send it again: a page reloaded (or a tab closed and opened) while a prompt
 * waits would lose it, and the terminal would wait for the deadline. They are kept here and
 * asked about (payment_status) on every connection; those still awaiting an answer come back.
 */
interface OpenPrompt {
  readonly id: string;
  readonly prompt: PromptView;
  readonly open: boolean;
}
const openPrompts = await StoredList.open<OpenPrompt>("prompts:phone");

async function restorePrompts(): Promise<void> {
  for (const entry of openPrompts.items) {
    if (!entry.open || prompts.has(entry.id)) continue;
    if (entry.prompt.deadlineMs <= brokerNow()) {
      await openPrompts.put({ ...entry, open: false });
      continue;
    }
    try {
      const state = await device.call("payment_status", { paymentId: entry.id });
      const status = (state.body.payment as { status?: unknown } | undefined)?.status;
      if (status === "awaiting_confirmation") prompts.show(entry.prompt);
      else await openPrompts.put({ ...entry, open: false }); // its result comes (or came) as a payment_result
    } catch (err) {
      session.showError("Check a payment that was waiting for your answer", err);
    }
  }
}

interface HistoryEntry extends ResultView {
  readonly id: string;
  /** When this phone learned the result (its own clock). */
  readonly atMs: number;
}

// ── Pairing ──────────────────────────────────────────────────────────────────────────────────
const codeInput = h("input", {
  testid: "pair-code",
  attrs: { autocomplete: "off", autocapitalize: "characters", spellcheck: "false", placeholder: "XXXX-XXXX", maxlength: "32", "aria-describedby": "pair-code-hint" },
});
codeInput.addEventListener("blur", () => {
  // Tidy what was typed into the terminal's way of writing it, once the person has moved on.
  const code = normalizeCode(codeInput.value);
  if (code !== null) codeInput.value = displayCode(code);
});
const currencySelect = h("select", { testid: "limit-currency" }, ...CURRENCIES.map((c) => h("option", { text: c, attrs: { value: c } })));
currencySelect.value = "CNY";
const pairLimits = limitInputs({ autoMax: "limit-auto-max", autoDaily: "limit-auto-daily", max: "limit-max" }, DEFAULT_LIMIT_TEXT);
const pairSubmit = h("button", { text: "Pair", testid: "pair-submit", attrs: { type: "submit" } });
const pairForm = h(
  "form",
  { class: "card pair", testid: "pair-form", attrs: { novalidate: "", "aria-labelledby": "pair-title" } },
  h("h2", { text: "Pair with a terminal", attrs: { id: "pair-title" } }),
  h(
    "label",
    { class: "field" },
    h("span", { class: "label", text: "Pairing code shown on the terminal" }),
    codeInput,
    h("small", { class: "hint", text: "8 letters, like QBMM-WPWN; capitals and the dash are optional.", attrs: { id: "pair-code-hint" } }),
  ),
  h("p", { class: "muted", text: "Choose what the terminal may do without asking you. You can change this later." }),
  h("div", { class: "limit-fields" }, h("label", { class: "field currency" }, h("span", { class: "label", text: "Currency" }), currencySelect), limitLabel("autoMax", pairLimits.autoMax), limitLabel("autoDaily", pairLimits.autoDaily), limitLabel("max", pairLimits.max)),
  h("div", { class: "row" }, pairSubmit),
);

pairForm.addEventListener("submit", (e) => {
  e.preventDefault();
  void pair();
});

async function pair(): Promise<void> {
  const what = "Pair with the terminal";
  codeInput.removeAttribute("aria-invalid");
  const code = normalizeCode(codeInput.value);
  if (code === null) {
    const typed = codeInput.value.trim();
    session.showError(what, new Error(typed === "" ? "Enter the pairing code the terminal shows." : `“${typed}” is not a pairing code: it is 8 letters from ${CODE_ALPHABET} (no vowels), like QBMM-WPWN. Check the terminal's screen.`));
    codeInput.setAttribute("aria-invalid", "true");
    codeInput.focus();
    return;
  }
  const limits = readLimitsForm(session, what, currencySelect.value, pairLimits);
  if (limits === null) return;
  session.clearNotice();
  pairSubmit.disabled = true;
  pairSubmit.textContent = "Pairing…";
  try {
    const reply = await device.call("bind_confirm", { code, limits });
    const b = reply.body as unknown as Omit<ReadableAgreement, "usage">;
    codeInput.value = "";
    const card = agreements.upsert({ ...b, usage: EMPTY_USAGE });
    card.scrollIntoView({ block: "nearest" });
    card.querySelector<HTMLElement>("h3")?.setAttribute("tabindex", "-1");
    card.querySelector<HTMLElement>("h3")?.focus();
    session.notify(`Paired with ${b.terminalName}. ${limitsLine(b.limits as Limits)}.`);
    refreshAgreements();
  } catch (err) {
    session.showError(what, err);
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && code.startsWith("pairing_code")) {
      codeInput.setAttribute("aria-invalid", "true");
      codeInput.focus();
    }
  } finally {
    pairSubmit.disabled = false;
    pairSubmit.textContent = "Pair";
  }
}

/** A code from the terminal's QR link (#code=XXXX-XXXX): into the form, out of the address bar. */
function takeCodeFromFragment(): void {
  const params = fragmentParams();
  const typed = params.get("code");
  if (typed === null) return;
  params.delete("code");
  replaceFragment(params);
  const code = normalizeCode(typed);
  codeInput.value = code === null ? typed : displayCode(code);
  session.notify(`Pairing code ${codeInput.value} from the terminal's QR code: check the limits, then Pair.`);
  pairSubmit.focus();
}

function replaceFragment(params: URLSearchParams): void {
  window.history.replaceState(null, "", `${location.pathname}${location.search}${params.size > 0 ? `#${params.toString()}` : ""}`);
}

// ── Agreements ───────────────────────────────────────────────────────────────────────────────
let listing = false;
let listAgain = false;
/** Fetches the agreements (coalesced: a request while one is out asks once more after it). */
function refreshAgreements(): void {
  if (listing) {
    listAgain = true;
    return;
  }
  listing = true;
  device.call("agreements_list", {}).then(
    (reply) => agreements.render((reply.body.items ?? []) as AgreementItem[]),
    (err: unknown) => session.showError("List the paired terminals", err),
  ).finally(() => {
    listing = false;
    if (listAgain) {
      listAgain = false;
      refreshAgreements();
    }
  });
}

// ── Execution ────────────────────────────────────────────────────────────────────────────────
const executionList = h("ul", { class: "list executions" });
const executionSection = h("section", { class: "card", testid: "executions", attrs: { "aria-labelledby": "executions-title" } }, h("h2", { text: "Payments carried out by this phone", attrs: { id: "executions-title" } }), executionList);
executionSection.hidden = true;
const executionLines = new Map<string, HTMLElement>();

interface TaskView {
  readonly paymentId: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly payee: string;
  readonly merchantName: string;
  readonly deadlineMs: number;
}

/** The phone's payment app authorises the debit: it echoes the task (docs/protocol.md §payment_execute). */
function execute(m: Received): void {
  const t = m.body as unknown as TaskView;
  // One execution per payment: a redelivered task, or one whose result this phone already has, is not paid twice.
  if (executionLines.has(t.paymentId) || history.items.some((i) => i.id === t.paymentId)) return;
  const how = prompts.has(t.paymentId) ? "approved on this phone" : "within your auto-confirm limits";
  const text = h("span", { text: `Paying ${formatAmount(t.amountMinor, t.currency)} to ${t.merchantName} (${how})…` });
  const line = h("li", { class: "execution", testid: "execution", attrs: { "data-payment-id": t.paymentId, "data-status": "executing" } }, h("span", { class: "when muted", text: clockTime(Date.now()) }), text);
  executionLines.set(t.paymentId, line);
  executionList.prepend(line);
  executionSection.hidden = false;
  prompts.paying(t.paymentId);
  device.call("payment_execute", { paymentId: t.paymentId, amountMinor: t.amountMinor, currency: t.currency, payee: t.payee }).catch((err: unknown) => {
    line.dataset.status = "refused";
    text.textContent = `Could not pay ${formatAmount(t.amountMinor, t.currency)} to ${t.merchantName}.`;
    session.showError(`Pay ${formatAmount(t.amountMinor, t.currency)} to ${t.merchantName}`, err);
  });
}

// ── History ──────────────────────────────────────────────────────────────────────────────────
const historyList = h("ul", { class: "list history", testid: "history" });
const historyEmpty = h("p", { class: "muted", text: "No payments yet." });
const historySection = h("section", { class: "card", attrs: { "aria-labelledby": "history-title" } }, h("h2", { text: "History", attrs: { id: "history-title" } }), historyEmpty, historyList);

function renderHistory(): void {
  historyEmpty.hidden = history.items.length > 0;
  historyList.replaceChildren(
    ...history.items.map((r) =>
      h(
        "li",
        { class: "history-item", testid: "history-item", attrs: { "data-payment-id": r.id, "data-status": r.status } },
        h("div", { class: "history-main" }, h("span", { class: "history-amount", text: formatAmount(r.amountMinor, r.currency) }), h("span", { class: "history-merchant", text: r.merchantName }), h("span", { class: "status", text: r.status, attrs: { "data-status": r.status } })),
        h("div", { class: "muted history-detail", text: `from ${r.terminalName} · ${whenText(r.atMs)}${r.status === "completed" ? "" : ` · ${outcomeText(r)}`}` }),
        receipts.actions(r.id),
      ),
    ),
  );
}

async function recordResult(m: Received): Promise<void> {
  const r = m.body as unknown as ResultView;
  prompts.settle(r);
  const open = openPrompts.items.find((i) => i.id === r.paymentId && i.open);
  if (open !== undefined) await openPrompts.put({ ...open, open: false });
  const line = executionLines.get(r.paymentId);
  if (line !== undefined) {
    line.dataset.status = r.status;
    line.lastElementChild!.textContent = `${resultText(r)}${r.transferId === null ? "" : ` · transfer ${r.transferId}`}`;
  }
  await history.put({ ...r, id: r.paymentId, atMs: Date.now() });
  renderHistory();
  refreshAgreements(); // the usage changed
}

// ── Messages ─────────────────────────────────────────────────────────────────────────────────
handleMessage = (m) => {
  switch (m.type) {
    case "payment_prompt": {
      const prompt = m.body as unknown as PromptView;
      prompts.show(prompt);
      void openPrompts.put({ id: prompt.paymentId, prompt, open: true });
      // On screen now. The PUBACK already told the broker; prompt_received is the explicit receipt.
      device.call("prompt_received", { paymentId: prompt.paymentId }).catch((err: unknown) => session.showError("Tell the broker the prompt is shown", err));
      break;
    }
    case "payment_task":
      execute(m);
      break;
    case "payment_result":
      void recordResult(m);
      break;
    case "unbound": {
      const b = m.body as { agreementId: string; by: string; terminalName: string | null };
      const name = b.terminalName ?? agreements.terminalName(b.agreementId) ?? "A terminal";
      agreements.remove(b.agreementId);
      // This phone's own unbind is answered with `unbound` too (re set): that form says so itself.
      if (m.re === undefined) {
        session.notify(b.by === "replaced" ? `${name} was paired with another phone for the same login: this phone is no longer paired with it.` : `${name} unbound this phone: it can no longer ask it for payments.`);
      }
      refreshAgreements();
      break;
    }
  }
};

handleConnected = () => {
  refreshAgreements();
  // Without the skew the countdown uses this device's clock; the prompts need it for their deadlines.
  measureSkew()
    .catch(() => {})
    .finally(() => void restorePrompts());
};

session.main.append(prompts.el, pairForm, agreements.el, executionSection, historySection);
renderHistory();
redrawHistory = renderHistory;
for (const m of early.splice(0)) handleMessage(m);
if (connectedEarly) handleConnected();
takeCodeFromFragment();
window.addEventListener("hashchange", takeCodeFromFragment);
