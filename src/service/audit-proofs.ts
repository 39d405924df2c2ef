/**
 * The proofs a device may ask for (docs/protocol.md §Audit proofs): that an entry about one of
 * its payments (its receipt) is in the audit log under a signed head, and that one signed head
 * extends another. Both answers change nothing but, when no head covers the entry yet, sign one.
 *
 * A device learns only entries about its own payments: any other index, existing or not, is
 * `audit_entry_not_found`, so the answer says nothing about other devices' activity.
 */
import { toBase64 } from "../crypto/encoding.ts";
import type { UpBody } from "../protocol/messages.ts";
import { AuditLog, type SignedHead } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { PaymentRepo } from "../store/payments.ts";
import { Refusal, type Inbox } from "./inbox.ts";

export interface AuditProofOptions {
  /** Signs with the broker's identity key (the key that signs envelopes). */
  readonly sign: (bytes: Uint8Array) => Uint8Array;
}

export function registerAuditProofs(inbox: Inbox, db: Db, o: AuditProofOptions): void {
  const log = new AuditLog(db);
  const payments = new PaymentRepo(db);

  inbox.on("audit_inclusion_request", (ctx, raw) => {
    const b = raw as UpBody<"audit_inclusion_request">;
    const entry = log.entry(b.index);
    const payment = entry?.subject === undefined || entry.subject === null ? null : payments.get(entry.subject);
    // Only the payment's own terminal and phone may see its entries.
    if (entry === null || payment === null || (payment.payment.terminalId !== ctx.device.id && payment.payment.phoneId !== ctx.device.id)) {
      throw new Refusal("audit_entry_not_found", `no audit entry ${b.index} is about a payment of this device`);
    }
    let head: SignedHead | null;
    if (b.treeSize !== undefined) {
      head = log.head(b.treeSize);
      if (head === null) throw new Refusal("audit_head_not_found", `the broker has signed no tree head of size ${b.treeSize}`);
      if (head.treeSize <= b.index) throw new Refusal("audit_head_not_found", `the head of size ${b.treeSize} does not cover entry ${b.index}`);
    } else {
      // The latest head that covers the entry; none yet (the entry is newer than the last head): sign one now.
      head = log.headCovering(b.index) ?? log.signHead(o.sign, ctx.nowMs);
    }
    ctx.reply("audit_inclusion", {
      index: b.index,
      treeSize: head.treeSize,
      entry: entry.text,
      head,
      path: log.inclusionProof(b.index, head.treeSize).map(toBase64),
    });
  });

  inbox.on("audit_consistency_request", (ctx, raw) => {
    const b = raw as UpBody<"audit_consistency_request">;
    if (b.fromSize > b.toSize) throw new Refusal("invalid_body", `body.fromSize: ${b.fromSize} is larger than toSize ${b.toSize}`);
    const from = log.head(b.fromSize);
    if (from === null) throw new Refusal("audit_head_not_found", `the broker has signed no tree head of size ${b.fromSize}`);
    const to = log.head(b.toSize);
    if (to === null) throw new Refusal("audit_head_not_found", `the broker has signed no tree head of size ${b.toSize}`);
    ctx.reply("audit_consistency", { from, to, path: log.consistencyProof(b.fromSize, b.toSize).map(toBase64) });
  });
}
