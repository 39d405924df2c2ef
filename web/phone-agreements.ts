/**
 * The phone page's agreements: one card per terminal this phone is paired with, from the
 * broker's `agreements` answer (docs/protocol.md §agreements_list), with its limits and usage,
 * an inline form that changes the limits (`set_limits`) and a two-step unbind (`unbind`).
 *
 * Cards are updated in place when the list is fetched again (on every connect and after every
 * change), so an open form keeps what the person typed and where the focus is.
 */
import type { Limits, Usage } from "../src/core/agreement.ts";
import { dayText, formatAmount, h, sentenceFor, two, type Session } from "./common.ts";
import { LIMIT_HINTS, LIMIT_LABELS, limitsLine, readLimits, type LimitField } from "./phone-limits.ts";
import { plainAmount } from "../src/core/money.ts";

export interface ReadableAgreement {
  readonly agreementId: string;
  readonly terminalId: string;
  readonly terminalName: string;
  readonly phoneId: string;
  readonly limits: Limits;
  readonly boundAtMs: number;
  readonly usage: Usage;
}

/** An agreement the broker cannot open (tampered, or sealed with a key it lacks): it can still be unbound. */
export interface UnreadableAgreement {
  readonly agreementId: string;
  readonly terminalId: string;
  readonly unreadable: string;
}

export type AgreementItem = ReadableAgreement | UnreadableAgreement;

const FIELDS: readonly LimitField[] = ["autoMax", "autoDaily", "max"];

/** The three amount inputs of a limits form, labelled and hinted. */
export function limitInputs(testids: Readonly<Record<LimitField, string>>, values: Readonly<Record<LimitField, string>>): Record<LimitField, HTMLInputElement> {
  const make = (f: LimitField) => h("input", { testid: testids[f], attrs: { value: values[f], inputmode: "decimal", autocomplete: "off", spellcheck: "false" } });
  return { autoMax: make("autoMax"), autoDaily: make("autoDaily"), max: make("max") };
}

export function limitLabel(f: LimitField, input: HTMLInputElement): HTMLLabelElement {
  return h("label", { class: "field" }, h("span", { class: "label", text: LIMIT_LABELS[f] }), input, h("small", { class: "hint", text: LIMIT_HINTS[f] }));
}

/**
 * Reads a limits form; on a mistake marks the field, focuses it and shows the sentence.
 * Returns null then.
 */
export function readLimitsForm(session: Session, what: string, currency: string, inputs: Record<LimitField, HTMLInputElement>): Limits | null {
  for (const f of FIELDS) inputs[f].removeAttribute("aria-invalid");
  const r = readLimits(currency, { autoMax: inputs.autoMax.value, autoDaily: inputs.autoDaily.value, max: inputs.max.value });
  if (r.ok) return r.limits;
  session.showError(what, new Error(r.message));
  if (r.field !== null) {
    inputs[r.field].setAttribute("aria-invalid", "true");
    inputs[r.field].focus();
  }
  return null;
}

/** A moment for people: "14:05" today, "2025-03-01 14:05" another day (local time). */
export function whenText(ms: number, nowMs: number = Date.now()): string {
  const d = new Date(ms);
  const time = `${two(d.getHours())}:${two(d.getMinutes())}`;
  return d.toDateString() === new Date(nowMs).toDateString() ? time : `${dayText(ms)} ${time}`;
}

/**
 * The usage line. The broker counts every payment it accepted for the agreement (asked for, not
 * only paid) and the auto-confirmed ones against the daily allowance, per UTC day.
 */
export function usageLine(u: Usage, limits: Limits, nowMs: number = Date.now()): string {
  const money = (m: number) => formatAmount(m, limits.currency);
  const today = new Date(nowMs).toISOString().slice(0, 10);
  const isToday = u.day === today;
  const todayPart = isToday && u.todayTotalMinor > 0 ? `Today: ${money(u.todayTotalMinor)} asked for, ${money(u.todayAutoMinor)} of ${money(limits.autoConfirmDailyMinor)} auto-confirmed` : `Nothing asked for today (auto-confirm allowance ${money(limits.autoConfirmDailyMinor)})`;
  const count = `${u.paymentCount} payment${u.paymentCount === 1 ? "" : "s"} in all`;
  const last = u.lastUsedMs === null ? "never used" : `last used ${whenText(u.lastUsedMs, nowMs)}`;
  return `${todayPart} · ${count} · ${last}`;
}

