/**
 * Native Ed25519 sign and verify rates on this machine, through the broker's own functions
 * (src/crypto/ed25519.ts: node:crypto with the imported key cached), over messages of the size
 * the broker signs and verifies. Two of the three inputs of the bound.
 */
import { performance } from "node:perf_hooks";
import { Signer, generateKeyPair, verify } from "../src/crypto/ed25519.ts";

export interface CryptoRates {
  readonly messageBytes: number;
  readonly signsPerSec: number;
  readonly verifiesPerSec: number;
}

/** Runs `op` for about `ms` milliseconds; operations per second. */
function rate(ms: number, op: () => void): number {
  for (let i = 0; i < 200; i++) op(); // warm-up: JIT, key import
  let n = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 64; i++) op();
    n += 64;
    now = performance.now();
  }
  return n / ((now - start) / 1000);
}

export function measureCrypto(seconds: number, messageBytes: number): CryptoRates {
  const pair = generateKeyPair();
  const signer = new Signer(pair);
  // Distinct messages, so nothing can be cached between operations.
  const messages = Array.from({ length: 64 }, (_, i) => new Uint8Array(Buffer.alloc(messageBytes, 65 + (i % 26))));
  const signatures = messages.map((m) => signer.sign(m));
  let i = 0;
  const signsPerSec = rate((seconds * 1000) / 2, () => void signer.sign(messages[i++ & 63]!));
  const verifiesPerSec = rate((seconds * 1000) / 2, () => {
    const k = i++ & 63;
    if (!verify(pair.publicKey, messages[k]!, signatures[k]!)) throw new Error("a signature did not verify");
  });
  return { messageBytes, signsPerSec: Math.round(signsPerSec), verifiesPerSec: Math.round(verifiesPerSec) };
}
