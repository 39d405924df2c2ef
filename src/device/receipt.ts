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
import { headSignedBytes, leafHash, verifyInclusion } from "../core/merkle.ts";
import { fromBase64 } from "../crypto/encoding.ts";
import { BROKER_ID, parseEnvelope } from "../protocol/envelope.ts";

export const RECEIPT_FORMAT = "handoff-pay-receipt/1";

/** Ed25519 verification as the platform does it; false for anything that does not verify. */
export type Verify = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array) => boolean;

/** A signed tree head as it travels (docs/protocol.md §Audit log and receipts). */
export interface SignedHeadJson {
  readonly treeSize: number;
  readonly rootHash: string;
  readonly timestampMs: number;
  readonly signature: string;
}

function headVerifies(head: SignedHeadJson, publicKey: Uint8Array, verify: Verify): boolean {
  const root = typeof head.rootHash === "string" ? fromBase64(head.rootHash) : null;
  const sig = typeof head.signature === "string" ? fromBase64(head.signature) : null;
  if (root === null || sig === null || root.length !== 32 || !Number.isSafeInteger(head.treeSize) || head.treeSize < 0) return false;
  if (!Number.isSafeInteger(head.timestampMs) || head.timestampMs < 0) return false;
  return verify(publicKey, headSignedBytes(head.treeSize, root, head.timestampMs), sig);
}

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

/** What a valid receipt says (its payment_result body, docs/protocol.md §Receipts). */
export interface ReceiptFacts {
  readonly paymentId: string;
  readonly status: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly merchantName: string;
  readonly transferId: string | null;
  readonly auditIndex: number;
  readonly atMs: number;
  /** Present when the file carried an inclusion proof that verified. */
  readonly inclusion: { readonly treeSize: number; readonly head: SignedHeadJson } | null;
}

export type ReceiptVerdict = { ok: true; receipt: ReceiptFacts } | { ok: false; reason: string };

/**
 * Checks a receipt file's text with the broker's public key alone: the envelope's signature, that
 * it is the broker's payment_result, and, if the file has "inclusion", that the entry hashes with
 * the path to the signed head's root, the head's signature, and that the entry records this result.
 * `verify` is the platform's Ed25519 check (node:crypto in Node, tweetnacl in a page): the admin
 * tool, the simulator and the pages all check receipts with this one function.
 */
export function checkReceipt(fileText: string, brokerPublicKey: Uint8Array, verify: Verify): ReceiptVerdict {
  const fail = (reason: string): ReceiptVerdict => ({ ok: false, reason });
  let file: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(fileText);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return fail("the file is not a JSON object");
    file = parsed as Record<string, unknown>;
  } catch {
    return fail("the file is not JSON");
  }
  if (file.format !== "handoff-pay-receipt/1") return fail(`the file's format is ${JSON.stringify(file.format)}, not "handoff-pay-receipt/1"`);
  const env = parseEnvelope(new TextEncoder().encode(JSON.stringify(file.envelope ?? null)));
  if (!env.ok) return fail(`its envelope is not a message: ${env.detail}`);
  if (!verify(brokerPublicKey, env.msg.payloadBytes, env.msg.signature)) return fail("the envelope's signature does not verify with the broker key");
  const p = env.msg.payload;
  if (p.from !== BROKER_ID) return fail(`the message is from ${JSON.stringify(p.from)}, not the broker`);
  if (p.type !== "payment_result") return fail(`the message is a ${p.type}, not a payment_result`);
  const b = p.body;
  const str = (v: unknown) => typeof v === "string";
  const int = (v: unknown) => Number.isSafeInteger(v);
  if (!str(b.paymentId) || !str(b.status) || !int(b.amountMinor) || !str(b.currency) || !str(b.merchantName) || !(b.transferId === null || str(b.transferId))) {
    return fail("its payment_result body lacks paymentId, status, amountMinor, currency, merchantName or transferId");
  }
  if (!int(b.auditIndex) || (b.auditIndex as number) < 0 || !int(b.atMs)) return fail("its payment_result has no auditIndex or atMs: it is not a receipt");
  const facts = {
    paymentId: b.paymentId as string,
    status: b.status as string,
    amountMinor: b.amountMinor as number,
    currency: b.currency as string,
    merchantName: b.merchantName as string,
    transferId: b.transferId as string | null,
    auditIndex: b.auditIndex as number,
    atMs: b.atMs as number,
  };
  if (file.inclusion === undefined) return { ok: true, receipt: { ...facts, inclusion: null } };
  const inc = file.inclusion as Record<string, unknown> | null;
  if (typeof inc !== "object" || inc === null) return fail("its inclusion is not an object");
  if (inc.index !== facts.auditIndex) return fail(`the inclusion proof is for entry ${JSON.stringify(inc.index)}, the receipt's auditIndex is ${facts.auditIndex}`);
  const head = inc.head as SignedHeadJson | undefined;
  if (typeof head !== "object" || head === null || !int(inc.treeSize) || head.treeSize !== inc.treeSize) return fail("the inclusion's head is missing or not for its treeSize");
  if (!headVerifies(head, brokerPublicKey, verify)) return fail(`the signed head of ${head.treeSize} entries does not verify with the broker key`);
  if (typeof inc.entry !== "string") return fail("the inclusion has no entry text");
  const path = Array.isArray(inc.path) ? inc.path.map((h) => (typeof h === "string" ? fromBase64(h) : null)) : null;
  if (path === null || path.some((h) => h === null || h.length !== 32)) return fail("the inclusion's path is not a list of base64 SHA-256 hashes");
  const root = fromBase64(head.rootHash)!;
  if (!verifyInclusion(leafHash(new TextEncoder().encode(inc.entry)), facts.auditIndex, head.treeSize, path as Uint8Array[], root)) {
    return fail(`the entry and path do not lead to the signed root of ${head.treeSize} entries: entry ${facts.auditIndex} is not in the signed log as shown`);
  }
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(inc.entry) as Record<string, unknown>;
  } catch {
    return fail("the entry text is not JSON");
  }
  // The entry that records a result names the payment (as its subject) and the result's facts.
  const entryPayment = entry.paymentId ?? entry.subject;
  const mismatches = [
    entry.index !== facts.auditIndex ? "index" : null,
    entryPayment !== facts.paymentId || (entry.paymentId !== undefined && entry.subject !== undefined && entry.paymentId !== entry.subject) ? "paymentId" : null,
    entry.status !== facts.status ? "status" : null,
    entry.amountMinor !== facts.amountMinor ? "amountMinor" : null,
    entry.currency !== facts.currency ? "currency" : null,
    (entry.transferId ?? null) !== facts.transferId ? "transferId" : null,
  ].filter((m) => m !== null);
  if (mismatches.length > 0) return fail(`the audit entry ${facts.auditIndex} does not record this result: ${mismatches.join(", ")} differ`);
  return { ok: true, receipt: { ...facts, inclusion: { treeSize: head.treeSize, head } } };
}
