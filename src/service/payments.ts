/**
 * Payments: the five steps of the handoff, each message one transaction.
 *
 *   pay_request ─▶ find the agreement by blind index and open it (first state) ─▶ decide
 *   auto or prompt (src/core/payment.ts) ─▶ record usage ─▶ prompt or task to the phone
 *   payment_approve ─▶ open the agreement again (second state) ─▶ task to the phone
 *   payment_execute ─▶ post the double-entry transfer ─▶ result to terminal and phone
 *
 * Every change goes through core `step`; this module loads what it needs, saves what it
 * returns, and turns its effects into numbered payment events and outbox messages. Each
 * transition is an audit entry (kind payment.event) naming what caused it; the result sent to
 * both devices carries the index of the entry that records it (docs/protocol.md §Audit log).
 */
import type { Logger } from "pino";
import { isFinal, resetConsecutiveAuto, recordUsage, decideMode, startPayment, step, type Deadlines, type Effect, type Payment, type PaymentEvent, type ProgressStep } from "../core/payment.ts";
import type { Agreement } from "../core/agreement.ts";
import type { Keyring } from "../crypto/keyring.ts";
import { timeOrderedId } from "../crypto/random.ts";
import type { DownBody, UpBody } from "../protocol/messages.ts";
import { appendAudit } from "../store/audit.ts";
import { AgreementRepo } from "../store/binding.ts";
import type { Db } from "../store/db.ts";
import { LedgerRepo } from "../store/ledger.ts";
import { PaymentRepo, type PaymentRecord } from "../store/payments.ts";
import { messageTrigger, type Trigger } from "./audit-trail.ts";
import { userIndex } from "./devices.ts";
import { Refusal, type HandlerContext, type Inbox, type TxContext } from "./inbox.ts";
import { NO_METRICS, type Metrics } from "./metrics.ts";
import { agreementLookup, blindIndex, openAgreement, sameBytes, sealAgreement } from "./sealing.ts";

export interface PaymentOptions {
  readonly keyring: () => Keyring;
  readonly log: Logger;
  readonly deadlines: Deadlines;
  /** Auto-confirmations in a row before the phone must be asked again. */
  readonly maxConsecutiveAuto: number;
  /** Unfinished payments one terminal may have at once. */
  readonly maxLivePerTerminal: number;
  /** Open prompts one phone may have at once. */
  readonly maxPromptsPerPhone: number;
  /** Whether a device is connected right now (the transport knows); absent means "assume yes". */
  readonly isOnline?: (deviceId: string) => boolean;
  /** Counts payments started and ended, once committed (src/service/metrics.ts); none when absent. */
  readonly metrics?: Metrics;
}

/** The outbox names a payment's prompt and task `<paymentId>.prompt` / `.task`, to withdraw them when it ends. */
const PROMPT_SUFFIX = ".prompt";
const TASK_SUFFIX = ".task";

/** The audit entry of the transition whose effects are being applied, and what caused it. */
interface TransitionAudit {
  readonly index: number;
  readonly trigger: Trigger;
}

export const PAYMENT_DEFAULTS = { promptMs: 120_000, taskMs: 60_000, maxConsecutiveAuto: 5, maxLivePerTerminal: 20, maxPromptsPerPhone: 5 } as const;

export class Payments {
  readonly #o: PaymentOptions;
  readonly #payments: PaymentRepo;
  readonly #agreements: AgreementRepo;
  readonly #ledger: LedgerRepo;

  constructor(db: Db, options: PaymentOptions) {
    this.#o = options;
    this.#payments = new PaymentRepo(db);
    this.#agreements = new AgreementRepo(db);
    this.#ledger = new LedgerRepo(db);
  }

