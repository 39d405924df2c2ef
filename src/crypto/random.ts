/** The shell's randomness: pairing codes and ids. The core never draws random numbers itself. */
import { randomFillSync, randomInt } from "node:crypto";
import { CODE_ALPHABET, CODE_LENGTH } from "../core/pairing.ts";
import { toBase32 } from "./encoding.ts";

/** Bytes drawn from the system's CSPRNG 4 KiB at a time: one getrandom call per ~300 ids instead of one per id. */
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let poolAt = POOL_BYTES;

/**
 * `n` bytes from the CSPRNG (node:crypto), served from a pool refilled when spent (what Node's own
 * randomUUID does). Each byte is handed out once; `n` above the pool's size is drawn directly.
 */
export function randomBytesPooled(n: number): Uint8Array {
  if (n > POOL_BYTES) return randomFillSync(new Uint8Array(n));
  if (poolAt + n > POOL_BYTES) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const out = Uint8Array.from(pool.subarray(poolAt, poolAt + n));
  pool.fill(0, poolAt, poolAt + n);
  poolAt += n;
  return out;
}

/** A uniformly random pairing code (crypto.randomInt rejects biased draws). */
export function randomPairingCode(): string {
  let code = "";
  for (let i = 0; i < CODE_LENGTH; i++) code += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return code;
}

/**
 * Base32's characters (RFC 4648, lower case) in the order their ASCII codes sort, so that a
 * number written with them sorts as text the way it sorts as a number.
 */
const SORTED_BASE32 = "234567abcdefghijklmnopqrstuvwxyz";
/** Characters of a time-ordered id that carry the time: 9 × 5 = 45 bits of ms, until the year 3084. */
const TIME_CHARS = 9;

/**
 * A time-ordered id with a readable prefix: "pay_" + 20 characters of [a-z2-7], as randomId's,
 * the first 9 the ms time (so ids made later sort later, and a table keyed by them grows at its
 * end instead of at random pages), the other 11 random (55 bits: a collision needs two ids in the
 * same millisecond with the same 55 random bits).
 */
export function timeOrderedId(prefix: string, nowMs: number): string {
  let time = "";
  let t = Math.max(0, Math.floor(nowMs));
  for (let i = 0; i < TIME_CHARS; i++) {
    time = SORTED_BASE32[t % 32]! + time;
    t = Math.floor(t / 32);
  }
  return `${prefix}_${time}${toBase32(randomBytesPooled(7)).slice(0, 11)}`;
}

/** A random id with a readable prefix: "ag_" + 20 base32 characters (100 bits). */
export function randomId(prefix: string): string {
  return `${prefix}_${toBase32(randomBytesPooled(13)).slice(0, 20)}`;
}
