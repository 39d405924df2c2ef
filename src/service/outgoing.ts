/** Builds the broker's signed messages to a device. */
import type { Signer } from "../crypto/ed25519.ts";
import { uuidV7 } from "../crypto/encoding.ts";
import { randomBytesPooled } from "../crypto/random.ts";
import { BROKER_ID, PROTOCOL_VERSION, sealEnvelope } from "../protocol/envelope.ts";
import type { DownBody, DownType } from "../protocol/messages.ts";

export interface Outgoing {
  readonly to: string;
  readonly type: DownType;
  readonly msgId: string;
  readonly re: string | null;
  readonly bytes: Uint8Array;
}

/**
 * A broker message id: a version-7 UUID, time-ordered, so the outbox's (msg_id, device_id) key
 * grows at its end instead of at a random page per message (migration 10, docs/performance.md).
 */
export function newMessageId(nowMs: number): string {
  return uuidV7(nowMs, randomBytesPooled(10));
}

export function signedDown<T extends DownType>(
  signer: Signer,
  to: string,
  type: T,
  body: DownBody<T>,
  re: string | null,
  nowMs: number,
  msgId: string = newMessageId(nowMs),
): Outgoing {
  const payload = {
    v: PROTOCOL_VERSION as typeof PROTOCOL_VERSION,
    type,
    id: msgId,
    from: BROKER_ID,
    to,
    ts: nowMs,
    ...(re === null ? {} : { re }),
    body: body as Record<string, unknown>,
  };
  const { bytes } = sealEnvelope(payload, (b) => signer.sign(b));
  return { to, type, msgId, re, bytes };
}