interface Card {
  item: AgreementItem;
  readonly el: HTMLElement;
  readonly terminal: HTMLElement;
  readonly meta: HTMLElement;
  readonly limits: HTMLElement;
  readonly usage: HTMLElement;
  readonly editButton: HTMLButtonElement;
}

/**
 * A button that shows and hides an inline panel (aria-expanded follows): `open` fills the panel
 * and names what takes the focus, or returns null to leave it closed. The panel's cancel button
 * and Escape close it with the focus back on the button. Returns that close.
 */
function disclosure(button: HTMLElement, panel: HTMLElement, cancel: HTMLElement, open: () => HTMLElement | null): (focus: boolean) => void {
  panel.hidden = true;
  const close = (focus: boolean) => {
    panel.hidden = true;
    button.setAttribute("aria-expanded", "false");
    if (focus) button.focus();
  };
  button.addEventListener("click", () => {
    if (!panel.hidden) return close(false);
    const first = open();
    if (first === null) return;
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
    first.focus();
  });
  cancel.addEventListener("click", () => close(true));
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") close(true);
  });
  return close;
}

export class AgreementList {
  readonly el: HTMLElement;
  readonly #session: Session;
  readonly #changed: () => void;
  readonly #list: HTMLElement;
  readonly #empty: HTMLElement;
  readonly #cards = new Map<string, Card>();

