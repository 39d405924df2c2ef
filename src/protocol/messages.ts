/**
 * Message types and their body schemas: what a device may send up, what the broker sends down.
 * Each type is documented in docs/protocol.md §Messages.
 */
import { z } from "zod";
import { ERROR_CODE_LIST, type ErrorCode } from "./errors.ts";
import { MESSAGE_ID_RE } from "./envelope.ts";

const text = (max: number) => z.string().trim().min(1).max(max).regex(/^[^\p{Cc}]*$/u, "no control characters");
const amountMinor = z.number().int().min(0).max(1_000_000_000_000_000);
const merchantId = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, "a merchant id is lowercase letters, digits and . _ -");
const paymentId = z.string().regex(/^pay_[a-z2-7]{20}$/, "a payment id looks like pay_ followed by 20 characters");
const agreementId = z.string().regex(/^ag_[a-z2-7]{20}$/, "an agreement id looks like ag_ followed by 20 characters");

export const limitsSchema = z.strictObject({
  currency: z.string().regex(/^[A-Z]{3}$/, "an ISO 4217 code such as CNY"),
  autoConfirmMaxMinor: amountMinor,
  autoConfirmDailyMinor: amountMinor,
  perPaymentMaxMinor: amountMinor,
});

/** Audit log positions (docs/protocol.md §Audit log): an entry's index and a tree's size. */
const auditIndex = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER - 1);
const treeSize = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const b64Hash = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, "a SHA-256 hash in base64");
/** A tree head the broker signed: signed bytes "hp-audit-head-v1\n" + treeSize + "\n" + rootHash + "\n" + timestampMs. */
const signedHead = z.strictObject({ treeSize: z.number().int().min(0), rootHash: b64Hash, timestampMs: z.number().int(), signature: z.string() });

const terminalInfoSchema = z.strictObject({ model: text(64), serial: text(64), displayName: text(64) });

/** Device → broker. */
export const upBodies = {
  /** Terminal: start a binding for the user logged in on it; answered with `bind_code`. */
  bind_request: z.strictObject({ login: text(128), terminal: terminalInfoSchema }),
  /** Phone: confirm the code the terminal shows, with the limits the user chose; answered with `bound`. */
  bind_confirm: z.strictObject({ code: z.string().max(32), limits: limitsSchema }),
  /** Phone: its active agreements; answered with `agreements`. */
  agreements_list: z.strictObject({}),
  /** Phone: change an agreement's limits; answered with `limits_updated`. */
  set_limits: z.strictObject({ agreementId, limits: limitsSchema }),
  /** Phone or terminal: end an agreement; both devices get `unbound`. */
  unbind: z.strictObject({ agreementId }),
  /** Terminal: ask for a payment; answered with `payment_accepted`. */
  pay_request: z.strictObject({
    login: text(128),
    merchantId,
    // Any number passes the schema; the broker answers invalid_amount for one that is not a positive integer.
    amountMinor: z.number(),
    currency: z.string().max(8),
    orderRef: text(64),
    idempotencyKey: z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, "1-64 characters of letters, digits and _ . : -"),
    description: text(140).optional(),
  }),
  /** Phone: the prompt reached the user's screen. */
  prompt_received: z.strictObject({ paymentId }),
  /** Phone: the user approved exactly these values (dynamic linking). */
  payment_approve: z.strictObject({ paymentId, amountMinor: z.number().int(), currency: z.string().max(8), merchantName: z.string().max(128), terminalName: z.string().max(128) }),
  /** Phone: the user declined. */
  payment_decline: z.strictObject({ paymentId }),
  /** Phone: the payment app authorises the debit of this amount to this payee. */
  payment_execute: z.strictObject({ paymentId, amountMinor: z.number().int(), currency: z.string().max(8), payee: z.string().max(64) }),
  /** Terminal: cancel before execution. */
  payment_cancel: z.strictObject({ paymentId }),
  /** Terminal or phone: the current state and the events after `sinceSeq`. */
  payment_status: z.strictObject({ paymentId, sinceSeq: z.number().int().min(0).optional() }),
  /**
   * Terminal or phone of a payment: proof that an audit entry about it (e.g. its receipt's
   * `auditIndex`) is in the log under a signed head; answered with `audit_inclusion`.
   */
  audit_inclusion_request: z.strictObject({ index: auditIndex, treeSize: treeSize.optional() }),
  /** Any device: proof that the signed head of `toSize` extends the one of `fromSize`; answered with `audit_consistency`. */
  audit_consistency_request: z.strictObject({ fromSize: treeSize, toSize: treeSize }),
  /** Liveness and clock check; answered with `pong`. */
  ping: z.strictObject({ echo: z.string().max(256).optional() }),
  /**
   * Receipt for broker messages the device has received and processed: marks them delivered so
   * they are not sent again on the next connect. Idempotent, never answered, not replay-tracked.
   */
  ack: z.strictObject({ ids: z.array(z.string().regex(MESSAGE_ID_RE)).min(1).max(100) }),
} as const;

export type UpType = keyof typeof upBodies;
export type UpBody<T extends UpType> = z.infer<(typeof upBodies)[T]>;

export function isUpType(type: string): type is UpType {
  return Object.hasOwn(upBodies, type);
}

