/**
 * Each payment's receipt, kept by the terminal and the phone pages (docs/protocol.md §Audit log
 * and receipts): the payment_result exactly as the broker signed it, stored in IndexedDB
 * ("receipts:<role>") beside the history entry, downloadable as a receipt file
 * (`<paymentId>.<role>.json`, the format of src/device/receipt.ts that
 * `npm run admin -- receipt verify FILE` checks), and, on request, with the broker's proof that
 * its audit entry is in the signed log (audit_inclusion_request → audit_inclusion).
 *
 * The page checks the proof before it says so, with the same check as `admin receipt verify`
 * (src/device/receipt.ts checkReceipt): the entry hashes with the path to the signed head's root
 * (RFC 9162 §2.1.3.2), the head's signature verifies with the pinned broker key, and the entry
 * records this receipt's result.
 */
import { fromBase64 } from "../src/crypto/encoding.ts";
import { browserPlatform, type DeviceKind } from "../src/device/browser.ts";
import { checkReceipt, receiptBody, receiptFromEnvelope, receiptText, type ReceiptFile } from "../src/device/receipt.ts";
import type { DownBody } from "../src/protocol/messages.ts";
import { clockTime, dayText, h, notConnected, StoredList, type Session } from "./common.ts";

type Inclusion = DownBody<"audit_inclusion">;

interface StoredReceipt {
  /** The payment id, as the history entry's. */
  readonly id: string;
  /** The payment_result's envelope text ({"payload","sig"}) as it came on the wire. */
  readonly envelope: string;
  /** The audit_inclusion answer, once the person asked for the proof. */
  readonly inclusion: Inclusion | null;
}

/** Why a proof the broker sent does not prove this receipt (the check every receipt reader uses); null when it does. */
function proofProblem(envelope: string, inclusion: Inclusion, brokerPublicKey: Uint8Array): string | null {
  const { format, envelope: env } = receiptFromEnvelope(envelope);
  const verdict = checkReceipt(receiptText({ format, envelope: env, inclusion }), brokerPublicKey, browserPlatform.verify);
  return verdict.ok ? null : verdict.reason;
}

/** A page's receipts: kept as they arrive, offered on each history item (Receipt, Add proof). */
export class Receipts {
  #busy = new Set<string>();

  private constructor(
    readonly session: Session,
    readonly list: StoredList<StoredReceipt>,
    /** Called when a receipt or its proof is stored: the page draws its history again. */
    readonly onChange: () => void,
  ) {}

  /**
   * Keeps every payment_result that arrives from now on in "receipts:<role>". Call it right after
   * startPage: the device is already connecting, so the listener goes on before the store opens,
   * and what comes meanwhile is stored once it is open.
   */
  static async keep(session: Session, onChange: () => void): Promise<Receipts> {
    const early: [string, string][] = [];
    let receipts: Receipts | null = null;
    session.device.on("envelope", (m, text) => {
      if (m.type !== "payment_result") return;
      const paymentId = (m.body as { paymentId?: unknown }).paymentId;
      if (typeof paymentId !== "string") return;
      if (receipts === null) early.push([paymentId, text]);
      else receipts.#store(paymentId, text);
    });
    receipts = new Receipts(session, await StoredList.open<StoredReceipt>(`receipts:${session.role}`), onChange);
    for (const [paymentId, text] of early.splice(0)) receipts.#store(paymentId, text);
    return receipts;
  }

  #store(paymentId: string, envelope: string): void {
    // One result per payment; a copy sent again must not drop a proof already added.
    if (this.list.items.some((r) => r.id === paymentId)) return;
    this.list.put({ id: paymentId, envelope, inclusion: null }).then(() => this.onChange(), (err: unknown) => this.session.showError(`Keep the receipt of ${paymentId}`, err));
  }

  get role(): DeviceKind {
    return this.session.role;
  }

  #file(r: StoredReceipt): ReceiptFile {
    const file = receiptFromEnvelope(r.envelope);
    return r.inclusion === null ? file : { ...file, inclusion: r.inclusion as unknown as Record<string, unknown> };
  }

  /** The receipt's buttons and proof line for a history item, or null when this page has no receipt of it. */
  actions(paymentId: string): HTMLElement | null {
    const r = this.list.items.find((i) => i.id === paymentId);
    if (r === undefined) return null;
    const status = h("span", { class: "proof-status muted", testid: "history-proof-status", attrs: { role: "status" } });
    if (r.inclusion !== null) {
      status.textContent = `In the signed audit log: entry ${r.inclusion.index} of ${r.inclusion.treeSize} (head signed ${dayText(r.inclusion.head.timestampMs)} ${clockTime(r.inclusion.head.timestampMs)})`;
    }
    const receipt = h("button", {
      text: "Receipt",
      class: "secondary small",
      testid: "history-receipt",
      attrs: { type: "button", "aria-label": `Download the receipt of ${paymentId}` },
      on: { click: () => this.#download(r) },
    });
    const proof =
      r.inclusion === null
        ? h("button", {
            text: this.#busy.has(paymentId) ? "Asking…" : "Add proof",
            class: "secondary small",
            testid: "history-proof",
            attrs: { type: "button", "aria-disabled": String(this.#busy.has(paymentId)), "aria-label": `Ask the broker for the proof that ${paymentId} is in its audit log` },
            on: { click: () => void this.#addProof(paymentId) },
          })
        : null;
    return h("div", { class: "receipt-actions row" }, receipt, proof, status);
  }

  /** A download, not a fetch: an anchor with a blob: URL (the pages' CSP limits fetches, not downloads). */
  #download(r: StoredReceipt): void {
    const url = URL.createObjectURL(new Blob([receiptText(this.#file(r))], { type: "application/json" }));
    const a = h("a", { attrs: { href: url, download: `${r.id}.${this.role}.json` } });
    a.click();
    // The download has its bytes once it starts; a minute is ample and frees the blob afterwards.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  async #addProof(paymentId: string): Promise<void> {
    const r = this.list.items.find((i) => i.id === paymentId);
    if (r === undefined || this.#busy.has(paymentId)) return;
    const what = `Add the audit log's proof to the receipt of ${paymentId}`;
    const { device } = this.session;
    if (!device.connected) return this.session.showError(what, notConnected());
    const { auditIndex } = receiptBody(this.#file(r));
    if (!Number.isSafeInteger(auditIndex)) return this.session.showError(what, new Error("this result came from a broker without an audit log: it has no auditIndex"));
    this.#busy.add(paymentId);
    this.onChange();
    try {
      const reply = await device.call("audit_inclusion_request", { index: auditIndex });
      const inclusion = reply.body as unknown as Inclusion;
      const problem = proofProblem(r.envelope, inclusion, fromBase64(this.session.config.brokerPublicKey)!);
      if (problem !== null) throw new Error(`the broker's answer is not a proof of this receipt: ${problem}`);
      await this.list.put({ ...r, inclusion });
      this.session.clearNotice();
    } catch (err) {
      this.session.showError(what, err);
    } finally {
      const active = document.activeElement;
      const hadFocus = active === null || active === document.body || active.closest(`[data-payment-id="${CSS.escape(paymentId)}"]`) !== null;
      this.#busy.delete(paymentId);
      this.onChange();
      // The row was drawn again: the focus goes on to its Receipt button, not to the page's top.
      if (hadFocus) document.querySelector<HTMLElement>(`[data-testid="history-item"][data-payment-id="${CSS.escape(paymentId)}"] [data-testid="history-receipt"]`)?.focus();
    }
  }
}
