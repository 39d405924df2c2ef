/**
 * The master keyring: numbered 32-byte key versions, one of them current.
 *
 * Sealing (nacl.secretbox, XSalsa20-Poly1305) always uses the current version; the sealed bytes
 * name the version they were made with, so old rows stay readable after a rotation until they
 * are re-sealed. Secret bytes never leave this module except through seal/open/derive.
 */
import { createHmac } from "node:crypto";
import nacl from "tweetnacl";
import { fromBase64, toBase64 } from "./encoding.ts";
import { randomBytesPooled } from "./random.ts";

export const MASTER_KEY_BYTES = 32;
const SEAL_FORMAT = 1;
const HEADER_BYTES = 1 + 4 + nacl.secretbox.nonceLength;

export type OpenFailure = "sealed_malformed" | "key_version_unknown" | "seal_broken";
export type OpenResult = { ok: true; plaintext: Uint8Array; keyVersion: number } | { ok: false; reason: OpenFailure };

export class Keyring {
  readonly #keys: Map<number, Uint8Array>;
  readonly #derived = new Map<string, Uint8Array>();
  readonly current: number;

  constructor(keys: ReadonlyMap<number, Uint8Array>, current: number) {
    for (const [version, key] of keys) {
      if (!Number.isInteger(version) || version < 1) throw new Error(`key version must be a positive integer, got ${version}`);
      if (key.length !== MASTER_KEY_BYTES) throw new Error(`master key version ${version} is not ${MASTER_KEY_BYTES} bytes`);
    }
    if (!keys.has(current)) throw new Error(`current key version ${current} is not in the keyring`);
    this.#keys = new Map(keys);
    this.current = current;
  }

  get versions(): number[] {
    return [...this.#keys.keys()].sort((a, b) => a - b);
  }

  /** Seals with the current key: format byte, key version (u32 BE), 24-byte nonce, box. */
  seal(plaintext: Uint8Array, nonce: Uint8Array = randomBytesPooled(nacl.secretbox.nonceLength)): Uint8Array {
    const key = this.#keys.get(this.current)!;
    const box = nacl.secretbox(plaintext, nonce, key);
    const out = new Uint8Array(HEADER_BYTES + box.length);
    out[0] = SEAL_FORMAT;
    new DataView(out.buffer).setUint32(1, this.current);
    out.set(nonce, 5);
    out.set(box, HEADER_BYTES);
    return out;
  }

  open(sealed: Uint8Array): OpenResult {
    if (sealed.length < HEADER_BYTES + nacl.secretbox.overheadLength || sealed[0] !== SEAL_FORMAT) {
      return { ok: false, reason: "sealed_malformed" };
    }
    const version = new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength).getUint32(1);
    const key = this.#keys.get(version);
    if (key === undefined) return { ok: false, reason: "key_version_unknown" };
    const plaintext = nacl.secretbox.open(sealed.subarray(HEADER_BYTES), sealed.subarray(5, HEADER_BYTES), key);
    if (plaintext === null) return { ok: false, reason: "seal_broken" };
    return { ok: true, plaintext, keyVersion: version };
  }

  /** The key version a sealed value names, or null when it is not a sealed value of this format. */
  static versionOf(sealed: Uint8Array): number | null {
    if (sealed.length < HEADER_BYTES || sealed[0] !== SEAL_FORMAT) return null;
    return new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength).getUint32(1);
  }

  /** A purpose-bound subkey: HMAC-SHA256(master key `version`, label). */
  derive(label: string, version: number = this.current): Uint8Array {
    // A keyring never changes (rotation makes a new one), so a subkey is worked out once.
    const cacheKey = `${version}\n${label}`;
    const cached = this.#derived.get(cacheKey);
    if (cached !== undefined) return cached;
    const key = this.#keys.get(version);
    if (key === undefined) throw new Error(`key version ${version} is not in the keyring`);
    const sub = new Uint8Array(createHmac("sha256", key).update(label).digest());
    this.#derived.set(cacheKey, sub);
    return sub;
  }

  /** Returns a new keyring with one more version, which becomes current. */
  rotated(newKey: Uint8Array = nacl.randomBytes(MASTER_KEY_BYTES)): Keyring {
    const next = Math.max(...this.#keys.keys()) + 1;
    const keys = new Map(this.#keys);
    keys.set(next, newKey);
    return new Keyring(keys, next);
  }

  without(version: number): Keyring {
    if (version === this.current) throw new Error("the current key version cannot be removed");
    const keys = new Map(this.#keys);
    keys.delete(version);
    return new Keyring(keys, this.current);
  }

  /** The keyring file's JSON. Only the key file writer calls this. */
  toFileJson(): string {
    const keys: Record<string, string> = {};
    for (const [v, k] of this.#keys) keys[String(v)] = toBase64(k);
    return JSON.stringify({ format: 1, current: this.current, keys }, null, 2) + "\n";
  }

  static fresh(): Keyring {
    return new Keyring(new Map([[1, nacl.randomBytes(MASTER_KEY_BYTES)]]), 1);
  }

  /** Parses a key file's JSON; throws an Error whose message never contains key material. */
  static fromFileJson(text: string): Keyring {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error("master key file is not valid JSON");
    }
    const obj = parsed as { current?: unknown; keys?: unknown };
    if (typeof obj !== "object" || obj === null || typeof obj.current !== "number" || typeof obj.keys !== "object" || obj.keys === null) {
      throw new Error("master key file must hold {current, keys}");
    }
    const keys = new Map<number, Uint8Array>();
    for (const [v, b64] of Object.entries(obj.keys as Record<string, unknown>)) {
      const bytes = typeof b64 === "string" ? fromBase64(b64) : null;
      if (bytes === null || bytes.length !== MASTER_KEY_BYTES) throw new Error(`master key version ${v} is not ${MASTER_KEY_BYTES} bytes of base64`);
      keys.set(Number(v), bytes);
    }
    return new Keyring(keys, obj.current);
  }

  /**
   * Parses HANDOFF_MASTER_KEY: either one base64 key (version 1) or "1:<base64>,2:<base64>"
   * (the highest version is current).
   */
  static fromEnv(text: string): Keyring {
    const parts = text.trim().split(",");
    const keys = new Map<number, Uint8Array>();
    if (parts.length === 1 && !parts[0]!.includes(":")) {
      const bytes = fromBase64(parts[0]!);
      if (bytes === null || bytes.length !== MASTER_KEY_BYTES) throw new Error(`HANDOFF_MASTER_KEY must be ${MASTER_KEY_BYTES} bytes of base64`);
      keys.set(1, bytes);
    } else {
      for (const part of parts) {
        const [v, b64] = part.split(":", 2);
        const version = Number(v);
        const bytes = b64 === undefined ? null : fromBase64(b64);
        if (!Number.isInteger(version) || version < 1 || bytes === null || bytes.length !== MASTER_KEY_BYTES) {
          throw new Error(`HANDOFF_MASTER_KEY entries must be <version>:<${MASTER_KEY_BYTES} bytes of base64>`);
        }
        keys.set(version, bytes);
      }
    }
    return new Keyring(keys, Math.max(...keys.keys()));
  }
}
