/**
 * The audit log: every state change, appended in the transaction that makes the change, as a
 * leaf of an append-only Merkle tree (RFC 9162 §2.1; docs/protocol.md §Audit log).
 *
 * An entry is JSON text written once and hashed exactly as stored (no verifier re-serialises):
 *   {"v":1,"index":N,"atMs":T,"kind":"payment.completed", ...fields}
 * leaf hash = SHA-256(0x00 ‖ UTF-8 entry). `index` inside the text makes a reordered or
 * renumbered row visible. Entries hold ids, amounts, codes and digests: never a login, user id,
 * serial, or anything unbinding destroys.
 */
import { sha256 } from "@noble/hashes/sha2.js";
import type Database from "better-sqlite3";
import type { Db } from "./db.ts";

/** What can happen, as an entry's `kind`. */
export const AUDIT_KINDS = [
  "device.registered",
  "device.revoked",
  "merchant.added",
  "agreement.bound",
  "agreement.limits_changed",
  "agreement.unbound",
  "agreement.resealed",
  "payment.event",
  "ledger.transfer",
  "keys.rotated",
  "keys.removed",
  "admin.action",
] as const;
export type AuditKind = (typeof AUDIT_KINDS)[number];

/** The message that caused a change: its id and the SHA-256 (base64) of its exact signed payload bytes. */
export interface AuditTrigger {
  readonly msgId: string;
  readonly digest: string;
}

const utf8 = new TextEncoder();

/** RFC 9162 leaf hash: SHA-256(0x00 ‖ entry). */
export function leafHashOf(entry: Uint8Array): Uint8Array {
  const buf = new Uint8Array(entry.length + 1);
  buf.set(entry, 1);
  return sha256(buf);
}

const statements = new WeakMap<Db, { last: Database.Statement; insert: Database.Statement }>();

function prepared(db: Db) {
  let s = statements.get(db);
  if (s === undefined) {
    s = {
      last: db.prepare("SELECT idx FROM audit_entries ORDER BY idx DESC LIMIT 1").pluck(),
      insert: db.prepare("INSERT INTO audit_entries (idx, at_ms, kind, subject, entry, leaf_hash) VALUES (?, ?, ?, ?, ?, ?)"),
    };
    statements.set(db, s);
  }
  return s;
}

/**
 * Appends one entry in the caller's transaction and returns its index. `subject` is the
 * payment, agreement or device id the entry is about (found again by `audit show`).
 */
export function appendAudit(db: Db, atMs: number, kind: AuditKind, subject: string | null, fields: Record<string, unknown>): number {
  const s = prepared(db);
  const last = s.last.get() as number | undefined;
  const index = last === undefined ? 0 : last + 1;
  const text = JSON.stringify({ v: 1, index, atMs, kind, ...(subject === null ? {} : { subject }), ...fields });
  s.insert.run(index, atMs, kind, subject, text, leafHashOf(utf8.encode(text)));
  return index;
}
