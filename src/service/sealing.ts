/**
 * Sealed values and blind indexes: how identifying data is stored.
 *
 * A sealed value is JSON sealed with the current master key (nacl.secretbox); it carries its own
 * row id, so a blob copied onto another row fails to open as that row. A blind index is an
 * HMAC-SHA256 under a key derived from master key version 1, so equal inputs find each other
 * without the input ever being stored.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Agreement } from "../core/agreement.ts";
import type { Keyring } from "../crypto/keyring.ts";
import type { ErrorCode } from "../protocol/errors.ts";
import type { AgreementRow } from "../store/binding.ts";

/** Blind indexes stay valid across rotations because they always use this key version. */
export const INDEX_KEY_VERSION = 1;

const utf8 = new TextEncoder();
const text = new TextDecoder("utf-8", { fatal: true });

export function blindIndex(keyring: Keyring, purpose: string, ...parts: string[]): Uint8Array {
  const key = keyring.derive(`handoff-pay blind-index v1 ${purpose}`, INDEX_KEY_VERSION);
  return new Uint8Array(createHmac("sha256", key).update(parts.join("\n")).digest());
}

export function agreementLookup(keyring: Keyring, terminalId: string, login: string): Uint8Array {
  return blindIndex(keyring, "agreement", terminalId, login);
}

export function pairingVerifierHash(keyring: Keyring, pairingId: string, verifier: string): Uint8Array {
  return blindIndex(keyring, "pairing", pairingId, verifier);
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sealJson(keyring: Keyring, value: unknown): { sealed: Uint8Array; keyVersion: number } {
  return { sealed: keyring.seal(utf8.encode(JSON.stringify(value))), keyVersion: keyring.current };
}

export type Opened<T> = { ok: true; value: T; keyVersion: number } | { ok: false; code: ErrorCode; detail: string };

export function openJson<T>(keyring: Keyring, sealed: Uint8Array | null): Opened<T> {
  if (sealed === null) return { ok: false, code: "agreement_not_found", detail: "nothing sealed is stored (it was shredded)" };
  const opened = keyring.open(sealed);
  if (!opened.ok) {
    if (opened.reason === "key_version_unknown") return { ok: false, code: "agreement_key_unavailable", detail: "sealed with a master key version this broker does not have" };
    return { ok: false, code: "agreement_tampered", detail: `the sealed bytes do not open (${opened.reason})` };
  }
  try {
    return { ok: true, value: JSON.parse(text.decode(opened.plaintext)) as T, keyVersion: opened.keyVersion };
  } catch {
    return { ok: false, code: "agreement_tampered", detail: "the sealed plaintext is not JSON" };
  }
}

/** Opens an agreement row and checks the plaintext belongs to this very row. */
export function openAgreement(keyring: Keyring, row: AgreementRow): Opened<Agreement> {
  if (row.status !== "active") return { ok: false, code: "agreement_not_found", detail: `agreement ${row.id} is unbound` };
  const opened = openJson<Agreement>(keyring, row.sealed);
  if (!opened.ok) return opened;
  const a = opened.value;
  if (a.id !== row.id || a.terminal?.deviceId !== row.terminalId || a.phoneId !== row.phoneId || a.version !== row.version) {
    return { ok: false, code: "agreement_tampered", detail: "the sealed agreement belongs to another row or version" };
  }
  return opened;
}

export function sealAgreement(keyring: Keyring, a: Agreement): { sealed: Uint8Array; keyVersion: number } {
  return sealJson(keyring, a);
}
