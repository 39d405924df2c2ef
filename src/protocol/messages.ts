/**
 * Message types and their body schemas: what a device may send up, what the broker sends down.
 * Each type is documented in docs/protocol.md §Messages.
 */
import { z } from "zod";
import { ERROR_CODE_LIST, type ErrorCode } from "./errors.ts";
import { MESSAGE_ID_RE } from "./envelope.ts";

/** Device → broker. */
export const upBodies = {
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

/** Broker → device. */
export const downBodies = {
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
