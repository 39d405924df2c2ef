/**
 * The audit log: every state change, appended in the transaction that makes the change, as a
 * leaf of an append-only Merkle tree (RFC 9162 §2.1; docs/protocol.md §Audit log).
 *
 * An entry is JSON text written once and hashed exactly as stored (no verifier re-serialises):
 *   {"v":1,"index":N,"atMs":T,"kind":"payment.completed", ...fields}
 * leaf hash = SHA-256(0x00 ‖ UTF-8 entry). `index` inside the text makes a reordered or
 * renumbered row visible. Entries hold ids, amounts, codes and digests: never a login, user id,
 * serial, or anything unbinding destroys.
 *
 * Stored hashes (audit_nodes): the hash of every complete subtree, level 0 (one leaf, the same
 * bytes as audit_entries.leaf_hash) included. Keeping the leaves twice costs one small insert
 * per append and buys two things: `audit verify` can name the exact entry whose text and
 * leaf_hash were both rewritten (its stored level-0 node still holds the original), and every
 * root and proof reads one table. Each append writes its leaf plus one node per subtree it
 * completes (one more on average), so a root or proof needs O(log n) reads, never a rehash.
 *
 * appendAudit keeps the right edge of the tree (the complete subtrees of the binary
 * decomposition of the size) cached per connection, and trusts it only while the last row is
 * the one it last wrote, by index and leaf hash: a rolled-back transaction or another process's
 * append makes it reload the O(log n) hashes from audit_nodes.
 */
import { createHash } from "node:crypto";
import type Database from "better-sqlite3";
import { completeSubtrees, consistencyProof as consistencyPath, EMPTY_ROOT, equalBytes, headSignedBytes, inclusionPath, leafHash, nodeHash, subtreeFromComplete, type CompleteSubtreeHash, type SubtreeHash } from "../core/merkle.ts";
import { verify } from "../crypto/ed25519.ts";
import { fromBase64, toBase64 } from "../crypto/encoding.ts";
import { isPostgres, type Db } from "./db.ts";

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

// The append path hashes with node:crypto: ~1.5 µs a leaf against ~4.3 µs for @noble/hashes
// (measured here, bench/audit-append.ts), on every state change. Same formulas as core/merkle.ts;
// verifyAudit recomputes with the core's, so a divergence could not go unnoticed.
const LEAF_PREFIX = Uint8Array.of(0);
const NODE_PREFIX = Uint8Array.of(1);
const fastLeafHash = (entry: Uint8Array): Uint8Array => createHash("sha256").update(LEAF_PREFIX).update(entry).digest();
const fastNodeHash = (left: Uint8Array, right: Uint8Array): Uint8Array => createHash("sha256").update(NODE_PREFIX).update(left).update(right).digest();

/** A connection's prepared statements and the right edge of the tree as it last wrote it. */
interface AppendState {
  readonly last: Database.Statement;
  readonly insert: Database.Statement;
  readonly insertOnTop: Database.Statement;
  /** INSERT of n audit nodes in one statement, made on first use, by n (one append writes 1 + the subtrees it completes). */
  readonly insertNodes: Database.Statement[];
  readonly node: Database.Statement;
  /** Size after this connection's last append, the leaf it wrote, and the complete subtrees of that size, largest first. */
  edge: { size: number; lastLeaf: Uint8Array; frontier: Uint8Array[] } | null;
}

const appendStates = new WeakMap<Db, AppendState>();

function appendState(db: Db): AppendState {
  let s = appendStates.get(db);
  if (s === undefined) {
    s = {
      last: db.prepare("SELECT idx, leaf_hash FROM audit_entries ORDER BY idx DESC LIMIT 1").raw(),
      insert: db.prepare("INSERT INTO audit_entries (idx, at_ms, kind, subject, entry, leaf_hash) VALUES (?, ?, ?, ?, ?, ?)"),
      // Written only on top of the entry this connection last wrote (the last one: none above it).
      // (PostgreSQL types a bare parameter in a SELECT list as text: the casts name the columns' types.)
      insertOnTop: db.prepare(
        `INSERT INTO audit_entries (idx, at_ms, kind, subject, entry, leaf_hash) SELECT ${isPostgres(db) ? "CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BYTEA)" : "?, ?, ?, ?, ?, ?"} WHERE EXISTS (SELECT 1 FROM audit_entries WHERE idx = ? AND leaf_hash = ?) AND NOT EXISTS (SELECT 1 FROM audit_entries WHERE idx >= ?)`,
      ),
      insertNodes: [],
      node: db.prepare(NODE_SQL).pluck(),
      edge: null,
    };
    appendStates.set(db, s);
  }
  return s;
}

