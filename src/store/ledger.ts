/**
 * The double-entry ledger: accounts with integer balances in minor units, and transfers that
 * each debit one account and credit another by the same amount in the same currency, so per
 * currency the balances always sum to zero. A wallet is owned by a user's blind index (never
 * the user id); SQLite's CHECK keeps every wallet and merchant balance at or above zero.
 */
import { appendAudit } from "./audit.ts";
import type { Db } from "./db.ts";

export type AccountKind = "wallet" | "merchant" | "funding";

export interface Account {
  readonly id: string;
  readonly kind: AccountKind;
  readonly currency: string;
  readonly balanceMinor: number;
}

export interface Transfer {
  readonly id: string;
  readonly paymentId: string | null;
  readonly kind: "payment" | "credit";
  readonly debitAccount: string;
  readonly creditAccount: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly reference: string | null;
  readonly createdMs: number;
}

export interface Merchant {
  readonly id: string;
  readonly name: string;
  readonly createdMs: number;
}

const FUNDING_OWNER = Buffer.from("funding");
/** Merchants a LedgerRepo keeps once read (see merchant()). */
const MERCHANT_CACHE_MAX = 10_000;

function accountId(kind: AccountKind, owner: Uint8Array, currency: string): string {
  const tag = kind === "merchant" ? Buffer.from(owner).toString("utf8") : Buffer.from(owner).toString("hex").slice(0, 24);
  return `${kind}:${tag}:${currency}`;
}

export class LedgerRepo {
  /** The transfer row and both balance moves, all or none (a savepoint inside the caller's transaction). */
  readonly #post: (t: Transfer, extra: Record<string, unknown>) => void;
  readonly #getAccount;
  readonly #insertAccount;
  readonly #move;
  readonly #insertTransfer;
  readonly #transferByPayment;
  readonly #transfers;
  readonly #accounts;
  readonly #sums;
  readonly #merchant;
  readonly #merchants;
  readonly #insertMerchant;
  readonly #creditByRef;
  readonly #merchantCache = new Map<string, Merchant>();

