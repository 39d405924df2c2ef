/**
 * Device ids are derived from the device's public key, so a key file alone tells a device its
 * id and one key can never be registered twice: id = "d" + the first 19 characters of the
 * lowercase RFC 4648 base32 of SHA-256(publicKey). 20 characters, [a-z2-7], topic-safe.
 */
import { createHash } from "node:crypto";
import { toBase32 } from "./encoding.ts";

export const DEVICE_ID_RE = /^d[a-z2-7]{19}$/;

export function deviceIdFor(publicKey: Uint8Array): string {
  const digest = createHash("sha256").update(publicKey).digest();
  return "d" + toBase32(digest).slice(0, 19);
}
