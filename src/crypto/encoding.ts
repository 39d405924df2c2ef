/**
 * Byte encodings used on the wire and in files: standard base64 and RFC 4648 base32 (lowercase).
 * Runs in Node and in a page (the browser device, src/device/browser.ts): Node's Buffer where it
 * exists (the broker's hot path), btoa/atob where it does not.
 */

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

interface NodeBufferLike {
  from(buffer: ArrayBufferLike, offset: number, length: number): { toString(encoding: "base64"): string };
  from(text: string, encoding: "base64"): Uint8Array;
}
const NodeBuffer = (globalThis as { Buffer?: NodeBufferLike }).Buffer;

export function toBase64(bytes: Uint8Array): string {
  if (NodeBuffer !== undefined) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  return toBase64Portable(bytes);
}

/** Strict base64 (padding required, no whitespace): returns null rather than guessing. */
export function fromBase64(text: string): Uint8Array | null {
  if (!BASE64_RE.test(text)) return null;
  if (NodeBuffer !== undefined) return new Uint8Array(NodeBuffer.from(text, "base64"));
  return fromBase64Portable(text);
}

/** toBase64 without Buffer (a page's path), exported so a test in Node can hold it to Buffer's. */
export function toBase64Portable(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** Decodes text that fromBase64 already checked is strict base64, without Buffer (a page's path). */
export function fromBase64Portable(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

const BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

export function toBase32(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32_ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32_ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/**
 * A version-7 UUID (RFC 9562 §5.7): the first 48 bits are `ms` (Unix time in milliseconds), the
 * rest come from `random` (its first 10 bytes; version and variant bits overwritten). Ids made
 * later sort later, as bytes and as text, so an index keyed by them grows at its end (one page
 * per commit) instead of at random pages (one page per row). Pure: the caller brings the time
 * and the randomness (74 random bits: two ids collide only within one millisecond, rarely).
 */
export function uuidV7(ms: number, random: Uint8Array): string {
  let t = Math.max(0, Math.min(Math.floor(ms), 2 ** 48 - 1));
  const b = new Array<string>(16);
  for (let i = 5; i >= 0; i--) {
    b[i] = HEX[t % 256]!;
    t = Math.floor(t / 256);
  }
  b[6] = HEX[0x70 | (random[0]! & 0x0f)]!;
  b[7] = HEX[random[1]!]!;
  b[8] = HEX[0x80 | (random[2]! & 0x3f)]!;
  for (let i = 9; i < 16; i++) b[i] = HEX[random[i - 6]!]!;
  return `${b[0]}${b[1]}${b[2]}${b[3]}-${b[4]}${b[5]}-${b[6]}${b[7]}-${b[8]}${b[9]}-${b[10]}${b[11]}${b[12]}${b[13]}${b[14]}${b[15]}`;
}