function insertNodes(db: Db, s: AppendState, n: number): Database.Statement {
  return (s.insertNodes[n] ??= db.prepare(`INSERT INTO audit_nodes (leaf, level, pos, hash) VALUES ${Array.from({ length: n }, () => "(?, ?, ?, ?)").join(", ")}`));
}

/**
 * A stored subtree hash, by the subtree's last entry (the append that completed it) and level:
 * the table's key, so that each append writes at the end of one index.
 */
const NODE_SQL = "SELECT hash FROM audit_nodes WHERE leaf = ? AND level = ?";

/** The last entry index of the complete subtree at (level, pos): the append that completed it. */
function lastLeaf(level: number, pos: number): number {
  return (pos + 1) * 2 ** level - 1;
}

/** The stored hash of each complete subtree; a missing one is an error that names the repair. */
function storedSubtrees(node: Database.Statement): CompleteSubtreeHash {
  return (level, pos) => {
    const h = node.get(lastLeaf(level, pos), level) as Uint8Array | undefined;
    if (h === undefined) throw new Error(`audit log: the hash of subtree (level ${level}, pos ${pos}) is missing; run \`npm run admin -- audit verify\``);
    return h;
  };
}

/**
 * Appends one entry in the caller's transaction and returns its index. `subject` is the
 * payment, agreement or device id the entry is about (found again by `audit show`).
 *
 * With the right edge cached, the entry is inserted on the condition, checked by the insert
 * itself, that the last stored entry is the one this connection last wrote (index and leaf hash);
 * no read before it. When the condition fails (another connection appended, or this one's last
 * append was rolled back), nothing is written: the edge is read again and the entry made anew.
 */
export function appendAudit(db: Db, atMs: number, kind: AuditKind, subject: string | null, fields: Record<string, unknown>): number {
  const s = appendState(db);
  if (s.edge !== null && s.edge.size > 0) {
    const index = writeEntry(db, s, s.edge, atMs, kind, subject, fields, true);
    if (index !== null) return index;
  }
  const last = s.last.get() as [number, Uint8Array] | undefined;
  const size = last === undefined ? 0 : last[0] + 1;
  const edge = { size, lastLeaf: last?.[1] ?? EMPTY_ROOT, frontier: completeSubtrees(0, size, storedSubtrees(s.node)) };
  return writeEntry(db, s, edge, atMs, kind, subject, fields, false)!;
}

/** Writes entry `edge.size` on top of `edge`; `checked`: only if the stored log still ends where `edge` says (null if not). */
function writeEntry(db: Db, s: AppendState, edge: NonNullable<AppendState["edge"]>, atMs: number, kind: AuditKind, subject: string | null, fields: Record<string, unknown>, checked: boolean): number | null {
  const index = edge.size;
  const text = JSON.stringify({ v: 1, index, atMs, kind, ...(subject === null ? {} : { subject }), ...fields });
  const leaf = fastLeafHash(Buffer.from(text, "utf8"));
  if (checked) {
    if (s.insertOnTop.run(index, atMs, kind, subject, text, leaf, index - 1, edge.lastLeaf, index).changes !== 1) return null;
  } else s.insert.run(index, atMs, kind, subject, text, leaf);
  // The leaf, and one node per subtree it completes (one per trailing one bit of `index`), in one statement.
  const nodes: unknown[] = [index, 0, index, leaf];
  const frontier = edge.frontier.slice();
  let carry = leaf;
  let level = 0;
  for (let n = index; n % 2 === 1; n = (n - 1) / 2) {
    carry = fastNodeHash(frontier.pop()!, carry);
    level++;
    nodes.push(index, level, (index + 1) / 2 ** level - 1, carry);
  }
  insertNodes(db, s, level + 1).run(...nodes);
  frontier.push(carry);
  s.edge = { size: index + 1, lastLeaf: leaf, frontier };
  return index;
}

/** A signed tree head, in its JSON form (docs/protocol.md §Audit log). */
export interface SignedHead {
  readonly treeSize: number;
  /** base64 of the 32-byte root hash. */
  readonly rootHash: string;
  readonly timestampMs: number;
  /** base64 Ed25519 signature of headSignedBytes(treeSize, rootHash, timestampMs). */
  readonly signature: string;
}

export interface AuditEntryRow {
  readonly index: number;
  readonly atMs: number;
  readonly kind: string;
  readonly subject: string | null;
  /** The entry's JSON text, exactly as hashed. */
  readonly text: string;
  readonly leafHash: Uint8Array;
}

