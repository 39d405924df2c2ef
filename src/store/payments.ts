/** Payments, their numbered events, and their deadlines (rows with a due time, re-armed on start). */
import type { Payment } from "../core/payment.ts";
import type { Db } from "./db.ts";

export interface PaymentRecord {
  readonly payment: Payment;
  readonly idempotencyKey: string;
  readonly requestDigest: Uint8Array;
  readonly orderRef: string;
  readonly description: string | null;
  readonly seq: number;
}

export interface PaymentEventRow {
  readonly seq: number;
  readonly kind: string;
  readonly body: Record<string, unknown>;
  readonly atMs: number;
}

function fromRaw(r: Record<string, unknown>): PaymentRecord {
  return {
    payment: JSON.parse(r.state as string) as Payment,
    idempotencyKey: r.idempotency_key as string,
    requestDigest: new Uint8Array(r.request_digest as Buffer),
    orderRef: r.order_ref as string,
    description: r.description as string | null,
    seq: r.seq as number,
  };
}

export class PaymentRepo {
  readonly #insert;
  readonly #get;
  readonly #byKey;
  readonly #update;
  readonly #appendEvent;
  readonly #events;
  readonly #arm;
  readonly #disarm;
  readonly #due;
  readonly #liveTerminal;
  readonly #livePhone;
  readonly #nextDue;
  readonly #count;

  constructor(db: Db) {
    this.#liveForAgreement = db.prepare<[string], { id: string }>(
      "SELECT id FROM payments WHERE agreement_id = ? AND status IN ('awaiting_confirmation', 'executing') ORDER BY created_ms",
    );
    this.#insert = db.prepare(
      `INSERT INTO payments (id, terminal_id, phone_id, agreement_id, merchant_id, idempotency_key, request_digest, order_ref, description, state, status, seq, created_ms, updated_ms)
       VALUES (@id, @terminalId, @phoneId, @agreementId, @merchantId, @idempotencyKey, @requestDigest, @orderRef, @description, @state, @status, 0, @createdMs, @createdMs)`,
    );
    this.#get = db.prepare<[string], Record<string, unknown>>("SELECT * FROM payments WHERE id = ?");
    this.#byKey = db.prepare<[string, string], Record<string, unknown>>("SELECT * FROM payments WHERE terminal_id = ? AND idempotency_key = ?");
    this.#update = db.prepare("UPDATE payments SET state = ?, status = ?, updated_ms = ?, seq = ? WHERE id = ?");
    this.#appendEvent = db.prepare("INSERT INTO payment_events (payment_id, seq, kind, body, at_ms) VALUES (?, ?, ?, ?, ?)");
    this.#events = db.prepare<[string, number], { seq: number; kind: string; body: string; at_ms: number }>(
      "SELECT seq, kind, body, at_ms FROM payment_events WHERE payment_id = ? AND seq > ? ORDER BY seq",
    );
    this.#arm = db.prepare("INSERT INTO deadlines (payment_id, which, due_ms) VALUES (?, ?, ?) ON CONFLICT (payment_id, which) DO UPDATE SET due_ms = excluded.due_ms");
    this.#disarm = db.prepare("DELETE FROM deadlines WHERE payment_id = ?");
    this.#due = db.prepare<[number, number], { payment_id: string; which: "prompt" | "task"; due_ms: number }>(
      "SELECT payment_id, which, due_ms FROM deadlines WHERE due_ms <= ? ORDER BY due_ms LIMIT ?",
    );
    this.#nextDue = db.prepare<[], { due: number | null }>("SELECT min(due_ms) AS due FROM deadlines");
    this.#liveTerminal = db.prepare<[string], { n: number }>("SELECT count(*) AS n FROM payments WHERE terminal_id = ? AND status IN ('awaiting_confirmation', 'executing')");
    // The repeated IN clause lets SQLite use the partial index payments_live_by_phone (it cannot
    // prove that status = 'awaiting_confirmation' implies the index's WHERE on its own).
    this.#livePhone = db.prepare<[string], { n: number }>(
      "SELECT count(*) AS n FROM payments WHERE phone_id = ? AND status IN ('awaiting_confirmation', 'executing') AND status = 'awaiting_confirmation'",
    );
    this.#count = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM deadlines");
    this.#setSeq = db.prepare("UPDATE payments SET seq = ? WHERE id = ?");
  }

  readonly #setSeq;
  readonly #liveForAgreement;

  /** Ids of the agreement's unfinished payments. */
  liveForAgreement(agreementId: string): string[] {
    return this.#liveForAgreement.all(agreementId).map((r) => r.id);
  }

  insert(p: Payment, extra: { idempotencyKey: string; requestDigest: Uint8Array; orderRef: string; description: string | null }): void {
    this.#insert.run({
      id: p.id,
      terminalId: p.terminalId,
      phoneId: p.phoneId,
      agreementId: p.agreementId,
      merchantId: p.merchantId,
      idempotencyKey: extra.idempotencyKey,
      requestDigest: extra.requestDigest,
      orderRef: extra.orderRef,
      description: extra.description,
      state: JSON.stringify(p),
      status: p.status,
      createdMs: p.createdMs,
    });
  }

  get(id: string): PaymentRecord | null {
    const r = this.#get.get(id);
    return r === undefined ? null : fromRaw(r);
  }

  byIdempotencyKey(terminalId: string, key: string): PaymentRecord | null {
    const r = this.#byKey.get(terminalId, key);
    return r === undefined ? null : fromRaw(r);
  }

  /** Saves the payment's state and its last event number (`seq`), in one statement. */
  save(p: Payment, seq: number): void {
    this.#update.run(JSON.stringify(p), p.status, p.updatedMs, seq, p.id);
  }

  /** Records the payment's last event number, after events appended to a payment not saved since. */
  setSeq(paymentId: string, seq: number): void {
    this.#setSeq.run(seq, paymentId);
  }

  /**
   * Appends event number `seq`, the payment's last plus one (the primary key refuses a number
   * twice); returns it. The payment's own `seq` is the caller's to save (save or setSeq), once
   * for all the events of a transition.
   */
  appendEvent(paymentId: string, seq: number, kind: string, body: Record<string, unknown>, atMs: number): number {
    this.#appendEvent.run(paymentId, seq, kind, JSON.stringify(body), atMs);
    return seq;
  }

  events(paymentId: string, sinceSeq: number): PaymentEventRow[] {
    return this.#events.all(paymentId, sinceSeq).map((r) => ({ seq: r.seq, kind: r.kind, body: JSON.parse(r.body) as Record<string, unknown>, atMs: r.at_ms }));
  }

  arm(paymentId: string, which: "prompt" | "task", dueMs: number): void {
    this.#arm.run(paymentId, which, dueMs);
  }

  disarm(paymentId: string): void {
    this.#disarm.run(paymentId);
  }

  due(nowMs: number, limit: number): { paymentId: string; which: "prompt" | "task"; dueMs: number }[] {
    return this.#due.all(nowMs, limit).map((r) => ({ paymentId: r.payment_id, which: r.which, dueMs: r.due_ms }));
  }

  nextDueMs(): number | null {
    return this.#nextDue.get()?.due ?? null;
  }

  armedCount(): number {
    return this.#count.get()?.n ?? 0;
  }

  liveForTerminal(terminalId: string): number {
    return this.#liveTerminal.get(terminalId)?.n ?? 0;
  }

  pendingPromptsForPhone(phoneId: string): number {
    return this.#livePhone.get(phoneId)?.n ?? 0;
  }
}
