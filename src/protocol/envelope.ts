/**
 * The signed envelope every message travels in, both directions.
 *
 * Wire form (the MQTT payload, UTF-8 JSON):   {"payload":"<JSON text>","sig":"<base64>"}
 * The signature is Ed25519 over the UTF-8 bytes of the `payload` string exactly as it was
 * sent, so no side ever re-serialises JSON to check a signature (docs/protocol.md §Envelope).
 */
import { z } from "zod";
import { fromBase64, toBase64 } from "../crypto/encoding.ts";
import type { ErrorCode } from "./errors.ts";
import { checkMemberNames, describeNameProblem } from "./strict-json.ts";

export const PROTOCOL_VERSION = 1 as const;
export const BROKER_ID = "broker";
export const MESSAGE_ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
const TYPE_RE = /^[a-z][a-z0-9_]{0,31}$/;

const outerSchema = z.strictObject({ payload: z.string().min(2), sig: z.string().max(100) });

export const payloadSchema = z.strictObject({
  v: z.literal(PROTOCOL_VERSION),
  type: z.string().regex(TYPE_RE),
  id: z.string().regex(MESSAGE_ID_RE),
  from: z.string().min(1).max(64),
  to: z.string().min(1).max(64),
  ts: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  re: z.string().regex(MESSAGE_ID_RE).optional(),
  body: z.record(z.string(), z.unknown()),
});

export type Payload = z.infer<typeof payloadSchema>;

/** A message whose envelope was parsed; `payloadBytes` are the exact signed bytes. */
export interface Parsed {
  readonly payload: Payload;
  readonly payloadBytes: Uint8Array;
  readonly signature: Uint8Array;
}

export type ParseResult = { ok: true; msg: Parsed } | { ok: false; code: ErrorCode; detail: string; id: string | null };

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** Parses an envelope's bytes: shape and version only, no signature. Never throws. */
export function parseEnvelope(bytes: Uint8Array): ParseResult {
  let outer: unknown;
  let outerText: string;
  try {
    outerText = utf8Strict.decode(bytes);
    outer = JSON.parse(outerText);
  } catch {
    return { ok: false, code: "malformed", detail: "payload is not UTF-8 JSON", id: null };
  }
  // Step 2 of §Envelope: JSON with a repeated or reserved member name is not JSON the broker reads.
  const outerNames = checkMemberNames(outerText).first;
  if (outerNames !== null) return { ok: false, code: "malformed", detail: `envelope: ${describeNameProblem(outerNames)}`, id: null };
  const o = outerSchema.safeParse(outer);
  if (!o.success) return { ok: false, code: "malformed", detail: "envelope must be {payload: string, sig: string}", id: null };
  let inner: unknown;
  try {
    inner = JSON.parse(o.data.payload);
  } catch {
    return { ok: false, code: "malformed", detail: "envelope payload is not JSON text", id: null };
  }
  const names = checkMemberNames(o.data.payload);
  // The id answers only when it is unambiguous: with two `id` members, a verifier that reads the
  // first and JSON.parse, which keeps the last, would disagree on which message this is.
  const rawId = names.repeatedAtTop.has("id") ? undefined : (inner as { id?: unknown } | null)?.id;
  const id = typeof rawId === "string" && MESSAGE_ID_RE.test(rawId) ? rawId : null;
  // Step 4 of §Envelope, before the version (step 5): a repeated `v` must not pick a version.
  if (names.first !== null) return { ok: false, code: "malformed", detail: `payload: ${describeNameProblem(names.first)}`, id };
  const version = (inner as { v?: unknown } | null)?.v;
  if (typeof inner === "object" && inner !== null && version !== PROTOCOL_VERSION && version !== undefined) {
    return { ok: false, code: "unsupported_version", detail: `protocol version must be ${PROTOCOL_VERSION}`, id };
  }
  const p = payloadSchema.safeParse(inner);
  if (!p.success) {
    const issue = p.error.issues[0];
    const where = issue === undefined ? "payload" : issue.path.join(".") || "payload";
    return { ok: false, code: "malformed", detail: `payload field ${where}: ${issue?.message ?? "invalid"}`, id };
  }
  const signature = fromBase64(o.data.sig);
  if (signature === null || signature.length !== 64) {
    return { ok: false, code: "malformed", detail: "sig must be 64 bytes of base64", id };
  }
  return { ok: true, msg: { payload: p.data, payloadBytes: utf8.encode(o.data.payload), signature } };
}

/** Serialises a payload, signs its exact bytes and wraps both in the wire envelope. */
export function sealEnvelope(payload: Payload, sign: (bytes: Uint8Array) => Uint8Array): { text: string; bytes: Uint8Array } {
  const payloadText = JSON.stringify(payload);
  const sig = sign(utf8.encode(payloadText));
  const text = JSON.stringify({ payload: payloadText, sig: toBase64(sig) });
  return { text, bytes: utf8.encode(text) };
}
