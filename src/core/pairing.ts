/**
 * Pairing codes, modelled on RFC 8628's user_code (§6.1): 8 characters from the 20 consonants
 * BCDFGHJKLMNPQRSTVWXZ (no vowels, so no words; no I/O/0/1 look-alikes), shown as XXXX-XXXX.
 *
 * The first four characters select the pairing, the last four verify it (a selector/verifier
 * split): a wrong verifier is a wrong try against that one pairing, and the fifth voids it.
 * 20^4 = 160,000 verifiers and 5 tries give a guesser a 1 in 32,000 chance per live code.
 *
 * Pure: codes are drawn by the caller (src/crypto/random.ts), time is passed in.
 */
import type { ErrorCode } from "../protocol/errors.ts";

export const CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ";
export const CODE_LENGTH = 8;
export const SELECTOR_LENGTH = 4;
export const MAX_WRONG_TRIES = 5;

export type PairingStatus = "live" | "used" | "void" | "replaced";

export interface Pairing {
  readonly id: string;
  readonly terminalId: string;
  readonly selector: string;
  readonly status: PairingStatus;
  readonly wrongTries: number;
  readonly createdMs: number;
  readonly expiresAtMs: number;
}

/** Uppercases and strips spaces and hyphens; null unless 8 characters of the alphabet remain. */
export function normalizeCode(input: string): string | null {
  const code = input.toUpperCase().replace(/[\s-]/g, "");
  if (code.length !== CODE_LENGTH) return null;
  for (const ch of code) if (!CODE_ALPHABET.includes(ch)) return null;
  return code;
}

export function displayCode(code: string): string {
  return `${code.slice(0, SELECTOR_LENGTH)}-${code.slice(SELECTOR_LENGTH)}`;
}

export type ConfirmDecision = { ok: true; pairing: Pairing } | { ok: false; code: ErrorCode; detail: string; pairing: Pairing };

/** The phone typed a code whose selector found `p`; `verifierMatches` says whether the rest matched. */
export function decideConfirm(p: Pairing, verifierMatches: boolean, nowMs: number): ConfirmDecision {
  if (p.status === "void") return { ok: false, code: "pairing_code_void", detail: "this code was voided after too many wrong tries; ask the terminal for a new one", pairing: p };
  if (!verifierMatches) {
    const wrongTries = p.wrongTries + 1;
    if (wrongTries >= MAX_WRONG_TRIES && p.status === "live") {
      return { ok: false, code: "pairing_code_void", detail: `wrong code; that was the ${MAX_WRONG_TRIES}th wrong try, so the code is void`, pairing: { ...p, wrongTries, status: "void" } };
    }
    return { ok: false, code: "pairing_code_invalid", detail: "no live pairing code matches; check the code on the terminal's screen", pairing: { ...p, wrongTries } };
  }
  if (p.status === "used") return { ok: false, code: "pairing_code_used", detail: "this code was already used; each code pairs once", pairing: p };
  if (p.status === "replaced") return { ok: false, code: "pairing_code_expired", detail: "the terminal has asked for a newer code; use the one on its screen", pairing: p };
  if (nowMs >= p.expiresAtMs) return { ok: false, code: "pairing_code_expired", detail: "this code has expired; ask the terminal for a new one", pairing: p };
  return { ok: true, pairing: { ...p, status: "used" } };
}