  /** changed: called after this list changed an agreement, so the page fetches the list again. */
  constructor(session: Session, changed: () => void) {
    this.#session = session;
    this.#changed = changed;
    this.#empty = h("p", { class: "muted", text: "Loading…", testid: "agreements-empty" });
    this.#list = h("div", { class: "agreement-list" });
    this.el = h("section", { class: "card agreements", testid: "agreements", attrs: { "aria-labelledby": "agreements-title" } }, h("h2", { text: "Paired terminals", attrs: { id: "agreements-title", tabindex: "-1" } }), this.#empty, this.#list);
  }

  /** The broker's list: cards are added, updated in place, or removed. */
  render(items: readonly AgreementItem[]): void {
    const ids = new Set(items.map((i) => i.agreementId));
    for (const [id, card] of this.#cards) if (!ids.has(id)) this.remove(id, card);
    for (const item of items) {
      const card = this.#cards.get(item.agreementId) ?? this.#create(item);
      this.#update(card, item);
    }
    this.#showEmpty();
  }

  /** Shows one agreement (a new binding) before the next full list arrives. */
  upsert(item: AgreementItem): HTMLElement {
    const card = this.#cards.get(item.agreementId) ?? this.#create(item);
    this.#update(card, item);
    this.#showEmpty();
    return card.el;
  }

  /** Takes an agreement's card away (unbound here, by the terminal, or replaced). */
  remove(agreementId: string, card = this.#cards.get(agreementId)): void {
    if (card === undefined) return;
    const hadFocus = card.el.contains(document.activeElement);
    card.el.remove();
    this.#cards.delete(agreementId);
    this.#showEmpty();
    if (hadFocus) this.el.querySelector<HTMLElement>("h2")?.focus();
  }

  /** The terminal's name of an agreement this list shows, for messages. */
  terminalName(agreementId: string): string | null {
    const item = this.#cards.get(agreementId)?.item;
    return item !== undefined && "terminalName" in item ? item.terminalName : null;
  }

  #showEmpty(): void {
    this.#empty.hidden = this.#cards.size > 0;
    this.#empty.textContent = "Not paired with any terminal yet: ask the terminal for a pairing code and enter it above.";
  }

  #create(item: AgreementItem): Card {
    const terminal = h("h3", { class: "agreement-terminal", testid: "agreement-terminal" });
    const meta = h("p", { class: "agreement-meta muted" });
    const limits = h("p", { class: "agreement-limits", testid: "agreement-limits" });
    const usage = h("p", { class: "agreement-usage", testid: "agreement-usage" });
    const editButton = h("button", { text: "Change limits", class: "secondary small", testid: "agreement-edit", attrs: { type: "button", "aria-expanded": "false" } });
    const unbindButton = h("button", { text: "Unbind", class: "danger small", testid: "agreement-unbind", attrs: { type: "button", "aria-expanded": "false" } });
    const actions = h("div", { class: "row agreement-actions" }, editButton, unbindButton);
    const el = h("article", { class: "agreement", testid: "agreement", attrs: { "data-agreement-id": item.agreementId } }, terminal, meta, limits, usage, actions);
    const card: Card = { item, el, terminal, meta, limits, usage, editButton };

    // Change limits: an inline form, filled with the limits in force when it opens.
    const inputs = limitInputs({ autoMax: "edit-auto-max", autoDaily: "edit-auto-daily", max: "edit-max" }, { autoMax: "", autoDaily: "", max: "" });
    const currencyNote = h("p", { class: "muted" });
    const save = h("button", { text: "Save limits", testid: "edit-save", attrs: { type: "submit" } });
    const cancelEdit = h("button", { text: "Cancel", class: "secondary", testid: "edit-cancel", attrs: { type: "button" } });
    const form = h("form", { class: "agreement-edit-form", testid: "agreement-edit-form", attrs: { novalidate: "" } }, currencyNote, h("div", { class: "limit-fields" }, ...FIELDS.map((f) => limitLabel(f, inputs[f]))), h("div", { class: "row" }, save, cancelEdit));
    const closeEdit = disclosure(editButton, form, cancelEdit, () => {
      const current = card.item;
      if (!("limits" in current)) return null;
      const l = current.limits;
      inputs.autoMax.value = plainAmount(l.autoConfirmMaxMinor, l.currency);
      inputs.autoDaily.value = plainAmount(l.autoConfirmDailyMinor, l.currency);
      inputs.max.value = plainAmount(l.perPaymentMaxMinor, l.currency);
      for (const f of FIELDS) inputs[f].removeAttribute("aria-invalid");
      currencyNote.textContent = `Amounts in ${l.currency}, the currency this terminal was paired in.`;
      return inputs.autoMax;
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const current = card.item;
      if (!("limits" in current)) return;
      const what = `Change the limits of ${current.terminalName}`;
      const limits = readLimitsForm(this.#session, what, current.limits.currency, inputs);
      if (limits === null) return;
      save.disabled = true;
      this.#session.clearNotice();
      this.#session.device.call("set_limits", { agreementId: current.agreementId, limits }).then(
        () => {
          save.disabled = false;
          closeEdit(true);
          this.#session.notify(`New limits for ${current.terminalName}: ${limitsLine(limits)}.`);
          this.#changed();
        },
        (err: unknown) => {
          save.disabled = false;
          this.#session.showError(what, err);
        },
      );
    });

    // Unbind: a second, inline confirmation (no window.confirm: it blocks the page and the tests).
    const question = h("p", {});
    const confirm = h("button", { text: "Yes, unbind", class: "danger", testid: "agreement-unbind-confirm", attrs: { type: "button" } });
    const keep = h("button", { text: "Keep it", class: "secondary", testid: "agreement-unbind-cancel", attrs: { type: "button" } });
    const confirmBox = h("div", { class: "unbind-confirm", attrs: { role: "group", "aria-label": "Confirm unbinding" } }, question, h("div", { class: "row" }, confirm, keep));
    disclosure(unbindButton, confirmBox, keep, () => {
      const name = "terminalName" in card.item ? card.item.terminalName : "this terminal";
      question.textContent = `Unbind ${name}? It will no longer be able to ask this phone for payments; pairing again needs a new code.`;
      return confirm;
    });
    confirm.addEventListener("click", () => {
      const id = card.item.agreementId;
      const name = this.terminalName(id) ?? "the terminal";
      confirm.disabled = true;
      this.#session.clearNotice();
      this.#session.device.call("unbind", { agreementId: id }).then(
        () => {
          this.remove(id);
          this.#session.notify(`Unbound from ${name}. It was told too.`);
          this.#changed();
        },
        (err: unknown) => {
          confirm.disabled = false;
          this.#session.showError(`Unbind ${name}`, err);
        },
      );
    });

    el.append(form, confirmBox);
    this.#cards.set(item.agreementId, card);
    this.#list.append(el);
    return card;
  }

  #update(card: Card, item: AgreementItem): void {
    card.item = item;
    if ("unreadable" in item) {
      card.el.dataset.unreadable = item.unreadable;
      card.terminal.textContent = "An agreement the broker cannot read";
      card.meta.textContent = `${item.agreementId} · terminal ${item.terminalId}`;
      card.limits.textContent = sentenceFor(item.unreadable);
      card.usage.textContent = "You can still unbind it.";
      card.editButton.hidden = true;
      return;
    }
    delete card.el.dataset.unreadable;
    card.editButton.hidden = false;
    card.terminal.textContent = item.terminalName;
    card.meta.textContent = `Paired ${whenText(item.boundAtMs)} · pays in ${item.limits.currency} · ${item.agreementId}`;
    card.limits.textContent = limitsLine(item.limits);
    card.usage.textContent = usageLine(item.usage, item.limits);
  }
}
