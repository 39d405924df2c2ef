/**
 * The CONNECT password: a fresh, single-use token signed by the device key.
 *
 *   password = "hp1." + deviceId + "." + tsMs + "." + nonce + "." + base64(signature)
 *   signed bytes = UTF-8 of "hp-connect-v1\n" + deviceId + "\n" + tsMs + "\n" + nonce
 *
 * tsMs is decimal milliseconds since the Unix epoch; nonce is 16-64 characters of
 * [A-Za-z0-9_-]. The signed text starts with "hp-connect", never with "{", so a token signature
 * can never pass as a message signature or the other way round.
 */
import { fromBase64, toBase64 } from "../crypto/encoding.ts";

const utf8 = new TextEncoder();
export const NONCE_RE = /^[A-Za-z0-9_-]{16,64}$/;
const TS_RE = /^(0|[1-9][0-9]{0,15})$/;

export interface ConnectToken {
  readonly deviceId: string;
  readonly tsMs: number;
  readonly nonce: string;
  readonly signature: Uint8Array;
  readonly signedBytes: Uint8Array;
}

export function tokenSignedBytes(deviceId: string, tsMs: number, nonce: string): Uint8Array {
  return utf8.encode(`hp-connect-v1\n${deviceId}\n${tsMs}\n${nonce}`);
}

export function makeToken(deviceId: string, tsMs: number, nonce: string, sign: (b: Uint8Array) => Uint8Array): string {
  return `hp1.${deviceId}.${tsMs}.${nonce}.${toBase64(sign(tokenSignedBytes(deviceId, tsMs, nonce)))}`;
}

/** Splits a password into its parts; null when it is not a token of this format. */
export function parseToken(password: string): ConnectToken | null {
  const parts = password.split(".");
  if (parts.length !== 5 || parts[0] !== "hp1") return null;
  const [, deviceId, ts, nonce, sig] = parts as [string, string, string, string, string];
  if (deviceId.length === 0 || deviceId.length > 64 || !TS_RE.test(ts) || !NONCE_RE.test(nonce)) return null;
  const signature = fromBase64(sig);
  if (signature === null || signature.length !== 64) return null;
  const tsMs = Number(ts);
  return { deviceId, tsMs, nonce, signature, signedBytes: tokenSignedBytes(deviceId, tsMs, nonce) };
}