  constructor(db: Db) {
    this.#getAccount = db.prepare<[string], { id: string; kind: AccountKind; currency: string; balance_minor: number }>("SELECT * FROM accounts WHERE id = ?");
    this.#insertAccount = db.prepare("INSERT INTO accounts (id, kind, owner, currency, balance_minor, created_ms) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING");
    this.#move = db.prepare("UPDATE accounts SET balance_minor = balance_minor + ? WHERE id = ?");
    this.#insertTransfer = db.prepare(
      "INSERT INTO transfers (id, payment_id, kind, debit_account, credit_account, amount_minor, currency, reference, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    this.#transferByPayment = db.prepare<[string], Record<string, unknown>>("SELECT * FROM transfers WHERE payment_id = ?");
    this.#transfers = db.prepare<[number], Record<string, unknown>>("SELECT * FROM transfers ORDER BY created_ms DESC, id LIMIT ?");
    this.#accounts = db.prepare<[], { id: string; kind: AccountKind; currency: string; balance_minor: number }>("SELECT * FROM accounts ORDER BY currency, kind, id");
    this.#sums = db.prepare<[], { currency: string; total: number }>("SELECT currency, sum(balance_minor) AS total FROM accounts GROUP BY currency");
    this.#merchant = db.prepare<[string], { id: string; name: string; created_ms: number }>("SELECT * FROM merchants WHERE id = ?");
    this.#merchants = db.prepare<[], { id: string; name: string; created_ms: number }>("SELECT * FROM merchants ORDER BY id");
    this.#insertMerchant = db.prepare("INSERT INTO merchants (id, name, created_ms) VALUES (?, ?, ?)");
    this.#creditByRef = db.prepare<[string], Record<string, unknown>>("SELECT * FROM transfers WHERE kind = 'credit' AND reference = ?");
    this.#post = db.transaction((t: Transfer, extra: Record<string, unknown>) => {
      this.#insertTransfer.run(t.id, t.paymentId, t.kind, t.debitAccount, t.creditAccount, t.amountMinor, t.currency, t.reference, t.createdMs);
      this.#move.run(-t.amountMinor, t.debitAccount);
      this.#move.run(t.amountMinor, t.creditAccount);
      // Every transfer is in the audit log, in its own transaction (wallet accounts are named by a
      // blind index of the user, never the user id). A payment's transfer is found by its payment.
      appendAudit(db, t.createdMs, "ledger.transfer", t.paymentId ?? t.id, {
        transferId: t.id,
        transferKind: t.kind,
        ...(t.paymentId === null ? {} : { paymentId: t.paymentId }),
        ...(t.reference === null ? {} : { reference: t.reference }),
        debitAccount: t.debitAccount,
        creditAccount: t.creditAccount,
        amountMinor: t.amountMinor,
        currency: t.currency,
        ...extra,
      });
    });
  }

  /** The account of (kind, owner, currency), created with a zero balance on first use. */
  account(kind: AccountKind, owner: Uint8Array, currency: string, nowMs: number): Account {
    const id = accountId(kind, owner, currency);
    // Read first: accounts are made once and read on every payment.
    let r = this.#getAccount.get(id);
    if (r === undefined) {
      this.#insertAccount.run(id, kind, owner, currency, nowMs);
      r = this.#getAccount.get(id)!;
    }
    return { id: r.id, kind: r.kind, currency: r.currency, balanceMinor: r.balance_minor };
  }

  walletBalance(userIndex: Uint8Array, currency: string): number {
    return this.#getAccount.get(accountId("wallet", userIndex, currency))?.balance_minor ?? 0;
  }

  balanceOf(accountId: string): number {
    return this.#getAccount.get(accountId)?.balance_minor ?? 0;
  }

  fundingAccount(currency: string, nowMs: number): Account {
    return this.account("funding", FUNDING_OWNER, currency, nowMs);
  }

  /**
   * Posts a transfer: both balances move in one statement pair inside the caller's transaction,
   * with its audit entry; `audit` adds fields to that entry (what caused it: `{ trigger }`).
   */
  post(t: Transfer, audit: Record<string, unknown> = {}): void {
    if (!Number.isSafeInteger(t.amountMinor) || t.amountMinor <= 0) throw new Error(`transfer amount must be a positive integer, got ${t.amountMinor}`);
    this.#post(t, audit);
  }

  transferForPayment(paymentId: string): Transfer | null {
    const r = this.#transferByPayment.get(paymentId);
    return r === undefined ? null : transferFromRaw(r);
  }

  creditByReference(reference: string): Transfer | null {
    const r = this.#creditByRef.get(reference);
    return r === undefined ? null : transferFromRaw(r);
  }

  transfers(limit: number): Transfer[] {
    return this.#transfers.all(limit).map(transferFromRaw);
  }

  accounts(): Account[] {
    return this.#accounts.all().map((r) => ({ id: r.id, kind: r.kind, currency: r.currency, balanceMinor: r.balance_minor }));
  }

  /** Per currency, the sum of all balances: zero, always (double entry). */
  sums(): Map<string, number> {
    return new Map(this.#sums.all().map((r) => [r.currency, r.total]));
  }

  /**
   * A registered merchant. Merchants are only ever added (no statement changes or deletes a
   * merchant row), so one found is kept and not read again; a merchant not found is asked for
   * again each time (it may be added). Bounded: cleared whole past MERCHANT_CACHE_MAX.
   */
  merchant(id: string): Merchant | null {
    const cached = this.#merchantCache.get(id);
    if (cached !== undefined) return cached;
    const r = this.#merchant.get(id);
    if (r === undefined) return null;
    const m = { id: r.id, name: r.name, createdMs: r.created_ms };
    if (this.#merchantCache.size >= MERCHANT_CACHE_MAX) this.#merchantCache.clear();
    this.#merchantCache.set(id, m);
    return m;
  }

  merchants(): Merchant[] {
    return this.#merchants.all().map((r) => ({ id: r.id, name: r.name, createdMs: r.created_ms }));
  }

  addMerchant(m: Merchant): void {
    this.#insertMerchant.run(m.id, m.name, m.createdMs);
  }
}

function transferFromRaw(r: Record<string, unknown>): Transfer {
  return {
    id: r.id as string,
    paymentId: r.payment_id as string | null,
    kind: r.kind as Transfer["kind"],
    debitAccount: r.debit_account as string,
    creditAccount: r.credit_account as string,
    amountMinor: r.amount_minor as number,
    currency: r.currency as string,
    reference: r.reference as string | null,
    createdMs: r.created_ms as number,
  };
}