  register(inbox: Inbox): void {
    inbox.on("pay_request", (ctx, body) => this.#payRequest(ctx, body as UpBody<"pay_request">));
    inbox.on("prompt_received", (ctx, body) => this.#phoneAction(ctx, (body as UpBody<"prompt_received">).paymentId, () => ({ kind: "prompt_received" })));
    // The phone's PUBACK for the prompt is its receipt: the terminal hears "prompt_delivered"
    // without a prompt_received message (which is still accepted, and then changes nothing).
    inbox.onDelivered(
      (msgId) => msgId.endsWith(PROMPT_SUFFIX),
      (ctx, deviceId, msgId) => {
        const record = this.#payments.get(msgId.slice(0, -PROMPT_SUFFIX.length));
        if (record === null || record.payment.phoneId !== deviceId || record.payment.status !== "awaiting_confirmation") return;
        this.#apply(ctx, record, { kind: "prompt_received" }, { delivered: msgId });
      },
    );
    inbox.on("payment_decline", (ctx, body) => this.#phoneAction(ctx, (body as UpBody<"payment_decline">).paymentId, () => ({ kind: "decline" })));
    inbox.on("payment_approve", (ctx, raw) => {
      const b = raw as UpBody<"payment_approve">;
      this.#phoneAction(ctx, b.paymentId, (p) => ({
        kind: "approve",
        values: { amountMinor: b.amountMinor, currency: b.currency, merchantName: b.merchantName, terminalName: b.terminalName },
        agreementActive: this.#secondState(p) !== null,
      }));
    });
    inbox.on("payment_execute", (ctx, raw) => {
      const b = raw as UpBody<"payment_execute">;
      this.#phoneAction(ctx, b.paymentId, (p) => ({
        kind: "execute",
        values: { amountMinor: b.amountMinor, currency: b.currency, payee: b.payee },
        walletBalanceMinor: this.#ledger.balanceOf(p.walletAccountId),
        transferId: timeOrderedId("tr", ctx.nowMs),
      }));
    });
    inbox.on("payment_cancel", (ctx, raw) => {
      if (ctx.device.kind !== "terminal") throw new Refusal("wrong_device_kind", "only the terminal that asked may cancel a payment");
      const record = this.#own(ctx, (raw as UpBody<"payment_cancel">).paymentId);
      // A cancel ends the payment: its answer is the terminal's payment_result.
      const after = this.#apply(ctx, record, { kind: "cancel" }, messageTrigger(ctx), ctx);
      if (!ctx.replied) ctx.reply("payment_state", { payment: this.#view(after), events: [] });
    });
    inbox.on("payment_status", (ctx, raw) => {
      const b = raw as UpBody<"payment_status">;
      const record = this.#own(ctx, b.paymentId);
      const events = this.#payments.events(record.payment.id, b.sinceSeq ?? 0).map((e) => ({ seq: e.seq, kind: e.kind, atMs: e.atMs, body: e.body }));
      ctx.reply("payment_state", { payment: this.#view(record), events });
    });
  }

  /** The agreement was unbound by this message: each of its unfinished payments fails now, telling both devices. */
  endForAgreement(ctx: HandlerContext, agreementId: string): void {
    const trigger = messageTrigger(ctx);
    for (const id of this.#payments.liveForAgreement(agreementId)) this.#apply(ctx, this.#payments.get(id)!, { kind: "unbound" }, trigger);
  }

  /** A deadline came due: run it through the core (a no-op if the payment moved on). */
  fireDeadline(ctx: TxContext, paymentId: string, which: "prompt" | "task"): void {
    const record = this.#payments.get(paymentId);
    if (record === null) return;
    this.#apply(ctx, record, { kind: "deadline", which }, { deadline: which });
  }

  #payRequest(ctx: HandlerContext, b: UpBody<"pay_request">): void {
    if (ctx.device.kind !== "terminal") throw new Refusal("wrong_device_kind", "pay_request is sent by a terminal");
    const keyring = this.#o.keyring();
    const digest = blindIndex(keyring, "payment-request", b.login, b.merchantId, String(b.amountMinor), b.currency, b.orderRef, b.description ?? "");
    const existing = this.#payments.byIdempotencyKey(ctx.device.id, b.idempotencyKey);
    if (existing !== null) {
      // The same request again gets the same payment, and nothing is sent twice.
      if (!sameBytes(existing.requestDigest, digest)) throw new Refusal("idempotency_conflict", `idempotency key ${b.idempotencyKey} was used for payment ${existing.payment.id} with different fields`);
      ctx.reply("payment_accepted", this.#view(existing));
      return;
    }
    const row = this.#agreements.byLookup(agreementLookup(keyring, ctx.device.id, b.login));
    if (row === null) throw new Refusal("not_bound", "this terminal has no active agreement for that login; bind it to the user's phone first");
    const opened = openAgreement(keyring, row);
    if (!opened.ok) {
      this.#o.log.error({ agreement: row.id, code: opened.code }, "agreement cannot be opened");
      throw new Refusal(opened.code, opened.detail);
    }
    const agreement = opened.value; // the first agreement state
    const merchant = this.#ledger.merchant(b.merchantId);
    if (merchant === null) throw new Refusal("unknown_merchant", `no merchant ${b.merchantId} is registered`);
    const mode = decideMode(agreement.limits, agreement.usage, b.amountMinor, b.currency, ctx.nowMs, this.#o.maxConsecutiveAuto);
    if (!mode.ok) throw new Refusal(mode.code, mode.detail);
    if (this.#payments.liveForTerminal(ctx.device.id) >= this.#o.maxLivePerTerminal) {
      throw new Refusal("rate_limited", `this terminal already has ${this.#o.maxLivePerTerminal} unfinished payments`);
    }
    if (mode.mode === "prompt" && this.#payments.pendingPromptsForPhone(agreement.phoneId) >= this.#o.maxPromptsPerPhone) {
      throw new Refusal("rate_limited", `the phone already has ${this.#o.maxPromptsPerPhone} open prompts`);
    }
    const wallet = this.#ledger.account("wallet", userIndex(keyring, agreement.userId), b.currency, ctx.nowMs);
    const { payment, effects } = startPayment(
      {
        id: timeOrderedId("pay", ctx.nowMs),
        terminalId: ctx.device.id,
        phoneId: agreement.phoneId,
        agreementId: agreement.id,
        merchantId: merchant.id,
        merchantName: merchant.name,
        terminalName: agreement.terminal.displayName,
        amountMinor: b.amountMinor,
        currency: b.currency,
        walletAccountId: wallet.id,
        createdMs: ctx.nowMs,
      },
      mode.mode,
      this.#o.deadlines,
    );
    const metrics = this.#o.metrics ?? NO_METRICS;
    ctx.afterCommit(() => metrics.paymentStarted(mode.mode));
    this.#payments.insert(payment, { idempotencyKey: b.idempotencyKey, requestDigest: digest, orderRef: b.orderRef, description: b.description ?? null });
    this.#saveAgreement(row.version, { ...agreement, usage: recordUsage(agreement.usage, b.amountMinor, mode.mode, ctx.nowMs), version: agreement.version + 1 });
    const record: PaymentRecord = { payment, idempotencyKey: b.idempotencyKey, requestDigest: digest, orderRef: b.orderRef, description: b.description ?? null, seq: 0 };
    const trigger = messageTrigger(ctx);
    const audit = { index: this.#audit(ctx, null, payment, "pay_request", trigger), trigger };
    const seq = this.#effects(ctx, record, effects, audit, ctx);
    if (seq !== record.seq) this.#payments.setSeq(payment.id, seq);
    ctx.reply("payment_accepted", this.#view({ ...record, seq }));
  }

  /** A phone's answer about one of its payments. */
  #phoneAction(ctx: HandlerContext, paymentId: string, event: (p: Payment) => PaymentEvent): void {
    if (ctx.device.kind !== "phone") throw new Refusal("wrong_device_kind", `${ctx.msg.type} is sent by the payment's phone`);
    const record = this.#own(ctx, paymentId);
    // An approval is answered by the task, an ending by the result; anything else by the state.
    const after = this.#apply(ctx, record, event(record.payment), messageTrigger(ctx), ctx);
    if (!ctx.replied) ctx.reply("payment_state", { payment: this.#view(after), events: [] });
  }

  /** The payment, if this device is its terminal or its phone. */
  #own(ctx: HandlerContext, paymentId: string): PaymentRecord {
    const record = this.#payments.get(paymentId);
    if (record === null || (record.payment.terminalId !== ctx.device.id && record.payment.phoneId !== ctx.device.id)) {
      throw new Refusal("payment_not_found", `no payment ${paymentId} belongs to this device`);
    }
    return record;
  }

  /**
   * The second agreement state: the payment's agreement, opened, with the stored version it was
   * read at; null if it is no longer active or does not open.
   */
  #secondState(p: Payment): { agreement: Agreement; version: number } | null {
    const row = this.#agreements.get(p.agreementId);
    if (row === null || row.status !== "active") return null;
    const opened = openAgreement(this.#o.keyring(), row);
    if (!opened.ok) {
      this.#o.log.error({ agreement: row.id, code: opened.code, payment: p.id }, "agreement cannot be opened at confirmation");
      return null;
    }
    return { agreement: opened.value, version: row.version };
  }

  #saveAgreement(expectedVersion: number, next: Agreement): void {
    const { sealed, keyVersion } = sealAgreement(this.#o.keyring(), next);
    if (!this.#agreements.reseal(next.id, sealed, keyVersion, next.version, expectedVersion)) {
      throw new Error(`agreement ${next.id} changed under this transaction`);
    }
  }

  /**
   * Runs one event through the core and saves the outcome with its audit entry; returns the
   * payment as it now is. `trigger` is what caused the event; `actor` is the device whose message
   * this is, when there is one: see #effects.
   */
  #apply(ctx: TxContext, record: PaymentRecord, event: PaymentEvent, trigger: Trigger, actor?: HandlerContext): PaymentRecord {
    const decision = step(record.payment, event, ctx.nowMs, this.#o.deadlines);
    if (!decision.ok) throw new Refusal(decision.code, decision.detail);
    if (decision.payment === record.payment) return record;
    const ended = decision.payment;
    if (isFinal(ended.status) && !isFinal(record.payment.status)) {
      // From the pay_request to the result, by the broker's clock.
      const metrics = this.#o.metrics ?? NO_METRICS;
      ctx.afterCommit(() => metrics.paymentEnded(ended.status, ctx.nowMs - ended.createdMs));
    }
    const audit = { index: this.#audit(ctx, record.payment.status, decision.payment, event.kind, trigger), trigger };
    const next = { ...record, payment: decision.payment };
    const seq = this.#effects(ctx, next, decision.effects, audit, actor);
    // State and last event number in one write, after the effects that append the events.
    this.#payments.save(decision.payment, seq);
    return { ...next, seq };
  }

  /**
   * The audit entry of one transition: ids, amount, codes and what caused it. Appended before the
   * transition's effects, so that the result can name it and the transfer follows it.
   */
  #audit(ctx: TxContext, from: Payment["status"] | null, p: Payment, event: PaymentEvent["kind"] | "pay_request", trigger: Trigger): number {
    return appendAudit(ctx.db, ctx.nowMs, "payment.event", p.id, {
      event,
      from,
      status: p.status,
      mode: p.mode,
      terminalId: p.terminalId,
      phoneId: p.phoneId,
      agreementId: p.agreementId,
      merchantId: p.merchantId,
      amountMinor: p.amountMinor,
      currency: p.currency,
      reason: p.reason,
      transferId: p.transferId,
      trigger,
    });
  }

  /**
   * Turns core effects into rows and outbox messages, in the order the core gave them, and
   * returns the payment's last event number after them. Every step is an event; the devices
   * get as few messages as tell them everything (each one is signed and verified):
   * - the terminal gets at most one payment_update per transaction, for the last step, and
   *   none when the transaction answers its own message (the answer carries status and seq);
   * - the device whose message (`actor`) sent the task or ended the payment gets the
   *   payment_task or payment_result as the answer to that message, not as a second message.
   */
  #effects(ctx: TxContext, record: PaymentRecord, effects: readonly Effect[], audit: TransitionAudit, actor?: HandlerContext): number {
    const p = record.payment;
    let seq = record.seq;
    let progress: { step: ProgressStep; seq: number } | null = null;
    const toDevice = <T extends "payment_task" | "payment_result">(to: string, type: T, body: DownBody<T>, msgId?: string) => {
      if (actor !== undefined && actor.device.id === to && !actor.replied) actor.reply(type, body, msgId);
      else ctx.send(to, type, body, msgId);
    };
    for (const e of effects) {
      switch (e.kind) {
        case "progress":
          seq = this.#payments.appendEvent(p.id, seq + 1, e.step, { status: p.status }, ctx.nowMs);
          progress = { step: e.step, seq };
          break;
        case "send_prompt":
          ctx.send(p.phoneId, "payment_prompt", {
            paymentId: p.id,
            seq,
            amountMinor: p.amountMinor,
            currency: p.currency,
            merchantId: p.merchantId,
            merchantName: p.merchantName,
            terminalId: p.terminalId,
            terminalName: p.terminalName,
            description: record.description,
            deadlineMs: p.promptDeadlineMs!,
          }, `${p.id}${PROMPT_SUFFIX}`);
          // The outbox delivers the prompt when the phone connects; meanwhile the terminal knows.
          if (this.#o.isOnline !== undefined && !this.#o.isOnline(p.phoneId)) {
            seq = this.#payments.appendEvent(p.id, seq + 1, "waiting_for_phone", { status: p.status }, ctx.nowMs);
            ctx.send(p.terminalId, "payment_update", { paymentId: p.id, seq, step: "waiting_for_phone", status: p.status, atMs: ctx.nowMs });
          }
          break;
        case "send_task":
          toDevice(p.phoneId, "payment_task", { paymentId: p.id, seq, amountMinor: p.amountMinor, currency: p.currency, payee: p.merchantId, merchantName: p.merchantName, deadlineMs: p.taskDeadlineMs! }, `${p.id}${TASK_SUFFIX}`);
          break;
        case "arm_deadline":
          this.#payments.arm(p.id, e.which, e.dueMs);
          break;
        case "disarm_deadlines":
          this.#payments.disarm(p.id);
          break;
        case "reset_consecutive_auto": {
          const opened = this.#secondState(p);
          if (opened !== null) this.#saveAgreement(opened.version, { ...opened.agreement, usage: resetConsecutiveAuto(opened.agreement.usage), version: opened.agreement.version + 1 });
          break;
        }
        case "post_transfer": {
          const merchant = this.#ledger.account("merchant", Buffer.from(p.merchantId), p.currency, ctx.nowMs);
          this.#ledger.post({
            id: e.transferId,
            paymentId: p.id,
            kind: "payment",
            debitAccount: p.walletAccountId,
            creditAccount: merchant.id,
            amountMinor: p.amountMinor,
            currency: p.currency,
            reference: record.orderRef,
            createdMs: ctx.nowMs,
          }, { trigger: audit.trigger });
          break;
        }
        case "result": {
          // A phone that was offline must not be asked about a payment that has ended.
          // (Only a prompted payment ever had a prompt: startPayment sends one in no other mode.)
          if (p.mode === "prompt") ctx.withdraw(p.phoneId, `${p.id}${PROMPT_SUFFIX}`);
          ctx.withdraw(p.phoneId, `${p.id}${TASK_SUFFIX}`);
          progress = null; // the result says it all
          seq = this.#payments.appendEvent(p.id, seq + 1, p.status, { status: p.status, reason: p.reason, transferId: p.transferId }, ctx.nowMs);
          const body = {
            paymentId: p.id,
            seq,
            status: p.status as "completed",
            reason: p.reason,
            transferId: p.transferId,
            amountMinor: p.amountMinor,
            currency: p.currency,
            merchantName: p.merchantName,
            terminalName: p.terminalName,
            // The receipt: the entry that records this result, and when (docs/protocol.md §Audit log).
            auditIndex: audit.index,
            atMs: ctx.nowMs,
          };
          toDevice(p.terminalId, "payment_result", body);
          toDevice(p.phoneId, "payment_result", body);
          break;
        }
      }
    }
    const terminalAsked = actor !== undefined && actor.device.id === p.terminalId;
    if (progress !== null && !terminalAsked) {
      ctx.send(p.terminalId, "payment_update", { paymentId: p.id, seq: progress.seq, step: progress.step as Exclude<ProgressStep, "accepted">, status: p.status, atMs: ctx.nowMs });
    }
    return seq;
  }

  #view(r: PaymentRecord) {
    const p = r.payment;
    return {
      paymentId: p.id,
      status: p.status,
      mode: p.mode,
      amountMinor: p.amountMinor,
      currency: p.currency,
      merchantId: p.merchantId,
      merchantName: p.merchantName,
      terminalName: p.terminalName,
      orderRef: r.orderRef,
      deadlineMs: p.status === "awaiting_confirmation" ? p.promptDeadlineMs : p.status === "executing" ? p.taskDeadlineMs : null,
      reason: p.reason,
      transferId: p.transferId,
      seq: r.seq,
    };
  }
}