interface HeadRow {
  tree_size: number;
  root_hash: Uint8Array;
  timestamp_ms: number;
  signature: Uint8Array;
}

interface EntryRow {
  idx: number;
  at_ms: number;
  kind: string;
  subject: string | null;
  entry: string;
  leaf_hash: Uint8Array;
}

const toHead = (r: HeadRow): SignedHead => ({ treeSize: r.tree_size, rootHash: toBase64(r.root_hash), timestampMs: r.timestamp_ms, signature: toBase64(r.signature) });
const toEntry = (r: EntryRow): AuditEntryRow => ({ index: r.idx, atMs: r.at_ms, kind: r.kind, subject: r.subject, text: r.entry, leafHash: r.leaf_hash });

/** Does `head` carry a valid signature by `publicKey`? (What a device or `receipt verify` checks.) */
export function verifyHeadSignature(head: SignedHead, publicKey: Uint8Array): boolean {
  const root = fromBase64(head.rootHash);
  const sig = fromBase64(head.signature);
  if (root === null || sig === null || root.length !== 32 || !Number.isSafeInteger(head.treeSize) || head.treeSize < 0) return false;
  if (!Number.isSafeInteger(head.timestampMs) || head.timestampMs < 0) return false;
  return verify(publicKey, headSignedBytes(head.treeSize, root, head.timestampMs), sig);
}

/**
 * Reads of the audit log, its roots and proofs, and signing its heads. Roots and proofs come
 * from the stored subtree hashes (O(log n) reads each); `verifyAudit` is what recomputes.
 */
export class AuditLog {
  readonly #db: Db;
  readonly #s;

  constructor(db: Db) {
    this.#db = db;
    this.#s = {
      last: db.prepare("SELECT idx FROM audit_entries ORDER BY idx DESC LIMIT 1").pluck(),
      entry: db.prepare<[number], EntryRow>("SELECT idx, at_ms, kind, subject, entry, leaf_hash FROM audit_entries WHERE idx = ?"),
      node: db.prepare(NODE_SQL).pluck(),
      forSubject: db.prepare<[string], EntryRow>("SELECT idx, at_ms, kind, subject, entry, leaf_hash FROM audit_entries WHERE subject = ? ORDER BY idx"),
      latestHead: db.prepare<[], HeadRow>("SELECT tree_size, root_hash, timestamp_ms, signature FROM audit_heads ORDER BY tree_size DESC LIMIT 1"),
      head: db.prepare<[number], HeadRow>("SELECT tree_size, root_hash, timestamp_ms, signature FROM audit_heads WHERE tree_size = ?"),
      insertHead: db.prepare("INSERT INTO audit_heads (tree_size, root_hash, timestamp_ms, signature) VALUES (?, ?, ?, ?)"),
    };
    this.subtree = subtreeFromComplete(storedSubtrees(this.#s.node));
  }

  /** The hash of leaves [start, start + size), from stored hashes (the shape proofs ask for). */
  readonly subtree: SubtreeHash;

  /** The number of entries (the index the next append gets). */
  size(): number {
    const last = this.#s.last.get() as number | undefined;
    return last === undefined ? 0 : last + 1;
  }

  entry(index: number): AuditEntryRow | null {
    const r = this.#s.entry.get(index);
    return r === undefined ? null : toEntry(r);
  }

  /** Every entry whose subject is `id` (a payment, agreement or device), in log order. */
  forSubject(id: string): AuditEntryRow[] {
    return this.#s.forSubject.all(id).map(toEntry);
  }


  /** The root of the tree of the first `size` entries. */
  root(size: number): Uint8Array {
    this.#checkSize(size);
    return size === 0 ? EMPTY_ROOT : this.subtree(0, size);
  }

  /**
   * Signs and stores a head for the current size, or returns the latest head if the log has not
   * grown since. `sign` is the broker identity key's Ed25519 signer.
   */
  signHead(sign: (message: Uint8Array) => Uint8Array, nowMs: number): SignedHead {
    return this.#db
      .transaction(() => {
        const size = this.size();
        const latest = this.latestHead();
        if (latest !== null && latest.treeSize === size) return latest;
        const root = this.root(size);
        // A head never predates the one before it, whatever the clock did.
        const timestampMs = Math.max(Math.trunc(nowMs), latest?.timestampMs ?? 0);
        const signature = sign(headSignedBytes(size, root, timestampMs));
        this.#s.insertHead.run(size, root, timestampMs, signature);
        return { treeSize: size, rootHash: toBase64(root), timestampMs, signature: toBase64(signature) };
      })
      .immediate();
  }

  latestHead(): SignedHead | null {
    const r = this.#s.latestHead.get();
    return r === undefined ? null : toHead(r);
  }

  /** The signed head of exactly `treeSize` entries, if one was signed. */
  head(treeSize: number): SignedHead | null {
    const r = this.#s.head.get(treeSize);
    return r === undefined ? null : toHead(r);
  }

  /** The latest signed head if it covers entry `index` (treeSize > index), else null: sign one then. */
  headCovering(index: number): SignedHead | null {
    const latest = this.latestHead();
    return latest !== null && latest.treeSize > index ? latest : null;
  }

  /** The RFC 9162 inclusion path of entry `index` in the tree of `treeSize` entries, leaf-first. */
  inclusionProof(index: number, treeSize: number): Uint8Array[] {
    this.#checkSize(treeSize);
    return inclusionPath(index, treeSize, this.subtree);
  }

  /** The RFC 9162 consistency proof from the tree of `fromSize` entries to the tree of `toSize`. */
  consistencyProof(fromSize: number, toSize: number): Uint8Array[] {
    this.#checkSize(toSize);
    if (!Number.isSafeInteger(fromSize) || fromSize < 0 || fromSize > toSize) throw new Error(`no consistency proof from ${fromSize} to ${toSize} entries`);
    return fromSize === 0 || fromSize === toSize ? [] : consistencyPath(fromSize, toSize, this.subtree);
  }

  #checkSize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0 || size > this.size()) throw new Error(`the audit log has ${this.size()} entries, not ${size}`);
  }
}

