/**
 * Device ids are derived from the device's public key, so a key file alone tells a device its
 * id and one key can never be registered twice: id = "d" + the first 19 characters of the
 * lowercase RFC 4648 base32 of SHA-256(publicKey). 20 characters, [a-z2-7], topic-safe.
 */
// @noble/hashes rather than node:crypto: the browser device derives its id too, and WebCrypto's
// digest exists only in a secure context (not on a page served over http off localhost).
import { sha256 } from "@noble/hashes/sha2.js";
import { toBase32 } from "./encoding.ts";

export const DEVICE_ID_RE = /^d[a-z2-7]{19}$/;

export function deviceIdFor(publicKey: Uint8Array): string {
  const digest = sha256(publicKey);
  return "d" + toBase32(digest).slice(0, 19);
}
