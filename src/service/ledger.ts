/**
 * Operator actions on the ledger: merchants, and funding a user's wallet. Used by the admin
 * tool, the demo and tests; each is one transaction.
 */
import { z } from "zod";
import { isCurrency, isAmountMinor } from "../core/money.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { randomId } from "../crypto/random.ts";
import { appendAudit } from "../store/audit.ts";
import type { Db } from "../store/db.ts";
import { LedgerRepo, type Transfer } from "../store/ledger.ts";
import { triggerField, type Trigger } from "./audit-trail.ts";
import { USER_ID_RE, userIndex } from "./devices.ts";

export const MERCHANT_ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

const merchantSchema = z.strictObject({
  id: z.string().regex(MERCHANT_ID_RE, "a merchant id is 1-64 lowercase letters, digits and . _ - (e.g. coffee-corner)"),
  name: z.string().trim().min(1, "a merchant name is required").max(64, "a merchant name is at most 64 characters"),
});

export function addMerchant(db: Db, input: { id: string; name: string }, nowMs: number, trigger?: Trigger): { ok: true } | { ok: false; error: string } {
  const parsed = merchantSchema.safeParse(input);
  if (!parsed.success) return { ok: false, error: parsed.error.issues.map((i) => i.message).join("; ") };
  const { id, name } = parsed.data;
  const ledger = new LedgerRepo(db);
  return db
    .transaction((): { ok: true } | { ok: false; error: string } => {
      if (ledger.merchant(id) !== null) return { ok: false, error: `merchant ${id} already exists` };
      ledger.addMerchant({ id, name, createdMs: nowMs });
      appendAudit(db, nowMs, "merchant.added", id, { merchantName: name, ...triggerField(trigger) });
      return { ok: true };
    })
    .immediate();
}

/**
 * Credits a user's wallet from the funding account of that currency. A `reference` makes it
 * idempotent: the same reference again returns the first transfer instead of paying twice.
 */
export function creditWallet(
  db: Db,
  keyring: Keyring,
  input: { userId: string; amountMinor: number; currency: string; reference?: string },
  nowMs: number,
  trigger?: Trigger,
): { ok: true; transfer: Transfer; balanceMinor: number; repeated: boolean } | { ok: false; error: string } {
  if (!USER_ID_RE.test(input.userId)) return { ok: false, error: "a user id is 1-64 characters of letters, digits and . _ @ + -" };
  if (!isCurrency(input.currency)) return { ok: false, error: `currency ${input.currency} is not a supported ISO 4217 code` };
  if (!isAmountMinor(input.amountMinor) || input.amountMinor === 0) return { ok: false, error: "the amount must be a positive whole number of minor units" };
  const ledger = new LedgerRepo(db);
  return db.transaction(() => {
    const wallet = ledger.account("wallet", userIndex(keyring, input.userId), input.currency, nowMs);
    if (input.reference !== undefined) {
      const earlier = ledger.creditByReference(input.reference);
      if (earlier !== null) {
        if (earlier.creditAccount !== wallet.id || earlier.amountMinor !== input.amountMinor || earlier.currency !== input.currency) {
          return { ok: false as const, error: `reference ${input.reference} was used for a different credit` };
        }
        return { ok: true as const, transfer: earlier, balanceMinor: ledger.balanceOf(wallet.id), repeated: true };
      }
    }
    const funding = ledger.fundingAccount(input.currency, nowMs);
    const transfer: Transfer = {
      id: randomId("tr"),
      paymentId: null,
      kind: "credit",
      debitAccount: funding.id,
      creditAccount: wallet.id,
      amountMinor: input.amountMinor,
      currency: input.currency,
      reference: input.reference ?? null,
      createdMs: nowMs,
    };
    ledger.post(transfer, triggerField(trigger));
    return { ok: true as const, transfer, balanceMinor: ledger.balanceOf(wallet.id), repeated: false };
  }).immediate();
}

export function walletBalance(db: Db, keyring: Keyring, userId: string, currency: string): number {
  return new LedgerRepo(db).walletBalance(userIndex(keyring, userId), currency);
}