/** What `audit verify` found wrong first, in log order: an entry (by index) or a signed head (by size). */
export type AuditProblem =
  | { readonly at: "entry"; readonly index: number; readonly code: EntryProblemCode; readonly detail: string }
  | { readonly at: "head"; readonly treeSize: number; readonly code: HeadProblemCode; readonly detail: string };

export type EntryProblemCode =
  | "missing" // a row is gone (deleted, or the log truncated below its stored hashes)
  | "unparsable" // the text is not a JSON object of this format
  | "index_mismatch" // the text names another index (rows reordered or renumbered)
  | "column_mismatch" // at_ms, kind or subject columns disagree with the text
  | "leaf_hash_mismatch" // audit_entries.leaf_hash is not the text's hash (text edited)
  | "node_mismatch" // a stored subtree hash differs from the recomputed one (text and leaf hash rewritten, or the node)
  | "node_missing"; // a stored subtree hash is absent

export type HeadProblemCode =
  | "signature_invalid" // the head's signature does not verify; its root still matches the log
  | "head_edited" // neither the signature nor the root matches: the head row was edited
  | "root_mismatch" // a validly signed root the log no longer hashes to: entries before it changed
  | "beyond_log"; // a head signed for more entries than the log has: the log was truncated

export type AuditVerdict = { readonly ok: true; readonly size: number; readonly headsChecked: number } | { readonly ok: false; readonly problem: AuditProblem };

/**
 * Recomputes the whole log from the entry texts and checks every stored hash and signed head
 * against it, returning the first problem in log order. One pass, O(log n) memory: the right
 * edge of the recomputed tree, the stored hashes read in the order appends wrote them.
 */
