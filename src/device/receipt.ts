/**
 * Receipt files (docs/protocol.md §Audit log and receipts): what a device saves of a payment's
 * result so that anyone can check it later with the broker's public key alone
 * (`npm run admin -- receipt verify FILE`, or the Python verifier in the protocol document).
 *
 *   {"format":"handoff-pay-receipt/1","envelope":{"payload":"…","sig":"…"},"inclusion":{…}?}
 *
 * The envelope is the payment_result message exactly as the broker signed it; `inclusion` is the
 * body of an `audit_inclusion` answer, added when the device asked for the proof.
 */
export const RECEIPT_FORMAT = "handoff-pay-receipt/1";

export interface ReceiptFile {
  readonly format: typeof RECEIPT_FORMAT;
  readonly envelope: { readonly payload: string; readonly sig: string };
  readonly inclusion?: Record<string, unknown>;
}

/** A receipt file's text from a payment_result's envelope text (as DeviceClient's `envelope` event gives it). */
export function receiptFromEnvelope(envelopeText: string): ReceiptFile {
  const envelope = JSON.parse(envelopeText) as { payload: string; sig: string };
  return { format: RECEIPT_FORMAT, envelope: { payload: envelope.payload, sig: envelope.sig } };
}

/** The receipt's payment_result body: paymentId, status, amountMinor, currency, auditIndex, atMs, … */
export function receiptBody(r: ReceiptFile): Record<string, unknown> & { paymentId: string; auditIndex: number } {
  return (JSON.parse(r.envelope.payload) as { body: Record<string, unknown> & { paymentId: string; auditIndex: number } }).body;
}

export function receiptText(r: ReceiptFile): string {
  return JSON.stringify(r, null, 2) + "\n";
}