const agreementView = z.strictObject({
  agreementId: z.string(),
  terminalId: z.string(),
  terminalName: z.string(),
  phoneId: z.string(),
  limits: limitsSchema,
  boundAtMs: z.number().int(),
});

const usageSchema = z.strictObject({
  paymentCount: z.number().int(),
  day: z.string().nullable(),
  todayTotalMinor: z.number().int(),
  todayAutoMinor: z.number().int(),
  consecutiveAuto: z.number().int(),
  lastUsedMs: z.number().int().nullable(),
});

const paymentView = z.strictObject({
  paymentId: z.string(),
  status: z.string(),
  mode: z.enum(["auto", "prompt"]),
  amountMinor: z.number().int(),
  currency: z.string(),
  merchantId: z.string(),
  merchantName: z.string(),
  terminalName: z.string(),
  orderRef: z.string(),
  deadlineMs: z.number().int().nullable(),
  reason: z.string().nullable(),
  transferId: z.string().nullable(),
  seq: z.number().int(),
});

/** Broker → device. */
export const downBodies = {
  bind_code: z.strictObject({ pairingId: z.string(), code: z.string(), expiresAtMs: z.number().int(), ttlMs: z.number().int(), display: z.string() }),
  bound: agreementView,
  agreements: z.strictObject({
    items: z.array(
      z.union([
        agreementView.extend({ usage: usageSchema }),
        z.strictObject({ agreementId: z.string(), terminalId: z.string(), unreadable: z.string() }),
      ]),
    ),
  }),
  limits_updated: z.strictObject({ agreementId: z.string(), limits: limitsSchema }),
  unbound: z.strictObject({ agreementId: z.string(), by: z.enum(["phone", "terminal", "replaced", "operator"]), terminalName: z.string().nullable() }),
  payment_accepted: paymentView,
  payment_state: z.strictObject({ payment: paymentView, events: z.array(z.strictObject({ seq: z.number().int(), kind: z.string(), atMs: z.number().int(), body: z.record(z.string(), z.unknown()) })) }),
  payment_update: z.strictObject({ paymentId: z.string(), seq: z.number().int(), step: z.enum(["prompt_sent", "waiting_for_phone", "prompt_delivered", "confirmed", "executing"]), status: z.string(), atMs: z.number().int() }),
  payment_prompt: z.strictObject({
    paymentId: z.string(),
    seq: z.number().int(),
    amountMinor: z.number().int(),
    currency: z.string(),
    merchantId: z.string(),
    merchantName: z.string(),
    terminalId: z.string(),
    terminalName: z.string(),
    description: z.string().nullable(),
    deadlineMs: z.number().int(),
  }),
  payment_task: z.strictObject({
    paymentId: z.string(),
    seq: z.number().int(),
    amountMinor: z.number().int(),
    currency: z.string(),
    payee: z.string(),
    merchantName: z.string(),
    deadlineMs: z.number().int(),
  }),
  payment_result: z.strictObject({
    paymentId: z.string(),
    seq: z.number().int(),
    status: z.enum(["completed", "failed", "declined", "expired", "cancelled"]),
    reason: z.string().nullable(),
    transferId: z.string().nullable(),
    amountMinor: z.number().int(),
    currency: z.string(),
    merchantName: z.string(),
    terminalName: z.string(),
    /** The index of the audit entry that records this result: with the signed envelope, the receipt. */
    auditIndex: z.number().int().min(0),
    /** When the broker decided the result (its clock, ms since the epoch); the entry's atMs. */
    atMs: z.number().int(),
  }),
  audit_inclusion: z.strictObject({
    index: z.number().int(),
    treeSize: z.number().int(),
    /** The entry's text exactly as stored and hashed: its leaf hash is SHA-256(0x00 ‖ UTF-8 of it). */
    entry: z.string(),
    head: signedHead,
    /** RFC 9162 §2.1.3 inclusion path, leaf side first. */
    path: z.array(b64Hash),
  }),
  audit_consistency: z.strictObject({
    from: signedHead,
    to: signedHead,
    /** RFC 9162 §2.1.4 consistency path. */
    path: z.array(b64Hash),
  }),
  pong: z.strictObject({ echo: z.string().optional(), brokerTs: z.number().int() }),
  error: z.strictObject({
    code: z.enum(ERROR_CODE_LIST as [ErrorCode, ...ErrorCode[]]),
    detail: z.string(),
    inReplyTo: z.string().regex(MESSAGE_ID_RE).nullable(),
    /** With `busy`: how long to wait before sending the request again (ms). */
    retryAfterMs: z.number().int().min(0).optional(),
  }),
} as const;

export type DownType = keyof typeof downBodies;
export type DownBody<T extends DownType> = z.infer<(typeof downBodies)[T]>;
export type ErrorBody = DownBody<"error">;

/**
 * Answers that carry nothing a device must learn later: a pong, a refusal (the message changed
 * nothing), the answer to a question it can ask again. They are kept only while a duplicate of
 * the message they answer could still ask for them (docs/protocol.md §Delivery), delivered or not.
 */
export const EPHEMERAL_DOWN_TYPES: ReadonlySet<DownType> = new Set<DownType>(["pong", "error", "agreements", "payment_state", "audit_inclusion", "audit_consistency"]);