export function verifyAudit(db: Db, brokerPublicKey: Uint8Array): AuditVerdict {
  const heads = db.prepare<[], HeadRow>("SELECT tree_size, root_hash, timestamp_ms, signature FROM audit_heads ORDER BY tree_size").all();
  const nodeAt = db.prepare(NODE_SQL).pluck();
  let nextHead = 0;
  const checkHeadsAt = (size: number, root: Uint8Array): AuditProblem | null => {
    while (nextHead < heads.length && heads[nextHead]!.tree_size === size) {
      const h = heads[nextHead++]!;
      const signed = h.root_hash.length === 32 && verify(brokerPublicKey, headSignedBytes(h.tree_size, h.root_hash, h.timestamp_ms), h.signature);
      const rootMatches = equalBytes(h.root_hash, root);
      if (!signed && !rootMatches) return headProblem(size, "head_edited", "neither its root nor its signature matches: the head row was edited");
      if (!signed) return headProblem(size, "signature_invalid", "its signature does not verify with the broker key (its root matches the log)");
      if (!rootMatches) return headProblem(size, "root_mismatch", `it is validly signed, but entries 0..${size - 1} no longer hash to its root: an entry before ${size} was changed`);
    }
    return null;
  };
  const noHead = checkHeadsAt(0, EMPTY_ROOT);
  if (noHead !== null) return { ok: false, problem: noHead };

  const frontier: Uint8Array[] = [];
  let expected = 0;
  for (const row of db.prepare<[], EntryRow>("SELECT idx, at_ms, kind, subject, entry, leaf_hash FROM audit_entries ORDER BY idx").iterate()) {
    const problem = checkEntry(row, expected);
    if (problem !== null) return { ok: false, problem };
    const i = row.idx;
    const leaf = leafHash(utf8.encode(row.entry));
    if (!equalBytes(leaf, row.leaf_hash)) return entryProblem(i, "leaf_hash_mismatch", "its stored leaf hash is not the hash of its text: the text was edited");
    let carry = leaf;
    let level = 0;
    for (let n = i; ; n = (n - 1) / 2) {
      const pos = (i + 1) / 2 ** level - 1;
      const stored = nodeAt.get(i, level) as Uint8Array | undefined;
      const span = level === 0 ? `entry ${i}` : `entries ${pos * 2 ** level}..${i}`;
      if (stored === undefined) return entryProblem(i, "node_missing", `the tree's stored hash of ${span} is missing`);
      if (!equalBytes(stored, carry)) {
        return entryProblem(
          i,
          "node_mismatch",
          level === 0
            ? "its text and leaf hash do not match the tree's stored hash of it: the entry was edited (or replaced) together with its leaf hash"
            : `the tree's stored hash of ${span} differs from the recomputed one: a stored hash was edited`,
        );
      }
      if (n % 2 === 0) break;
      carry = nodeHash(frontier.pop()!, carry);
      level++;
    }
    frontier.push(carry);
    expected = i + 1;
    if (nextHead < heads.length && heads[nextHead]!.tree_size === expected) {
      let root = frontier[frontier.length - 1]!;
      for (let j = frontier.length - 2; j >= 0; j--) root = nodeHash(frontier[j]!, root);
      const headIssue = checkHeadsAt(expected, root);
      if (headIssue !== null) return { ok: false, problem: headIssue };
    }
  }
  // Hashes stored past the last entry: rows were deleted from the end.
  const beyond = db.prepare<[number], { level: number; pos: number }>("SELECT level, pos FROM audit_nodes WHERE leaf >= ? ORDER BY (pos << level), level LIMIT 1").get(expected);
  if (beyond !== undefined) {
    return entryProblem(expected, "missing", `the log ends at ${expected} entries but the tree has a stored hash of entries ${beyond.pos * 2 ** beyond.level}..${(beyond.pos + 1) * 2 ** beyond.level - 1}: the log was truncated`);
  }
  if (nextHead < heads.length) {
    const h = heads[heads.length - 1]!;
    return { ok: false, problem: headProblem(heads[nextHead]!.tree_size, "beyond_log", `a head was signed for ${heads[nextHead]!.tree_size} entries (the largest for ${h.tree_size}) but the log has ${expected}: it was truncated`) };
  }
  return { ok: true, size: expected, headsChecked: heads.length };
}

function checkEntry(row: EntryRow, expected: number): AuditProblem | null {
  const i = row.idx;
  if (i !== expected) return { at: "entry", index: expected, code: "missing", detail: `there is no entry ${expected}; the next row is ${i}: ${i - expected === 1 ? "a row was" : "rows were"} deleted` };
  let parsed: unknown;
  try {
    parsed = JSON.parse(row.entry);
  } catch {
    return { at: "entry", index: i, code: "unparsable", detail: "its text is not JSON" };
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return { at: "entry", index: i, code: "unparsable", detail: "its text is not a JSON object" };
  const e = parsed as Record<string, unknown>;
  if (e.v !== 1 || typeof e.kind !== "string" || typeof e.atMs !== "number") return { at: "entry", index: i, code: "unparsable", detail: 'its text lacks "v":1, "kind" or "atMs"' };
  if (e.index !== i) return { at: "entry", index: i, code: "index_mismatch", detail: `its text says index ${JSON.stringify(e.index)}: rows were reordered or renumbered` };
  if (e.kind !== row.kind || e.atMs !== row.at_ms || (e.subject ?? null) !== row.subject) {
    return { at: "entry", index: i, code: "column_mismatch", detail: "its at_ms, kind or subject column disagrees with its text: a column was edited" };
  }
  return null;
}

function entryProblem(index: number, code: EntryProblemCode, detail: string): { ok: false; problem: AuditProblem } {
  return { ok: false, problem: { at: "entry", index, code, detail } };
}

function headProblem(treeSize: number, code: HeadProblemCode, detail: string): AuditProblem {
  return { at: "head", treeSize, code, detail };
}
