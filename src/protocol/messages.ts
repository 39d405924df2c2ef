/**
 * Message types and their body schemas: what a device may send up, what the broker sends down.
 * Each type is documented in docs/protocol.md §Messages.
 */
import { z } from "zod";
import { ERROR_CODE_LIST, type ErrorCode } from "./errors.ts";
import { MESSAGE_ID_RE } from "./envelope.ts";

const text = (max: number) => z.string().trim().min(1).max(max).regex(/^[^\p{Cc}]*$/u, "no control characters");
const amountMinor = z.number().int().min(0).max(1_000_000_000_000_000);
const agreementId = z.string().regex(/^ag_[a-z2-7]{20}$/, "an agreement id looks like ag_ followed by 20 characters");

export const limitsSchema = z.strictObject({
  currency: z.string().regex(/^[A-Z]{3}$/, "an ISO 4217 code such as CNY"),
  autoConfirmMaxMinor: amountMinor,
  autoConfirmDailyMinor: amountMinor,
  perPaymentMaxMinor: amountMinor,
});

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
  pong: z.strictObject({ echo: z.string().optional(), brokerTs: z.number().int() }),
  error: z.strictObject({
    code: z.enum(ERROR_CODE_LIST as [ErrorCode, ...ErrorCode[]]),
    detail: z.string(),
    inReplyTo: z.string().regex(MESSAGE_ID_RE).nullable(),
  }),
} as const;

export type DownType = keyof typeof downBodies;
export type DownBody<T extends DownType> = z.infer<(typeof downBodies)[T]>;
export type ErrorBody = DownBody<"error">;
