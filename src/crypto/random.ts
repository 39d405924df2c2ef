/** The shell's randomness: pairing codes and ids. The core never draws random numbers itself. */
import { randomBytes, randomInt } from "node:crypto";
import { CODE_ALPHABET, CODE_LENGTH } from "../core/pairing.ts";
import { toBase32 } from "./encoding.ts";

/** A uniformly random pairing code (crypto.randomInt rejects biased draws). */
export function randomPairingCode(): string {
  let code = "";
  for (let i = 0; i < CODE_LENGTH; i++) code += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return code;
}

/** A random id with a readable prefix: "ag_" + 20 base32 characters (100 bits). */
export function randomId(prefix: string): string {
  return `${prefix}_${toBase32(randomBytes(13)).slice(0, 20)}`;
}
