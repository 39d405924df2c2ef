/**
 * What causes a change, as the audit log records it (docs/protocol.md §Audit log): the signed
 * message (its id and the SHA-256 of its exact payload bytes), a deadline, a delivery receipt,
 * or an operator's admin command with their OS user.
 *
 * Entries name sealed data only by a digest of the sealed bytes: the digest proves what was
 * stored while it exists and says nothing once unbinding has destroyed it.
 */
import { createHash } from "node:crypto";
import { userInfo } from "node:os";
import type { HandlerContext } from "./inbox.ts";

export type Trigger =
  /** A device's signed message: its id and base64 SHA-256 of its exact signed payload bytes. */
  | { readonly msgId: string; readonly digest: string }
  /** A payment deadline that came due. */
  | { readonly deadline: "prompt" | "task" }
  /** A device's receipt (its PUBACK or `ack`) of the broker message with this id. */
  | { readonly delivered: string }
  /** An operator's command, e.g. "device add", and the OS user who ran it. */
  | { readonly admin: string; readonly osUser: string };

/** The message a handler is handling, as a trigger. */
export function messageTrigger(ctx: HandlerContext): Trigger {
  return { msgId: ctx.msg.id, digest: ctx.digest };
}

/** The OS user running this process; "unknown" where the system has no name for it. */
export function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? process.env.USERNAME ?? "unknown";
  }
}

export function adminTrigger(command: string): Trigger {
  return { admin: command, osUser: osUser() };
}

/** `{ trigger }` for an entry's fields, or nothing when the cause is not known (tests, tools). */
export function triggerField(trigger: Trigger | undefined): { trigger?: Trigger } {
  return trigger === undefined ? {} : { trigger };
}

/** base64 SHA-256 of sealed bytes: names what was sealed without keeping it. */
export function sealedDigest(sealed: Uint8Array): string {
  return createHash("sha256").update(sealed).digest("base64");
}
